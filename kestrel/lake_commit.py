"""The lake's commit protocol: Kafka offsets stored with the files they produced.

Used by every topic → lake consumer (the archiver, pipelines/archive; the label intake,
labels/intake.py). A batch is committed in three durable steps:

1. its Parquet files are written (fsynced) under ``lake/<staging>/<batch_id>/`` (one
   staging folder per topic: ``_staging`` for `transactions`, ``_staging-labels``);
2. a manifest naming those files and the next offset of every partition in the batch is
   written atomically to ``lake/_manifests/<topic>/<batch_id>.json`` — the commit point;
3. the files are renamed into their partitions (``event_date=``, ``labelled_date=``), the
   per-partition checkpoint (``lake/_checkpoints/<topic>.json``) is advanced, and the
   manifest is deleted.

Recovery after a crash (``kill -9`` anywhere) rolls committed manifests forward and throws
away staging folders that never got a manifest; the consumer then resumes every partition at
the checkpointed offset. Kafka's own committed offsets are only advisory (for `kestrel status`),
and Kafka transactions are not used at all (the local broker delivers aborted records).

The checkpoint remembers the topic's id: when the broker was restarted (memory storage) the
topic is new and its offsets start again at zero, so old offsets must not be applied to it.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from kestrel.lake import fsync_dir, write_bytes_durable


@dataclass
class Checkpoint:
    """Next offset to read per partition, for one incarnation (id) of the topic."""

    topic_id: str | None = None
    offsets: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StagedFile:
    staging: Path
    final: Path


class CommitLog:
    """The commit protocol of one topic's consumer. ``staging``: the folder (under the lake)
    its batches are staged in; each topic needs its own, since :meth:`recover` drops every
    folder there that has no manifest of this topic."""

    def __init__(self, lake_dir: Path, topic: str, staging: str = "_staging"):
        self.topic = topic
        self.staging_root = lake_dir / staging
        self.manifest_dir = lake_dir / "_manifests" / topic
        self.checkpoint_path = lake_dir / "_checkpoints" / f"{topic}.json"

    # --- reading state ----------------------------------------------------------------------
    def checkpoint(self) -> Checkpoint:
        if not self.checkpoint_path.exists():
            return Checkpoint()
        doc = orjson.loads(self.checkpoint_path.read_bytes())
        return Checkpoint(doc.get("topic_id"), {int(k): v for k, v in doc["offsets"].items()})

    def new_batch_dir(self) -> tuple[str, Path]:
        batch_id = f"{time.time_ns() // 1_000_000:013d}-{uuid.uuid4().hex[:8]}"
        folder = self.staging_root / batch_id
        folder.mkdir(parents=True, exist_ok=True)
        return batch_id, folder

    # --- the protocol -----------------------------------------------------------------------
    def commit(
        self, batch_id: str, topic_id: str | None, files: list[StagedFile],
        next_offsets: dict[int, int], stats: dict[str, int],
    ) -> None:
        """Make a batch durable (manifest), then apply it. Files must already be fsynced."""
        manifest = {
            "batch_id": batch_id,
            "topic_id": topic_id,
            "files": [[str(f.staging), str(f.final)] for f in files],
            "next_offsets": {str(p): o for p, o in next_offsets.items()},
            "stats": stats,
        }
        path = self.manifest_dir / f"{batch_id}.json"
        write_bytes_durable(orjson.dumps(manifest), path)
        self._apply(path, manifest)

    def recover(self) -> Checkpoint:
        """Roll committed batches forward, drop uncommitted ones; returns the checkpoint."""
        committed: set[str] = set()
        if self.manifest_dir.exists():
            for path in sorted(self.manifest_dir.glob("*.json")):
                manifest = orjson.loads(path.read_bytes())
                committed.add(manifest["batch_id"])
                self._apply(path, manifest)
        if self.staging_root.exists():
            for folder in self.staging_root.iterdir():
                if folder.name not in committed:
                    shutil.rmtree(folder, ignore_errors=True)
        return self.checkpoint()

    def _apply(self, path: Path, manifest: dict[str, Any]) -> None:
        touched: set[Path] = set()
        for staging, final in manifest["files"]:
            src, dst = Path(staging), Path(final)
            if src.exists():  # not yet moved (a crash may have stopped us halfway)
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
                touched.add(dst.parent)
        for folder in touched:
            fsync_dir(folder)
        cp = self.checkpoint()
        if manifest["topic_id"] != cp.topic_id:
            cp = Checkpoint(manifest["topic_id"], {})
        for p, o in manifest["next_offsets"].items():
            cp.offsets[int(p)] = max(o, cp.offsets.get(int(p), 0))
        doc = {"topic_id": cp.topic_id, "offsets": {str(p): o for p, o in cp.offsets.items()}}
        write_bytes_durable(orjson.dumps(doc), self.checkpoint_path)
        path.unlink(missing_ok=True)
        shutil.rmtree(self.staging_root / manifest["batch_id"], ignore_errors=True)
