"""`kestrel demo` (run by `make demo`): the main job end to end on a few simulated days.

Simulated transactions go through the ingestion producer into Kafka while the archiver
consumes them into the Parquet lake and the stream processor turns them into live features
(Redis, through Feast's format) and alerts. The demo waits until both have caught up, then
shows the lake, a card's live features read back through Feast, and the alerts raised.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import Consumer
from rich.console import Console
from rich.table import Table

from kestrel.errors import ServiceUnavailable
from kestrel.kafka import broker_answers, consumer_config
from kestrel.pan import CardTokenizer
from kestrel.settings import Settings
from kestrel.topics import ALERTS
from kestrel.windows import ENTITIES, feature_names, stream_view_name
from pipelines.archive import Archiver
from pipelines.features.online_writer import OnlineWriter
from pipelines.features.store import apply, feature_store
from pipelines.lake_summary import print_summary
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.to_kafka import stream_to_kafka
from pipelines.stream.processor import StreamProcessor

DEMO_CUSTOMERS = 5000
DEMO_TERMINALS = 10000


def _wait(done: Callable[[], bool], alive: Callable[[], bool], what: str,
          timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if not alive():
            raise ServiceUnavailable(f"the {what} stopped early; see the log above")
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"the {what} did not catch up within {timeout:.0f} s")
        time.sleep(0.2)


def run_demo(settings: Settings, days: int = 3, timeout: float = 600.0) -> None:
    console = Console()
    if not broker_answers(settings):
        raise ServiceUnavailable(
            f"no broker at KESTREL_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}; run `kestrel up`")
    t0 = time.monotonic()
    for name in ("kestrel.archive", "kestrel.stream"):  # the demo prints its own progress
        logging.getLogger(name).setLevel(logging.WARNING)
    console.print("[bold]1/5[/bold] registering the feature repository with Feast …")
    apply(settings, echo=lambda _: None)
    archiver = Archiver(settings)
    stream = StreamProcessor(settings, OnlineWriter(settings, dedup=False))
    workers = [threading.Thread(target=archiver.run, name="archiver", daemon=True),
               threading.Thread(target=stream.run, name="stream", daemon=True)]
    for w in workers:
        w.start()
    console.print("[bold]2/5[/bold] archiver (→ lake) and stream processor (→ Redis, offline "
                  "log, alerts) started")
    config = SimulationConfig(customers=DEMO_CUSTOMERS, terminals=DEMO_TERMINALS, days=days,
                              label_delay_days=settings.label_delay_days)
    console.print(f"[bold]3/5[/bold] streaming {days} simulated days ({DEMO_CUSTOMERS:,} "
                  f"customers, {DEMO_TERMINALS:,} terminals) through the ingest producer …")
    tokenize = CardTokenizer(settings.secret("pan_token_key")).token
    sent = stream_to_kafka(config, settings, tokenize)
    console.print(f"      published {sent.transactions:,} transactions ({sent.frauds:,} frauds) "
                  f"at {sent.events_per_s:,.0f} events/s, and {sent.labels:,} ground-truth "
                  f"labels (delay {settings.label_delay_days:g} days) to topic `labels`")
    console.print("[bold]4/5[/bold] waiting for the archiver and the stream to catch up …")
    a, s = archiver.stats, stream.stats
    _wait(lambda: a.consumed >= sent.transactions, workers[0].is_alive, "archiver", timeout)
    seen = lambda: s.applied + s.duplicates + s.late + s.invalid  # noqa: E731
    _wait(lambda: seen() >= sent.transactions
          and s.terminal_applied + s.late_for_entity >= s.applied,
          workers[1].is_alive, "stream processor", timeout)
    time.sleep(0.5)  # the last terminal batch commits
    archiver.request_stop()
    stream.request_stop()
    for w in workers:
        w.join(30)
    console.print(f"      archived {a.written:,} new events into {a.files} files "
                  f"({a.duplicates:,} already in the lake, {a.invalid:,} invalid → DLQ)")
    console.print(f"      stream applied {s.applied:,} events in {s.batches} batches "
                  f"({s.duplicates + s.late:,} seen before: duplicates or late), "
                  f"{s.alerts:,} alerts raised")
    print_summary(settings)
    console.print("[bold]5/5[/bold] live features and alerts")
    _show_card(settings, console, _busiest_card(settings))
    _show_alerts(settings, console)
    console.print(f"\n[bold green]demo done[/bold green] in {time.monotonic() - t0:.1f} s. "
                  "Look at: `kestrel status` (services, topics, offsets, stream), `kestrel lake`"
                  f", {settings.lake_dir}/transactions (Parquet), {settings.var_dir}/features/"
                  "log (offline feature log), `kestrel parity --days 2`.")


def _busiest_card(settings: Settings) -> dict[str, str] | None:
    from kestrel.lake import read_table

    table = read_table(settings.lake_dir, "transactions",
                       columns=["card_id", "customer_id", "terminal_id"]).to_pandas()
    if table.empty:
        return None
    card = table.card_id.value_counts().index[0]
    row = table[table.card_id == card].iloc[-1]
    return {"card_id": card, "customer_id": row.customer_id, "terminal_id": row.terminal_id}


def _show_card(settings: Settings, console: Console, keys: dict[str, str] | None) -> None:
    if keys is None:
        return
    refs = [f"{stream_view_name(e)}:{n}" for e in ENTITIES for n in feature_names(e)]
    values = feature_store(settings).get_online_features(
        features=refs, entity_rows=[keys]).to_dict()
    table = Table(title=f"live features (Redis via Feast) for card {keys['card_id'][:17]}…, "
                        f"customer {keys['customer_id']}, terminal {keys['terminal_id']}")
    table.add_column("feature")
    table.add_column("value", justify="right")
    for e in ENTITIES:
        for n in feature_names(e):
            table.add_row(n, str(values[n][0]))
    console.print(table)


def _show_alerts(settings: Settings, console: Console, limit: int = 5) -> None:
    consumer = Consumer(consumer_config(settings, f"kestrel-demo-{time.time_ns()}"))
    consumer.subscribe([ALERTS])
    alerts: list[dict[str, Any]] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        got = [m for m in consumer.consume(500, 0.5) if m.error() is None]
        alerts += [orjson.loads(m.value() or b"{}") for m in got]
        if alerts and not got:
            break
    consumer.close()
    table = Table(title=f"alerts on topic `alerts` ({len(alerts):,} in all; latest {limit})")
    for col in ("rule", "card", "window", "txns", "countries", "first → last event"):
        table.add_column(col)
    for al in alerts[-limit:]:
        table.add_row(al["rule"], al["card_id"][:17] + "…", al["window"],
                      str(len(al["evidence_txn_ids"])), ",".join(al["countries"]),
                      f"{al['first_event_time'][:19]} → {al['last_event_time'][11:19]}")
    console.print(table)
