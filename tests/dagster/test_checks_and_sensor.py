"""Asset checks on injected bad data, the retraining sensor, the PSI arithmetic."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest

from dagster_project.assets.lake import label_table, lake_transactions
from dagster_project.automation import label_count, newest_complete_day, retrain_on_new_labels
from dagster_project.checks import lake_freshness, lake_rows_and_nulls, lake_value_ranges
from dagster_project.drift import FAIL_PSI, WARN_PSI, baseline, psi
from dagster_project.resources import KestrelSettings, resources_for
from kestrel.lake import TRANSACTION_SCHEMA, partition_dir, write_parquet_durable
from kestrel.pan import CardTokenizer
from kestrel.settings import Settings
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.to_lake import write_to_lake
from tests.conftest import TEST_SECRET


def _simulate(settings: Settings, days: int, start: str = "2018-04-01") -> None:
    config = SimulationConfig(customers=60, terminals=120, days=days,
                              start=date.fromisoformat(start), seed=7,
                              label_delay_days=settings.label_delay_days)
    write_to_lake(config, settings.lake_dir, CardTokenizer(TEST_SECRET.encode()).token)


def _kestrel(settings: Settings) -> KestrelSettings:
    return resources_for(settings)["kestrel"]


def test_psi_reads_stable_shifted_and_missing() -> None:
    rng = np.random.default_rng(3)
    base = baseline(rng.normal(0, 1, 40_000))
    assert psi(base, rng.normal(0, 1, 20_000)) < WARN_PSI
    assert psi(base, rng.normal(1.0, 1, 20_000)) > FAIL_PSI
    gone = rng.normal(0, 1, 20_000)
    gone[: 8_000] = np.nan  # a feature that starts going missing drifts too
    assert psi(base, gone) > FAIL_PSI
    flags = baseline(np.array([0.0, 1.0] * 500))  # two values: two bins, no empty ones
    assert psi(flags, np.array([0.0, 1.0] * 300)) < 1e-9


def test_lake_checks_pass_on_good_data_and_fail_on_injected_bad_rows(
        settings: Settings) -> None:
    _simulate(settings, 2)
    resources = {"kestrel": _kestrel(settings)}
    good = dg.materialize([lake_transactions, lake_rows_and_nulls, lake_value_ranges,
                           lake_freshness], partition_key="2018-04-02", resources=resources)
    assert good.success
    checks = {e.check_name: e.passed for e in good.get_asset_check_evaluations()}
    assert checks == {"lake_rows_and_nulls": True, "lake_value_ranges": True,
                      "lake_freshness": True}

    bad = pa.table({
        "txn_id": ["b1", "b2"], "event_time": pa.array(
            [datetime(2018, 4, 3, 10), datetime(2018, 4, 4, 1)], pa.timestamp("us", tz="UTC")),
        "customer_id": ["c1", None], "account_id": ["a1", "a1"], "card_id": ["k1", "k1"],
        "terminal_id": ["t1", "t1"], "mcc": ["5411", "5411"], "amount": [-5.0, 12.0],
        "currency": ["EUR", "EUR"], "country": ["FR", "FR"], "lat": [48.0, 48.0],
        "lon": [2.0, 2.0], "channel": ["pos", "pos"], "device_id": [None, None],
        "schema_version": pa.array([1, 1], pa.int16())}, schema=TRANSACTION_SCHEMA)
    write_parquet_durable(bad, partition_dir(settings.lake_dir, "transactions", "2018-04-03")
                          / "bad.parquet")
    result = dg.materialize([lake_transactions, label_table, lake_rows_and_nulls,
                             lake_value_ranges], partition_key="2018-04-03",
                            resources=resources, raise_on_error=False)
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not evaluations["lake_rows_and_nulls"].passed
    assert evaluations["lake_rows_and_nulls"].metadata["over_limit"].value == {
        "customer_id": 0.5}
    ranges = evaluations["lake_value_ranges"]
    assert not ranges.passed
    assert ranges.metadata["outside"].value == {"amount": 1}
    assert ranges.metadata["events_outside_the_day"].value == 1


def test_retrain_sensor_counts_new_labels(settings: Settings,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KESTREL_RETRAIN_MIN_NEW_LABELS", "50")
    resources = {"kestrel": _kestrel(settings)}
    with dg.instance_for_test() as instance:
        first = retrain_on_new_labels(dg.build_sensor_context(instance=instance,
                                                              resources=resources))
        assert isinstance(first, dg.SkipReason)  # no labels yet

        _simulate(settings, 10)
        labels = label_count(settings)
        assert labels > 50
        fired = retrain_on_new_labels(dg.build_sensor_context(instance=instance,
                                                              resources=resources))
        assert isinstance(fired, dg.SensorResult)
        assert fired.cursor == str(labels)
        [request] = fired.run_requests or []
        assert request.partition_key == newest_complete_day(settings) == "2018-04-10"

        def run(cursor: int) -> dg.SensorResult | dg.SkipReason:
            return retrain_on_new_labels(dg.build_sensor_context(
                instance=instance, cursor=str(cursor), resources=resources))

        again = run(labels)
        assert isinstance(again, dg.SkipReason) and "0 new labels" in str(again.skip_message)
        assert isinstance(run(labels - 49), dg.SkipReason)
        assert isinstance(run(labels - 50), dg.SensorResult)


def test_newest_complete_day_excludes_today(tmp_path: Path, settings: Settings) -> None:
    _simulate(settings, 3)
    assert newest_complete_day(settings, today=date(2018, 4, 3)) == "2018-04-02"
    assert newest_complete_day(settings, today=date(2030, 1, 1)) == "2018-04-03"
