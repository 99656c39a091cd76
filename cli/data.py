"""`kestrel simulate`, `archive`, `lake`: simulated transactions into the lake or Kafka, the
archiver that writes `transactions` to the lake, and the lake's summary."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated

import typer

from cli.common import fail, load_settings


class Target(StrEnum):
    lake = "lake"
    kafka = "kafka"


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

    settings = load_settings()
    try:
        config = SimulationConfig(
            customers=customers, terminals=terminals, days=days, start=date.fromisoformat(start),
            seed=seed, scenarios=frozenset(int(s) for s in scenarios.split(",") if s.strip()),
            label_delay_days=settings.label_delay_days,
        )
    except ValueError as exc:
        fail(exc)
    tokenize = CardTokenizer(settings.secret("pan_token_key")).token
    try:
        if to is Target.lake:
            from pipelines.simulator.run import run_to_lake

            run_to_lake(config, settings, tokenize)
        else:
            from pipelines.simulator.run import run_to_kafka

            run_to_kafka(config, settings, tokenize, rate=rate, with_labels=labels)
    except KestrelError as exc:
        fail(exc)


def archive(
    idle_seconds: Annotated[
        float | None, typer.Option(help="Stop after this long without new records")
    ] = None,
) -> None:
    """Consume `transactions` into the Parquet lake (exactly once per txn_id)."""
    from kestrel.errors import KestrelError
    from pipelines.archive import Archiver, ArchiveStats

    settings = load_settings()

    def progress(s: ArchiveStats) -> None:
        typer.echo(f"archived {s.written:,} events ({s.duplicates:,} duplicates, "
                   f"{s.invalid:,} invalid) in {s.batches} batches, {s.seconds:.1f} s")

    try:
        stats = Archiver(settings).run(idle_seconds=idle_seconds, progress=progress)
    except KestrelError as exc:
        fail(exc)
    typer.echo(f"archive done: {stats.consumed:,} records read, {stats.written:,} written to "
               f"{stats.files} files under {settings.lake_dir / 'transactions'}, "
               f"{stats.duplicates:,} duplicates dropped, {stats.invalid:,} to the DLQ, "
               f"{stats.seconds:.1f} s")


def lake() -> None:
    """Summarize the lake: partitions, events, frauds (from labels), files."""
    from pipelines.lake_summary import print_summary

    print_summary(load_settings())
