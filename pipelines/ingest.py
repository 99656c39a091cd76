"""The ingestion producer: the one way events enter Kafka.

Used by the simulator (`kestrel simulate --to kafka`) and by `POST /v1/events/transactions`.
Idempotent, acks=all, lz4, batched, keyed by customer_id so that a customer's cards stay
partition-local for the stream's state. Card numbers are tokenized before this module sees
an event (see :class:`kestrel.events.TransactionIn`), so nothing here can publish one.

Delivery failures are counted by a config-level callback that fires only on errors
(``delivery.report.only.error``): the fast path pays no Python call per message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import orjson
from confluent_kafka import KafkaError, Message, Producer
from pydantic import TypeAdapter, ValidationError

from kestrel.errors import BatchTooLarge, EventValidationError, FieldError, ServiceUnavailable
from kestrel.events import (
    LabelEvent,
    TimeBounds,
    TransactionEvent,
    TransactionIn,
    field_errors,
)
from kestrel.kafka import producer_config
from kestrel.pan import CardTokenizer
from kestrel.settings import Settings
from kestrel.topics import LABELS, TRANSACTIONS

log = logging.getLogger("kestrel.ingest")

# Errors after which an idempotent producer gets nothing in again: its producer id, epoch or
# sequence no longer match the broker's. Measured on the local broker: once records time out
# while it is stalled, librdkafka bumps the epoch and every later record fails with
# PRODUCER_FENCED, for good; a broker restarted empty does not know the producer id at all.
# Only a new producer (a new producer id) helps.
PRODUCER_BROKEN = frozenset({
    KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
    KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, KafkaError.UNKNOWN_PRODUCER_ID,
    KafkaError.INVALID_PRODUCER_ID_MAPPING, KafkaError._FENCED, KafkaError._FATAL})


def producer_broken(err: KafkaError | None) -> bool:
    return err is not None and (err.code() in PRODUCER_BROKEN or err.fatal())


class EventProducer:
    """A thread-safe, idempotent producer for the project's topics. A delivery failure that
    leaves the producer unable to publish again (:data:`PRODUCER_BROKEN`) makes the next
    ``produce`` replace it with a new one; the records the old one held fail (their callers
    are told)."""

    def __init__(self, settings: Settings, confirm_each: bool = False, **overrides: Any):
        """``confirm_each``: report every delivery (needed for per-request acknowledgements);
        otherwise only failures are reported, which keeps bulk producing cheap."""
        self._lock = threading.Lock()
        self.failed = 0
        self.last_error: str | None = None
        self.renewed = 0
        self._broken: str | None = None
        conf = producer_config(settings, **overrides)
        conf["delivery.report.only.error"] = not confirm_each
        conf["on_delivery"] = self._on_error
        self._conf = conf
        self._producer = Producer(conf)
        self._bootstrap = settings.kafka_bootstrap

    def _on_error(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            with self._lock:
                self.failed += 1
                self.last_error = str(err)
            if producer_broken(err):
                self._broken = str(err)

    def renew(self, why: str) -> None:
        """Replace the producer by a new one (a new producer id) at the next produce."""
        self._broken = why

    def _renew(self) -> None:
        """Replace a producer that cannot publish again (see :data:`PRODUCER_BROKEN`)."""
        with self._lock:
            if self._broken is None:
                return
            old, self._producer = self._producer, Producer(self._conf)
            why, self._broken = self._broken, None
            self.renewed += 1
        log.warning("producer replaced by a new one (a new producer id): %s", why)
        old.purge()
        old.flush(1.0)  # the purged records' callbacks: their callers are told they failed

    def produce(self, topic: str, key: bytes | str | None, value: bytes | str,
                on_delivery: Any = None, partition: int | None = None,
                deadline: float | None = None) -> None:
        """Queue one record, waiting for room when the local queue is full — until
        ``deadline`` (``time.monotonic()``; then :class:`ServiceUnavailable`), or for as long
        as it takes without one (the pipelines: back-pressure); ``partition`` overrides the
        partitioner (the stream's repartition names it)."""
        if self._broken is not None:
            self._renew()
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        if on_delivery is not None:
            def delivered(err: KafkaError | None, msg: Message) -> None:
                if producer_broken(err):
                    self._broken = str(err)
                on_delivery(err, msg)
            extra["on_delivery"] = delivered
        while True:
            try:
                self._producer.produce(topic, value, key, **extra)
                return
            except BufferError:
                if deadline is not None and time.monotonic() > deadline:
                    raise ServiceUnavailable(
                        "the producer's local queue stayed full (the broker is not taking "
                        "records); retry later") from None
                self._producer.poll(0.05)

    def produce_many(
        self, topic: str, records: Iterable[tuple[bytes | str, bytes | str]]
    ) -> int:
        """The hot path: queue (key, value) pairs; returns how many were queued."""
        if self._broken is not None:
            self._renew()
        produce = self._producer.produce
        poll = self._producer.poll
        n = 0
        for key, value in records:
            try:
                produce(topic, value, key)
            except BufferError:
                poll(0.05)
                self.produce(topic, key, value)
            n += 1
            if n & 0x3FF == 0:
                poll(0)
        poll(0)
        return n

    def send_transaction(self, event: TransactionEvent) -> None:
        self.produce(TRANSACTIONS, event.customer_id, event.to_json())

    def send_label(self, label: LabelEvent) -> None:
        self.produce(LABELS, label.txn_id, label.to_json())

    def poll(self, timeout: float = 0) -> None:
        self._producer.poll(timeout)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued record is acknowledged; raise if any was not."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise ServiceUnavailable(
                f"{remaining} records were not acknowledged within {timeout:.0f} s by the "
                f"broker at KESTREL_KAFKA_BOOTSTRAP={self._bootstrap}; is it running?"
            )
        if self.failed:
            raise ServiceUnavailable(
                f"{self.failed} records failed to publish (last error: {self.last_error})"
            )

    def __len__(self) -> int:
        return len(self._producer)


# --- the HTTP ingest contract ---------------------------------------------------------------

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
    the client contract accepts, and skips building every event twice (~30 µs per event,
    about 15 % of a 10,000-event batch's time in the service). Anything else, invalid documents
    included, goes through the client contract, so errors are the same either way.
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
