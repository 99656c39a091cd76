"""`kestrel bench serve`: decision latency, batch throughput, insights, and Feast's own server.

Everything runs against private services (broker, redis-server, a temporary var dir with its
own MLflow store holding a tiny synthetic champion from serving/fixtures.py), with the service
started as `kestrel serve` in its own process and the load coming from another process
(bench/load.py, open loop: latency counted from each request's scheduled send time):

- ``score_p50_ms@<rps>`` / ``score_p99_ms@<rps>``: POST /v1/score at 200, 500, 1,000 req/s;
- ``batch_score_txn_per_s``: POST /v1/score/batch with 10,000 transactions, end to end;
  every transaction has its own card (the service reads each distinct entity once, so a
  batch that repeats cards would be cheaper), over the 2,000 customers and 30 terminals;
- ``insights_hit_p99_ms`` / ``insights_miss_p99_ms``: GET /v1/users/{id}/insights at
  200 req/s, from the cache, and with ``fresh=true`` (composed from the sources each time);
- ``feast_serve_p99_ms@<rps>``: `feast serve`'s POST /get-online-features for the same stored
  features of fraud_scoring_v1 (card, customer and terminal views), at the same rates.

The machine is shared with other work; the load average at the start is recorded in params.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console

from bench.results import BenchResult, Metric
from kestrel.redis_keys import insight_doc_key, recent_key
from kestrel.services import free_port, private_services
from kestrel.settings import Settings
from kestrel.windows import Entity
from serving.auth import mint_token
from serving.fixtures import register_tiny_model, transaction, write_features
from serving.process import running_service, settings_env

CUSTOMERS = 2000
BATCH_CARDS = 10_000  # the batch's cards: one per transaction
CHAMPION_TREES = 300  # the shape `kestrel train` chose on the default set (depth 3, 300 trees)
ENTITIES: tuple[Entity, ...] = ("card", "customer", "terminal")
BATCH_ENTITIES: tuple[Entity, ...] = ("customer", "terminal")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _extra(got: dict[str, Any]) -> dict[str, Any]:
    return {"requests": len(got["latencies_ms"]), "errors": got["errors"],
            "send_lag_p99_ms": round(got["send_lag_p99_ms"], 3), "statuses": got["statuses"]}


def _load(spec: dict[str, Any]) -> dict[str, Any]:
    """bench/load.py in a separate process."""
    out = subprocess.run([sys.executable, "-m", "bench.load"], input=orjson.dumps(spec),
                         capture_output=True, check=True, timeout=600)
    result: dict[str, Any] = orjson.loads(out.stdout)
    return result


def _seed(settings: Settings) -> None:
    from redis import Redis

    cards = {f"card-{i:04d}": {"card_txn_count_1h": i % 5, "card_txn_count_10m": i % 3,
                               "card_amount_sum_1h": 10.0 * (i % 7),
                               "card_last_event_time_us": 1527854000000000,
                               "card_last_lat": 48.8, "card_last_lon": 2.3}
             for i in range(BATCH_CARDS)}
    customers = {f"C{i:04d}": {"customer_txn_count_24h": i % 9} for i in range(CUSTOMERS)}
    write_features(settings, settings.redis_url, cards, customers)
    client = Redis.from_url(settings.redis_url)
    pipe = client.pipeline(transaction=False)
    for i in range(CUSTOMERS):
        doc = {"as_of": "2018-06-01", "daily": [
            {"date": f"2018-05-{d:02d}", "category": c, "amount": 10.0 + d, "count": 1}
            for d in range(1, 31) for c in ("groceries", "fuel")],
            "monthly": [{"month": "2018-05", "amount": 800.0, "count": 60, "mom_change": 0.1}]}
        pipe.set(insight_doc_key(f"C{i:04d}"), orjson.dumps(doc))
        recent = [orjson.dumps({"txn_id": f"r{i}-{k}", "event_time": "2018-06-02T10:00:00Z",
                                "amount": 12.0, "currency": "EUR", "mcc": "5812",
                                "country": "FR", "terminal_id": "T1", "card_id": f"card-{i}",
                                "channel": "pos"}) for k in range(20)]
        pipe.rpush(recent_key(f"C{i:04d}"), *recent)
    pipe.execute()


def _feast_server(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    from pipelines.features.store import REPO_DIR, apply, feast_env

    apply(settings, echo=lambda _: None)
    env = {**settings_env(settings), **feast_env(settings)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "feast.cli.cli", "-c", str(REPO_DIR), "serve", "-h",
             "127.0.0.1", "-p", str(port), "--no-access-log", "--workers", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"feast serve did not start; see {log}")


def _feast_features() -> list[str]:
    from kestrel.windows import (
        batch_feature_names,
        batch_view_name,
        feature_names,
        stream_view_name,
    )

    out = []
    for entity in ENTITIES:
        out += [f"{stream_view_name(entity)}:{f}" for f in feature_names(entity)]
    for entity in BATCH_ENTITIES:
        out += [f"{batch_view_name(entity)}:{f}" for f in batch_feature_names(entity)]
    return out


def run(settings: Settings, quick: bool, console: Console) -> BenchResult:
    rates = [100] if quick else [200, 500, 1000]
    seconds = 2.0 if quick else 5.0
    batch_size = 1000 if quick else 10_000
    load_avg = os.getloadavg()[0]
    result = BenchResult("serve", quick, {"rates": rates, "seconds_per_rate": seconds,
                                          "batch_size": batch_size, "customers": CUSTOMERS,
                                          "load_avg_1m_at_start": round(load_avg, 2)})
    base = settings.model_copy(update={"case_intake": False, "rate_limit_per_second": 0.0,
                                       "log_level": "WARNING", "mlflow_tracking_uri": None})
    with private_services(base, with_redis=True) as own:
        console.print("registering a synthetic champion and seeding Redis …")
        register_tiny_model(own, n_estimators=CHAMPION_TREES)
        _seed(own)
        bodies = [transaction(i) for i in range(CUSTOMERS)]
        for b in bodies:
            b["card_id"] = f"card-{int(b['customer_id'][1:]):04d}"
        with running_service(own, free_port(), own.var_dir / "serve.log", timeout=180) as url:
            headers = {"authorization": f"Bearer {mint_token(own, 'scorer', 'bench')}",
                       "content-type": "application/json"}
            for rate in rates:
                console.print(f"/v1/score at {rate} req/s for {seconds:.0f} s …")
                got = _load({"url": url + "/v1/score", "rate": rate, "seconds": seconds,
                             "headers": headers, "bodies": bodies})
                lat = got["latencies_ms"]
                extra = _extra(got)
                result.metrics[f"score_p50_ms@{rate}"] = Metric(_pct(lat, 0.5), "ms", None,
                                                                "lower", extra)
                result.metrics[f"score_p99_ms@{rate}"] = Metric(
                    _pct(lat, 0.99), "ms", 20.0 if rate == 500 else None, "lower", extra)

            console.print(f"/v1/score/batch with {batch_size} transactions …")
            batch = orjson.dumps({"events": [transaction(
                i, txn_id=f"b-{i}", customer_id=f"C{i % CUSTOMERS:04d}", card_id=f"card-{i:04d}")
                for i in range(batch_size)]})
            httpx.post(url + "/v1/score/batch", content=batch, headers=headers, timeout=120)
            runs = []
            for _ in range(1 if quick else 3):
                t0 = time.perf_counter()
                r = httpx.post(url + "/v1/score/batch", content=batch, headers=headers,
                               timeout=120)
                r.raise_for_status()
                runs.append(time.perf_counter() - t0)
            best = min(runs)
            result.metrics["batch_score_txn_per_s"] = Metric(
                batch_size / best, "txn/s", 20_000, "higher",
                {"batch": batch_size, "distinct_cards": batch_size,
                 "distinct_customers": min(batch_size, CUSTOMERS),
                 "seconds": [round(x, 3) for x in runs]})

            # an investigator reads any customer (a bot token is scoped to one)
            bot = {"authorization": f"Bearer {mint_token(own, 'investigator', 'bench')}"}
            ids = [f"C{i:04d}" for i in range(200 if quick else CUSTOMERS)]
            with httpx.Client(headers=bot, timeout=30) as client:
                for cid in ids:  # warm the cache
                    client.get(f"{url}/v1/users/{cid}/insights").raise_for_status()
            rate = 100 if quick else 200
            for name, suffix in (("insights_hit_p99_ms", ""), ("insights_miss_p99_ms",
                                                               "?fresh=true")):
                console.print(f"insights ({name}) at {rate} req/s …")
                got = _load({"urls": [f"{url}/v1/users/{c}/insights{suffix}" for c in ids],
                             "rate": rate, "seconds": seconds, "headers": bot,
                             "bodies": [None], "method": "GET"})
                lat = got["latencies_ms"]
                result.metrics[name] = Metric(
                    _pct(lat, 0.99), "ms", 5.0 if "hit" in name else 30.0, "lower",
                    {"p50_ms": round(_pct(lat, 0.5), 3), **_extra(got)})

        console.print("feast serve /get-online-features …")
        port = free_port()
        feast = _feast_server(own, port, own.var_dir / "feast.log")
        try:
            feats = _feast_features()
            fbodies = [{"features": feats, "entities": {
                "card_id": [b["card_id"]], "customer_id": [b["customer_id"]],
                "terminal_id": [b["terminal_id"]]}} for b in bodies[:500]]
            for rate in rates:
                console.print(f"feast serve at {rate} req/s …")
                got = _load({"url": f"http://127.0.0.1:{port}/get-online-features",
                             "rate": rate, "seconds": seconds,
                             "headers": {"content-type": "application/json"},
                             "bodies": fbodies})
                lat = got["latencies_ms"]
                result.metrics[f"feast_serve_p99_ms@{rate}"] = Metric(
                    _pct(lat, 0.99), "ms", None, "lower",
                    {"p50_ms": round(_pct(lat, 0.5), 3), **_extra(got)})
        finally:
            feast.terminate()
            feast.wait(20)
    result.params["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return result
