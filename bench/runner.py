"""Dispatch `kestrel bench <scenario>` to its module; write the JSON and print the table."""

from __future__ import annotations

import importlib
from pathlib import Path

from rich.console import Console

from bench.results import BenchResult
from kestrel.errors import ConfigError
from kestrel.settings import Settings

SCENARIOS = {"ingest": "bench.ingest", "stream": "bench.stream", "batch": "bench.batch",
             "train": "bench.train", "serve": "bench.serve", "faults": "bench.faults",
             "console": "bench.console"}


def run_scenario(name: str, settings: Settings, quick: bool = False,
                 out: Path | None = None) -> BenchResult:
    if name not in SCENARIOS:
        raise ConfigError(f"unknown benchmark {name!r}; choose one of {', '.join(SCENARIOS)}")
    module = importlib.import_module(SCENARIOS[name])
    console = Console()
    result: BenchResult = module.run(settings, quick=quick, console=console)
    path = result.write(out)
    result.print_table(console)
    console.print(f"results written to {path}")
    return result
