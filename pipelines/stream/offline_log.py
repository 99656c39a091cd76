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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from kestrel.features import features_for
from kestrel.lake import fsync_dir, write_parquet_durable
from kestrel.windows import ENTITIES, ENTITY_KEYS, Entity, stream_view_name

ColumnBlock = dict[str, Any]
"""Rows as columns: column name → values (a list or a numpy array), event_timestamp in µs."""

TS = pa.timestamp("us", tz="UTC")
ARROW_TYPES = {"int64": pa.int64(), "float64": pa.float64()}  # a feature's declared type


def log_dir(var_dir: Path) -> Path:
    return var_dir / "features" / "log"


def view_schema(entity: Entity) -> pa.Schema:
    fields = [pa.field(ENTITY_KEYS[entity], pa.string())]
    fields += [pa.field(f.name, ARROW_TYPES[f.dtype]) for f in features_for(entity)]
    fields += [pa.field("event_timestamp", TS), pa.field("created", TS)]
    return pa.schema(fields)


def open_log(source: Path | list[Path], columns: list[str] | None = None,
             partitioning: str | None = None) -> ds.Dataset:
    """A dataset over log files written by different versions of the code (schema
    generations): its schema is the union of the files' schemas plus ``columns`` it lacks
    (as float64), so a column a file does not have reads as nulls instead of failing
    (``ArrowInvalid: No match for FieldRef``) the moment a feature is added to a deployment
    with history. Readers then decide what a null means (docs/schema-evolution.md)."""
    data = ds.dataset(source, format="parquet", partitioning=partitioning)
    schemas = [f.physical_schema for f in data.get_fragments()]
    schema = pa.unify_schemas(schemas, promote_options="permissive") if schemas else data.schema
    for name in columns or []:
        if schema.get_field_index(name) < 0 and data.schema.get_field_index(name) < 0:
            schema = schema.append(pa.field(name, pa.float64()))
    if partitioning is not None:  # keep the partition fields the dataset discovered
        for f in data.schema:
            if schema.get_field_index(f.name) < 0:
                schema = schema.append(f)
    return ds.dataset(source, format="parquet", partitioning=partitioning, schema=schema)


class OfflineLog:
    def __init__(self, var_dir: Path):
        self.root = log_dir(var_dir)
        self.staging = self.root / "_staging"
        self._schemas = {e: view_schema(e) for e in ENTITIES}

    def stage(self, batch_id: str, rows: dict[Entity, list[dict[str, Any]]],
              columns: dict[Entity, list[ColumnBlock]] | None = None) -> None:
        """Write the batch's rows to staging (durable, invisible to readers): ``rows`` one
        dict per row, ``columns`` blocks of rows as {column: values} (event_timestamp in µs)."""
        base = int(datetime.now(UTC).timestamp() * 1_000_000)
        columns = columns or {}
        for entity in ENTITIES:
            schema = self._schemas[entity]
            bare = pa.schema([f for f in schema if f.name != "created"])
            tables = [pa.table({f.name: _arrow(block[f.name], f.type) for f in bare},
                               schema=bare) for block in columns.get(entity, [])]
            if rows.get(entity):
                tables.append(pa.Table.from_pylist(rows[entity], schema=bare))
            if not tables:
                continue
            table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
            # within a batch only the last version of a (key, time) row matters
            # any consistent code per key does (only equality is used): Arrow's dictionary
            # encoding is C, np.unique sorted Python strings holding the GIL
            codes = table.column(ENTITY_KEYS[entity]).combine_chunks().dictionary_encode(
                ).indices.to_numpy()
            ts = table.column("event_timestamp").cast(pa.int64()).to_numpy()
            n = len(ts)
            order = np.lexsort((np.arange(n), ts, codes))
            last = np.ones(n, dtype=bool)
            last[:-1] = (codes[order][1:] != codes[order][:-1]) | (ts[order][1:]
                                                                   != ts[order][:-1])
            kept = np.sort(order[last])
            if len(kept) < n:
                table = table.take(pa.array(kept))
            # a re-emitted row must read as newer than the version it replaces:
            # ``created`` grows by 1 µs per row, in emission order
            created = pa.array(base + np.arange(table.num_rows, dtype=np.int64), pa.int64())
            table = table.append_column(schema.field("created"), created.cast(TS))
            name = f"{stream_view_name(entity)}.parquet"
            write_parquet_durable(table, self.staging / batch_id / name)

    def discard(self, batch_id: str) -> None:
        """Forget a staged batch that was not committed."""
        shutil.rmtree(self.staging / batch_id, ignore_errors=True)

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

    def compact(self, entity: Entity) -> int:
        """Rewrite a view's published files as one, keeping the newest version of each
        (key, event_timestamp) row; returns the rows kept.

        Needed before a point-in-time join: Feast 0.67's file offline store sorts by
        ``created`` and then, unstably, by the event timestamp, so when a late event made the
        stream re-emit a row, Feast may pick an older version of it. Safe while the stream
        runs: only the files read are replaced (new ones stay for the next compaction).
        """
        folder = self.root / stream_view_name(entity)
        files = sorted(f for f in folder.glob("part-*.parquet")) if folder.exists() else []
        if len(files) <= 1 and not self._has_versions(files, entity):
            return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        # older files may lack features added since: they read as nulls (open_log)
        schema = self._schemas[entity]
        table = open_log(files, schema.names).to_table(columns=schema.names).cast(schema)
        key = ENTITY_KEYS[entity]
        frame = table.to_pandas()
        frame = frame.sort_values("created", kind="stable").drop_duplicates(
            [key, "event_timestamp"], keep="last").sort_values([key, "event_timestamp"])
        out = pa.Table.from_pandas(frame, schema=self._schemas[entity], preserve_index=False)
        target = folder / f"part-{files[-1].stem.removeprefix('part-')}-compacted.parquet"
        write_parquet_durable(out, target)
        for f in files:
            if f != target:
                f.unlink()
        fsync_dir(folder)
        return out.num_rows

    def _has_versions(self, files: list[Path], entity: Entity) -> bool:
        if not files:
            return False
        t = pq.read_table(files[0], columns=[ENTITY_KEYS[entity], "event_timestamp"])
        return t.group_by([ENTITY_KEYS[entity], "event_timestamp"]).aggregate([]).num_rows \
            < t.num_rows

    def recover(self, committed_batch: str | None) -> None:
        if not self.staging.exists():
            return
        for folder in self.staging.iterdir():
            if folder.name == committed_batch:
                self.publish(folder.name)
            else:
                shutil.rmtree(folder, ignore_errors=True)


def _arrow(values: Any, type_: pa.DataType) -> pa.Array:
    """A column as Arrow: a numpy object array (the entity keys) through pyarrow's pandas
    path (columnar.strings says why); numbers as they are (that path would read NaN as
    null)."""
    if isinstance(values, np.ndarray) and values.dtype == object:
        return pa.array(values, type_, from_pandas=True)
    return pa.array(values, type_)
