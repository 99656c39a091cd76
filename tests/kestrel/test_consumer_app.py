"""The consumer-app skeleton (kestrel/consumer_app.py) against a real broker: batches cut at
``max_records``, records a commit holds back carried into the next batch and drained at the
end, the idle stop counted from the assignment, a stop from another thread, and the hooks."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Consumer, Message

from kestrel.consumer_app import BatchConfig, BatchHooks, ConsumerApp
from kestrel.kafka import consumer_config
from kestrel.producer import EventProducer
from kestrel.settings import Settings
from kestrel.topics import LABELS

pytestmark = pytest.mark.integration

N = 2_500


def produce(settings: Settings, n: int = N) -> None:
    producer = EventProducer(settings)
    producer.produce_many(LABELS, ((f"k{i % 7}", f"{i}") for i in range(n)))
    producer.flush()


def subscribed(settings: Settings, app: ConsumerApp, **overrides: object) -> Consumer:
    consumer = Consumer(consumer_config(settings, f"test-app-{time.time_ns()}", **overrides))

    def on_assign(c: Consumer, parts: list) -> None:
        c.assign(parts)
        app.assigned()

    consumer.subscribe([LABELS], on_assign=on_assign)
    return consumer


def values(batch: list[Message]) -> list[int]:
    return [int(m.value() or b"-1") for m in batch]


def test_batches_are_cut_at_max_records_and_every_record_is_committed_once(
    services: Settings,
) -> None:
    produce(services)
    app = ConsumerApp(BatchConfig(max_records=400, max_wait_s=5.0, poll_s=0.05))
    batches: list[list[int]] = []

    def commit(buffer: list[Message]) -> None:
        batches.append(values(buffer))
        buffer.clear()

    consumer = subscribed(services, app)
    t0 = time.monotonic()
    try:
        app.run(consumer, commit, idle_seconds=1.0)
    finally:
        consumer.close()
    assert time.monotonic() - t0 < 60, "the idle stop did not come"
    assert sorted(v for b in batches for v in b) == list(range(N))
    assert all(len(b) >= 400 for b in batches[:-1]), [len(b) for b in batches]
    assert app.buffer == []


def test_records_a_commit_holds_back_start_the_next_batch_and_are_drained_at_the_end(
    services: Settings,
) -> None:
    produce(services)
    app = ConsumerApp(BatchConfig(max_records=1_000, max_wait_s=0.2, poll_s=0.05))
    committed: list[int] = []
    sizes: list[int] = []

    def commit(buffer: list[Message]) -> None:
        """Commits all but the last 10 records while more may come; all once stopping."""
        keep = 0 if app.stopped() else min(10, len(buffer) - 1)
        sizes.append(len(buffer))
        committed.extend(values(buffer[:len(buffer) - keep]))
        del buffer[:len(buffer) - keep]

    consumer = subscribed(services, app)
    stopper = threading.Timer(6.0, app.request_stop)  # stopped from another thread
    stopper.start()
    try:
        app.run(consumer, commit)
    finally:
        stopper.cancel()
        consumer.close()
    assert app.stopped()
    assert sorted(committed) == list(range(N)), "a held-back record was lost or doubled"
    assert app.buffer == []


def test_the_hooks_hear_of_records_ends_and_a_full_buffer(services: Settings) -> None:
    produce(services, 300)
    seen: list[int] = []
    ends: list[int] = []
    firsts: list[float] = []
    app = ConsumerApp(
        BatchConfig(max_records=10_000, max_wait_s=60.0, poll_s=0.05),
        BatchHooks(first_record=firsts.append, eof=lambda m: ends.append(m.partition() or 0),
                   records=lambda added: seen.extend(values(added)),
                   full=lambda: len(seen) >= 300))
    batches: list[int] = []

    def commit(buffer: list[Message]) -> None:
        batches.append(len(buffer))
        buffer.clear()

    consumer = subscribed(services, app, **{"enable.partition.eof": True})
    t0 = time.monotonic()
    try:
        app.run(consumer, commit, idle_seconds=1.0)
    finally:
        consumer.close()
    assert sorted(seen) == list(range(300))
    # full() let the batch go long before max_wait_s or max_records
    assert sum(batches) == 300 and time.monotonic() - t0 < 45
    assert firsts and ends, (firsts, ends)


def test_a_batch_config_that_cannot_work_is_refused() -> None:
    with pytest.raises(ValueError, match="max_records"):
        BatchConfig(max_records=0, max_wait_s=1.0)
    with pytest.raises(ValueError, match="poll_s"):
        BatchConfig(max_records=1, max_wait_s=1.0, poll_s=0)
