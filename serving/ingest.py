"""The HTTP ingest contract: what `POST /v1/events/transactions` accepts, and the publisher
that puts the accepted events on `transactions`.

A body is one event object or ``{"events": [...]}``; every field error of every event is
reported at once (``events[3].amount``) and nothing is published unless all are valid. Card
numbers are swapped for their tokens before an event leaves this module
(:class:`kestrel.events.TransactionIn`); the producer is kestrel/producer.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orjson
from confluent_kafka import KafkaError, Message
from pydantic import TypeAdapter, ValidationError

from kestrel.errors import BatchTooLarge, EventValidationError, FieldError, ServiceUnavailable
from kestrel.events import TimeBounds, TransactionEvent, TransactionIn, field_errors
from kestrel.pan import CardTokenizer
from kestrel.producer import EventProducer, producer_broken
from kestrel.topics import TRANSACTIONS

T = TypeVar("T")
_BATCH = TypeAdapter(list[TransactionIn])
_ONE = TypeAdapter(TransactionIn)
_EVENTS = TypeAdapter(list[TransactionEvent])
_EVENT = TypeAdapter(TransactionEvent)


def _documents(body: bytes, max_batch: int) -> tuple[list[Any], str]:
    """The body's events as parsed JSON, and the path prefix used in errors: ``"events"``
    for ``{"events": [...]}``, ``""`` for one event object."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EventValidationError([FieldError("$", f"not valid JSON ({exc.msg})")]) from None
    if isinstance(doc, dict) and "events" in doc:
        items = doc["events"]
        if not isinstance(items, list):
            raise EventValidationError([FieldError("events", "must be a list of events")])
        if len(doc) > 1:
            extra = sorted(k for k in doc if k != "events")
            raise EventValidationError([FieldError(extra[0], "unexpected field next to events")])
        if not items:
            raise EventValidationError([FieldError("events", "must hold at least one event")])
        if len(items) > max_batch:
            raise BatchTooLarge(len(items), max_batch)
        return items, "events"
    return [doc], ""


def _validate(one: TypeAdapter[Any], many: TypeAdapter[list[Any]], items: list[Any],
              prefix: str) -> list[Any]:
    """Raises pydantic's ValidationError; paths are relative to ``prefix``."""
    return many.validate_python(items) if prefix else [one.validate_python(items[0])]


def parse_transactions(body: bytes, max_batch: int) -> tuple[list[TransactionIn], str]:
    """Validate a request body: one event object, or ``{"events": [...]}``.

    Returns the events and the path prefix used in errors. Every field error of every event
    is reported at once (``events[3].amount``); nothing is published unless all are valid.
    """
    items, prefix = _documents(body, max_batch)
    return _client_contract(items, prefix), prefix


def _client_contract(items: list[Any], prefix: str) -> list[TransactionIn]:
    try:
        events: list[TransactionIn] = _validate(_ONE, _BATCH, items, prefix)
    except ValidationError as exc:
        raise EventValidationError(field_errors(exc, prefix)) from None
    _reject_duplicate_ids(events)
    return events


def parse_events(body: bytes, max_batch: int,
                 tokenize: Callable[[str], str]) -> tuple[list[TransactionEvent], str]:
    """Like :func:`parse_transactions`, but returns the events as they go on `transactions`:
    each ``card_number`` swapped for its token (errors name the event and never echo it).

    Clients that send card tokens take a fast path: the documents are validated as
    :class:`TransactionEvent` directly, which accepts exactly the token-carrying documents
    the client contract accepts, and skips building every event twice. Anything else,
    invalid documents included, goes through the client contract, so errors are the same
    either way.
    """
    items, prefix = _documents(body, max_batch)
    if not any(isinstance(d, dict) and "card_number" in d for d in items):
        try:
            events: list[TransactionEvent] = _validate(_EVENT, _EVENTS, items, prefix)
        except ValidationError:
            pass  # the client contract below says what is wrong, in its own words
        else:
            _reject_duplicate_ids(events)
            return events, prefix
    incoming = _client_contract(items, prefix)
    return _converted(incoming, prefix, lambda item: item.to_event(tokenize)), prefix


def _converted(incoming: list[TransactionIn], prefix: str,
               convert: Callable[[TransactionIn], T]) -> list[T]:
    """``convert`` of every event; the errors of every event are raised at once, each with
    its event's path (``events[3].card_number``)."""
    out: list[T] = []
    errors: list[FieldError] = []
    for i, item in enumerate(incoming):
        try:
            out.append(convert(item))
        except EventValidationError as exc:
            at = f"{prefix}[{i}]." if prefix else ""
            errors += [FieldError(at + e.path, e.reason) for e in exc.errors]
    if errors:
        raise EventValidationError(errors)
    return out


