"""Fault injection (issue 28, part 2): the broker frozen by SIGSTOP, then resumed; and the
broker killed and replaced by a new, empty one on the same port — under load, against the
running service (`kestrel serve` as a process), a private Redis and a private broker this
module starts on free ports, and a tiny registered model. Only the broker this module started
is ever signalled: its pid comes from the record `start_broker` wrote and is checked to be a
Tansu broker on this module's port.

What must hold (generous bounds; the timings are printed as figures, not asserted tightly):
`/v1/score` keeps answering 200 fast; once the stall is known each decision says
``"unpublished": {"transactions": "spooled", "decisions": "spooled"}``; ingest and labels
answer 503 with Retry-After within KESTREL_PUBLISH_TIMEOUT_MS (at once when the stall is
known); `/v1/ready` answers 503 with the spool's depth; when the broker answers again every
transaction scored and every decision made during the stall reaches its topic (at least once:
a duplicate is counted and printed), in order per key, and the spool drains to 0.

The service runs one worker here so that "in order per key" is exact: two workers' producers
race each other (each lingers 100 ms), with or without a spool; each worker keeps its own
records in order. tests/serving/test_publisher.py covers the slots of several workers.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from kestrel.kafka import consumer_config
from kestrel.services import (
    BROKER,
    REDIS,
    free_port,
    read_launched,
    start_broker,
    start_redis,
    stop,
)
from kestrel.settings import Settings
from kestrel.topics import DECISIONS, TRANSACTIONS
from serving.auth import mint_token
from serving.fixtures import register_tiny_model, transaction, write_features
from serving.process import running_service
from tests.conftest import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.faults]
RATE = 50.0  # /v1/score requests/s while the broker is stalled
LOAD_SECONDS = 6.0
PUBLISH_TIMEOUT_MS = 2000
SLOW = 2.0  # generous bound of one /v1/score answer while the broker is stalled (s)
DRAIN = 60.0  # generous bound of the time for the spool to drain once the broker is back (s)
SPOOLED = {"transactions": "spooled", "decisions": "spooled"}


class Stack:
    def __init__(self, settings: Settings, url: str, var: Path):
        self.settings, self.url, self.var = settings, url, var
        self.tokens = {role: mint_token(settings, role, "acme") for role in
                       ("scorer", "investigator")}
        self.client = httpx.Client(timeout=10.0)  # keep-alive: the load costs this process less

    def headers(self, role: str = "scorer") -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[role]}"}

    def score(self, i: int, timeout: float = 10.0) -> tuple[float, httpx.Response]:
        t0 = time.perf_counter()
        r = self.client.post(self.url + "/v1/score", content=orjson.dumps(transaction(i)),
                             headers=self.headers(), timeout=timeout)
        return time.perf_counter() - t0, r

    def timed(self, method: str, path: str, role: str = "investigator",
              **kw: Any) -> tuple[float, httpx.Response]:
        t0 = time.perf_counter()
        r = httpx.request(method, self.url + path, headers=self.headers(role), timeout=30.0,
                          **kw)
        return time.perf_counter() - t0, r


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    var = tmp_path_factory.mktemp("broker-faults-var")
    settings = make_settings(var, kafka_bootstrap=f"127.0.0.1:{free_port()}",
                             redis_url=f"redis://127.0.0.1:{free_port()}/0",
                             model_poll_seconds=1.0, serve_workers=1,
                             publish_timeout_ms=PUBLISH_TIMEOUT_MS)
    start_redis(settings)
    start_broker(settings)
    try:
        register_tiny_model(settings, seed=0)
        write_features(settings, settings.redis_url, {
            f"card-{i:04d}": {"card_txn_count_1h": i % 7, "card_txn_count_10m": i % 3}
            for i in range(50)})
        with running_service(settings, free_port(), var / "serve.log", timeout=180) as url:
            yield Stack(settings, url, var)
    finally:
        _signal_broker(settings, signal.SIGCONT)  # never leave a stopped process behind
        stop(settings, BROKER)
        stop(settings, REDIS)


def _private_broker(settings: Settings) -> int | None:
    """The pid of the broker this module started (None when it is not running)."""
    rec = read_launched(settings, BROKER)
    if rec is None:
        return None
    port = settings.kafka_bootstrap.rsplit(":", 1)[1]
    assert port != "9092" and rec.address == settings.kafka_bootstrap, rec
    assert rec.command[1] == "broker" and any(f":{port}" in p for p in rec.command), rec
    assert psutil.Process(rec.pid).cmdline()[:2] == rec.command[:2], rec
    return rec.pid


def _signal_broker(settings: Settings, sig: signal.Signals) -> None:
    pid = _private_broker(settings)
    if pid is not None:
        os.kill(pid, sig)


@dataclass
class Load:
    """Open-loop /v1/score at ``RATE`` requests/s (sent on time whether or not the earlier
    ones have answered)."""

    stack: Stack
    first: int
    latencies: list[float] = field(default_factory=list)
    answers: dict[int, dict[str, Any]] = field(default_factory=dict)
    sent_at: dict[int, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def run(self, seconds: float, during: Callable[[], None]) -> None:
        with ThreadPoolExecutor(16) as pool:
            t0 = time.perf_counter()
            sent = 0

            def send() -> None:
                nonlocal sent
                while time.perf_counter() - t0 < seconds:
                    due = t0 + sent / RATE
                    time.sleep(max(0.0, due - time.perf_counter()))
                    pool.submit(self._one, self.first + sent)
                    sent += 1

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            during()
            sender.join()

    def _one(self, i: int) -> None:
        self.sent_at[i] = time.perf_counter()
        try:
            took, r = self.stack.score(i)
        except httpx.HTTPError as exc:
            self.failures.append(f"{i}: {type(exc).__name__} {exc}")
            return
        self.latencies.append(took)
        if r.status_code != 200:
            self.failures.append(f"{i}: {r.status_code} {r.text[:200]}")
            return
        self.answers[i] = r.json()


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def _figures(what: str, values: list[float]) -> str:
    return (f"{what}: n={len(values)} p50={_ms(values, 0.5)} ms p99={_ms(values, 0.99)} ms "
            f"max={_ms(values, 1.0)} ms")


def _metric(stack: Stack, name: str) -> float:
    """The sum of a metric's samples named exactly ``name`` (0 before its first count)."""
    text = httpx.get(stack.url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def _unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"] == "unavailable"


def _ready(stack: Stack, limit: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        r = httpx.get(stack.url + "/v1/ready", timeout=10)
        if r.status_code == 200:
            return dict(r.json())
        assert time.monotonic() < deadline, f"not ready after {limit} s: {r.text}"
        time.sleep(0.2)


def _check_direct(stack: Stack, first: int) -> None:
    """Decisions published directly again, ingest and labels acknowledged again."""
    for i in range(first, first + 5):
        _, r = stack.score(i)
        assert r.status_code == 200 and r.json()["unpublished"] == {}, r.text
    _, r = stack.timed("POST", "/v1/events/transactions", "scorer",
                       content=orjson.dumps(transaction(first + 5)))
    assert r.status_code == 202, r.text
    _, r = stack.timed("POST", "/v1/labels", content=orjson.dumps(
        {"txn_id": f"score-{first + 5:06d}", "is_fraud": False}))
    assert r.status_code == 202, r.text


def _until_drained(stack: Stack, since: float) -> float:
    """Seconds from ``since`` until /v1/ready answers 200 with an empty spool."""
    while True:
        r = httpx.get(stack.url + "/v1/ready", timeout=10)
        doc = r.json()
        if r.status_code == 200 and doc["spool"]["records"] == 0:
            return time.perf_counter() - since
        assert time.perf_counter() - since < DRAIN, f"spool not drained: {doc}"
        time.sleep(0.1)


def _read(settings: Settings, topic: str) -> list[tuple[bytes | None, dict[str, Any]]]:
    """Every record of ``topic`` from the beginning, until it has been quiet for 3 s."""
    consumer = Consumer(consumer_config(settings, f"fault-reader-{time.time_ns()}"))
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])  # no join
    out: list[tuple[bytes | None, dict[str, Any]]] = []
    deadline = time.monotonic() + 60
    quiet_since = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - quiet_since < 3.0:
        got = [m for m in consumer.consume(1000, 0.5) if m.error() is None]
        if got:
            quiet_since = time.monotonic()
        out += [(m.key(), orjson.loads(m.value())) for m in got]
    consumer.close()
    return out


