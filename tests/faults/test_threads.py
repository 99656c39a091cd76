"""Threads that must not die: the alert consumer and the audit writer.

The audit disk fills up for real: the audit root is a small tmpfs this module mounts (the
tests run as root here; without the right to mount they are skipped, saying why), so writes
fail with the kernel's own ENOSPC, not a mock. What must hold: the writer survives, cuts a
failed write back out of its file (the chain verifies throughout), holds what it had taken,
refuses new records while it cannot write (``/v1/score`` then says ``audited: false``,
ingest and labels answer 503, ``/v1/ready`` fails), and writes again by itself once the disk
has room. The queue is bounded.

The alert consumer: a commit that fails for real (the broker gone between a batch's store and
its commit: librdkafka raises a KafkaException) is ridden out in place (no alert lost, no
restart, readiness unaffected by it) and the consumer stores new alerts once a broker answers
again; anything else that ends its loop gets a new consumer after a capped exponential
backoff, counted, with ``healthy`` False in between.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import prometheus_client
import pytest
import redis
from confluent_kafka import KafkaError, KafkaException
from prometheus_client.parser import text_string_to_metric_families

from kestrel.producer import EventProducer
from kestrel.services import BROKER, REDIS, free_port, start_broker, start_redis, stop
from kestrel.settings import Settings
from kestrel.topics import ALERTS
from serving import audit as audit_module
from serving.alerts import PREFIX, AlertConsumer, AlertStore
from serving.audit import AuditLog, AuditUnavailable
from serving.audit_chain import Status, verify
from serving.auth import mint_token
from serving.fixtures import register_tiny_model, transaction, write_features
from serving.process import running_service
from serving.redis_guard import RedisGuard
from tests.conftest import make_settings

pytestmark = [pytest.mark.faults]


def counter(name: str, **labels: str) -> float:
    """A counter's value in this process (the metrics are process-wide: compare deltas).
    Read from the default registry, not ``metrics.exposition()``: BentoML may have set
    PROMETHEUS_MULTIPROC_DIR in the test process, and exposition then reads only the
    multiprocess files."""
    for family in text_string_to_metric_families(
            prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_for(what: Callable[[], bool], timeout: float, step: float = 0.02) -> float:
    """Seconds until ``what()`` holds; fails the test past ``timeout``."""
    t0 = time.monotonic()
    while not what():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"not within {timeout} s")
        time.sleep(step)
    return time.monotonic() - t0


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the block: a disk that really fills up."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up ({done.stderr.strip()}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, leave: int = 0) -> Path:
    """Fill the filesystem of ``path`` with a file there, up to ENOSPC; then give back
    ``leave`` bytes. Its path (remove it to make room)."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        if leave:
            f.truncate(max(0, f.tell() - leave))
    return filler


