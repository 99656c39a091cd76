"""`kestrel stream` and `kestrel parity`: the stream processor, and the replay that compares
what it wrote with the offline log, the per-event engine and Spark."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import fail, load_settings


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

    settings = load_settings()
    try:
        check_registry(settings)  # a stale registry would hand training other definitions
        processor = StreamProcessor(settings, OnlineWriter(settings, dedup=False),
                                    metrics_port=settings.stream_metrics_port or None)
        stats = processor.run(idle_seconds=idle_seconds)
    except KestrelError as exc:
        fail(exc)
    typer.echo(f"stream done: {stats.applied:,} transactions applied ({stats.duplicates:,} "
               f"duplicates, {stats.late:,} late, {stats.invalid:,} invalid), "
               f"{stats.terminal_applied:,} terminal updates, {stats.alerts:,} alerts, "
               f"{stats.batches} batches, {stats.seconds:.1f} s")


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
    report = run_parity(load_settings(), days, customers, terminals, seed, progress=console.print,
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
