"""`kestrel bench faults`: decisions while Redis is frozen or the broker stalled, and how fast
the service recovers.

Everything runs against private services (a broker and a redis-server on free ports, a
temporary var dir with a tiny synthetic champion from serving/fixtures.py) and `kestrel serve`
in its own process; the load comes from another process (bench/load.py, open loop). Only the
processes this benchmark started are ever signalled. Per phase, POST /v1/score at 50 req/s:

- ``score_p50_ms@normal`` / ``score_p99_ms@normal``: nothing wrong;
- ``score_p50_ms@redis_frozen`` / ``score_p99_ms@redis_frozen``: redis-server stopped with
  SIGSTOP (a hung store, not a refused connection); ``redis_recovery_s``: SIGCONT → the first
  decision that is no longer degraded;
- ``score_p50_ms@broker_stalled`` / ``score_p99_ms@broker_stalled``: the broker stopped with
  SIGSTOP; ``broker_recovery_s``: SIGCONT → every decision made meanwhile republished (the
  spool depth /v1/ready reports back to 0; where the service reports no spool, the first 202
  from ingest).

The figures are what this machine did, not assertions; the fault tests (tests/faults/) assert
the behaviour.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
from rich.console import Console

from bench.results import BenchResult, Metric
from kestrel.services import BROKER, REDIS, free_port, private_services, read_launched
from kestrel.settings import Settings
from serving.auth import mint_token
from serving.fixtures import register_tiny_model, transaction, write_features
from serving.process import running_service

RATE = 50  # req/s, the load
BUDGET_MS = 50.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _load(url: str, token: str, seconds: float, first: int) -> dict[str, Any]:
    bodies = [transaction(first + i, card_id=f"card-{i % 50:04d}")
              for i in range(int(RATE * seconds))]
    spec = {"url": f"{url}/v1/score", "rate": RATE, "seconds": seconds, "bodies": bodies,
            "headers": {"authorization": f"Bearer {token}",
                        "content-type": "application/json"}, "concurrency": 16}
    out = subprocess.run([sys.executable, "-m", "bench.load"], input=orjson.dumps(spec),
                         capture_output=True, check=True, timeout=seconds * 10 + 60)
    result: dict[str, Any] = orjson.loads(out.stdout)
    return result


def _until(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``check`` holds (polled every 20 ms); NaN if it never did."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            if check():
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    return float("nan")


def _phase(result: BenchResult, name: str, got: dict[str, Any], target: float | None) -> None:
    lat = got["latencies_ms"]
    extra = {"requests": len(lat), "errors": got["errors"], "statuses": got["statuses"],
             "send_lag_p99_ms": round(got["send_lag_p99_ms"], 3)}
    result.metrics[f"score_p50_ms@{name}"] = Metric(_pct(lat, 0.5), "ms", None, "lower", extra)
    result.metrics[f"score_p99_ms@{name}"] = Metric(_pct(lat, 0.99), "ms", target, "lower",
                                                    extra)


def run(settings: Settings, quick: bool = False, console: Console | None = None) -> BenchResult:
    console = console or Console()
    seconds = 2.0 if quick else 8.0
    result = BenchResult("faults", quick, params={
        "rate": RATE, "seconds_per_phase": seconds, "score_budget_ms": BUDGET_MS,
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2)})
    base = settings.model_copy(update={"env": "dev", "score_budget_ms": BUDGET_MS,
                                       "serve_workers": 1, "rate_limit_per_second": 1e6,
                                       "rate_limit_burst": 1e6})
    with private_services(base, with_redis=True) as own:
        register_tiny_model(own, seed=0)
        write_features(own, own.redis_url, {f"card-{i:04d}": {"card_txn_count_1h": i % 5}
                                            for i in range(50)})
        token = mint_token(own, "scorer", "bench-faults")
        auth = {"authorization": f"Bearer {token}"}
        with running_service(own, free_port(), own.var_dir / "serve.log") as url:
            client = httpx.Client(timeout=10)

            def decided(i: int) -> dict[str, Any]:
                r = client.post(f"{url}/v1/score", headers=auth,
                                content=orjson.dumps(transaction(900_000 + i)))
                doc: dict[str, Any] = r.json()
                return doc

            _until(lambda: decided(0).get("degraded") is False, 60)  # model loaded, warm
            console.print(f"normal: {RATE} req/s for {seconds:.0f} s …")
            _phase(result, "normal", _load(url, token, seconds, 0), 20.0)

            redis = read_launched(own, REDIS)
            assert redis is not None, "the private redis-server is not running"
            console.print("Redis frozen (SIGSTOP) …")
            os.kill(redis.pid, signal.SIGSTOP)
            try:
                _phase(result, "redis_frozen", _load(url, token, seconds, 100_000),
                       BUDGET_MS)
            finally:
                os.kill(redis.pid, signal.SIGCONT)
            counter = iter(range(1, 1_000_000))
            recovery = _until(lambda: decided(next(counter)).get("degraded") is False, 30)
            result.metrics["redis_recovery_s"] = Metric(recovery, "s", 1.0, "lower")

            broker = read_launched(own, BROKER)
            assert broker is not None, "the private broker is not running"
            console.print("broker stalled (SIGSTOP) …")
            os.kill(broker.pid, signal.SIGSTOP)
            try:
                _phase(result, "broker_stalled", _load(url, token, seconds, 200_000),
                       BUDGET_MS)
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            result.metrics["broker_recovery_s"] = Metric(
                _until(lambda: _drained(client, url, auth), 120), "s", None, "lower")
    return result


def _drained(client: httpx.Client, url: str, auth: dict[str, str]) -> bool:
    """The spool is empty (as /v1/ready reports it), or — where the service reports no
    spool — ingest is acknowledged again."""
    ready = client.get(f"{url}/v1/ready").json()
    spool = ready.get("spool")
    if isinstance(spool, dict) and "records" in spool:
        return bool(spool["records"] == 0 and ready["checks"].get("broker"))
    r = client.post(f"{url}/v1/events/transactions", headers=auth,
                    content=orjson.dumps(transaction(990_000 + int(time.time() * 1000) % 9999)))
    return r.status_code == 202