def _reject_duplicate_ids(events: Sequence[TransactionIn | TransactionEvent]) -> None:
    seen: dict[str, int] = {}
    errors = []
    for i, ev in enumerate(events):
        if ev.txn_id in seen:
            errors.append(FieldError(f"events[{i}].txn_id",
                                     f"duplicates events[{seen[ev.txn_id]}].txn_id"))
        else:
            seen[ev.txn_id] = i
    if errors:
        raise EventValidationError(errors)


class Ingestor:
    """Validate → tokenize → publish, and wait for the broker's acknowledgement — at most
    ``timeout`` seconds (503 past it, never an indefinite wait). ``broker_ok`` (the HTTP
    service's broker probe, serving/publisher.py) refuses at once while the broker is known
    not to answer: nothing is queued that could land after the client's retry. Each time
    ``comebacks()`` (the same probe's count of the broker answering again) moves, the
    producer is replaced: a broker restarted empty does not know its producer id, and the
    local broker fences a producer whose records timed out (librdkafka then retries until
    the timeout, for good)."""

    def __init__(self, producer: EventProducer, tokenizer: CardTokenizer, max_batch: int,
                 bounds: TimeBounds, timeout: float = 10.0,
                 broker_ok: Callable[[], bool] | None = None,
                 comebacks: Callable[[], int] | None = None):
        self.producer = producer
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.bounds = bounds
        self.timeout = timeout
        self.broker_ok = broker_ok
        self.comebacks = comebacks
        self._comeback = comebacks() if comebacks is not None else 0

    def ingest(self, body: bytes, timeout: float | None = None,
               admit: Callable[[int], None] | None = None) -> list[str]:
        """Publish every event of the body; returns the accepted txn_ids in order.
        ``admit(n)`` is called with the number of valid events before anything is published
        (the rate limiter charges the batch there; raising stops it)."""
        incoming, prefix = parse_transactions(body, self.max_batch)
        self.bounds.check(incoming, prefix)
        if admit is not None:
            admit(len(incoming))
        token = self.tokenizer.token
        records = _converted(incoming, prefix,
                             lambda item: (TRANSACTIONS, item.customer_id, item.to_wire(token)))
        self.publish(records, timeout)
        return [item.txn_id for item in incoming]

    def publish(self, records: Sequence[tuple[str, str, bytes | str]],
                timeout: float | None = None, what: str = "events",
                retry: str = "txn_id makes it idempotent") -> None:
        """Publish (topic, key, value) records and wait for every acknowledgement, at most
        ``timeout`` (default: the Ingestor's) in all: :class:`ServiceUnavailable` past it or
        when the broker refuses any; ``what`` and ``retry`` word its message."""
        timeout = self.timeout if timeout is None else timeout
        if self.broker_ok is not None and not self.broker_ok():
            raise ServiceUnavailable(f"the broker does not answer (or lacks the topics); "
                                     f"nothing was published; retry the request later "
                                     f"({retry})")
        if self.comebacks is not None and self.comebacks() != self._comeback:
            self._comeback = self.comebacks()
            self.producer.renew("the broker answers again")
        deadline = time.monotonic() + timeout
        for attempt in (1, 2):
            pending = _Acks(len(records), what, retry)
            for topic, key, value in records:
                self.producer.produce(topic, key, value, pending.callback, deadline=deadline)
            try:
                pending.wait(self.producer, deadline, timeout)
                return
            except ServiceUnavailable:
                # every record refused by a producer that can publish no more (after a
                # stalled or restarted broker): none was written, so the next produce's new
                # producer sends them again, once, within the same deadline
                if attempt == 2 or pending.broken < pending.expected:
                    raise


class _Acks:
    """Counts the broker's acknowledgements for one request's records."""

    def __init__(self, expected: int, what: str = "events",
                 retry: str = "txn_id makes it idempotent"):
        self.expected = expected
        self.what = what
        self.retry = retry
        self.done = 0
        self.failed: list[str] = []
        self.broken = 0
        self._cond = threading.Condition()

    def callback(self, err: KafkaError | None, _msg: Message) -> None:
        with self._cond:
            self.done += 1
            if err is not None:
                self.failed.append(str(err))
                self.broken += producer_broken(err)
            self._cond.notify_all()

    def wait(self, producer: EventProducer, deadline: float, timeout: float) -> None:
        while True:
            with self._cond:
                if self.done >= self.expected:
                    break
            if time.monotonic() > deadline:
                raise ServiceUnavailable(
                    f"the broker acknowledged {self.done} of {self.expected} {self.what} "
                    f"within {timeout:g} s; retry the request ({self.retry})"
                )
            producer.poll(0.005)
        if self.failed:
            raise ServiceUnavailable(
                f"{len(self.failed)} {self.what} were not published ({self.failed[0]}); retry "
                f"the request ({self.retry})"
            )
