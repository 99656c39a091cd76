"""Benchmark results record the machine's state: CPU steal and a reference workload's time."""

from __future__ import annotations

import io

from rich.console import Console

from bench.results import BenchResult, CpuTimes, Metric


def test_steal_is_the_share_of_all_cpu_time_taken_by_other_guests() -> None:
    before, after = CpuTimes(steal=100, total=10_000), CpuTimes(steal=400, total=11_000)
    assert after.steal_pct_since(before) == 30.0
    assert after.steal_pct_since(None) is None
    assert before.steal_pct_since(after) is None  # no time passed (or counters reset)


def test_cpu_times_are_read_from_proc_stat() -> None:
    first, second = CpuTimes.now(), CpuTimes.now()
    assert first is not None and second is not None  # the benchmarks run on Linux
    assert 0 <= first.steal <= first.total <= second.total


def test_a_result_states_its_machine_and_the_table_warns_of_high_steal() -> None:
    result = BenchResult("stream", True, {}, {"x": Metric(1.0, "ms", 2.0, "lower")})
    machine = result.as_dict()["machine"]
    assert "cpu_steal_pct" in machine
    assert all(0 < ms < 60_000 for ms in machine["reference_ms"])  # at the start, at the end
    now = CpuTimes.now()
    assert now is not None
    # as if 1,000 of the 2,000 ticks since the start had gone to other guests
    result.cpu_at_start = CpuTimes(steal=now.steal - 1000, total=now.total - 2000)
    assert 45 <= (result.steal_pct or 0) <= 50
    out = io.StringIO()
    result.print_table(Console(file=out, width=200))
    assert "CPU steal during the run" in out.getvalue()
    assert "machine reference workload" in out.getvalue()
