"""Threads that must not die, 2: the case intake (serving/case_intake.py; it replaced the
alert consumer), writing to a real case store (SQLite in the test's tmp dir).

A commit that fails for real (the broker gone between a batch's store and its commit:
librdkafka raises a KafkaException) is ridden out in place (no alert lost, no restart,
readiness unaffected by it) and the intake stores new alerts once a broker answers again;
anything else that ends its loop gets a new consumer after a capped exponential backoff,
counted, with ``healthy`` False in between. The consumers of the supervisor tests are
stand-ins handing out prepared batches (a real consumer cannot be made to fail on cue).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException

from cases.records import Flag
from cases.store import CaseStore
from cases.views import Intake
from kestrel.producer import EventProducer
from kestrel.services import BROKER, free_port, start_broker, stop
from kestrel.settings import Settings
from kestrel.topics import ALERTS
from serving.case_intake import CaseIntake
from tests.conftest import make_settings
from tests.faults.probes import counter, wait_for

pytestmark = [pytest.mark.faults]


class FakeMessage:
    def __init__(self, value: bytes, offset: int, error: KafkaError | None = None):
        self._value, self._offset, self._error = value, offset, error

    def error(self) -> KafkaError | None:
        return self._error

    def value(self) -> bytes:
        return self._value

    def topic(self) -> str:
        return "alerts"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class FakeConsumer:
    """Hands out ``batches`` one consume() at a time, then nothing; ``fail`` (an exception,
    or the error of a message) comes after them."""

    def __init__(self, batches: list[list[FakeMessage]], fail: BaseException | None = None,
                 commit_error: KafkaException | None = None):
        self.batches = list(batches)
        self.fail = fail
        self.commit_error = commit_error
        self.commits = 0
        self.closed = False

    def consume(self, n: int, timeout: float) -> list[FakeMessage]:
        if self.batches:
            return self.batches.pop(0)
        if self.fail is not None:
            raise self.fail
        time.sleep(0.01)
        return []

    def commit(self, asynchronous: bool = True) -> None:
        self.commits += 1
        if self.commit_error is not None:
            error, self.commit_error = self.commit_error, None
            raise error

    def close(self) -> None:
        self.closed = True


def alert(i: int) -> bytes:
    return orjson.dumps({"alert_id": f"al-{i}", "card_id": "card-1", "customer_id": "C1",
                         "rule": "velocity", "evidence_txn_ids": [f"t{i}"],
                         "last_event_time": "2018-04-01T00:00:00Z"})


def alert_ids(store: CaseStore) -> list[str]:
    """The store's alert ids in the order they were received."""
    return [a.alert_id for a in reversed(store.alerts("all", 0, 500).alerts)]


def supervised(settings: Settings, consumers: list[FakeConsumer],
               backoff: tuple[float, float]) -> tuple[CaseIntake, CaseStore]:
    store = CaseStore(f"sqlite:///{settings.var_dir / 'cases.db'}")
    made = iter(consumers)
    intake = CaseIntake(settings, lambda: store, None,  # type: ignore[arg-type]  # no DLQ
                        consumer_factory=lambda _: next(made))
    intake.BACKOFF_S = backoff
    return intake, store


def test_a_consumer_that_fails_is_replaced_after_a_backoff_and_counted(
    settings: Settings,
) -> None:
    # a consumer fenced by a newer instance with its group.instance.id: fatal, it is done for
    fatal = KafkaError(KafkaError.FENCED_INSTANCE_ID, "fenced", fatal=True)
    first = FakeConsumer([[FakeMessage(alert(i), i) for i in range(3)],
                          [FakeMessage(b"", 3, fatal)]])
    crashing = FakeConsumer([], fail=KafkaException(KafkaError(KafkaError.NETWORK_EXCEPTION)))
    last = FakeConsumer([[FakeMessage(alert(i), i) for i in range(3, 6)]])
    restarts = counter("kestrel_case_intake_restarts_total")
    consumer, store = supervised(settings, [first, crashing, last], (0.3, 0.6))
    seen_down = threading.Event()
    consumer.start()
    try:
        t0 = time.monotonic()
        wait_for(lambda: not consumer.healthy, 5, 0.001)
        seen_down.set()
        assert consumer.state == "restarting" and "fenced" in (consumer.error or "")
        wait_for(lambda: consumer.stored == 6, 10)
        elapsed = time.monotonic() - t0
        assert consumer.healthy and consumer.state == "running"
    finally:
        consumer.stop()
    assert consumer.state == "stopped" and not consumer.healthy
    assert consumer.restarts == 2
    assert counter("kestrel_case_intake_restarts_total") - restarts == 2
    # the first batch was committed, so the first delay is the base, then it doubles
    assert elapsed >= 0.3 + 0.6 - 0.05
    assert first.closed and crashing.closed and last.closed
    assert alert_ids(store) == [f"al-{i}" for i in range(6)]


