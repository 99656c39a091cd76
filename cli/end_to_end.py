"""`kestrel bench` and `kestrel demo`: the platform end to end against real services, as a
benchmark scenario or as the demo (cli/demo.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import fail, load_settings


def bench(
    scenario: Annotated[str, typer.Argument(
        help="ingest | stream | batch | train | serve | faults | console")],
    quick: Annotated[bool, typer.Option(help="Small version (the test suite runs it)")] = False,
    out: Annotated[Path | None, typer.Option(help="JSON path (default bench/results/)")] = None,
) -> None:
    """Run a benchmark against real services; write JSON and print a table."""
    from bench.runner import run_scenario

    run_scenario(scenario, load_settings(), quick=quick, out=out)


def demo(
    days: Annotated[int, typer.Option(min=1, help="Live days streamed through Kafka")] = 3,
    history_days: Annotated[int, typer.Option(
        min=1, help="Days of history simulated straight into the lake (training needs ~42)")
    ] = 42,
) -> None:
    """The platform end to end: history + live stream, Spark features, training, HTTP API."""
    from cli.demo import run_demo
    from kestrel.errors import KestrelError

    try:
        run_demo(load_settings(), days=days, history_days=history_days)
    except KestrelError as exc:
        fail(exc)
