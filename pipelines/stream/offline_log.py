"""The offline feature log: every feature row the stream produced, for training sets.

One row per entity per applied event (not coalesced: the training-set builder needs the value
the online store held before each transaction). A batch's rows are first written, fsynced,
under ``features/log/_staging/<batch_id>/``; they become visible (renamed into
``features/log/<view>/part-<batch_id>.parquet``) only after the batch's Redis transaction —
the stream's commit point — succeeded. On start, the staging folder of the batch Redis says
was committed last is rolled forward and every other staging folder is discarded.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from kestrel.lake import fsync_dir, write_parquet_durable
from kestrel.windows import ENTITIES, ENTITY_KEYS, Entity, feature_names, stream_view_name

TS = pa.timestamp("us", tz="UTC")


def log_dir(var_dir: Path) -> Path:
    return var_dir / "features" / "log"


def view_schema(entity: Entity) -> pa.Schema:
    fields = [pa.field(ENTITY_KEYS[entity], pa.string())]
    for name in feature_names(entity):
        if name.endswith(("_lat", "_lon")) or "_sum_" in name:
            fields.append(pa.field(name, pa.float64()))
        else:
            fields.append(pa.field(name, pa.int64()))
    fields += [pa.field("event_timestamp", TS), pa.field("created", TS)]
    return pa.schema(fields)


class OfflineLog:
    def __init__(self, var_dir: Path):
        self.root = log_dir(var_dir)
        self.staging = self.root / "_staging"
        self._schemas = {e: view_schema(e) for e in ENTITIES}

    def stage(self, batch_id: str, rows: dict[Entity, list[dict[str, Any]]]) -> None:
        """Write the batch's rows to staging (durable, invisible to readers)."""
        base = datetime.now(UTC)
        for entity, entity_rows in rows.items():
            if not entity_rows:
                continue
            # a re-emitted row must read as newer than the version it replaces, also
            # within one batch: ``created`` grows by 1 µs per row, in emission order
            for i, r in enumerate(entity_rows):
                r["created"] = base + timedelta(microseconds=i)
            table = pa.Table.from_pylist(entity_rows, schema=self._schemas[entity])
            name = f"{stream_view_name(entity)}.parquet"
            write_parquet_durable(table, self.staging / batch_id / name)

    def publish(self, batch_id: str) -> None:
        """Move a committed batch's files into their views (idempotent)."""
        folder = self.staging / batch_id
        if not folder.exists():
            return
        for f in folder.glob("*.parquet"):
            target = self.root / f.stem / f"part-{batch_id}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, target)
            fsync_dir(target.parent)
        shutil.rmtree(folder, ignore_errors=True)

    def recover(self, committed_batch: str | None) -> None:
        if not self.staging.exists():
            return
        for folder in self.staging.iterdir():
            if folder.name == committed_batch:
                self.publish(folder.name)
            else:
                shutil.rmtree(folder, ignore_errors=True)
