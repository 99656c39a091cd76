"""The lake's commit protocol (kestrel/lake_commit.py) survives a crash at any step (no
services needed)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow as pa

from kestrel.lake import write_parquet_durable
from kestrel.lake_commit import CommitLog, StagedFile


def _table(n: int) -> pa.Table:
    return pa.table({"txn_id": [f"t{i}" for i in range(n)]})


def test_commit_applies_and_advances_checkpoint(tmp_path: Path) -> None:
    log = CommitLog(tmp_path, "transactions")
    batch, staging = log.new_batch_dir()
    write_parquet_durable(_table(3), staging / "a.parquet")
    final = tmp_path / "transactions" / "event_date=2018-04-01" / f"part-{batch}.parquet"
    log.commit(batch, "topic-1", [StagedFile(staging / "a.parquet", final)], {0: 10, 3: 7}, {})
    assert final.exists() and not staging.exists()
    assert log.checkpoint().offsets == {0: 10, 3: 7}
    assert not list((tmp_path / "_manifests").rglob("*.json"))


def test_recover_rolls_committed_manifest_forward(tmp_path: Path) -> None:
    """Crash after the manifest was written but before the files were moved."""
    log = CommitLog(tmp_path, "transactions")
    batch, staging = log.new_batch_dir()
    write_parquet_durable(_table(2), staging / "a.parquet")
    final = tmp_path / "transactions" / "event_date=2018-04-02" / f"part-{batch}.parquet"
    log.manifest_dir.mkdir(parents=True)
    (log.manifest_dir / f"{batch}.json").write_bytes(orjson.dumps({
        "batch_id": batch, "topic_id": "topic-1",
        "files": [[str(staging / "a.parquet"), str(final)]],
        "next_offsets": {"1": 42}, "stats": {}}))
    cp = log.recover()
    assert final.exists()
    assert cp.offsets == {1: 42} and cp.topic_id == "topic-1"


def test_recover_discards_uncommitted_staging(tmp_path: Path) -> None:
    """Crash after writing staged files, before the manifest: nothing becomes visible."""
    log = CommitLog(tmp_path, "transactions")
    _, staging = log.new_batch_dir()
    write_parquet_durable(_table(2), staging / "a.parquet")
    cp = log.recover()
    assert not staging.exists()
    assert cp.offsets == {}
    assert not (tmp_path / "transactions").exists()


def test_new_topic_incarnation_resets_offsets(tmp_path: Path) -> None:
    log = CommitLog(tmp_path, "transactions")
    b1, _ = log.new_batch_dir()
    log.commit(b1, "old", [], {0: 500}, {})
    b2, _ = log.new_batch_dir()
    log.commit(b2, "new", [], {1: 5}, {})
    assert log.checkpoint().offsets == {1: 5}
    assert log.checkpoint().topic_id == "new"
