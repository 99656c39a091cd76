"""The benchmark result shape of DESIGN.md: JSON on disk and a table on the terminal."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
from rich.console import Console
from rich.table import Table

RESULTS_DIR = Path("bench/results")
STEAL_NOTE_PCT = 5.0
"""CPU steal from which a run's table says so: its figures are not comparable to quiet runs."""


@dataclass(frozen=True)
class CpuTimes:
    """The machine's CPU time counters, all cores together (/proc/stat, in clock ticks).

    On a virtual machine the hypervisor's other guests can take CPU time from this one
    ("steal"): seen here at 10–40 % of the machine's CPU time during one benchmark run and
    at none during others (slow spells without steal show in reference_ms instead).
    Benchmarks record the share so that runs can be compared."""

    steal: int
    total: int

    @classmethod
    def now(cls) -> CpuTimes | None:
        """None where /proc/stat cannot be read (not Linux)."""
        try:
            first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        except OSError:
            return None
        if not first or first[0] != "cpu":
            return None
        ticks = [int(x) for x in first[1:9]]  # user nice system idle iowait irq softirq steal
        return cls(ticks[7] if len(ticks) > 7 else 0, sum(ticks))

    def steal_pct_since(self, before: CpuTimes | None) -> float | None:
        """Steal as a share of all CPU time (every core) between ``before`` and this
        reading, in %."""
        if before is None or self.total <= before.total:
            return None
        return round(100 * (self.steal - before.steal) / (self.total - before.total), 1)


def reference_ms() -> float:
    """How long this machine takes, now, for a fixed piece of pure-Python work (dicts,
    tuples, lists, sorting: what the stream and the services spend their CPU on); the best
    of three, in ms. The same code's benchmark figures moved by a factor of two between
    hours on this machine, mostly with no steal showing, and this moved with them: compare
    figures only between runs whose reference is close."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        table: dict[tuple[int, int], list[int]] = {}
        for i in range(200_000):
            table.setdefault((i % 997, i % 13), []).append(i)
        sorted(table.items(), key=lambda kv: (len(kv[1]), kv[0]))
        best = min(best, (time.perf_counter() - started) * 1000)
    return round(best, 1)


def steal_pct_since(before: CpuTimes | None) -> float | None:
    """CPU steal since ``before`` (CpuTimes.now() at the start of a measurement), in %."""
    now = CpuTimes.now()
    return now.steal_pct_since(before) if now is not None else None


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
    cpu_at_start: CpuTimes | None = field(default_factory=CpuTimes.now)
    reference_ms_at_start: float = field(default_factory=reference_ms)

    @property
    def steal_pct(self) -> float | None:
        """CPU steal from the start of the run until now, in % of the machine's CPU time."""
        return steal_pct_since(self.cpu_at_start)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "quick": self.quick,
            "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                        "cpu_steal_pct": self.steal_pct,
                        "reference_ms": [self.reference_ms_at_start, reference_ms()]},
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
        caption = [f"machine reference workload {self.reference_ms_at_start:,.1f} ms at the "
                   "start (bench.results.reference_ms; compare runs with a close one)"]
        steal = self.steal_pct
        if steal is not None and steal >= STEAL_NOTE_PCT:
            caption.append(f"CPU steal during the run: {steal:.0f} % of the machine's CPU "
                           "time went to other guests of the hypervisor; compare these "
                           "figures only with runs of similar steal")
        table.caption = "\n".join(caption)
        console.print(table)
