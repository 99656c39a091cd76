"""The offline feature log's commit protocol and compaction (files only, no services)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow.dataset as ds

from kestrel.windows import feature_names
from pipelines.stream.offline_log import OfflineLog, log_dir

T0 = datetime(2018, 4, 1, tzinfo=UTC)
T1 = datetime(2018, 4, 1, 0, 5, tzinfo=UTC)


def row(key: str, when: datetime, count: int) -> dict[str, object]:
    out: dict[str, object] = dict.fromkeys(feature_names("terminal"), count)
    out.update({"terminal_id": key, "event_timestamp": when})
    return out


def read(var: Path) -> list[dict[str, object]]:
    folder = log_dir(var) / "terminal_stream_features"
    return ds.dataset(folder, format="parquet").to_table().to_pylist()


def test_staged_rows_are_invisible_until_published(tmp_path: Path) -> None:
    log = OfflineLog(tmp_path)
    log.stage("b1", {"terminal": [row("T1", T0, 1)]})
    assert not (log_dir(tmp_path) / "terminal_stream_features").exists()
    log.publish("b1")
    assert len(read(tmp_path)) == 1


def test_recover_publishes_only_the_committed_batch(tmp_path: Path) -> None:
    log = OfflineLog(tmp_path)
    log.stage("b1", {"terminal": [row("T1", T0, 1)]})
    log.stage("b2", {"terminal": [row("T2", T0, 1)]})  # never committed
    log.recover("b1")
    assert [r["terminal_id"] for r in read(tmp_path)] == ["T1"]
    assert not log.staging.exists() or not any(log.staging.iterdir())


def test_within_a_batch_only_the_last_version_is_kept(tmp_path: Path) -> None:
    log = OfflineLog(tmp_path)
    log.stage("b1", {"terminal": [row("T1", T1, 1), row("T1", T0, 1), row("T1", T1, 2)]})
    log.publish("b1")
    rows = sorted(read(tmp_path), key=lambda r: r["event_timestamp"])  # type: ignore[arg-type, return-value]
    assert [r["terminal_txn_count_1h"] for r in rows] == [1, 2]


def test_compaction_keeps_the_newest_version_of_each_row(tmp_path: Path) -> None:
    log = OfflineLog(tmp_path)
    log.stage("b1", {"terminal": [row("T1", T0, 1), row("T1", T1, 1)]})
    log.publish("b1")
    log.stage("b2", {"terminal": [row("T1", T1, 5)]})  # a late event re-emitted T1's row
    log.publish("b2")
    assert log.compact("terminal") == 2
    rows = sorted(read(tmp_path), key=lambda r: r["event_timestamp"])  # type: ignore[arg-type, return-value]
    assert [r["terminal_txn_count_1h"] for r in rows] == [1, 5]
    assert len(list((log_dir(tmp_path) / "terminal_stream_features").glob("*.parquet"))) == 1
    assert log.compact("terminal") == 2  # idempotent
