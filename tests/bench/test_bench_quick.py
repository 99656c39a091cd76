"""`kestrel bench ingest --quick`: the benchmark code runs end to end and writes its JSON."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bench.runner import run_scenario
from kestrel.errors import ConfigError
from kestrel.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_ingest_quick(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "ingest.json"
    result = run_scenario("ingest", settings, quick=True, out=out)
    doc = orjson.loads(out.read_bytes())
    assert doc["scenario"] == "ingest" and doc["quick"] is True
    assert doc["machine"]["cores"] >= 1
    for name in ("producer_events_per_s", "http_batch_events_per_s", "simulate_default_s"):
        metric = doc["metrics"][name]
        assert metric["value"] > 0 and metric["unit"], name
    assert doc["metrics"]["producer_events_per_s"]["events"] == 20_000
    assert result.metrics["http_batch_events_per_s"].extra["events"] == 3_000


def test_unknown_scenario(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="unknown benchmark"):
        run_scenario("nope", settings)