CASE_FIELDS = ("customer_id", "card_id", "event_time", "transaction", "features")


def _check_topics(stack: Stack, load: Load) -> dict[str, int]:
    """Every decision answered during the load is on `decisions` (the very record, plus
    ``decided_at`` and, when not an allow, what a case needs) and its transaction on
    `transactions`, in order per customer; returns the duplicates per topic."""
    answered = {a["txn_id"]: i for i, a in load.answers.items()}
    duplicates = {}
    for topic in (TRANSACTIONS, DECISIONS):
        records = [(k, v) for k, v in _read(stack.settings, topic) if v["txn_id"] in answered]
        seen = Counter(v["txn_id"] for _, v in records)
        missing = sorted(set(answered) - set(seen))
        assert not missing, f"{len(missing)} of {len(answered)} not on {topic}: {missing[:5]}"
        duplicates[topic] = sum(seen.values()) - len(seen)
        if topic == DECISIONS:
            for key, v in records:
                i = answered[v["txn_id"]]
                assert key == v["txn_id"].encode()
                answer = load.answers[i]
                # what a case needs rides on a flagged decision only (docs/events.md)
                extra = set(CASE_FIELDS) if answer["action"] != "allow" else set()
                assert set(v) - set(answer) == {"decided_at", *extra}, (v, answer)
                assert {k: v[k] for k in answer} == answer, (v, answer)
                if extra:
                    assert v["customer_id"] == transaction(i)["customer_id"]
            continue
        first_seen: dict[bytes | None, list[int]] = defaultdict(list)
        done: set[str] = set()
        for key, v in records:
            if v["txn_id"] not in done:
                done.add(v["txn_id"])
                first_seen[key].append(answered[v["txn_id"]])
        for key, order in first_seen.items():  # each customer's transactions in order
            assert order == sorted(order), (key, order)
            assert all(transaction(i)["customer_id"].encode() == key for i in order)
    return duplicates