def records_in(root: Path, kind: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted((root / kind).glob("*.jsonl")):
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{path.name} ends in a partial line"
        out += [orjson.loads(line) for line in data.splitlines()]
    return out


# --- the audit writer ---------------------------------------------------------------------------

def test_a_full_audit_disk_fails_the_writer_keeps_the_chain_and_it_recovers(
    settings: Settings, tmp_path: Path
) -> None:
    key = settings.secret("audit_key")
    with small_tmpfs(tmp_path / "audit", "256k") as root:
        log = AuditLog(root, 0, key, max_queued=10_000)
        try:
            for i in range(20):
                assert log.record("decisions", {"n": i, "pad": "x" * 200})
            assert log.flush() and log.healthy
            filler = fill(root)
            t0 = time.monotonic()
            taken = 20
            # what the writer holds when the disk fills: taken, written later
            while log.healthy and time.monotonic() - t0 < 10:
                taken += log.record("decisions", {"n": taken, "pad": "x" * 200})
                time.sleep(0.001)
            to_fail = time.monotonic() - t0
            assert not log.healthy, "the writer never noticed the full disk"
            status = log.status()
            assert status["writer_alive"] and "No space left" in (status["error"] or "")
            # refused while failed: nothing queues up behind a disk that does not write
            assert not log.admits("decisions", 1)
            assert not log.record("decisions", {"n": -1})
            with pytest.raises(AuditUnavailable, match="cannot write"):
                log.check("ingest")
            # the failed write was cut back out of the file: the chain verifies as it is
            assert all(r.status is Status.ok for r in verify(root, key)), verify(root, key)
            # make room: the writer tries again by itself and writes what it held
            filler.unlink()
            t1 = time.monotonic()
            to_recover = wait_for(lambda: log.healthy, 10)
            assert log.flush()
            log.check("ingest")
            assert log.record("decisions", {"n": taken})
            assert log.flush()
        finally:
            log.close()
        reports = verify(root, key)
        assert reports and all(r.status is Status.ok for r in reports), reports
        got = [r["n"] for r in records_in(root, "decisions")]
        assert got == list(range(taken + 1)), "a record taken was lost, or one refused kept"
        assert log.lost == 0
        print(f"\nfull tmpfs: writer failed {to_fail * 1000:.0f} ms after the disk filled "
              f"({taken - 20} records taken meanwhile, written later); healthy "
              f"{to_recover:.2f} s after room was made (retry every {audit_module.RETRY_S} s)"
              f"; {time.monotonic() - t1:.2f} s to all written")


def test_the_audit_queue_is_bounded(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                    tmp_path: Path) -> None:
    gate = threading.Event()

    class SlowDisk:
        """The os module as serving/audit.py sees it, on a disk that takes its time: nothing
        is written until the gate opens."""

        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def write(fd: int, data: bytes) -> int:
            gate.wait(30)
            return os.write(fd, data)

    monkeypatch.setattr(audit_module, "os", SlowDisk())
    refused = counter("kestrel_audit_refused_total", kind="access")
    log = AuditLog(tmp_path / "audit", 0, settings.secret("audit_key"), max_queued=10)
    try:
        accepted = [log.record("access", {"n": i}) for i in range(15)]
        assert accepted == [True] * 10 + [False] * 5
        assert log.healthy  # slow, not failed: readiness stays up
        with pytest.raises(AuditUnavailable, match="queue is full"):
            log.check("labels")
        assert counter("kestrel_audit_refused_total", kind="access") - refused == 5
        assert log.status()["queued"] == 10
        gate.set()
        assert log.flush()
        assert log.status()["queued"] == 0
        assert log.record("access", {"n": 10})
    finally:
        gate.set()
        log.close()
    assert [r["n"] for r in records_in(tmp_path / "audit", "access")] == list(range(11))


def test_a_batch_larger_than_the_bound_is_taken_when_nothing_waits(
    settings: Settings, tmp_path: Path
) -> None:
    log = AuditLog(tmp_path / "audit", 0, settings.secret("audit_key"), max_queued=5)
    try:
        assert log.admits("decisions", 50)
        assert log.record_many("decisions", [{"n": i} for i in range(50)], admitted=True)
        assert log.flush()
    finally:
        log.close()
    assert len(records_in(tmp_path / "audit", "decisions")) == 50


def test_a_closed_writer_refuses_records(settings: Settings, tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit", 0, settings.secret("audit_key"))
    log.close()
    assert not log.healthy
    assert not log.record("access", {"n": 1})
    with pytest.raises(AuditUnavailable):
        log.check("ingest")


# --- the alert consumer's supervisor -----------------------------------------------------------

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


class CountingStore:
    def __init__(self) -> None:
        self.ids: list[str] = []

    def add(self, alert: dict[str, Any]) -> bool:
        new = alert["alert_id"] not in self.ids
        self.ids.append(alert["alert_id"])
        return new


def alert(i: int) -> bytes:
    return orjson.dumps({"alert_id": f"al-{i}", "card_id": "card-1", "customer_id": "C1",
                         "last_event_time": "2018-04-01T00:00:00Z"})


def supervised(settings: Settings, consumers: list[FakeConsumer],
               backoff: tuple[float, float]) -> tuple[AlertConsumer, CountingStore]:
    store = CountingStore()
    made = iter(consumers)
    consumer = AlertConsumer(settings, store, None, consumer_factory=lambda _: next(made))  # type: ignore[arg-type]
    consumer.BACKOFF_S = backoff
    return consumer, store


def test_a_consumer_that_fails_is_replaced_after_a_backoff_and_counted(
    settings: Settings,
) -> None:
    # a consumer fenced by a newer instance with its group.instance.id: fatal, it is done for
    fatal = KafkaError(KafkaError.FENCED_INSTANCE_ID, "fenced", fatal=True)
    first = FakeConsumer([[FakeMessage(alert(i), i) for i in range(3)],
                          [FakeMessage(b"", 3, fatal)]])
    crashing = FakeConsumer([], fail=KafkaException(KafkaError(KafkaError.NETWORK_EXCEPTION)))
    last = FakeConsumer([[FakeMessage(alert(i), i) for i in range(3, 6)]])
    restarts = counter("kestrel_alert_consumer_restarts_total")
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
    assert counter("kestrel_alert_consumer_restarts_total") - restarts == 2
    # the first batch was committed, so the first delay is the base, then it doubles
    assert elapsed >= 0.3 + 0.6 - 0.05
    assert first.closed and crashing.closed and last.closed
    assert store.ids == [f"al-{i}" for i in range(6)]


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
    failures = counter("kestrel_alert_consumer_commit_failures_total")
    consumer, store = supervised(settings, [only], (0.1, 0.2))
    consumer.start()
    try:
        wait_for(lambda: consumer.stored == 2 and only.commits == 2, 5)
        assert consumer.healthy
    finally:
        consumer.stop()
    assert consumer.restarts == 0 and consumer.commit_failures == 1
    assert counter("kestrel_alert_consumer_commit_failures_total") - failures == 1
    assert store.ids == ["al-0", "al-1"]


# --- over HTTP: `kestrel serve` with its audit root on a tmpfs that fills up --------------------

def http_metric(url: str, name: str) -> float:
    """The sum of a metric's samples (any labels) on the service's /metrics (0 if none)."""
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.integration
@pytest.mark.slow
def test_a_full_audit_disk_keeps_scoring_unaudited_and_refuses_ingest_and_labels(
    tmp_path: Path,
) -> None:
    var = tmp_path / "var"
    settings = make_settings(var, kafka_bootstrap=f"127.0.0.1:{free_port()}",
                             redis_url=f"redis://127.0.0.1:{free_port()}/0",
                             model_poll_seconds=1.0)
    assert not settings.redis_url.startswith("redis://127.0.0.1:6379/")
    key = settings.secret("audit_key")
    start_redis(settings)
    start_broker(settings)
    answered: dict[str, bool] = {}  # txn_id -> audited, as answered
    try:
        register_tiny_model(settings, seed=0)
        write_features(settings, settings.redis_url, {
            f"card-{i:04d}": {"card_txn_count_1h": i % 7} for i in range(50)})
        with small_tmpfs(var / "audit", "4m") as root:
            with running_service(settings, free_port(), tmp_path / "serve.log",
                                 timeout=180) as url:
                auth = {role: {"authorization": f"Bearer {mint_token(settings, role, 'acme')}"}
                        for role in ("scorer", "investigator")}
                n = iter(range(1_000_000))

                def score() -> dict[str, Any]:
                    # a new connection each time: the calls spread over both workers
                    r = httpx.post(url + "/v1/score", content=orjson.dumps(transaction(next(n))),
                                   headers=auth["scorer"], timeout=10)
                    assert r.status_code == 200, r.text
                    d = r.json()
                    answered[d["txn_id"]] = d["audited"]
                    return d

                def ready() -> httpx.Response:
                    return httpx.get(url + "/v1/ready", timeout=10)

                def steadily(what: Callable[[], bool], times: int = 10) -> Callable[[], bool]:
                    return lambda: all(what() for _ in range(times))

                wait_for(steadily(lambda: ready().status_code == 200), 120, 0.2)
                assert score()["audited"] is True

                filler = fill(root)
                t0 = time.monotonic()
                to_unaudited = wait_for(steadily(lambda: score()["audited"] is False), 30, 0)
                wait_for(steadily(lambda: ready().status_code == 503), 30, 0.05)
                doc = ready().json()
                assert doc["checks"]["audit"] is False and doc["audit"]["healthy"] is False
                assert "No space left" in doc["audit"]["error"]
                # still deciding, on the model (not degraded), and saying it is not audited
                t1 = time.perf_counter()
                d = score()
                took = time.perf_counter() - t1
                assert d["audited"] is False and d["degraded"] is False
                r = httpx.post(url + "/v1/events/transactions",
                               content=orjson.dumps(transaction(900_000)),
                               headers=auth["scorer"], timeout=10)
                assert r.status_code == 503 and r.headers["retry-after"], r.text
                assert "audit log cannot write" in r.json()["message"]
                r = httpx.post(url + "/v1/labels", json={"txn_id": "score-000001",
                                                         "is_fraud": False},
                               headers=auth["investigator"], timeout=10)
                assert r.status_code == 503 and r.headers["retry-after"], r.text
                assert http_metric(url, "kestrel_unaudited_decisions_total") > 0
                assert http_metric(url, "kestrel_audit_write_errors_total") > 0
                assert http_metric(url, "kestrel_audit_refused_total") > 0
                down = time.monotonic() - t0

                filler.unlink()  # room again: each worker finds out at its next try
                t2 = time.monotonic()
                to_audited = wait_for(steadily(lambda: score()["audited"] is True), 30, 0.05)
                to_ready = wait_for(steadily(lambda: ready().status_code == 200), 30, 0.05)
                r = httpx.post(url + "/v1/events/transactions",
                               content=orjson.dumps(transaction(900_001)),
                               headers=auth["scorer"], timeout=10)
                assert r.status_code == 202, r.text
                print(f"\nfull audit disk over HTTP: every decision unaudited "
                      f"{to_unaudited:.2f} s after the disk filled; /v1/score answered in "
                      f"{took * 1000:.1f} ms while full ({down:.1f} s full); after room was "
                      f"made, audited again in {to_audited:.2f} s, /v1/ready 200 in "
                      f"{time.monotonic() - t2:.2f} s ({to_ready:.2f} s after audited)")
            # the service closed its files: every chain verifies, and the log holds exactly
            # the decisions answered `audited: true`
            reports = verify(root, key)
            assert reports and all(r.status is Status.ok for r in reports), reports
            logged = [r["txn_id"] for r in records_in(root, "decisions")]
            assert len(logged) == len(set(logged))
            assert set(logged) == {t for t, audited in answered.items() if audited}
            assert any(not audited for audited in answered.values())
    finally:
        stop(settings, BROKER)
        stop(settings, REDIS)


# --- the alert consumer against a real broker that goes away ------------------------------------

class GatedStore(AlertStore):
    """The real alert store, whose writes wait while ``gate`` is closed (so the test knows a
    batch is between its store and its commit)."""

    def __init__(self, url: str):
        super().__init__(redis.Redis.from_url(url), RedisGuard(url))
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()

    def add(self, alert: dict[str, Any]) -> bool:
        if not self.gate.is_set():
            self.waiting.set()
            self.gate.wait(60)
        return super().add(alert)


@pytest.mark.integration
@pytest.mark.slow
def test_a_commit_that_fails_for_real_does_not_end_the_alert_consumer(
    tmp_path: Path, redis_url: str
) -> None:
    """A batch is stored, the broker goes before its offsets are committed: librdkafka's
    commit raises a real KafkaException (_WAIT_COORD, after about the session timeout).
    It is counted and ridden out, the consumer stays up (readiness unaffected by it), and
    once a broker answers again on the address the consumer stores the new alerts. Tansu
    accepts commits during a rebalance (a second member joining while a batch waits to be
    committed changes nothing), so the broker's departure is the real failure available
    here."""
    url = redis_url.rsplit("/", 1)[0] + "/13"  # a db of the tests' own server
    redis.Redis.from_url(url).flushdb()
    settings = make_settings(tmp_path / "var", kafka_bootstrap=f"127.0.0.1:{free_port()}",
                             redis_url=url)
    start_broker(settings)
    store = GatedStore(url)
    consumer = AlertConsumer(settings, store, EventProducer(settings))
    failures = counter("kestrel_alert_consumer_commit_failures_total")
    stored = lambda: int(redis.Redis.from_url(url).zcard(f"{PREFIX}all"))  # noqa: E731

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
        to_fail = wait_for(lambda: healthy.append(consumer.healthy) or (
            consumer.commit_failures == 1), 60, 0.05)
        assert all(healthy) and consumer.restarts == 0 and consumer.healthy
        assert stored() == 10  # stored before the commit failed: nothing lost
        assert counter("kestrel_alert_consumer_commit_failures_total") - failures == 1
        start_broker(settings)  # a new broker on the same address (memory storage: empty)
        produce(range(10, 15))
        to_resume = wait_for(lambda: stored() == 15, 90, 0.05)
        assert consumer.healthy and consumer.restarts == 0
        print(f"\nalert consumer: group joined in {joined:.1f} s; broker gone: the commit "
              f"failed after {to_fail:.1f} s (counted, no restart); new broker: new alerts "
              f"stored {to_resume:.1f} s after they were sent ({time.monotonic() - t0:.1f} s "
              f"after the broker went)")
    finally:
        store.gate.set()
        consumer.stop()
        stop(settings, BROKER)
