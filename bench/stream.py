"""`kestrel bench stream`: throughput, freshness, alert latency and online write rate.

Everything runs against a private broker and a private redis-server (started on free ports,
stopped afterwards), so benchmark events never reach the project's stores:

- ``events_per_s``: a backlog of simulated events is loaded first; the processor's
  sustained rate is measured from its first record to its last (group join excluded);
- ``freshness_p50_ms`` / ``freshness_p99_ms``: with the processor running, events are
  produced at a steady rate (open loop, 20,000/s by default) by a separate load process;
  freshness is each event's produce timestamp → the commit that made its features readable;
- ``alert_latency_p99_ms``: during the same run, card-testing bursts raise alerts; latency is
  the last contributing event's produce time → the alert read from `alerts` by this process;
- ``online_write_rows_per_s``: the online writer alone, Feast's format, MULTI/EXEC batches
  sent as the stream sends them (RespTransaction, rows as columns: ``write_columns``).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

import orjson
import pyarrow as pa
import redis
from confluent_kafka import Consumer
from rich.console import Console

from bench.data import simulated_events
from bench.results import BenchResult, CpuTimes, Metric, steal_pct_since
from kestrel.kafka import consumer_config
from kestrel.producer import EventProducer
from kestrel.resp import RespTransaction
from kestrel.services import private_services
from kestrel.settings import Settings
from kestrel.topics import ALERTS, TRANSACTIONS
from kestrel.windows import feature_names, stream_view_name
from pipelines.features.online_writer import OnlineWriter
from pipelines.features.store import apply
from pipelines.simulator.to_kafka import transaction_records
from pipelines.stream.processor import StreamProcessor


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Runner:
    """The processor in a thread, with the time of its first applied record."""

    def __init__(self, settings: Settings, keep_freshness: bool = False):
        self.processor = StreamProcessor(settings, OnlineWriter(settings, dedup=False),
                                         keep_freshness=keep_freshness)
        self.thread = threading.Thread(target=self.processor.run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.processor.request_stop()
        self.thread.join(60)


def bench_throughput(settings: Settings, table: pa.Table) -> Metric:
    producer = EventProducer(settings)
    producer.produce_many(TRANSACTIONS, transaction_records(table))
    producer.flush(timeout=300)
    runner = _Runner(settings)
    cpu0, load0, machine0 = time.process_time(), os.getloadavg()[0], CpuTimes.now()
    runner.start()
    stats = runner.processor.stats
    deadline = time.monotonic() + 1800
    while stats.applied < table.num_rows and time.monotonic() < deadline:
        time.sleep(0.01)
    while (stats.terminal_applied + stats.late_for_entity < stats.applied
           and time.monotonic() < deadline):
        time.sleep(0.01)  # the terminal updates (repartition) are part of the work
    cpu = time.process_time() - cpu0
    load1, steal = os.getloadavg()[0], steal_pct_since(machine0)
    runner.stop()
    seconds = max(1e-6, (stats.last_commit_at or 0) - (stats.first_record_at or 0))
    return Metric(stats.applied / seconds, "events/s", 50_000, "higher",
                  {"events": stats.applied, "seconds": round(seconds, 2),
                   "terminal_updates": stats.terminal_applied, "batches": stats.batches,
                   "terminal_updates_too_late": stats.late_for_entity,
                   # the machine is shared: the CPU this process used (all its threads,
                   # librdkafka's included) and the 1-min load average before / after
                   "process_cpu_s": round(cpu, 2),
                   "events_per_process_cpu_s": round(stats.applied / max(cpu, 1e-6)),
                   "load_avg_1m": [round(load0, 2), round(load1, 2)],
                   "cpu_steal_pct": steal,  # taken by other guests of the hypervisor
                   "stage_ms": {k: round(v) for k, v in stats.stage_ms.items()}})


def _produce_at_rate(settings: Settings, table: pa.Table, rate: float,
                     conn: Connection) -> None:
    """The steady load, in its own process: says "ready", waits for "go", produces the
    table's events open loop at ``rate`` (in slices of 10 ms) and sends back each txn_id's
    send time and the seconds producing took."""
    producer = EventProducer(settings)
    records = list(transaction_records(table))
    ids = table.column("txn_id").to_pylist()
    slice_size = max(1, int(rate / 100))
    conn.send("ready")
    conn.recv()
    sent_at: dict[str, float] = {}
    t0 = time.monotonic()
    for lo in range(0, len(records), slice_size):
        now = time.time()
        for (key, value), txn_id in zip(records[lo:lo + slice_size], ids[lo:lo + slice_size],
                                        strict=True):
            producer.produce(TRANSACTIONS, key, value)
            sent_at[txn_id] = now
        producer.poll(0)
        ahead = (lo + slice_size) / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    producer.flush()
    conn.send((sent_at, time.monotonic() - t0))


def bench_steady(settings: Settings, table: pa.Table, rate: float,
                 console: Console) -> tuple[Metric, Metric, Metric]:
    """Freshness and alert latency at a fixed produce rate (open loop)."""
    runner = _Runner(settings, keep_freshness=True)
    runner.start()
    alerts_seen: list[tuple[float, dict[str, Any]]] = []
    stop = threading.Event()

    def read_alerts() -> None:
        consumer = Consumer(consumer_config(settings, f"bench-alerts-{time.time_ns()}",
                                            **{"auto.offset.reset": "latest"}))
        consumer.subscribe([ALERTS])
        while not stop.is_set():
            for m in consumer.consume(100, 0.05):
                if m.error() is None:
                    alerts_seen.append((time.time(), orjson.loads(m.value() or b"{}")))
        consumer.close()

    reader = threading.Thread(target=read_alerts, daemon=True)
    reader.start()
    # the load comes from its own process, as producers do in production: produced from
    # a thread of this one, it would take the GIL from the processor under test
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    load = ctx.Process(target=_produce_at_rate, args=(settings, table, rate, theirs),
                       daemon=True)
    load.start()
    theirs.close()  # if the load process dies, recv() below raises instead of waiting
    settle_until = time.monotonic() + 8  # both group joins settle before the clock starts
    if not ours.poll(120) or ours.recv() != "ready":
        raise RuntimeError("the load process did not start")
    time.sleep(max(0.0, settle_until - time.monotonic()))
    machine0 = CpuTimes.now()
    ours.send("go")
    sent_at, produce_seconds = ours.recv()
    load.join(30)
    n_records = len(sent_at)
    deadline = time.monotonic() + 120
    while runner.processor.stats.applied < n_records and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    steal = steal_pct_since(machine0)
    stop.set()
    reader.join(10)
    runner.stop()
    fresh = runner.processor.stats.freshness_ms
    latencies = [(seen - sent_at[a["evidence_txn_ids"][-1]]) * 1000
                 for seen, a in alerts_seen if a.get("evidence_txn_ids", [None])[-1] in sent_at]
    console.print(f"  produced {n_records:,} events in {produce_seconds:.1f} s "
                  f"({n_records / produce_seconds:,.0f}/s); {len(latencies)} alerts")
    stats = runner.processor.stats
    extra = {"rate": rate, "events": n_records, "achieved_rate":
             round(n_records / produce_seconds), "applied": stats.applied,
             "load": "separate process", "cpu_steal_pct": steal,
             "batches": stats.batches,
             "stage_ms_per_batch": {k: round(v / max(1, stats.batches), 1)
                                    for k, v in stats.stage_ms.items()}}
    return (Metric(_pct(fresh, 0.5), "ms", None, "lower", extra),
            Metric(_pct(fresh, 0.99), "ms", 1000, "lower", extra),
            Metric(_pct(latencies, 0.99), "ms", 1000, "lower",
                   {"alerts": len(latencies), "p50_ms": round(_pct(latencies, 0.5), 1)}))


def bench_online_writes(settings: Settings, rows: int) -> Metric:
    apply(settings, echo=lambda _: None)
    writer = OnlineWriter(settings, dedup=False)
    client = redis.Redis.from_url(settings.redis_url)
    names = feature_names("card")
    now = int(datetime.now(UTC).timestamp() * 1_000_000)
    keys = [f"card_{i:032x}" for i in range(rows)]
    values = {n: [i % 97 for i in range(rows)] for n in names}
    times = [now + i for i in range(rows)]  # distinct event times, as entities have
    batch = 5000
    t0 = time.perf_counter()
    for lo in range(0, rows, batch):
        tx = RespTransaction()  # the stream's own write path: rows as columns
        writer.write_columns(tx, stream_view_name("card"), keys[lo:lo + batch],
                             {n: v[lo:lo + batch] for n, v in values.items()},
                             times[lo:lo + batch])
        tx.execute(client)
    seconds = time.perf_counter() - t0
    return Metric(rows / seconds, "rows/s", 95_000, "higher",
                  {"rows": rows, "features_per_row": len(names), "batch": batch,
                   "feast_push_rows_per_s_reference": 9_500})


def run(settings: Settings, quick: bool = False, console: Console | None = None) -> BenchResult:
    console = console or Console()
    n_backlog = 20_000 if quick else 300_000
    rate = 2_000.0 if quick else 20_000.0
    steady_seconds = 5 if quick else 20
    n_steady = int(rate * steady_seconds)
    result = BenchResult("stream", quick, {
        "backlog_events": n_backlog, "steady_rate": rate, "steady_events": n_steady,
        "batch_records": settings.stream_batch_records, "batch_ms": settings.stream_batch_ms})
    console.print(f"generating {n_backlog + n_steady:,} events …")
    table = simulated_events(n_backlog + n_steady)
    with private_services(settings, with_redis=True) as own:
        own = own.model_copy(update={"stream_metrics_port": 0})
        console.print(f"throughput: {n_backlog:,} events backlog …")
        result.metrics["events_per_s"] = bench_throughput(own, table.slice(0, n_backlog))
    with private_services(settings, with_redis=True) as own:
        own = own.model_copy(update={"stream_metrics_port": 0})
        console.print(f"steady {rate:,.0f} events/s for {steady_seconds} s …")
        p50, p99, alert = bench_steady(own, table.slice(n_backlog, n_steady), rate, console)
        result.metrics["freshness_p50_ms"] = p50
        result.metrics["freshness_p99_ms"] = p99
        result.metrics["alert_latency_p99_ms"] = alert
        console.print("online writer …")
        result.metrics["online_write_rows_per_s"] = bench_online_writes(
            own, 10_000 if quick else 100_000)
    return result
