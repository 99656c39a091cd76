"""Point-in-time correctness: nothing stamped at or after T, and no label known only after
the cut-off, ever reaches T's training row. Hand-built offline tables, the real Feast registry,
both engines (Feast's get_historical_features and the as-of merge) must agree."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kestrel.settings import Settings
from kestrel.windows import ENTITY_KEYS, feature_names, stream_view_name
from pipelines.features.store import apply
from pipelines.stream.offline_log import log_dir, view_schema
from training.dataset import historical_features
from training.features import MODEL_FEATURES
from training.pipeline import TrainingSet, fold_data
from training.protocol import Protocol

T = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)
US = timedelta(microseconds=1)


def stream_rows(settings: Settings, entity: str, rows: list[tuple[datetime, int]]) -> None:
    """One row per (time, value): every feature of the view set to ``value``."""
    schema = view_schema(entity)  # type: ignore[arg-type]
    key = ENTITY_KEYS[entity]  # type: ignore[index]
    data = []
    for at, value in rows:
        row = {n: float(value) if schema.field(n).type == pa.float64() else value
               for n in feature_names(entity)}  # type: ignore[arg-type]
        if entity == "card":
            row.update(card_last_event_time_us=int(at.timestamp() * 1e6),
                       card_last_lat=48.0, card_last_lon=2.0)
        data.append({key: f"{entity}-1", **row, "event_timestamp": at, "created": at})
    folder = log_dir(settings.var_dir) / stream_view_name(entity)  # type: ignore[arg-type]
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(data, schema=schema), folder / "part-test.parquet")


def batch_rows(settings: Settings, entity: str, names: list[str],
               rows: list[tuple[datetime, int]]) -> None:
    key = ENTITY_KEYS[entity]  # type: ignore[index]
    for at, value in rows:
        frame = pd.DataFrame({key: [f"{entity}-1"], **{
            n: [value if "count" in n else float(value)] for n in names},
            "event_timestamp": [at], "created": [at]})
        folder = (settings.var_dir / "features" / "batch" / f"{entity}_batch_features"
                  / f"run_date={(at - timedelta(days=1)).date()}")
        folder.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(folder / "part-0.parquet", index=False)


@pytest.fixture
def offline(settings: Settings) -> Settings:
    apply(settings, echo=lambda _line: None)
    # the card's previous event 2 h before T, T's own row, and a later one
    stream_rows(settings, "card", [(T - timedelta(hours=2), 1), (T, 2), (T + US, 3)])
    # the customer's only row is T's own: nothing before T
    stream_rows(settings, "customer", [(T, 5)])
    # the terminal saw an event 1 µs before T: that one counts
    stream_rows(settings, "terminal", [(T - US, 7), (T, 8)])
    customer_batch = ["customer_txn_count_1d", "customer_txn_count_7d",
                      "customer_txn_count_30d", "customer_avg_amount_1d",
                      "customer_avg_amount_7d", "customer_avg_amount_30d",
                      "customer_home_lat", "customer_home_lon"]
    # a daily run whose cut-off is exactly T is not "completed before T"
    batch_rows(settings, "customer", customer_batch, [(T - timedelta(days=1), 10), (T, 20)])
    terminal_batch = [n for n in MODEL_FEATURES if n.startswith("terminal_")
                      and n.endswith("d")]
    # older than the batch views' ttl (2 days): not served, not trained on
    batch_rows(settings, "terminal", terminal_batch, [(T - timedelta(days=3), 30)])
    return settings


def transaction_at(when: datetime) -> pd.DataFrame:
    return pd.DataFrame({"txn_id": ["x1"], "card_id": ["card-1"], "customer_id": ["customer-1"],
                         "terminal_id": ["terminal-1"],
                         "event_time": pd.Series([when]).astype("datetime64[us, UTC]"),
                         "amount": [50.0], "lat": [48.0], "lon": [2.0]})


@pytest.mark.slow
def test_nothing_at_or_after_t_reaches_t(offline: Settings) -> None:
    rows = {}
    for engine in ("asof", "feast"):
        frame, _ = historical_features(offline, transaction_at(T), engine=engine)  # type: ignore[arg-type]
        rows[engine] = frame.iloc[0]
    for engine, row in rows.items():
        assert row["card_txn_count_1h"] == 1, engine  # not T's own row (2) nor later (3)
        assert row["seconds_since_last_txn"] == pytest.approx(7200), engine
        assert np.isnan(row["customer_txn_count_1h"]), engine  # only T's own row exists
        assert row["terminal_txn_count_1h"] == 7, engine  # T − 1 µs is before T
        assert row["customer_txn_count_1d"] == 10, engine  # the run cut at T is excluded
        assert row["amount_to_avg_30d"] == pytest.approx(5.0), engine
        assert np.isnan(row["terminal_txn_count_1d"]), engine  # beyond the ttl
    features = list(MODEL_FEATURES)
    pd.testing.assert_series_equal(rows["asof"][features], rows["feast"][features],
                                   check_names=False)
    # one microsecond later, T's own row is history
    later, _ = historical_features(offline, transaction_at(T + US))
    assert later.iloc[0]["card_txn_count_1h"] == 2
    assert later.iloc[0]["customer_txn_count_1d"] == 20


def test_labels_known_only_after_the_cutoff_never_train(tmp_path: Path) -> None:
    protocol = Protocol(end=date(2024, 5, 10), train_days=1, delay_days=1, test_days=1,
                        folds=1)
    fold = protocol.test_folds()[0]
    cutoff = fold.label_cutoff  # 2024-05-09 00:00: the model is trained then
    train_t = fold.train_start + timedelta(hours=10)
    test_t = fold.test_start + timedelta(hours=10)
    frame = pd.DataFrame({
        "txn_id": ["a", "b", "c", "e", "d", "f"],
        "card_id": ["A", "B", "C", "K", "K", "F"],
        "event_time": [train_t] * 4 + [test_t] * 2,
        "truth": [1.0, 1.0, 0.0, 1.0, 1.0, 0.0],
    })
    frame["event_time"] = frame["event_time"].astype("datetime64[us, UTC]")
    frame["day"] = frame["event_time"].dt.strftime("%Y-%m-%d")
    for name in MODEL_FEATURES:
        frame[name] = 0.0
    labels = pd.DataFrame([
        ("a", False, train_t + timedelta(hours=1)),  # legit, known in time …
        ("a", True, cutoff),                          # … overturned exactly at the cut-off
        ("b", True, cutoff - US),                     # fraud known just in time
        ("c", False, cutoff + timedelta(hours=1)),    # known only after: not a training row
        ("e", True, train_t + timedelta(hours=2)),    # card K compromised, known early
        ("d", True, test_t + timedelta(days=1)),
        ("f", False, test_t + timedelta(days=1)),
    ], columns=["txn_id", "is_fraud", "labelled_at"])
    labels["labelled_at"] = labels["labelled_at"].astype("datetime64[us, UTC]")
    compromised = pd.DataFrame({"card_id": ["K", "K"], "event_time": [train_t, test_t],
                                "first_known": [train_t + timedelta(hours=2),
                                                test_t + timedelta(days=1)]})
    for col in ("event_time", "first_known"):
        compromised[col] = compromised[col].astype("datetime64[us, UTC]")
    ts = TrainingSet(frame, labels, compromised, protocol, None)  # type: ignore[arg-type]
    fd = fold_data(ts, fold)
    assert fd.counts["train_rows"] == 4 and fd.counts["train_labelled"] == 3
    assert fd.counts["train_unlabelled"] == 1  # c
    assert sorted(fd.y_train.tolist()) == [0, 1, 1]  # a legit (as known), b and e fraud
    assert fd.counts["train_frauds"] == 2
    # card K was known compromised before the test day: its test transaction is removed
    assert fd.test["card_id"].tolist() == ["F"]
    assert fd.counts["test_removed_known_compromised"] == 1
