"""The `kestrel` command line: the composition root.

Every command imports its engine lazily, inside the function, so `kestrel --help` answers at
once and no kernel module depends on the packages above it.
"""

from __future__ import annotations

import sys
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from kestrel.settings import Settings

app = typer.Typer(
    help="Kestrel: real-time fraud features, decisions and insights.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


features_app = typer.Typer(help="The Feast feature repository (feature_repo/).",
                           no_args_is_help=True)
app.add_typer(features_app, name="features")


def _settings() -> Settings:
    from kestrel.logs import configure_logging
    from kestrel.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level)
    settings.check_secrets()  # outside dev, no command runs without the deployment's secrets
    return settings


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def main() -> None:
    """Entry point that turns Kestrel's own errors into one red line and exit code 1."""
    from kestrel.errors import KestrelError

    try:
        app()
    except KestrelError as exc:  # raised outside a command's own handling: one line, exit 1
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)


# --- services -------------------------------------------------------------------------------

@app.command()
def up() -> None:
    """Start the local broker (and Redis when none answers); create the topics."""
    from kestrel.errors import KestrelError
    from kestrel.services import start_broker, start_redis

    settings = _settings()
    try:
        typer.echo(start_broker(settings))
        typer.echo(start_redis(settings))
    except KestrelError as exc:
        _fail(exc)


@app.command()
def down() -> None:
    """Stop what `kestrel up` started, and nothing else."""
    from kestrel.services import BROKER, HTTP, REDIS, stop

    settings = _settings()
    for name in (HTTP, BROKER, REDIS):
        typer.echo(stop(settings, name))


@app.command()
def status() -> None:
    """Each service, its address, whether it answers; topics, partitions, consumed offsets."""
    from rich.console import Console
    from rich.table import Table

    from kestrel.kafka import committed_offsets, topic_partitions
    from kestrel.services import report
    from kestrel.topics import CONSUMER_GROUPS, TOPICS

    settings = _settings()
    console = Console()
    services = Table(title="services")
    for col in ("service", "address", "answers", "started by kestrel", "pid"):
        services.add_column(col)
    answering = {}
    for r in report(settings):
        answering[r.name] = r.answers
        services.add_row(r.name, r.address, "yes" if r.answers else "[red]no[/red]",
                         "yes" if r.started_by_kestrel else "no", str(r.pid or "-"))
    console.print(services)
    if not answering.get("broker"):
        console.print("broker does not answer: run `kestrel up`")
        raise typer.Exit(1)
    parts = topic_partitions(settings)
    topics = Table(title="topics")
    for col in ("topic", "partitions", "consumer group", "consumed (committed offsets)"):
        topics.add_column(col)
    for spec in TOPICS:
        n = parts.get(spec.name)
        groups = [g for g, ts in CONSUMER_GROUPS.items() if spec.name in ts]
        if n is None:
            topics.add_row(spec.name, "[red]missing[/red]", "", "")
            continue
        if not groups:
            topics.add_row(spec.name, str(n), "-", "-")
        for g in groups:
            offs = committed_offsets(settings, g, spec.name, n)
            total = sum(o for o in offs.values() if o > 0)
            shown = " ".join(f"{p}:{o if o >= 0 else '-'}" for p, o in sorted(offs.items()))
            topics.add_row(spec.name, str(n), g, f"{total} ({shown})")
    console.print(topics)
    _print_stream_status(settings, console)


