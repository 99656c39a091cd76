"""What `kestrel simulate` shows a person: a progress bar, live throughput and a summary."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kestrel.settings import Settings
from pipelines.simulator.config import SimulationConfig


def _bar(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)


def run_to_lake(
    config: SimulationConfig, settings: Settings, tokenize: Callable[[str], str]
) -> None:
    from pipelines.simulator.to_lake import write_to_lake

    console = Console()
    with _bar(console) as bar:
        task = bar.add_task("simulating days", total=config.days, info="")

        def progress(done: int, total: int, rows: int) -> None:
            bar.update(task, completed=done, info=f"{rows:,} transactions")

        summary = write_to_lake(config, settings.lake_dir, tokenize, progress=progress)
    console.print(
        f"wrote {summary.transactions:,} transactions ({summary.frauds:,} frauds, "
        f"{summary.frauds / max(1, summary.transactions):.2%}) over {summary.days} days to "
        f"{settings.lake_dir} in {summary.files_written} files, {summary.seconds:.1f} s"
    )
    if summary.already_in_lake:
        console.print(f"{summary.already_in_lake:,} transactions were already in the lake "
                      "(archived from Kafka) and were not written twice")
    console.print("frauds per scenario: " + ", ".join(
        f"{k} {v:,}" for k, v in summary.frauds_per_scenario.items()))


def run_to_kafka(config: SimulationConfig, settings: Settings, tokenize: Callable[[str], str],
                 rate: float, with_labels: bool) -> None:
    from pipelines.simulator.to_kafka import StreamSummary, stream_to_kafka

    console = Console()
    with _bar(console) as bar:
        task = bar.add_task("streaming days", total=config.days, info="")

        def progress(s: StreamSummary) -> None:
            bar.update(task, completed=s.days,
                       info=f"{s.transactions:,} events, {s.events_per_s:,.0f} events/s")

        summary = stream_to_kafka(config, settings, tokenize, rate=rate, with_labels=with_labels,
                                  progress=progress)
    console.print(
        f"published {summary.transactions:,} transactions ({summary.frauds:,} frauds) and "
        f"{summary.labels:,} labels to {settings.kafka_bootstrap} in {summary.seconds:.1f} s "
        f"({summary.events_per_s:,.0f} events/s)"
    )
