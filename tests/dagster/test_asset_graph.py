"""The asset graph materialized in-process on simulated days, against real Spark and Redis."""

from datetime import date

import dagster as dg
import pytest
import redis

from dagster_project.assets import features, lake, training
from dagster_project.checks import ALL_CHECKS
from dagster_project.definitions import defs
from dagster_project.resources import resources_for
from kestrel.pan import CardTokenizer
from kestrel.settings import Settings
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.to_lake import write_to_lake
from tests.conftest import TEST_SECRET, make_settings

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.slow]
FEATURE_GRAPH = [lake.lake_transactions, lake.label_table, features.stream_feature_history,
                 features.batch_feature_tables, features.online_materialization]


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"lake_transactions", "label_table", "stream_feature_history",
            "batch_feature_tables", "online_materialization", "training_set", "model",
            "evaluation", "registered_model"} <= keys
    for key in graph.get_all_asset_keys():
        spec = graph.get(key)
        assert spec.description, f"{key} has no description"


def test_feature_assets_materialize(tmp_path: object, redis_url: str) -> None:
    settings: Settings = make_settings(tmp_path / "var", redis_url=redis_url.rsplit("/", 1)[0]  # type: ignore[operator]
                                       + "/9")
    redis.Redis.from_url(settings.redis_url).flushdb()  # the tests' own server, own db
    config = SimulationConfig(customers=80, terminals=150, days=4, start=date(2018, 4, 1),
                              seed=11, label_delay_days=settings.label_delay_days)
    write_to_lake(config, settings.lake_dir, CardTokenizer(TEST_SECRET.encode()).token)
    from pipelines.features.store import apply

    apply(settings, echo=lambda _line: None)
    result = dg.materialize([*FEATURE_GRAPH, *ALL_CHECKS], partition_key="2018-04-04",
                            resources=resources_for(settings))
    assert result.success
    meta = {e.asset_key.to_user_string(): e.materialization.metadata
            for e in result.get_asset_materialization_events()}
    assert meta["lake_transactions"]["rows"].value > 0
    assert meta["batch_feature_tables"]["seconds"].value >= 0
    assert meta["stream_feature_history"]["total_rows"].value > 0
    assert meta["online_materialization"]["rows_per_s"].value > 0
    failed = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
    assert failed == []
    client = redis.Redis.from_url(settings.redis_url)
    assert client.dbsize() > 0


def test_training_chain_materializes_and_registers_a_champion(tmp_path: object,
                                                               redis_url: str) -> None:
    """Thirteen simulated days: the feature assets as one ranged run (the Spark backfill
    policy), then the training chain on the last day with a small protocol."""
    settings: Settings = make_settings(tmp_path / "var",  # type: ignore[operator]
                                       redis_url=redis_url.rsplit("/", 1)[0] + "/10",
                                       label_delay_days=2)
    redis.Redis.from_url(settings.redis_url).flushdb()
    config = SimulationConfig(customers=300, terminals=600, days=13, start=date(2018, 4, 1),
                              seed=5, label_delay_days=2)
    write_to_lake(config, settings.lake_dir, CardTokenizer(TEST_SECRET.encode()).token)
    resources = resources_for(settings)
    ranged = dg.materialize(
        [*FEATURE_GRAPH, *ALL_CHECKS], resources=resources,
        selection=dg.AssetSelection.assets("stream_feature_history", "batch_feature_tables"),
        tags={"dagster/asset_partition_range_start": "2018-04-01",
              "dagster/asset_partition_range_end": "2018-04-13"})
    assert ranged.success
    chain = [*training.ASSETS, *training.CHECKS]
    run_config = {"ops": {"training_set": {"config": {"folds": 1, "train_days": 3,
                                                       "test_days": 2}}}}
    result = dg.materialize(chain, partition_key="2018-04-13", resources=resources,
                            run_config=run_config, raise_on_error=True)
    assert result.success
    meta = {e.asset_key.to_user_string(): e.materialization.metadata
            for e in result.get_asset_materialization_events()}
    assert meta["training_set"]["rows"].value > 1000
    assert meta["training_set"]["frauds"].value > 0
    assert 0.5 < meta["evaluation"]["xgboost.auc_roc"].value <= 1.0
    assert meta["registered_model"]["version"].value == "1"
    assert meta["registered_model"]["promoted"].value is True  # no champion yet: the first wins
    [drift] = result.get_asset_check_evaluations()
    assert drift.check_name == "feature_drift"
    assert drift.metadata["rows_week"].value > 0
    assert "psi_all" in drift.metadata

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_uri)
    champion = client.get_model_version_by_alias(settings.model_name, settings.champion_alias)
    assert str(champion.version) == "1"
