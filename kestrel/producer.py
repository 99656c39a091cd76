"""The event producer: the one way records enter Kafka.

Used by the simulator (`kestrel simulate --to kafka`), the HTTP ingest
(serving/ingest.py), the stream (alerts, terminal repartitioning), the dead-letter topic and
the benchmarks. Idempotent, acks=all, lz4, batched; the callers key records by customer_id
so that a customer's cards stay partition-local for the stream's state. Card numbers are
tokenized before this module sees an event (see :class:`kestrel.events.TransactionIn`), so
nothing here can publish one.

Delivery failures are counted by a config-level callback that fires only on errors
(``delivery.report.only.error``): the fast path pays no Python call per message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from kestrel.errors import ServiceUnavailable
from kestrel.events import LabelEvent, TransactionEvent
from kestrel.kafka import producer_config
from kestrel.settings import Settings
from kestrel.topics import LABELS, TRANSACTIONS

log = logging.getLogger("kestrel.producer")

# Errors after which an idempotent producer gets nothing in again: its producer id, epoch or
# sequence no longer match the broker's. Once records time out while the broker is stalled,
# librdkafka bumps the epoch and every later record fails with PRODUCER_FENCED, for good; a
# broker restarted empty does not know the producer id at all. Only a new producer (a new
# producer id) helps.
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
