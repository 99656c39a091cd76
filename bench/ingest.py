"""`kestrel bench ingest`: producer throughput, HTTP batch ingest throughput, simulator speed.

Runs against a private broker (started on a free port, stopped at the end) so that benchmark
events never reach the project's own topics or lake. The HTTP figure is measured from this
process against the real BentoML service started as a separate process.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pyarrow as pa
from rich.console import Console

from bench.data import simulated_events, tokenize
from bench.results import BenchResult, Metric
from kestrel.errors import ServiceError
from kestrel.producer import EventProducer
from kestrel.services import free_port, private_services
from kestrel.settings import Settings
from kestrel.topics import TRANSACTIONS
from pipelines.simulator.cards import synthetic_pans
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.to_kafka import transaction_records
from pipelines.simulator.to_lake import write_to_lake
from serving.auth import mint_token
from serving.process import running_service

TARGET_PRODUCER = 100_000
TARGET_SIMULATE_S = 120.0


def bench_producer(settings: Settings, table: pa.Table) -> Metric:
    """Encode + produce + wait for every acknowledgement (acks=all, idempotent, lz4)."""
    producer = EventProducer(settings)
    producer.produce_many(TRANSACTIONS, transaction_records(table.slice(0, 1000)))  # warm up
    producer.flush()
    t0 = time.perf_counter()
    n = producer.produce_many(TRANSACTIONS, transaction_records(table))
    producer.flush(timeout=300)
    seconds = time.perf_counter() - t0
    return Metric(n / seconds, "events/s", TARGET_PRODUCER, "higher",
                  {"events": n, "seconds": round(seconds, 3)})


def _http_batches(table: pa.Table, batch_size: int) -> list[bytes]:
    pans = synthetic_pans(1000, np.random.default_rng(7))
    bodies = []
    rows = table.to_pylist()
    for lo in range(0, len(rows) - batch_size + 1, batch_size):
        events = []
        for i, row in enumerate(rows[lo:lo + batch_size]):
            ev = dict(row)
            del ev["card_id"]
            ev["card_number"] = pans[i % len(pans)]
            events.append(ev)
        bodies.append(orjson.dumps({"events": events}, option=orjson.OPT_UTC_Z))
    return bodies


def bench_http(settings: Settings, table: pa.Table, batch_size: int) -> Metric:
    bodies = _http_batches(table, batch_size)
    token = mint_token(settings, "scorer", "bench")
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    log = settings.var_dir / "serve.log"
    with running_service(settings, free_port(), log) as url, httpx.Client(timeout=60) as client:
        r = client.post(url + "/v1/events/transactions", content=bodies[0], headers=headers)
        if r.status_code != 202:
            raise ServiceError(f"warm-up batch failed: {r.status_code} {r.text[:300]}")
        latencies = []
        t0 = time.perf_counter()
        for body in bodies[1:]:
            t = time.perf_counter()
            r = client.post(url + "/v1/events/transactions", content=body, headers=headers)
            latencies.append(time.perf_counter() - t)
            if r.status_code != 202:
                raise ServiceError(f"batch failed: {r.status_code} {r.text[:300]}")
        seconds = time.perf_counter() - t0
    n = batch_size * (len(bodies) - 1)
    lat = sorted(latencies)
    return Metric(n / seconds, "events/s", None, "higher", {
        "events": n, "batch_size": batch_size,
        "batch_p50_ms": round(statistics.median(lat) * 1000, 1),
        "batch_p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000, 1)})


def bench_simulate(config: SimulationConfig, quick: bool) -> Metric:
    with tempfile.TemporaryDirectory(prefix="kestrel-bench-lake-") as tmp:
        t0 = time.perf_counter()
        summary = write_to_lake(config, Path(tmp), tokenize)
        seconds = time.perf_counter() - t0
    return Metric(seconds, "s", None if quick else TARGET_SIMULATE_S, "lower",
                  {"transactions": summary.transactions, "days": config.days})


def run(settings: Settings, quick: bool = False, console: Console | None = None) -> BenchResult:
    console = console or Console()
    n_events = 20_000 if quick else 1_000_000
    http_batch = 1_000 if quick else 10_000
    http_batches = 4 if quick else 21
    sim = (SimulationConfig(customers=300, terminals=600, days=5) if quick
           else SimulationConfig())
    params = {"producer_events": n_events, "http_batch_size": http_batch,
              "http_batches": http_batches - 1, "simulate": {
                  "customers": sim.customers, "terminals": sim.terminals, "days": sim.days}}
    result = BenchResult("ingest", quick, params)
    console.print(f"generating {n_events:,} events …")
    table = simulated_events(max(n_events, http_batch * http_batches))
    with private_services(settings) as own:
        console.print("producer → broker …")
        result.metrics["producer_events_per_s"] = bench_producer(own, table.slice(0, n_events))
        console.print("HTTP batches → service → broker …")
        result.metrics["http_batch_events_per_s"] = bench_http(
            own, table.slice(0, http_batch * http_batches), http_batch)
    console.print("simulator → lake …")
    result.metrics["simulate_default_s"] = bench_simulate(sim, quick)
    return result
