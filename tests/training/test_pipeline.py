"""The whole chain on a small simulated lake: Spark backfill + batch views, the training set,
three model families, MLflow runs, the registered model and the promotion gate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from kestrel.features import STREAM_INPUTS
from kestrel.pan import CardTokenizer
from kestrel.settings import Settings
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.to_lake import write_to_lake
from tests.conftest import TEST_SECRET, make_settings
from training.dataset import historical_features, transactions_between
from training.features import FEATURE_SERVICE, MODEL_FEATURES
from training.models import Family, small_grids
from training.pipeline import build_training_set, make_protocol, register, train_models
from training.run import run_training

pytestmark = [pytest.mark.spark, pytest.mark.slow]

PROTOCOL = {"folds": 1, "train_days": 3, "test_days": 3}
WEAK = {"xgboost": Family("xgboost", {"max_depth": (1,), "n_estimators": (1,),
                                      "learning_rate": (0.1,)})}


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A 14-day lake (label delay 2 days), its stream backfill and batch views, built once."""
    var = tmp_path_factory.mktemp("train") / "var"
    settings = make_settings(var, label_delay_days=2.0, spark_shuffle_partitions=2)
    sim = SimulationConfig(customers=200, terminals=400, days=14, label_delay_days=2.0)
    write_to_lake(sim, settings.lake_dir, CardTokenizer(TEST_SECRET.encode()).token)
    report = run_training(settings, **PROTOCOL, families=small_grids())
    assert report.registry["gate"].promoted  # the first model becomes the champion
    yield settings


def with_registry(settings: Settings, folder: Path) -> Settings:
    return settings.model_copy(update={"mlflow_tracking_uri": f"sqlite:///{folder}/m.db"})


def test_registered_champion_as_serving_expects(lake: Settings) -> None:
    client = MlflowClient(tracking_uri=lake.mlflow_uri, registry_uri=lake.mlflow_uri)
    version = client.get_model_version_by_alias(lake.model_name, lake.champion_alias)
    tags = version.tags
    assert tags["feature_service"] == FEATURE_SERVICE  # serving reads it (serving/model.py)
    challenge, decline = float(tags["threshold_challenge"]), float(tags["threshold_decline"])
    assert 0 < challenge <= decline <= 1
    uri = f"models:/{lake.model_name}@{lake.champion_alias}"
    mlflow.set_tracking_uri(lake.mlflow_uri)
    mlflow.set_registry_uri(lake.mlflow_uri)
    info = mlflow.models.get_model_info(uri)
    inputs = info.signature.inputs.to_dict()
    assert [c["name"] for c in inputs] == list(MODEL_FEATURES)
    assert {c["type"] for c in inputs} == {"double"}
    model = mlflow.xgboost.load_model(uri)
    x = pd.DataFrame(np.full((2, len(MODEL_FEATURES)), np.nan), columns=list(MODEL_FEATURES))
    proba = model.predict_proba(x)[:, 1]
    assert proba.shape == (2,) and np.all((proba >= 0) & (proba <= 1))
    # one experiment per family, each run with metrics and plots
    for family in ("xgboost", "logreg", "iforest"):
        exp = client.get_experiment_by_name(f"{lake.model_name}-{family}")
        run = client.search_runs([exp.experiment_id])[0]
        assert 0 <= run.data.metrics["test_average_precision"] <= 1
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/roc_curve.png", "plots/pr_curve.png"} <= plots
    xgb_run = client.get_run(tags["training_run_id"])
    plots = {a.path for a in client.list_artifacts(xgb_run.info.run_id, "plots")}
    assert {"plots/shap_summary.png", "plots/feature_importance.png"} <= plots
    assert xgb_run.data.tags["gate_decision"] == "promoted"
    manifest_path = client.download_artifacts(xgb_run.info.run_id, "reports/manifest.json")
    manifest = json.loads(Path(manifest_path).read_text())
    assert manifest["feature_service"] == FEATURE_SERVICE
    assert set(STREAM_INPUTS[FEATURE_SERVICE]) <= set(manifest["coverage"])
    assert manifest["folds"]["test-0"]["train_frauds"] > 0


def test_engines_agree_on_real_history(lake: Settings) -> None:
    """Feast's own get_historical_features and the as-of merge give the same vectors."""
    protocol = make_protocol(lake, **PROTOCOL)
    _, last = protocol.span()
    tx = transactions_between(lake.lake_dir, last, last)
    sample = tx.sample(n=min(250, len(tx)), random_state=1).sort_values("event_time")
    asof, _ = historical_features(lake, sample, engine="asof")
    feast, _ = historical_features(lake, sample, engine="feast")
    cols = ["txn_id", *MODEL_FEATURES]
    pd.testing.assert_frame_equal(asof[cols].sort_values("txn_id").reset_index(drop=True),
                                  feast[cols].sort_values("txn_id").reset_index(drop=True),
                                  check_exact=False, rtol=1e-9)


def test_same_seed_same_metrics_and_gate(lake: Settings, tmp_path: Path) -> None:
    protocol = make_protocol(lake, **PROTOCOL)
    ts = build_training_set(lake, protocol)
    first = train_models(lake, ts, small_grids(), seed=7)
    second = train_models(lake, ts, small_grids(), seed=7)
    for name in first:
        assert first[name].mean == second[name].mean, name
        assert first[name].params == second[name].params

    s = with_registry(lake, tmp_path)
    client = MlflowClient(tracking_uri=s.mlflow_uri, registry_uri=s.mlflow_uri)
    weak = train_models(s, ts, WEAK, seed=7)
    out = register(s, ts, weak, seed=7)
    assert out["gate"].promoted and out["gate"].reason == "no champion yet"
    weak_version = out["version"]
    assert first["xgboost"].mean["average_precision"] > weak["xgboost"].mean["average_precision"]

    better = register(s, ts, first, seed=7)  # beats the champion on the same folds
    assert better["gate"].promoted and better["gate"].basis == "recorded on the same folds"
    champion = client.get_model_version_by_alias(s.model_name, s.champion_alias)
    assert str(champion.version) == better["version"] != weak_version

    worse = register(s, ts, weak, seed=7)  # a worse challenger leaves the alias alone
    assert not worse["gate"].promoted
    assert worse["gate"].champion_ap == pytest.approx(first["xgboost"].mean["average_precision"])
    champion = client.get_model_version_by_alias(s.model_name, s.champion_alias)
    assert str(champion.version) == better["version"]
    rejected = client.get_model_version(s.model_name, worse["version"])
    assert rejected.tags["gate"] == "rejected"
    run = client.get_run(worse["runs"]["xgboost"])
    assert run.data.tags["gate_decision"] == "rejected"
    assert run.data.metrics["gate_champion_ap"] > run.data.metrics["gate_challenger_ap"]