def test_broker_stalled_then_resumed(stack: Stack) -> None:
    _ready(stack)
    _check_direct(stack, 1000)
    spooled_before = _metric(stack, "kestrel_spooled_total")
    checks: dict[str, tuple[float, httpx.Response]] = {}

    def during() -> None:  # while the load runs on the stalled broker
        time.sleep(0.3)
        checks["ingest (first)"] = stack.timed("POST", "/v1/events/transactions", "scorer",
                                               content=orjson.dumps(transaction(9000)))
        checks["label (first)"] = stack.timed("POST", "/v1/labels", content=orjson.dumps(
            {"txn_id": "score-009000", "is_fraud": False}))
        time.sleep(PUBLISH_TIMEOUT_MS / 1000 + 1.5)  # the stall is known by now
        checks["ready"] = stack.timed("GET", "/v1/ready")
        checks["ingest"] = stack.timed("POST", "/v1/events/transactions", "scorer",
                                       content=orjson.dumps(transaction(9001)))
        checks["label"] = stack.timed("POST", "/v1/labels", content=orjson.dumps(
            {"txn_id": "score-009001", "is_fraud": True}))

    baseline = Load(stack, 1100)  # the same load with the broker answering, for comparison
    baseline.run(3.0, lambda: None)
    load = Load(stack, 2000)
    stalled = time.perf_counter()
    _signal_broker(stack.settings, signal.SIGSTOP)
    try:
        load.run(LOAD_SECONDS, during)
        spooled = _metric(stack, "kestrel_spooled_total") - spooled_before
        depth = _metric(stack, "kestrel_spool_records")
    finally:
        _signal_broker(stack.settings, signal.SIGCONT)
        resumed = time.perf_counter()
    drained = _until_drained(stack, resumed)
    duplicates = _check_topics(stack, load)

    order = sorted(load.answers)
    said = [load.answers[i]["unpublished"] for i in order]
    known = next((n for n, u in enumerate(said) if u), len(said))
    known_after = load.sent_at[order[known]] - stalled if known < len(said) else float("nan")
    print(f"\nbroker answering, /v1/score at {RATE:.0f}/s for 3 s (client side): "
          f"{_figures('latency', baseline.latencies)}")
    print(f"broker stalled, /v1/score at {RATE:.0f}/s for {LOAD_SECONDS:.0f} s "
          f"(client side): {_figures('latency', load.latencies)}")
    print(f"  server-side latency_ms: "
          f"{_figures('decision', [a['latency_ms'] / 1000 for a in load.answers.values()])}")
    print(f"  decisions saying unpublished: {sum(1 for u in said if u)} of {len(said)}; "
          f"the first one sent {known_after:.2f} s after SIGSTOP")
    for name, (took, r) in checks.items():
        print(f"  {name}: {r.status_code} in {took * 1000:.1f} ms")
    print(f"  spooled {spooled:.0f} records; spool depth {depth:.0f} before SIGCONT; drained "
          f"{drained:.2f} s after SIGCONT; duplicates {duplicates}")

    assert not load.failures, load.failures[:5]
    assert len(load.answers) >= 0.8 * RATE * LOAD_SECONDS
    assert max(load.latencies) < SLOW
    # once known, every decision says it (those sent 0.5 s after the first that said it: the
    # load is concurrent); it is known within the publish timeout and a bit
    first_said = load.sent_at[order[known]] if known < len(said) else float("inf")
    assert all(load.answers[i]["unpublished"] == SPOOLED for i in order
               if load.sent_at[i] > first_said + 0.5), said
    assert known_after < PUBLISH_TIMEOUT_MS / 1000 + 2.0
    for name in ("ingest (first)", "label (first)", "ingest", "label"):
        took, r = checks[name]
        _unavailable(r)
        assert took < PUBLISH_TIMEOUT_MS / 1000 + 1.5, (name, took)
    assert checks["ingest"][0] < SLOW and checks["label"][0] < SLOW  # known: refused at once
    took, r = checks["ready"]
    assert r.status_code == 503 and r.json()["checks"]["broker"] is False, r.text
    assert r.json()["spool"]["records"] > 0
    assert spooled >= 2 * (len(said) - known) and depth > 0
    assert _metric(stack, "kestrel_spool_records") == 0
    assert _metric(stack, "kestrel_publish_dropped_total") == 0
    assert not list(stack.settings.spool_dir.rglob("*.seg"))
    _check_direct(stack, 8000)  # and direct again