def _print_stream_status(settings: Settings, console: object) -> None:
    """Live stream instances, from the summaries they keep in Redis."""
    import redis as redis_lib
    from rich.table import Table

    from kestrel.services import redis_answers
    from pipelines.stream.metrics import read_summaries
    from pipelines.stream.processor import GROUP_ID

    if not redis_answers(settings.redis_url):
        return
    summaries = read_summaries(redis_lib.Redis.from_url(settings.redis_url), GROUP_ID)
    table = Table(title="stream processors (last minute)")
    for col in ("instance", "events/s", "applied", "dup", "late", "invalid", "alerts",
                "freshness p50/p99 ms", "lag s (max)", "/metrics"):
        table.add_column(col)
    for s in summaries:
        t = s["totals"]
        lag = max(s["lag_seconds"].values(), default=0.0)
        port = s.get("metrics_port")
        table.add_row(s["instance"], f"{s['events_per_s']:,.0f}", f"{t.get('applied', 0):,}",
                      f"{t.get('duplicate', 0):,}", f"{t.get('late', 0):,}",
                      f"{t.get('invalid', 0):,}", f"{t.get('alerts', 0):,}",
                      f"{s['freshness_p50_ms']} / {s['freshness_p99_ms']}", f"{lag:.1f}",
                      f"127.0.0.1:{port}" if port else "-")
    if not summaries:
        table.add_row("none running", "", "", "", "", "", "", "", "", "")
    console.print(table)  # type: ignore[attr-defined]


# --- data -----------------------------------------------------------------------------------

class Target(StrEnum):
    lake = "lake"
    kafka = "kafka"


@app.command()
def simulate(
    to: Annotated[Target, typer.Option(help="lake: history to Parquet; kafka: stream")] = (
        Target.lake),
    days: Annotated[int, typer.Option(min=1, help="Days to simulate")] = 183,
    customers: Annotated[int, typer.Option(min=1)] = 5000,
    terminals: Annotated[int, typer.Option(min=1)] = 10000,
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD")] = "2018-04-01",
    seed: Annotated[int, typer.Option(help="Same seed, same data")] = 42,
    scenarios: Annotated[str, typer.Option(help="Fraud scenarios, e.g. 1,2,3")] = "1,2,3,4,5",
    rate: Annotated[float, typer.Option(min=0, help="kafka: events/s; 0 = full speed")] = 0,
    labels: Annotated[bool, typer.Option(help="Emit ground-truth labels (delayed)")] = True,
) -> None:
    """Generate transactions (handbook generator + five fraud scenarios), to the lake or Kafka."""
    from kestrel.errors import KestrelError
    from kestrel.pan import CardTokenizer
    from pipelines.simulator.config import SimulationConfig

    settings = _settings()
    try:
        config = SimulationConfig(
            customers=customers, terminals=terminals, days=days, start=date.fromisoformat(start),
            seed=seed, scenarios=frozenset(int(s) for s in scenarios.split(",") if s.strip()),
            label_delay_days=settings.label_delay_days,
        )
    except ValueError as exc:
        _fail(exc)
        return
    tokenize = CardTokenizer(settings.secret("pan_token_key")).token
    try:
        if to is Target.lake:
            from pipelines.simulator.run import run_to_lake

            run_to_lake(config, settings, tokenize)
        else:
            from pipelines.simulator.run import run_to_kafka

            run_to_kafka(config, settings, tokenize, rate=rate, with_labels=labels)
    except KestrelError as exc:
        _fail(exc)


@app.command()
def archive(
    idle_seconds: Annotated[
        float | None, typer.Option(help="Stop after this long without new records")
    ] = None,
) -> None:
    """Consume `transactions` into the Parquet lake (exactly once per txn_id)."""
    from kestrel.errors import KestrelError
    from pipelines.archive import Archiver, ArchiveStats

    settings = _settings()

    def progress(s: ArchiveStats) -> None:
        typer.echo(f"archived {s.written:,} events ({s.duplicates:,} duplicates, "
                   f"{s.invalid:,} invalid) in {s.batches} batches, {s.seconds:.1f} s")

    try:
        stats = Archiver(settings).run(idle_seconds=idle_seconds, progress=progress)
    except KestrelError as exc:
        _fail(exc)
    typer.echo(f"archive done: {stats.consumed:,} records read, {stats.written:,} written to "
               f"{stats.files} files under {settings.lake_dir / 'transactions'}, "
               f"{stats.duplicates:,} duplicates dropped, {stats.invalid:,} to the DLQ, "
               f"{stats.seconds:.1f} s")


