"""The daily batch run on real Spark: values, incremental recompute, label delay, Feast."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from kestrel.lake import LABEL_SCHEMA, partition_dir, write_parquet_durable
from kestrel.settings import Settings
from kestrel.windows import batch_feature_names
from pipelines.batch.jobs import label_delay, run_batch_features
from pipelines.batch.layout import (
    DAILY_CATEGORY,
    MONTHLY,
    TOP_SPENDERS,
    batch_table,
    insight_table,
    partition_files,
)
from tests.batch import reference as ref
from tests.batch.conftest import SMALL

pytestmark = [pytest.mark.spark, pytest.mark.integration]

START = SMALL.start
LAST = SMALL.start + timedelta(days=SMALL.days - 1)


def _compare(got: pd.DataFrame, want: pd.DataFrame, key: str, names: tuple[str, ...]) -> None:
    got = got.set_index(key).sort_index()
    want = want.sort_index()
    assert list(got.index) == list(want.index)
    for name in names:
        if name.startswith(("customer_txn_count", "terminal_txn_count")):
            assert (got[name].to_numpy() == want[name].to_numpy()).all(), name
        else:
            np.testing.assert_allclose(got[name].to_numpy(float), want[name].to_numpy(float),
                                       rtol=1e-9, equal_nan=True, err_msg=name)


def test_first_run_computes_every_partition(computed: tuple[Settings, dict]) -> None:
    _, result = computed
    assert result["run_days"] == SMALL.days
    assert result["groups"]["features"]["skipped"] == 0
    assert len(result["groups"]["features"]["computed"]) == SMALL.days
    assert result["groups"]["insights_monthly"]["computed"] == ["2018-04", "2018-05"]
    assert result["rows"]["top_spenders"] == SMALL.days * 100


@pytest.mark.parametrize("day", [START, START + timedelta(days=8), START + timedelta(days=31),
                                 LAST])
def test_features_match_pandas(computed: tuple[Settings, dict], day: date) -> None:
    settings, _ = computed
    tx, labels = ref.lake_frames(settings.lake_dir)
    for entity, want in (("customer", ref.customer_rows(tx, day)),
                         ("terminal", ref.terminal_rows(tx, labels, day, label_delay(settings)))):
        got = ref.read_partition(batch_table(settings, entity), "run_date", day.isoformat())
        assert (got.event_timestamp == ref.cut_off(day)).all()
        _compare(got, want, f"{entity}_id", batch_feature_names(entity))
    if day >= START + timedelta(days=8):  # risk windows reach labelled days
        risk = ref.read_partition(batch_table(settings, "terminal"), "run_date",
                                  day.isoformat()).terminal_fraud_risk_30d
        assert risk.max() > 0


def test_insights_match_pandas(computed: tuple[Settings, dict]) -> None:
    settings, _ = computed
    tx, _ = ref.lake_frames(settings.lake_dir)
    day = START + timedelta(days=12)
    got = ref.read_partition(insight_table(settings, DAILY_CATEGORY), "date", day.isoformat())
    want = ref.daily_category(tx, day)
    got = got.set_index(["customer_id", "category"]).sort_index()
    assert list(got.index) == list(want.index)
    np.testing.assert_allclose(got["amount"], want["amount"], atol=0.005)
    assert (got["count"].to_numpy() == want["count"].to_numpy()).all()

    top = ref.read_partition(insight_table(settings, TOP_SPENDERS), "date", day.isoformat())
    totals = tx[tx.event_time.dt.date == day].groupby("customer_id").amount.sum().round(2)
    expected = totals.sort_values(ascending=False, kind="stable").head(100)
    top = top.sort_values("rank")
    assert list(top["rank"]) == list(range(1, 101))
    np.testing.assert_allclose(top.amount.to_numpy(), expected.to_numpy(), atol=0.005)

    for month in ("2018-04", "2018-05"):
        got = ref.read_partition(insight_table(settings, MONTHLY), "month", month)
        want = ref.monthly(tx, month)
        got = got.set_index("customer_id").sort_index()
        assert list(got.index) == list(want.index)
        np.testing.assert_allclose(got.amount, want.amount, atol=0.005)
        np.testing.assert_allclose(got.mom_change.to_numpy(float), want.mom_change, atol=1e-4,
                                   equal_nan=True)
        assert got.mom_change.notna().any() == (month == "2018-05")


def test_unchanged_inputs_are_skipped_and_a_changed_day_is_recomputed(
        computed_copy: Settings) -> None:
    settings = computed_copy
    again = run_batch_features(settings)
    assert all(g["computed"] == [] for g in again["groups"].values())
    assert "spark_startup_s" not in again  # nothing to do: Spark not even asked

    changed = LAST - timedelta(days=2)  # near the end: few runs see it (a cheaper test)
    unchanged = changed - timedelta(days=1)
    before = partition_files(batch_table(settings, "customer"), "run_date",
                             unchanged.isoformat())[0].stat().st_mtime_ns
    path = partition_dir(settings.lake_dir, "transactions", changed) / "simulated.parquet"
    table = pa.parquet.read_table(path)
    dropped = table.column("customer_id")[0].as_py()
    write_parquet_durable(table.slice(1), path)  # one transaction fewer on that day

    result = run_batch_features(settings)
    features = result["groups"]["features"]["computed"]
    reach = 29 + label_delay(settings)
    assert features == [(changed + timedelta(days=i)).isoformat()
                        for i in range(min(reach + 1, (LAST - changed).days + 1))]
    assert result["groups"]["insights_daily"]["computed"] == [changed.isoformat()]
    assert result["groups"]["insights_monthly"]["computed"] == ["2018-05"]
    # the day before the change kept its file; a recomputed day matches pandas again
    kept = partition_files(batch_table(settings, "customer"), "run_date",
                           unchanged.isoformat())[0]
    assert kept.stat().st_mtime_ns == before
    tx, _ = ref.lake_frames(settings.lake_dir)
    got = ref.read_partition(batch_table(settings, "customer"), "run_date", changed.isoformat())
    _compare(got, ref.customer_rows(tx, changed), "customer_id",
             batch_feature_names("customer"))
    assert dropped in set(got.customer_id) or dropped not in set(tx.customer_id)


def test_a_label_known_after_the_cut_off_does_not_count(computed_copy: Settings) -> None:
    settings = computed_copy
    delay = label_delay(settings)
    day = START + timedelta(days=15)
    cut = ref.cut_off(day)
    tx, labels = ref.lake_frames(settings.lake_dir)
    # a legit transaction in the run's 1-day risk window (the day `delay` days before)
    window = tx[(tx.event_time >= cut - pd.Timedelta(days=delay + 1))
                & (tx.event_time < cut - pd.Timedelta(days=delay))]
    legit = set(labels[~labels.is_fraud].txn_id)
    txn = window[window.txn_id.isin(legit)].iloc[0]
    late = cut + pd.Timedelta(hours=1)  # known one hour after the run's cut-off
    relabel = pa.Table.from_pylist([{
        "txn_id": txn.txn_id, "is_fraud": True, "source": "investigator",
        "analyst_id": "A1", "reason": "test", "labelled_at": late.to_pydatetime(),
        "schema_version": 1}], schema=LABEL_SCHEMA)
    write_parquet_durable(relabel, partition_dir(settings.lake_dir, "labels", late.date())
                          / "investigator.parquet")
    result = run_batch_features(settings)
    computed = result["groups"]["features"]["computed"]
    assert day.isoformat() not in computed  # its inputs did not change
    assert (day + timedelta(days=1)).isoformat() in computed

    def risk(run: date) -> float:
        rows = ref.read_partition(batch_table(settings, "terminal"), "run_date", run.isoformat())
        return float(rows.set_index("terminal_id").loc[txn.terminal_id,
                                                       "terminal_fraud_risk_7d"])

    labels = pd.concat([labels, relabel.to_pandas()])
    for run in (day, day + timedelta(days=1)):
        want = ref.terminal_rows(tx, labels, run, delay).loc[txn.terminal_id,
                                                             "terminal_fraud_risk_7d"]
        assert risk(run) == pytest.approx(want)
    assert risk(day + timedelta(days=1)) > ref.terminal_rows(
        tx, labels[labels.labelled_at < cut], day + timedelta(days=1), delay
    ).loc[txn.terminal_id, "terminal_fraud_risk_7d"]


def test_feast_reads_the_batch_views(computed: tuple[Settings, dict], redis_url: str) -> None:
    from pipelines.features.store import apply, feature_store

    settings, _ = computed
    settings = settings.model_copy(update={"redis_url": redis_url.rsplit("/", 1)[0] + "/13"})
    apply(settings, echo=lambda _: None)
    day = START + timedelta(days=10)
    customers = ["C00001", "C00002", "C00003"]
    at = ref.cut_off(day) + pd.Timedelta(hours=5)  # during day + 1: the run of `day` holds
    entity_df = pd.DataFrame({"customer_id": customers, "event_timestamp": [at] * 3})
    refs = [f"customer_batch_features:{n}" for n in batch_feature_names("customer")]
    got = feature_store(settings).get_historical_features(
        entity_df=entity_df, features=refs).to_df().set_index("customer_id").sort_index()
    want = ref.read_partition(batch_table(settings, "customer"), "run_date", day.isoformat())
    want = want.set_index("customer_id").loc[customers]
    for name in batch_feature_names("customer"):
        np.testing.assert_allclose(got[name].to_numpy(float), want[name].to_numpy(float),
                                   rtol=1e-12, equal_nan=True, err_msg=name)
