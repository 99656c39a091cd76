"""Fault injection (issue 28, part 1): Redis frozen by SIGSTOP, and Redis gone, under load,
against the running service (`kestrel serve` as a process with its two workers), a real
broker, a tiny registered model and a private `redis-server` this module starts on a free
port. Only that process is ever signalled: its pid comes from the record `start_redis` wrote
and is checked to be a redis-server on this module's port (never the machine's 6379).

What must hold (generous bounds; the timings are printed as figures, not asserted tightly):
`/v1/score` answers 200 with ``degraded: true`` within its budget's order of magnitude and
never holds the event loop (a concurrent `/healthz` keeps answering); insights and
`/v1/ready` answer 503 with Retry-After at once; the alerts (read from the SQL case store, not
Redis) and labels keep answering; ingest keeps accepting; after SIGCONT (or a restart)
decisions are not degraded again within a second or two.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest

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
from serving.auth import mint_token
from serving.fixtures import register_tiny_model, transaction, write_features
from serving.process import running_service
from tests.conftest import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.faults]
RATE = 50.0  # requests/s while Redis is frozen
LOAD_SECONDS = 3.0
SLOW = 0.5  # generous bound of one answer's latency while Redis is frozen or gone (s)
RECOVERY = 2.0  # generous bound of the time to undegraded decisions after SIGCONT (s)


class Stack:
    def __init__(self, settings: Settings, url: str, var: Path):
        self.settings, self.url, self.var = settings, url, var
        self.tokens = {role: mint_token(settings, role, "acme") for role in
                       ("scorer", "investigator")}
        # one client for every thread, a new connection per request (so the calls spread
        # over both workers); a client per request or per thread cost the load generator
        # more CPU (its SSL context) than the service spent answering, and delayed the calls
        self._client = httpx.Client(timeout=10.0, limits=httpx.Limits(
            max_connections=64, max_keepalive_connections=0))

    def client(self) -> httpx.Client:
        return self._client

    def headers(self, role: str = "scorer") -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[role]}"}

    def score(self, i: int, timeout: float = 10.0) -> tuple[float, httpx.Response]:
        """One decision on a new connection (so the calls spread over both workers)."""
        t0 = time.perf_counter()
        r = self.client().post(self.url + "/v1/score", content=orjson.dumps(transaction(i)),
                               headers=self.headers(), timeout=timeout)
        return time.perf_counter() - t0, r

    def timed(self, method: str, path: str, role: str = "investigator",
              **kw: Any) -> tuple[float, httpx.Response]:
        t0 = time.perf_counter()
        r = self.client().request(method, self.url + path, headers=self.headers(role), **kw)
        return time.perf_counter() - t0, r


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    var = tmp_path_factory.mktemp("faults-var")
    settings = make_settings(var, kafka_bootstrap=f"127.0.0.1:{free_port()}",
                             redis_url=f"redis://127.0.0.1:{free_port()}/0",
                             model_poll_seconds=1.0)  # the default 50 ms score budget
    start_redis(settings)
    start_broker(settings)
    try:
        register_tiny_model(settings, seed=0)
        _features(settings)
        with running_service(settings, free_port(), var / "serve.log", timeout=180) as url:
            _every_worker_started(settings, var / "serve.log")
            stack = Stack(settings, url, var)
            yield stack
            stack.client().close()
    finally:
        _signal_redis(settings, signal.SIGCONT)  # never leave a stopped process behind
        stop(settings, BROKER)
        stop(settings, REDIS)


def _every_worker_started(settings: Settings, log: Path, timeout: float = 120.0) -> None:
    """/healthz answers as soon as one worker does; a request the kernel hands to a worker
    still loading its model waits for it (seconds)."""
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count("Service kestrel initialized") < \
            settings.serve_workers:
        assert time.monotonic() < deadline, f"not every worker started; see {log}"
        time.sleep(0.2)


def _features(settings: Settings) -> None:
    write_features(settings, settings.redis_url, {
        f"card-{i:04d}": {"card_txn_count_1h": i % 7, "card_txn_count_10m": i % 3}
        for i in range(50)})


def _private_redis(settings: Settings) -> int | None:
    """The pid of the redis-server this module started (None when it is not running)."""
    rec = read_launched(settings, REDIS)
    if rec is None:
        return None
    port = int(settings.redis_url.rsplit(":", 1)[1].split("/")[0])
    assert port != 6379 and rec.address == settings.redis_url, rec
    assert "redis-server" in psutil.Process(rec.pid).name(), rec
    assert f"{port}" in rec.command, rec
    return rec.pid


def _signal_redis(settings: Settings, sig: signal.Signals) -> None:
    pid = _private_redis(settings)
    if pid is not None:
        os.kill(pid, sig)


@dataclass
class Load:
    """Open-loop /v1/score at ``RATE`` requests/s (a request is sent on time whether or not
    the earlier ones have answered), with /healthz every 50 ms alongside."""

    stack: Stack
    first: int
    latencies: list[float] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    health: list[float] = field(default_factory=list)
    slow: list[tuple[float, float]] = field(default_factory=list)  # (sent at, took) > 100 ms
    t0: float = 0.0

    def run(self, seconds: float, during: Callable[[], None]) -> None:
        stop = threading.Event()
        watcher = threading.Thread(target=self._watch_health, args=(stop,), daemon=True)
        watcher.start()
        with ThreadPoolExecutor(16) as pool:
            t0 = self.t0 = time.perf_counter()
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
        stop.set()
        watcher.join()

    def _one(self, i: int) -> None:
        try:
            took, r = self.stack.score(i)
        except httpx.HTTPError as exc:
            self.failures.append(f"{i}: {type(exc).__name__} {exc}")
            return
        self.latencies.append(took)
        if took > 0.1:
            self.slow.append((round(time.perf_counter() - took - self.t0, 2), round(took, 3)))
        if r.status_code != 200:
            self.failures.append(f"{i}: {r.status_code} {r.text[:200]}")
            return
        self.answers.append(r.json())

    def _watch_health(self, stop: threading.Event) -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                ok = self.stack.client().get(self.stack.url + "/healthz").status_code == 200
            except httpx.HTTPError:
                ok = False
            self.health.append(time.perf_counter() - t0 if ok else float("inf"))
            stop.wait(0.05)


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def _figures(what: str, values: list[float]) -> str:
    return (f"{what}: n={len(values)} p50={_ms(values, 0.5)} ms p99={_ms(values, 0.99)} ms "
            f"max={_ms(values, 1.0)} ms")


def _metric(stack: Stack, name: str, missing_ok: bool = False) -> float:
    """The sum of a metric's samples named exactly ``name`` (any labels); a labelled metric
    has none before its first count (0 when ``missing_ok``)."""
    text = httpx.get(stack.url + "/metrics", timeout=10).text
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found or missing_ok, f"{name} not in /metrics"
    return total


def _until_undegraded(stack: Stack, first: int, since: float, in_a_row: int = 10,
                      limit: float = 10.0) -> tuple[float, float]:
    """Seconds from ``since`` (``time.perf_counter()``, when Redis came back) until the
    first undegraded decision and until ``in_a_row`` in a row (on new connections, so both
    workers are asked)."""
    t0 = since
    first_ok: float | None = None
    streak, i = 0, first
    while time.perf_counter() - t0 < limit:
        _, r = stack.score(i)
        i += 1
        assert r.status_code == 200, r.text
        if r.json()["degraded"]:
            streak = 0
        else:
            streak += 1
            if first_ok is None:
                first_ok = time.perf_counter() - t0
            if streak >= in_a_row:
                return first_ok, time.perf_counter() - t0
        time.sleep(0.01)
    raise AssertionError(f"decisions still degraded {limit} s after Redis came back")


def _unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"] == "unavailable"


def _check_undegraded_start(stack: Stack, first: int) -> None:
    for i in range(first, first + 10):
        _, r = stack.score(i)
        assert r.status_code == 200 and r.json()["degraded"] is False, r.text


def test_redis_frozen_decisions_degrade_fast_and_recover(stack: Stack) -> None:
    _check_undegraded_start(stack, 1000)
    trips = _metric(stack, "kestrel_redis_circuit_trips_total", missing_ok=True)
    checks: dict[str, tuple[float, httpx.Response]] = {}

    def during() -> None:  # while the load runs on the frozen Redis
        time.sleep(0.5)
        checks["insights"] = stack.timed("GET", "/v1/users/C0001/insights")
        checks["alerts"] = stack.timed("GET", "/v1/alerts")
        checks["ready"] = stack.timed("GET", "/v1/ready")
        checks["ingest"] = stack.timed("POST", "/v1/events/transactions", "scorer",
                                       content=orjson.dumps(transaction(1900)))
        checks["label"] = stack.timed("POST", "/v1/labels", content=orjson.dumps(
            {"txn_id": "score-001900", "is_fraud": False}))
        checks["label+alert"] = stack.timed("POST", "/v1/labels", content=orjson.dumps(
            {"txn_id": "score-001900", "is_fraud": False, "alert_id": "alert-abc"}))

    Load(stack, 1300).run(1.0, lambda: None)  # warm both workers (first calls cost more)
    healthy = Load(stack, 1500)  # the same load on a healthy Redis, for comparison
    healthy.run(2.0, lambda: None)
    load = Load(stack, 2000)
    _signal_redis(stack.settings, signal.SIGSTOP)
    try:
        load.run(LOAD_SECONDS, during)
        open_now = _metric(stack, "kestrel_redis_circuit_open")
        fast = _metric(stack, "kestrel_redis_fast_failures_total", missing_ok=True)
        failed_open = _metric(stack, "kestrel_rate_limit_failed_open_total", missing_ok=True)
    finally:
        _signal_redis(stack.settings, signal.SIGCONT)
        resumed = time.perf_counter()
    first_ok, settled = _until_undegraded(stack, 3000, resumed)

    print(f"\nRedis healthy, /v1/score at {RATE:.0f}/s for 2 s: "
          f"{_figures('latency', healthy.latencies)}; degraded "
          f"{sum(a['degraded'] for a in healthy.answers)}/{len(healthy.answers)}")
    print(f"Redis frozen, /v1/score at {RATE:.0f}/s for {LOAD_SECONDS:.0f} s "
          f"(client side, new connection each): {_figures('latency', load.latencies)}")
    server = [a["latency_ms"] / 1000 for a in load.answers]
    print(f"  server-side latency_ms: {_figures('decision', server)}")
    print(f"  /healthz alongside: {_figures('healthz', load.health)}")
    print(f"  answers over 100 ms (sent at s, took s): {load.slow}")
    for name, (took, r) in checks.items():
        print(f"  {name}: {r.status_code} in {took * 1000:.1f} ms")
    causes = {c: sum(c in a["explanation"] for a in load.answers)
              for c in ("online features are unavailable", "the latency budget ran out")}
    print(f"  degraded because {causes}")
    print(f"  breaker open on {open_now:.0f} worker(s); fast failures {fast:.0f}; "
          f"rate limiter failed open {failed_open:.0f}")
    print(f"  after SIGCONT: first undegraded decision {first_ok * 1000:.0f} ms, "
          f"10 in a row {settled * 1000:.0f} ms")

    assert not load.failures, load.failures[:5]
    assert len(load.answers) >= 0.8 * RATE * LOAD_SECONDS
    assert all(a["degraded"] is True and "rules alone" in a["explanation"]
               for a in load.answers)
    # after the first decision of each worker (which waits its budget), none waits on Redis:
    # measured by the service itself, so a busy machine does not blur it
    waited = [x for x in server if x >= 0.02]
    assert statistics.median(server) < 0.01 and len(waited) <= 0.1 * len(server), waited
    assert max(load.latencies) < SLOW
    assert load.health and max(load.health) < SLOW  # the event loop kept turning
    took, r = checks["insights"]
    _unavailable(r)
    assert took < SLOW, ("insights", took)
    # the alerts live in the case store (SQL): Redis frozen changes nothing for them
    took, r = checks["alerts"]
    assert r.status_code == 200 and took < SLOW, (r.text, took)
    took, r = checks["label+alert"]  # an alert the store does not hold: refused, unpublished
    assert r.status_code == 404 and "alert-abc" in r.json()["message"] and took < SLOW
    took, r = checks["ready"]
    assert r.status_code == 503 and r.json()["checks"]["redis"] is False and took < SLOW
    assert "circuit open" in checks["ready"][1].json()["redis_error"]
    took, r = checks["ingest"]
    assert r.status_code == 202 and r.json()["accepted"] == 1, r.text
    assert checks["label"][1].status_code == 202, checks["label"][1].text
    assert open_now >= 1 and fast > 0 and failed_open > 0
    assert _metric(stack, "kestrel_redis_circuit_trips_total") > trips
    assert settled < RECOVERY
    assert _metric(stack, "kestrel_redis_circuit_open") == 0
    r = httpx.get(stack.url + "/v1/ready", timeout=10)
    assert r.status_code == 200 and r.json()["redis_error"] is None, r.text


def test_redis_gone_then_restarted(stack: Stack) -> None:
    """Killed (connections refused), then a new redis-server on the same port."""
    _check_undegraded_start(stack, 4000)
    stop(stack.settings, REDIS)
    try:
        times = []
        for i in range(4100, 4130):
            took, r = stack.score(i)
            assert r.status_code == 200 and r.json()["degraded"] is True, r.text
            times.append(took)
        insights = stack.timed("GET", "/v1/users/C0001/insights")
        alerts = stack.timed("GET", "/v1/alerts")
        ready = stack.timed("GET", "/v1/ready")
        ingest = stack.timed("POST", "/v1/events/transactions", "scorer",
                             content=orjson.dumps(transaction(4200)))
    finally:
        start_redis(stack.settings)  # returns once it answers PING
        back = time.perf_counter()
        _features(stack.settings)
    first_ok, settled = _until_undegraded(stack, 5000, back)
    print(f"\nRedis gone: {_figures('/v1/score', times)}")
    for name, (took, r) in (("insights", insights), ("alerts", alerts), ("ready", ready),
                            ("ingest", ingest)):
        print(f"  {name}: {r.status_code} in {took * 1000:.1f} ms")
    print(f"  after the restart: first undegraded decision {first_ok * 1000:.0f} ms, "
          f"10 in a row {settled * 1000:.0f} ms")
    assert max(times) < SLOW
    _unavailable(insights[1])
    assert insights[0] < SLOW
    assert alerts[1].status_code == 200 and alerts[0] < SLOW  # the case store, not Redis
    assert ready[1].status_code == 503 and ready[1].json()["checks"]["redis"] is False
    assert ingest[1].status_code == 202, ingest[1].text
    assert settled < RECOVERY
