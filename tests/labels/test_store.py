"""The label store: every label kept, latest per txn_id wins, "known at T" is strict."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from kestrel.lake import LABEL_SCHEMA, partition_dir, write_parquet_durable
from labels.store import label_counts, latest_labels, read_labels

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)


def label(txn: str, fraud: bool, at: datetime, source: str = "chargeback") -> dict:
    return {"txn_id": txn, "is_fraud": fraud, "source": source, "analyst_id": None,
            "reason": None, "labelled_at": at, "schema_version": 1}


def write(lake: Path, name: str, rows: list[dict]) -> None:
    by_day: dict[str, list[dict]] = {}
    for r in rows:
        by_day.setdefault(r["labelled_at"].date().isoformat(), []).append(r)
    for day, day_rows in by_day.items():
        write_parquet_durable(pa.Table.from_pylist(day_rows, schema=LABEL_SCHEMA),
                              partition_dir(lake, "labels", day) / f"{name}.parquet")


def test_latest_wins_and_duplicates_are_harmless(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write(lake, "a", [label("t1", False, T0), label("t2", True, T0)])
    # t1 overturned two days later (another partition); t2's label delivered twice
    write(lake, "b", [label("t1", True, T0 + timedelta(days=2)), label("t2", True, T0)])
    write(lake, "c", [label("t2", True, T0)])
    latest = latest_labels(lake).set_index("txn_id")
    assert latest.loc["t1", "is_fraud"] and latest.loc["t2", "is_fraud"]
    assert len(latest) == 2
    assert read_labels(lake).num_rows == 3  # every distinct label kept, copies collapsed
    assert label_counts(lake) == {"label_rows": 3, "labelled_txns": 2, "frauds": 2}


def test_known_at_t_is_strictly_before(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    overturn = T0 + timedelta(days=2)
    write(lake, "a", [label("t1", False, T0), label("t1", True, overturn),
                      label("t3", True, overturn)])
    at_overturn = latest_labels(lake, known_before=overturn).set_index("txn_id")
    assert not at_overturn.loc["t1", "is_fraud"]  # the fraud verdict is not known yet at T
    assert "t3" not in at_overturn.index
    just_after = latest_labels(lake, overturn + timedelta(microseconds=1)).set_index("txn_id")
    assert just_after.loc["t1", "is_fraud"] and just_after.loc["t3", "is_fraud"]
    assert latest_labels(lake, known_before=T0).empty


def test_a_tie_is_broken_the_same_way_every_time(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write(lake, "b", [label("t1", True, T0)])
    write(lake, "a", [label("t1", False, T0)])
    assert latest_labels(lake).loc[0, "is_fraud"]


def test_empty_store_and_naive_time(tmp_path: Path) -> None:
    assert latest_labels(tmp_path / "nothing").empty
    write(tmp_path / "lake", "a", [label("t1", False, T0)])
    with pytest.raises(ValueError, match="timezone"):
        latest_labels(tmp_path / "lake", known_before=datetime(2024, 5, 1))
