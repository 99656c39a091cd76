"""The benchmark result shape of DESIGN.md: JSON on disk and a table on the terminal."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
from rich.console import Console
from rich.table import Table

RESULTS_DIR = Path("bench/results")


@dataclass(frozen=True)
class Metric:
    value: float
    unit: str
    target: float | None = None
    better: Literal["higher", "lower"] = "higher"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def meets_target(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.better == "higher" else self.value <= self.target

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": round(self.value, 3), "unit": self.unit,
                               "target": self.target, "better": self.better}
        out.update(self.extra)
        return out


@dataclass
class BenchResult:
    scenario: str
    quick: bool
    params: dict[str, Any]
    metrics: dict[str, Metric] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "quick": self.quick,
            "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
            "params": self.params,
            "metrics": {k: m.as_dict() for k, m in self.metrics.items()},
        }

    def write(self, out: Path | None = None) -> Path:
        if out is None:
            suffix = ".quick.json" if self.quick else ".json"
            out = RESULTS_DIR / f"{self.scenario}{suffix}"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps(self.as_dict(), option=orjson.OPT_INDENT_2))
        return out

    def print_table(self, console: Console | None = None) -> None:
        console = console or Console()
        table = Table(title=f"bench {self.scenario}{' (quick)' if self.quick else ''}")
        for col in ("metric", "value", "unit", "target", "meets"):
            table.add_column(col, justify="right" if col in ("value", "target") else "left")
        for name, m in self.metrics.items():
            ok = m.meets_target
            mark = "-" if ok is None else ("[green]yes[/green]" if ok else "[red]no[/red]")
            sign = "≥" if m.better == "higher" else "≤"
            target = "-" if m.target is None else f"{sign} {m.target:,}"
            value = f"{m.value:,.1f}" if abs(m.value) >= 10 else f"{m.value:.3f}"
            table.add_row(name, value, m.unit, target, mark)
        console.print(table)