def test_the_backoff_is_capped(settings: Settings) -> None:
    broken = [FakeConsumer([], fail=RuntimeError("no consumer")) for _ in range(6)]
    consumer, _ = supervised(settings, [*broken, FakeConsumer([])], (0.02, 0.08))
    t0 = time.monotonic()
    consumer.start()
    try:
        wait_for(lambda: consumer.restarts == 6 and consumer.healthy, 10, 0.005)
    finally:
        consumer.stop()
    # 0.02 + 0.04 + 0.08 + 0.08 + 0.08 + 0.08: doubled, then capped
    assert 0.35 <= time.monotonic() - t0 < 3


def test_a_failed_commit_is_ridden_out_without_a_restart(settings: Settings) -> None:
    rebalance = KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS))
    only = FakeConsumer([[FakeMessage(alert(0), 0)], [FakeMessage(alert(1), 1)]],
                        commit_error=rebalance)
    failures = counter("kestrel_case_intake_commit_failures_total")
    consumer, store = supervised(settings, [only], (0.1, 0.2))
    consumer.start()
    try:
        wait_for(lambda: consumer.stored == 2 and only.commits == 2, 5)
        assert consumer.healthy
    finally:
        consumer.stop()
    assert consumer.restarts == 0 and consumer.commit_failures == 1
    assert counter("kestrel_case_intake_commit_failures_total") - failures == 1
    assert alert_ids(store) == ["al-0", "al-1"]


# --- the case intake against a real broker that goes away ---------------------------------------

class GatedStore(CaseStore):
    """The real case store, whose writes wait while ``gate`` is closed (so the test knows a
    batch is between its store and its commit)."""

    def __init__(self, url: str):
        super().__init__(url)
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()

    def add_flag(self, flag: Flag, now: Any = None) -> Intake:
        if not self.gate.is_set():
            self.waiting.set()
            self.gate.wait(60)
        return super().add_flag(flag, now)


@pytest.mark.integration
@pytest.mark.slow
def test_a_commit_that_fails_for_real_does_not_end_the_case_intake(tmp_path: Path) -> None:
    """A batch is stored, the broker goes before its offsets are committed: librdkafka's
    commit raises a real KafkaException (_WAIT_COORD, after about the session timeout).
    It is counted and ridden out, the consumer stays up (readiness unaffected by it), and
    once a broker answers again on the address the consumer stores the new alerts. Tansu
    accepts commits during a rebalance (a second member joining while a batch waits to be
    committed changes nothing), so the broker's departure is the real failure available
    here."""
    settings = make_settings(tmp_path / "var", kafka_bootstrap=f"127.0.0.1:{free_port()}")
    start_broker(settings)
    store = GatedStore(f"sqlite:///{tmp_path / 'cases.db'}")
    consumer = CaseIntake(settings, lambda: store, EventProducer(settings))
    failures = counter("kestrel_case_intake_commit_failures_total")
    stored = lambda: store.alerts("all").total  # noqa: E731

    def produce(ids: range) -> None:
        producer = EventProducer(settings)
        producer.produce_many(ALERTS, ((f"card-{i}", alert(i)) for i in ids))
        producer.flush()

    consumer.start()
    try:
        produce(range(5))
        joined = wait_for(lambda: stored() == 5, 60)
        store.gate.clear()
        produce(range(5, 10))
        wait_for(store.waiting.is_set, 30)
        stop(settings, BROKER)  # our own broker, from its launch record
        t0 = time.monotonic()
        store.gate.set()
        healthy: list[bool] = []

        def failed_once() -> bool:
            healthy.append(consumer.healthy)
            return consumer.commit_failures == 1

        to_fail = wait_for(failed_once, 60, 0.05)
        assert all(healthy) and consumer.restarts == 0 and consumer.healthy
        assert stored() == 10  # stored before the commit failed: nothing lost
        assert counter("kestrel_case_intake_commit_failures_total") - failures == 1
        start_broker(settings)  # a new broker on the same address (memory storage: empty)
        produce(range(10, 15))
        to_resume = wait_for(lambda: stored() == 15, 90, 0.05)
        assert consumer.healthy and consumer.restarts == 0
        print(f"\ncase intake: group joined in {joined:.1f} s; broker gone: the commit "
              f"failed after {to_fail:.1f} s (counted, no restart); new broker: new alerts "
              f"stored {to_resume:.1f} s after they were sent ({time.monotonic() - t0:.1f} s "
              f"after the broker went)")
    finally:
        store.gate.set()
        consumer.stop()
        stop(settings, BROKER)
