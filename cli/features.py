"""`kestrel features …` (the Feast repository: apply, list, lock, compact, env, materialize),
`kestrel batch` (the Spark batch tables) and `kestrel backfill` (the stream views' history)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import END, START, fail, load_settings, parse_day

features_app = typer.Typer(help="The Feast feature repository (feature_repo/).",
                           no_args_is_help=True)


@features_app.command("apply")
def features_apply() -> None:
    """Register entities, views and services with Feast (`feast apply`, from settings)."""
    from pipelines.features.store import apply

    apply(load_settings(), echo=typer.echo)


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
        added = update_lock(load_settings())
    except KestrelError as exc:
        fail(exc)
    typer.echo(f"locked {', '.join(added)} in {LOCK_FILE}" if added
               else f"every declared version is already locked in {LOCK_FILE}")


@features_app.command("compact")
def features_compact() -> None:
    """Rewrite the offline feature log keeping the newest version of each row (before
    building training sets; safe while the stream runs)."""
    from kestrel.windows import ENTITIES, stream_view_name
    from pipelines.stream.offline_log import OfflineLog

    log = OfflineLog(load_settings().var_dir)
    for entity in ENTITIES:
        typer.echo(f"{stream_view_name(entity)}: {log.compact(entity):,} rows")


@features_app.command("env")
def features_env() -> None:
    """Print the KESTREL_FEAST_* variables the plain `feast` CLI needs in feature_repo/."""
    from pipelines.features.store import feast_env

    for key, value in feast_env(load_settings()).items():
        typer.echo(f"export {key}='{value}'")


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

    result = materialize(load_settings(), parse_day(start, "start"), parse_day(end, "end"),
                         progress=typer.echo)
    typer.echo(f"materialized {result['rows']:,} feature rows ({result['rows_per_s']:,.0f} "
               f"rows/s) and {result['insights']['customers']:,} insight docs "
               f"in {result['seconds']:.1f} s")


def batch(
    start: Annotated[str | None, START] = None,
    end: Annotated[str | None, END] = None,
) -> None:
    """Run the Spark batch jobs: daily customer / terminal feature tables and insight tables
    (only the daily partitions whose inputs changed are recomputed)."""
    from pipelines.batch.jobs import run_batch_features

    run_batch_features(load_settings(), parse_day(start, "start"), parse_day(end, "end"),
                       progress=typer.echo)


def backfill(
    start: Annotated[str | None, START] = None,
    end: Annotated[str | None, END] = None,
    online: Annotated[bool, typer.Option(
        help="Then write each entity's newest backfilled value of every feature it lacks "
             "online into Redis (after adding a feature; never overwrites)")] = False,
) -> None:
    """Compute the stream views' rows for history from the lake with Spark and write them to
    the offline feature log (for training sets over days the stream never saw, and for
    features added since the stream wrote its rows: docs/schema-evolution.md)."""
    from pipelines.batch.backfill import backfill_stream_features, fill_online

    settings = load_settings()
    backfill_stream_features(settings, parse_day(start, "start"), parse_day(end, "end"),
                             progress=typer.echo)
    if online:
        typer.echo("online store: filling features entities lack …")
        filled = fill_online(settings, progress=typer.echo)
        typer.echo(f"online fill done: {sum(filled.values()):,} values written")