@app.command()
def stream(
    idle_seconds: Annotated[
        float | None, typer.Option(help="Stop after this long without new records")
    ] = None,
) -> None:
    """Compute live window features from `transactions` into Redis and the offline log."""
    from kestrel.errors import KestrelError
    from pipelines.features.online_writer import OnlineWriter
    from pipelines.features.store import check_registry
    from pipelines.stream.processor import StreamProcessor

    settings = _settings()
    try:
        check_registry(settings)  # a stale registry would hand training other definitions
        processor = StreamProcessor(settings, OnlineWriter(settings, dedup=False),
                                    metrics_port=settings.stream_metrics_port or None)
        stats = processor.run(idle_seconds=idle_seconds)
    except KestrelError as exc:
        _fail(exc)
        return
    typer.echo(f"stream done: {stats.applied:,} transactions applied ({stats.duplicates:,} "
               f"duplicates, {stats.late:,} late, {stats.invalid:,} invalid), "
               f"{stats.terminal_applied:,} terminal updates, {stats.alerts:,} alerts, "
               f"{stats.batches} batches, {stats.seconds:.1f} s")


@features_app.command("apply")
def features_apply() -> None:
    """Register entities, views and services with Feast (`feast apply`, from settings)."""
    from pipelines.features.store import apply

    apply(_settings(), echo=typer.echo)


@features_app.command("list")
def features_list() -> None:
    """The declared stream features (kestrel/features/definitions.py): entity, aggregation,
    input, span, type, and the fraud feature service versions whose models take each."""
    from rich.console import Console
    from rich.table import Table

    from kestrel.features import FEATURES, STREAM_INPUTS
    from kestrel.features.spec import window_label

    table = Table("feature", "entity", "aggregation", "input", "filter", "span", "type",
                  "model input of", box=None)
    for f in FEATURES:
        used = [name for name, inputs in STREAM_INPUTS.items() if f.name in inputs]
        table.add_row(f.name, f.entity, f.aggregation, f.input or "", f.filter or "",
                      window_label(f.span) + ("" if f.window else " (max_age)"), f.dtype,
                      ", ".join(used))
    Console(width=160).print(table)


@features_app.command("lock")
def features_lock() -> None:
    """Add new feature service versions to feature_repo/services.lock.json (a locked version
    never changes: models trained on it are served by it; edit one and this refuses)."""
    from kestrel.errors import KestrelError
    from pipelines.features.store import LOCK_FILE, update_lock

    try:
        added = update_lock(_settings())
    except KestrelError as exc:
        _fail(exc)
        return
    typer.echo(f"locked {', '.join(added)} in {LOCK_FILE}" if added
               else f"every declared version is already locked in {LOCK_FILE}")


@features_app.command("compact")
def features_compact() -> None:
    """Rewrite the offline feature log keeping the newest version of each row (before
    building training sets; safe while the stream runs)."""
    from kestrel.windows import ENTITIES, stream_view_name
    from pipelines.stream.offline_log import OfflineLog

    log = OfflineLog(_settings().var_dir)
    for entity in ENTITIES:
        typer.echo(f"{stream_view_name(entity)}: {log.compact(entity):,} rows")


@features_app.command("env")
def features_env() -> None:
    """Print the KESTREL_FEAST_* variables the plain `feast` CLI needs in feature_repo/."""
    from pipelines.features.store import feast_env

    for key, value in feast_env(_settings()).items():
        typer.echo(f"export {key}='{value}'")


# --- batch features (Spark) and materialization ---------------------------------------------

_START = typer.Option(help="First day, YYYY-MM-DD (default: the lake's first)")
_END = typer.Option(help="Last day, YYYY-MM-DD (default: the lake's last)")