def test_broker_restarted_empty(stack: Stack) -> None:
    """Killed while stalled (what it held is gone: memory storage), then a new broker on the
    same port, whose topics `start_broker` creates as `kestrel up` does."""
    _ready(stack)
    _check_direct(stack, 10_000)
    load = Load(stack, 11_000)
    _signal_broker(stack.settings, signal.SIGSTOP)
    try:
        load.run(4.0, lambda: None)
    finally:
        pid = _private_broker(stack.settings)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        psutil.Process(pid).wait(10)
    time.sleep(1.0)  # gone for a moment: connections refused
    dead = stack.timed("POST", "/v1/events/transactions", "scorer",
                       content=orjson.dumps(transaction(19_000)))
    restarted = time.perf_counter()
    start_broker(stack.settings)
    drained = _until_drained(stack, restarted)
    duplicates = _check_topics(stack, load)
    print(f"\nbroker killed and restarted empty: {_figures('/v1/score', load.latencies)}; "
          f"ingest while gone {dead[1].status_code} in {dead[0] * 1000:.1f} ms; drained "
          f"{drained:.2f} s after the new broker started; duplicates {duplicates}")
    assert not load.failures, load.failures[:5]
    assert max(load.latencies) < SLOW
    _unavailable(dead[1])
    assert dead[0] < PUBLISH_TIMEOUT_MS / 1000 + 1.5
    _check_direct(stack, 18_000)


def test_spooled_records_survive_a_service_restart(stack: Stack) -> None:
    """A second service on the same var dir (its own spool slot) decides while the broker is
    stalled and is stopped before the broker comes back: what it spooled, and what
    librdkafka still held at shutdown, stays on disk (and in every worker's /v1/ready), and
    the next service started there republishes it."""
    _ready(stack)
    settings = stack.settings
    port = free_port()
    log = stack.var / "serve-restart.log"
    _signal_broker(settings, signal.SIGSTOP)
    try:
        with running_service(settings, port, log, timeout=180) as url:
            other = Stack(settings, url, stack.var)
            answers = {}
            deadline = time.monotonic() + 60  # a busy machine notices the stall later
            for i in range(20_000, 21_000):
                took, r = other.score(i)
                assert r.status_code == 200 and took < SLOW, r.text
                answers[i] = r.json()
                if len(answers) >= 150 and answers[i]["unpublished"] == SPOOLED:
                    break
                assert time.monotonic() < deadline, "the service never noticed the stall"
                time.sleep(0.02)
            assert answers[i]["unpublished"] == SPOOLED
        # stopped: its slot is free, its records on disk
        depth = httpx.get(stack.url + "/v1/ready", timeout=10).json()["spool"]
    finally:
        _signal_broker(settings, signal.SIGCONT)
    print(f"\nafter the second service stopped, /v1/ready of the first: spool {depth}")
    assert depth["records"] >= 2 * len(answers)
    with running_service(settings, port, log, timeout=180) as url:
        restarted = Stack(settings, url, stack.var)
        t0 = time.perf_counter()
        drained = _until_drained(restarted, t0)
        load = Load(restarted, 0, answers=answers)
        duplicates = _check_topics(restarted, load)
    print(f"  restarted: drained {drained:.2f} s after it answered; duplicates {duplicates}")
    assert _metric(stack, "kestrel_spool_records") == 0
