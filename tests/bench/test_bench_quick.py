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


@pytest.mark.spark
def test_train_quick(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    run_scenario("train", settings, quick=True, out=out)
    doc = orjson.loads(out.read_bytes())
    assert doc["scenario"] == "train" and doc["quick"] is True
    train = doc["metrics"]["train_default_s"]
    assert train["value"] > 0 and train["unit"] == "s" and train["training_set_rows"] > 0
    for model in ("xgboost", "logreg", "iforest"):
        for name in ("auc_roc", "average_precision", "card_precision_at_100"):
            assert 0 <= doc["metrics"][f"{model}.{name}"]["value"] <= 1, (model, name)
    assert doc["metrics"]["xgboost.auc_roc"]["value"] > 0.6  # it learned something


def test_unknown_scenario(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="unknown benchmark"):
        run_scenario("nope", settings)


@pytest.mark.spark
def test_batch_quick(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "batch.json"
    result = run_scenario("batch", settings, quick=True, out=out)
    doc = orjson.loads(out.read_bytes())
    assert doc["scenario"] == "batch" and doc["quick"] is True
    batch = doc["metrics"]["batch_default_s"]
    assert batch["value"] > 0 and batch["unit"] == "s" and batch["run_days"] == 12
    assert batch["rows"]["top_spenders"] == 12 * 100
    mat = result.metrics["materialize_rows_per_s"]
    assert mat.value > 0 and mat.extra["rows"] > 0 and mat.extra["insight_docs"] > 0


def test_serve_quick(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    run_scenario("serve", settings, quick=True, out=out)
    doc = orjson.loads(out.read_bytes())
    assert doc["scenario"] == "serve" and doc["quick"] is True
    for name in ("score_p50_ms@100", "score_p99_ms@100", "batch_score_txn_per_s",
                 "insights_hit_p99_ms", "insights_miss_p99_ms", "feast_serve_p99_ms@100"):
        metric = doc["metrics"][name]
        assert metric["value"] > 0 and metric["unit"], name
    for name in ("score_p99_ms@100", "insights_hit_p99_ms", "feast_serve_p99_ms@100"):
        metric = doc["metrics"][name]
        # every answer is a 200; a rare client timeout on a saturated machine is tolerated
        assert set(metric["statuses"]) == {"200"}, (name, metric)
        assert metric["errors"] <= metric["requests"] // 20, (name, metric)


@pytest.mark.faults
def test_faults_quick(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    run_scenario("faults", settings, quick=True, out=out)
    doc = orjson.loads(out.read_bytes())
    assert doc["scenario"] == "faults" and doc["quick"] is True
    for phase in ("normal", "redis_frozen", "broker_stalled"):
        metric = doc["metrics"][f"score_p99_ms@{phase}"]
        assert metric["value"] > 0 and metric["requests"] > 0, phase
        assert set(metric["statuses"]) == {"200"}, (phase, metric["statuses"])
    for name in ("redis_recovery_s", "broker_recovery_s"):
        assert doc["metrics"][name]["value"] >= 0, name