def _day(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        _fail(ValueError(f"--{name} {value!r} is not a date; use YYYY-MM-DD"))
        return None


@features_app.command("materialize")
def features_materialize(
    start: Annotated[str | None, typer.Option(
        help="Reload from this day, YYYY-MM-DD (default: only what is new since the last run)"
    )] = None,
    end: Annotated[str | None, typer.Option(help="Last day to load, YYYY-MM-DD")] = None,
) -> None:
    """Load the newest batch feature rows (Feast's Redis format) and the customer insights
    into Redis, incrementally (a watermark in Redis remembers what is there)."""
    from pipelines.features.materialize import materialize

    result = materialize(_settings(), _day(start, "start"), _day(end, "end"), progress=typer.echo)
    typer.echo(f"materialized {result['rows']:,} feature rows ({result['rows_per_s']:,.0f} "
               f"rows/s) and {result['insights']['customers']:,} insight docs "
               f"in {result['seconds']:.1f} s")


@app.command()
def batch(
    start: Annotated[str | None, _START] = None,
    end: Annotated[str | None, _END] = None,
) -> None:
    """Run the Spark batch jobs: daily customer / terminal feature tables and insight tables
    (only the daily partitions whose inputs changed are recomputed)."""
    from pipelines.batch.jobs import run_batch_features

    run_batch_features(_settings(), _day(start, "start"), _day(end, "end"), progress=typer.echo)


@app.command()
def backfill(
    start: Annotated[str | None, _START] = None,
    end: Annotated[str | None, _END] = None,
    online: Annotated[bool, typer.Option(
        help="Then write each entity's newest backfilled value of every feature it lacks "
             "online into Redis (after adding a feature; never overwrites)")] = False,
) -> None:
    """Compute the stream views' rows for history from the lake with Spark and write them to
    the offline feature log (for training sets over days the stream never saw, and for
    features added since the stream wrote its rows: docs/schema-evolution.md)."""
    from pipelines.batch.backfill import backfill_stream_features, fill_online

    settings = _settings()
    backfill_stream_features(settings, _day(start, "start"), _day(end, "end"),
                             progress=typer.echo)
    if online:
        typer.echo("online store: filling features entities lack …")
        filled = fill_online(settings, progress=typer.echo)
        typer.echo(f"online fill done: {sum(filled.values()):,} values written")


@app.command()
def parity(
    days: Annotated[int, typer.Option(min=1, help="Simulated days to replay")] = 2,
    customers: Annotated[int, typer.Option(min=1)] = 1000,
    terminals: Annotated[int, typer.Option(min=1)] = 2000,
    seed: Annotated[int, typer.Option()] = 42,
    spark: Annotated[bool, typer.Option(
        help="Also compare with the Spark backfill of the replayed days")] = True,
) -> None:
    """Online vs offline vs the engines: replay days through the stream, compare every row
    (expect 0 mismatches; docs/parity.md)."""
    from rich.console import Console
    from rich.table import Table

    from pipelines.stream.parity import run_parity

    console = Console()
    report = run_parity(_settings(), days, customers, terminals, seed, progress=console.print,
                        with_spark=spark)

    def show(title: str, features: dict) -> None:
        table = Table(title=title)
        for col in ("feature", "compared", "mismatches", "max |diff|"):
            table.add_column(col, justify="left" if col == "feature" else "right")
        for name, fp in features.items():
            mark = "[red]" if fp.mismatches else ""
            table.add_row(name, f"{fp.compared:,}", f"{mark}{fp.mismatches:,}",
                          f"{fp.max_abs_diff:g}")
        console.print(table)

    show(f"parity over {report.transactions:,} transactions, {days} days: online vs offline "
         "log, Redis, per-event engine", report.features)
    for name, fp in report.features.items():
        for example in fp.examples:
            console.print(f"  {name}: {example}")
    if report.spark is not None:
        sp = report.spark
        show(f"stream (online and offline-log rows) vs Spark backfill: {sp.backfill_rows:,} "
             f"rows, {sp.excluded:,} late/DLQ events left out, |diff| ≤ 1e-6", sp.features)
        for name, fp in sp.features.items():
            for example in fp.examples:
                console.print(f"  {name}: {example}")
        if sp.only_in_backfill:
            console.print(f"[red]{sp.only_in_backfill:,} backfill rows the stream never "
                          f"logged[/red], e.g. {', '.join(sp.only_in_backfill_examples)}")
        if sp.unidentified:
            console.print(f"{sp.unidentified:,} late/DLQ records without a readable txn_id "
                          "(not left out of the backfill)")
    if report.mismatches:
        raise typer.Exit(1)
    console.print("[green]no mismatches[/green]")


@app.command()
def lake() -> None:
    """Summarize the lake: partitions, events, frauds (from labels), files."""
    from pipelines.lake_summary import print_summary

    print_summary(_settings())


# --- labels, training, MLflow ---------------------------------------------------------------

labels_app = typer.Typer(help="The label store (lake/labels) and its intake.",
                         no_args_is_help=True)
app.add_typer(labels_app, name="labels")


@labels_app.command("intake")
def labels_intake(
    idle_seconds: Annotated[
        float | None, typer.Option(help="Stop after this long without new records")
    ] = None,
) -> None:
    """Consume the `labels` topic into the label store (exactly once; invalid → DLQ)."""
    from kestrel.errors import KestrelError
    from labels.intake import IntakeStats, LabelIntake

    settings = _settings()

    def progress(s: IntakeStats) -> None:
        typer.echo(f"stored {s.written:,} labels ({s.invalid:,} invalid → DLQ) in "
                   f"{s.batches} batches, {s.seconds:.1f} s")

    try:
        stats = LabelIntake(settings).run(idle_seconds=idle_seconds, progress=progress)
    except KestrelError as exc:
        _fail(exc)
        return
    typer.echo(f"labels intake done: {stats.consumed:,} records read, {stats.written:,} "
               f"labels stored under {settings.lake_dir / 'labels'}, {stats.invalid:,} to "
               f"the DLQ, {stats.seconds:.1f} s")


@app.command()
def train(
    days: Annotated[int | None, typer.Option(min=1, help="Use only the last N lake days")] = None,
    start: Annotated[str | None, typer.Option(help="First day to use, YYYY-MM-DD")] = None,
    end: Annotated[str | None, typer.Option(help="Last day (test folds end here)")] = None,
    folds: Annotated[int, typer.Option(min=1, help="Test (and validation) folds")] = 4,
    train_days: Annotated[int, typer.Option(min=1, help="Training window, days")] = 7,
    test_days: Annotated[int, typer.Option(min=1, help="Test window, days")] = 7,
    engine: Annotated[str, typer.Option(help="asof (fast) | feast (get_historical_features)")
                      ] = "asof",
    out: Annotated[Path | None, typer.Option(help="Write the metrics as benchmark JSON")] = None,
) -> None:
    """Backfill features if missing, build the point-in-time training set, train XGBoost,
    logistic regression and IsolationForest, log to MLflow, register, run the gate."""
    from datetime import timedelta

    from kestrel.errors import KestrelError
    from training.run import run_training

    settings = _settings()
    if engine not in ("asof", "feast"):
        _fail(ValueError("--engine must be asof or feast"))
    try:
        last = date.fromisoformat(end) if end else None
        first = date.fromisoformat(start) if start else None
        if days is not None:
            from training.pipeline import lake_days

            last = last or lake_days(settings)[1]
            first = last - timedelta(days=days - 1)
        report = run_training(settings, first, last, folds=folds, train_days=train_days,
                              test_days=test_days, engine=engine,  # type: ignore[arg-type]
                              progress=typer.echo)
    except (KestrelError, ValueError) as exc:
        _fail(exc)
        return
    for name, m in report.metrics.items():
        typer.echo(f"{name:8s} AUC ROC {m['auc_roc']:.4f}  AP {m['average_precision']:.4f}  "
                   f"CP@100 {m['card_precision_at_100']:.4f}  params {report.params[name]}")
    typer.echo(f"train done in {report.seconds['total']:.1f} s; MLflow: "
               f"{report.registry['tracking_uri']} (`kestrel mlflow-ui`)")
    if out is not None:
        from bench.train import result_from_report

        path = result_from_report(report, quick=False).write(out)
        typer.echo(f"metrics written to {path}")


@app.command("training-set")
def training_set(
    out: Annotated[Path, typer.Option(help="Parquet file to write")],
    service: Annotated[str | None, typer.Option(
        help="Feature service version (default: the one new models train on)")] = None,
    start: Annotated[str | None, _START] = None,
    end: Annotated[str | None, _END] = None,
    engine: Annotated[str, typer.Option(help="asof (fast) | feast (get_historical_features)")
                      ] = "asof",
    prepare: Annotated[bool, typer.Option(
        help="First backfill missing stream-view days and run the batch views")] = False,
) -> None:
    """Build a point-in-time training set of a feature service into Parquet and summarize it
    (rows, label rate, coverage per feature); trains nothing. Stops when a feature's coverage
    is below KESTREL_TRAINING_MIN_COVERAGE, naming the command that fills it."""
    from kestrel.errors import KestrelError
    from training.features import FEATURE_SERVICE
    from training.training_set import write_training_set

    if engine not in ("asof", "feast"):
        _fail(ValueError("--engine must be asof or feast"))
    settings = _settings()
    try:
        summary = write_training_set(settings, service or FEATURE_SERVICE,
                                     _day(start, "start"), _day(end, "end"), out,
                                     engine=engine, prepare=prepare,  # type: ignore[arg-type]
                                     progress=typer.echo)
    except KestrelError as exc:
        _fail(exc)
        return
    for line in summary.lines():
        typer.echo(line)


@app.command("mlflow-ui")
def mlflow_ui(
    port: Annotated[int, typer.Option(help="Port of the MLflow UI")] = 5000,
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
) -> None:
    """Open the MLflow UI on the project's tracking store (runs, plots, registry)."""
    import os

    settings = _settings()
    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", settings.mlflow_uri,
           "--host", host, "--port", str(port)]
    if not settings.mlflow_tracking_uri:
        cmd += ["--default-artifact-root", (settings.mlflow_dir / "artifacts").as_uri()]
    os.execv(sys.executable, cmd)


