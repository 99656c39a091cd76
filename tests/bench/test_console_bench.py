"""`kestrel bench console --quick`: the console benchmark runs end to end (seeding, the
store's calls, the rendered pages through the app, /v1/score with the console idle and busy)
and writes its JSON."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bench.runner import run_scenario
from kestrel.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_console_quick(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "console.json"
    run_scenario("console", settings, quick=True, out=out)
    doc = orjson.loads(out.read_bytes())
    assert doc["scenario"] == "console" and doc["quick"] is True
    seeded = doc["params"]["sqlite.seed"]
    assert seeded["cases"] == 2_000 and sum(seeded["by_status"].values()) == 2_000
    assert set(seeded["by_status"]) == {"open", "escalated", "closed"}
    metrics = doc["metrics"]
    for name in ("queue_open", "queue_rule", "queue_band", "queue_me",
                 "queue_unassigned_24h", "get", "cases_of"):
        m = metrics[f"sqlite.store.{name}_ms"]
        assert m["value"] > 0 and m["calls"] > 0 and m["p99_ms"] >= m["p50_ms"], name
    for page in ("queue", "case"):
        m = metrics[f"sqlite.page.{page}_ms"]
        assert m["target"] == 300.0 and m["calls"] == 40 and m["value"] > 0, page
    for phase in ("idle", "busy"):
        m = metrics[f"serve.score_p99_ms@100.console_{phase}"]
        assert m["requests"] == 300 and m["errors"] == 0 and m["value"] > 0, phase
    pages = metrics["serve.console_page_ms"]
    assert pages["calls"] >= 10 and set(pages["statuses"]) == {"200"}, pages
