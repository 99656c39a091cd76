"""`kestrel bench stream --quick`: the benchmark code runs end to end and writes its JSON."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bench.runner import run_scenario
from kestrel.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_stream_quick(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "stream.json"
    run_scenario("stream", settings, quick=True, out=out)
    doc = orjson.loads(out.read_bytes())
    assert doc["scenario"] == "stream" and doc["quick"] is True
    metrics = doc["metrics"]
    for name in ("events_per_s", "freshness_p50_ms", "freshness_p99_ms",
                 "alert_latency_p99_ms", "online_write_rows_per_s"):
        assert metrics[name]["unit"], name
    throughput = metrics["events_per_s"]
    assert throughput["value"] > 0 and throughput["events"] == 20_000
    assert throughput["terminal_updates"] + throughput["terminal_updates_too_late"] == 20_000
    assert throughput["process_cpu_s"] > 0
    for measured in (throughput, metrics["freshness_p99_ms"], doc["machine"]):
        assert 0 <= measured["cpu_steal_pct"] <= 100  # what other guests took meanwhile
    assert metrics["freshness_p99_ms"]["applied"] == metrics["freshness_p99_ms"]["events"]
    assert metrics["online_write_rows_per_s"]["value"] > 0