# --- serving --------------------------------------------------------------------------------

@app.command()
def serve(
    port: Annotated[int | None, typer.Option(help="Port (default KESTREL_SERVE_PORT)")] = None,
    host: Annotated[str | None, typer.Option(help="Address (default KESTREL_SERVE_HOST)")] = None,
    detach: Annotated[bool, typer.Option(
        help="Run in the background (pid in var/run, log in var/log; `kestrel down` stops it)"
    )] = False,
) -> None:
    """Start the HTTP services (BentoML): decisions, insights, ingest, labels, alerts."""
    import os

    settings = _settings()
    if detach:
        from kestrel.errors import KestrelError
        from kestrel.services import start_http

        update: dict[str, object] = {}
        if port is not None:
            update["serve_port"] = port
        if host is not None:
            update["serve_host"] = host
        try:
            typer.echo(start_http(settings.model_copy(update=update)))
        except KestrelError as exc:
            _fail(exc)
        return
    port = port or settings.serve_port
    cmd = [sys.executable, "-m", "bentoml", "serve", "serving.service:Kestrel",
           "--host", host or settings.serve_host, "--port", str(port)]
    # BentoML keeps its Prometheus multiprocess files under BENTOML_HOME and empties that
    # directory when a server starts: with one home per machine, starting a second service
    # (a benchmark, a test) erased the first one's /metrics. One home per var dir and port.
    home = (settings.var_dir / "run" / f"bentoml-{port}").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.execve(sys.executable, cmd, {**os.environ, "BENTOML_HOME": str(home)})


