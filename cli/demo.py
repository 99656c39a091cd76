"""`kestrel demo` (run by `make demo`): the whole platform end to end on simulated data.

Six weeks of history go straight into the lake; then a few live days go through the
ingestion producer into Kafka while the archiver writes them to the lake and the stream
processor turns them into live features (Redis, in Feast's format) and alerts. Spark computes
the stream-window history and the daily batch tables, which are materialized into Redis; the
training chain builds a point-in-time training set, trains the models, logs them to MLflow and
registers a champion; the HTTP service starts in the background, and the demo prints a live
feature vector, the alerts, and `curl` commands with tokens to call the API.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pyarrow.compute as pc
from confluent_kafka import Consumer
from rich.console import Console
from rich.table import Table

from kestrel.errors import ServiceUnavailable
from kestrel.kafka import broker_answers, consumer_config
from kestrel.lake import list_partitions
from kestrel.pan import CardTokenizer
from kestrel.services import start_http
from kestrel.settings import Settings
from kestrel.topics import ALERTS
from kestrel.windows import ENTITIES, feature_names, stream_view_name
from pipelines.archive import Archiver
from pipelines.features.online_writer import OnlineWriter
from pipelines.features.store import apply, feature_store
from pipelines.lake_summary import print_summary
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.to_kafka import stream_to_kafka
from pipelines.simulator.to_lake import write_to_lake
from pipelines.stream.processor import StreamProcessor

DEMO_CUSTOMERS = 5000
DEMO_TERMINALS = 10000
# The lake's past, simulated straight into Parquet: enough for the training protocol with
# DEMO_FOLDS test folds (training 7 days, delay = label delay, test 7 days, validation folds
# before them); the live days then follow through Kafka.
HISTORY_START = date(2018, 4, 1)
HISTORY_DAYS = 42
DEMO_FOLDS = 2


def _wait(done: Callable[[], bool], alive: Callable[[], bool], what: str,
          timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if not alive():
            raise ServiceUnavailable(f"the {what} stopped early; see the log above")
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"the {what} did not catch up within {timeout:.0f} s")
        time.sleep(0.2)


def run_demo(settings: Settings, days: int = 3, history_days: int = HISTORY_DAYS,
             timeout: float = 600.0) -> None:
    console = Console()
    if not broker_answers(settings):
        raise ServiceUnavailable(
            f"no broker at KESTREL_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}; run `kestrel up`")
    t0 = time.monotonic()
    for name in ("kestrel.archive", "kestrel.stream"):  # the demo prints its own progress
        logging.getLogger(name).setLevel(logging.WARNING)
    say = lambda line: console.print(f"      {line}", highlight=False)  # noqa: E731
    tokenize = CardTokenizer(settings.secret("pan_token_key")).token

    console.print("[bold]1/7[/bold] registering the feature repository with Feast …")
    apply(settings, echo=lambda _: None)

    history = SimulationConfig(customers=DEMO_CUSTOMERS, terminals=DEMO_TERMINALS,
                               days=history_days, start=HISTORY_START,
                               label_delay_days=settings.label_delay_days)
    console.print(f"[bold]2/7[/bold] history: {history_days} simulated days "
                  f"({HISTORY_START} …) straight into the lake, with their labels …")
    written = write_to_lake(history, settings.lake_dir, tokenize)
    say(f"{written.transactions:,} transactions ({written.frauds:,} frauds) in "
        f"{written.seconds:.1f} s")

    live_start = HISTORY_START + timedelta(days=history_days)
    console.print(f"[bold]3/7[/bold] live: {days} more days ({live_start} …) through the ingest "
                  "producer into Kafka; the archiver (→ lake) and the stream processor (→ Redis, "
                  "offline log, alerts) consume them …")
    archiver = Archiver(settings)
    stream = StreamProcessor(settings, OnlineWriter(settings, dedup=False))
    workers = [threading.Thread(target=archiver.run, name="archiver", daemon=True),
               threading.Thread(target=stream.run, name="stream", daemon=True)]
    for w in workers:
        w.start()
    live = SimulationConfig(customers=DEMO_CUSTOMERS, terminals=DEMO_TERMINALS, days=days,
                            start=live_start, label_delay_days=settings.label_delay_days)
    sent = stream_to_kafka(live, settings, tokenize)
    say(f"published {sent.transactions:,} transactions ({sent.frauds:,} frauds) at "
        f"{sent.events_per_s:,.0f} events/s, and {sent.labels:,} ground-truth labels (delay "
        f"{settings.label_delay_days:g} days) to topic `labels`")
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
    say(f"archived {a.written:,} new events into {a.files} files ({a.duplicates:,} already in "
        f"the lake, {a.invalid:,} invalid → DLQ)")
    say(f"stream applied {s.applied:,} events in {s.batches} batches ({s.duplicates + s.late:,} "
        f"seen before: duplicates or late), {s.alerts:,} alerts raised")
    print_summary(settings)

    console.print("[bold]4/7[/bold] batch features on Spark (stream-window history, daily "
                  "customer / terminal aggregates, insight tables) and materialization into "
                  "Redis …")
    _batch(settings, say)

    console.print("[bold]5/7[/bold] training: point-in-time training set (fraud_scoring_v1), "
                  "XGBoost / logistic regression / IsolationForest, MLflow, champion gate …")
    from training.run import run_training

    report = run_training(settings, folds=DEMO_FOLDS, prepare=False, progress=say)
    for name, m in report.metrics.items():
        say(f"{name:8s} AUC ROC {m['auc_roc']:.3f}  AP {m['average_precision']:.3f}  "
            f"CP@100 {m['card_precision_at_100']:.3f}")

    console.print("[bold]6/7[/bold] starting the HTTP service (decisions, insights, ingest, "
                  "labels, alerts) in the background …")
    say(start_http(settings))

    console.print("[bold]7/7[/bold] live features, alerts, the investigator console, and how "
                  "to call the API")
    card = _busiest_card(settings)
    _show_card(settings, console, card)
    _show_alerts(settings, console)
    _print_curls(settings, console, card)
    _print_console(settings, console)
    console.print(f"\n[bold green]demo done[/bold green] in {time.monotonic() - t0:.1f} s. "
                  "Look at: `kestrel status`, `kestrel lake`, `kestrel mlflow-ui` (runs, "
                  "plots, registry), `make dagster` (the asset graph), `kestrel parity --days "
                  "2`; `make down` stops the services.")


def _batch(settings: Settings, say: Callable[[str], None]) -> None:
    from pipelines.batch.backfill import backfill_stream_features
    from pipelines.batch.jobs import run_batch_features
    from pipelines.features.materialize import materialize
    from training.run import missing_backfill_days

    last = date.fromisoformat(list_partitions(settings.lake_dir, "transactions")[-1])
    missing = missing_backfill_days(settings, last)
    if missing:
        result = backfill_stream_features(settings, missing[0], missing[-1])
        rows = sum(int(v.get("rows", 0)) for v in result.get("views", {}).values())
        say(f"stream-window history for {len(missing)} days: {rows:,} rows "
            f"({result.get('seconds', 0):.1f} s)")
    batch = run_batch_features(settings)
    computed = sum(len(g["computed"]) for g in batch["groups"].values())
    say(f"batch tables: {computed} partitions computed, the rest unchanged "
        f"({batch['seconds']:.1f} s)")
    loaded = materialize(settings)
    say(f"materialized {loaded['rows']:,} feature rows into Redis "
        f"({loaded['rows_per_s']:,.0f} rows/s) and the customers' insight documents")


def _print_curls(settings: Settings, console: Console, card: dict[str, str] | None) -> None:
    from kestrel.lake import read_table
    from serving.auth import mint_token

    base = f"http://{settings.serve_host}:{settings.serve_port}"
    customer = card["customer_id"] if card else "C000001"
    scorer = mint_token(settings, "scorer", "demo")
    bot = mint_token(settings, "bot", "demo", customer=customer)  # reads this customer only
    investigator = mint_token(settings, "investigator", "demo")
    txn: dict[str, Any] = {}
    if card:
        rows = read_table(settings.lake_dir, "transactions",
                          days=[list_partitions(settings.lake_dir, "transactions")[-1]])
        mine = rows.filter(pc.equal(rows["card_id"], card["card_id"]))
        last = mine.slice(mine.num_rows - 1, 1) if mine.num_rows else rows.slice(0, 1)
        txn = last.to_pylist()[0] if last.num_rows else {}
    when = (txn.get("event_time") or datetime.now(UTC)) + timedelta(minutes=3)
    body = {"txn_id": "demo-score-1", "event_time": when.isoformat().replace("+00:00", "Z"),
            "customer_id": txn.get("customer_id", customer),
            "account_id": txn.get("account_id", "A1"), "card_id": txn.get("card_id", "k1"),
            "terminal_id": txn.get("terminal_id", "T1"), "mcc": txn.get("mcc", "5411"),
            "amount": 249.0, "currency": txn.get("currency", "EUR"),
            "country": txn.get("country", "FR"), "lat": txn.get("lat", 48.85),
            "lon": txn.get("lon", 2.35), "channel": txn.get("channel", "pos")}
    day = when.date().isoformat()
    console.print("\n[bold]Try the API[/bold] (tokens valid 1 h; `kestrel token --role R` "
                  "mints more, `--customer C` for a bot):")
    console.print(
        f"export SCORER={scorer}\nexport BOT={bot}\nexport INVESTIGATOR={investigator}\n"
        f"curl -s -X POST {base}/v1/score -H \"Authorization: Bearer $SCORER\" "
        f"-H 'Content-Type: application/json' -d '{orjson.dumps(body).decode()}'\n"
        f"curl -s '{base}/v1/users/{customer}/insights' -H \"Authorization: Bearer $BOT\"\n"
        f"curl -s '{base}/v1/insights/top-spenders?date={day}&n=5' "
        f"-H \"Authorization: Bearer $INVESTIGATOR\"\n"
        f"curl -s '{base}/v1/alerts?status=open&limit=5' "
        f"-H \"Authorization: Bearer $INVESTIGATOR\"\n"
        f"curl -s {base}/openapi.json | head -c 300; curl -s {base}/metrics | head",
        highlight=False, soft_wrap=True)


def _busiest_card(settings: Settings) -> dict[str, str] | None:
    from kestrel.lake import read_table

    newest = list_partitions(settings.lake_dir, "transactions")[-1:]  # the live stream's day
    table = read_table(settings.lake_dir, "transactions", days=newest,
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


def _print_console(settings: Settings, console: Console, timeout: float = 60.0) -> None:
    """The investigator console's address and a sign-in token, once the service's case
    intake has turned the alerts on `alerts` into cases (it reads them from the start)."""
    from cases.store import CaseStore
    from serving.auth import mint_token

    store = CaseStore.from_settings(settings)
    try:
        seen, steady, deadline = -1, 0, time.monotonic() + timeout
        while time.monotonic() < deadline and steady < 3:  # three polls without a new case
            total = store.queue(limit=1).total
            steady = steady + 1 if total == seen and total > 0 else 0
            seen = total
            time.sleep(1.0)
        page = store.queue(status="open", limit=1)
    finally:
        store.dispose()
    token = mint_token(settings, "investigator", "console", subject="demo-investigator")
    minutes = settings.token_ttl_seconds // 60
    base = f"http://{settings.serve_host}:{settings.serve_port}"
    console.print(f"\n[bold]Investigator console[/bold]: {base}/console/ — {page.total:,} open "
                  f"cases. Sign in with this token (valid {minutes} min; `kestrel token --role "
                  f"investigator` mints another):", highlight=False)
    console.print(token, highlight=False, soft_wrap=True)