class Role(StrEnum):
    scorer = "scorer"
    bot = "bot"
    investigator = "investigator"
    admin = "admin"


@app.command()
def token(
    role: Annotated[Role, typer.Option(help="What the token may do")],
    client: Annotated[str, typer.Option(
        "--client", "--tenant", help="The calling client (rate limits, audit, metrics)")] = "demo",
    customer: Annotated[str | None, typer.Option(
        help="The one customer a bot token may read (required with --role bot)")] = None,
    subject: Annotated[str | None, typer.Option(
        help="The token's subject, e.g. an analyst id (default: role plus a random suffix)")
    ] = None,
    ttl: Annotated[int | None, typer.Option(
        min=60, help="Lifetime in seconds (default and most: KESTREL_TOKEN_TTL_SECONDS)")
    ] = None,
) -> None:
    """Mint a development bearer token (HS256, KESTREL_JWT_SECRET); off in production."""
    from kestrel.errors import KestrelError
    from serving.auth import mint_token

    try:
        typer.echo(mint_token(_settings(), role.value, client, ttl, subject, customer))
    except KestrelError as exc:
        _fail(exc)


# --- audit ----------------------------------------------------------------------------------

audit_app = typer.Typer(help="The tamper-evident audit log (var/audit, serving/audit.py).",
                        no_args_is_help=True)
app.add_typer(audit_app, name="audit")


class AuditKind(StrEnum):
    decisions = "decisions"
    access = "access"


_AUDIT_VERIFY_HELP = (
    "Check every audit file's hash chain and its anchor (an HMAC under KESTREL_AUDIT_KEY), "
    "one line per file.\n\n"
    "ok: the chain and its anchor verify (records after the anchor only while their writer "
    "runs).\n\n"
    "broken at record N line L: tampering is evident (a record edited, removed, inserted or "
    "reordered; records cut off the end, or appended after the file was closed; a wrong "
    "key).\n\n"
    "unanchored at record N line L: records after the last anchor and their writer gone "
    "without closing the file (a crash, or records appended without the key).\n\n"
    "Exit status: 0 every file ok, 1 any file broken, 3 none broken but some unanchored."
)


@audit_app.command("verify", help=_AUDIT_VERIFY_HELP)
def audit_verify(
    day: Annotated[str | None, typer.Option(
        help="Only the files of this day, YYYY-MM-DD (UTC; default: every day)")] = None,
    kind: Annotated[AuditKind | None, typer.Option(
        help="Only this kind of record (default: every kind)")] = None,
) -> None:
    from serving.audit_chain import Status, verify

    settings = _settings()
    when = _day(day, "day")
    root = settings.var_dir / "audit"
    reports = verify(root, settings.secret("audit_key"),
                     when.isoformat() if when else None, [kind.value] if kind else None)
    for report in reports:
        typer.echo(report.text())
    counts = {s: sum(r.status is s for r in reports) for s in Status}
    if not reports:
        typer.echo(f"no audit files under {root}" + (f" for {when}" if when else ""))
        return
    typer.echo(f"{len(reports)} files: {counts[Status.ok]} ok, {counts[Status.broken]} "
               f"broken, {counts[Status.unanchored]} unanchored")
    if counts[Status.broken]:
        raise typer.Exit(1)
    if counts[Status.unanchored]:
        raise typer.Exit(3)


# --- benchmarks and demo --------------------------------------------------------------------

@app.command()
def bench(
    scenario: Annotated[str, typer.Argument(
        help="ingest | stream | batch | train | serve | faults")],
    quick: Annotated[bool, typer.Option(help="Small version (the test suite runs it)")] = False,
    out: Annotated[Path | None, typer.Option(help="JSON path (default bench/results/)")] = None,
) -> None:
    """Run a benchmark against real services; write JSON and print a table."""
    from bench.runner import run_scenario

    run_scenario(scenario, _settings(), quick=quick, out=out)


@app.command()
def demo(
    days: Annotated[int, typer.Option(min=1, help="Live days streamed through Kafka")] = 3,
    history_days: Annotated[int, typer.Option(
        min=1, help="Days of history simulated straight into the lake (training needs ~42)")
    ] = 42,
) -> None:
    """The platform end to end: history + live stream, Spark features, training, HTTP API."""
    from kestrel.errors import KestrelError
    from pipelines.demo import run_demo

    try:
        run_demo(_settings(), days=days, history_days=history_days)
    except KestrelError as exc:
        _fail(exc)


if __name__ == "__main__":
    main()
