"""The raw-event lake: layout, Arrow schemas, durable writes and reads.

Layout (under ``KESTREL_VAR_DIR/lake``)::

    transactions/event_date=YYYY-MM-DD/*.parquet   raw events, partitioned by event date
    labels/labelled_date=YYYY-MM-DD/*.parquet      every label, partitioned by when it was known
    _manifests/, _staging*/, _checkpoints/          the consumers' commit protocol (hidden;
                                                    kestrel/lake_commit.py)

The lake is the historical source of truth: Spark batch jobs and the training-set builder read
it, and it can be replayed into Kafka. Files are written to a temporary name, fsynced and
renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path
from typing import BinaryIO, Literal

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from kestrel.errors import LakeError

TableName = Literal["transactions", "labels"]

TRANSACTION_SCHEMA = pa.schema(
    [
        ("txn_id", pa.string()),
        ("event_time", pa.timestamp("us", tz="UTC")),
        ("customer_id", pa.string()),
        ("account_id", pa.string()),
        ("card_id", pa.string()),
        ("terminal_id", pa.string()),
        ("mcc", pa.string()),
        ("amount", pa.float64()),
        ("currency", pa.string()),
        ("country", pa.string()),
        ("lat", pa.float64()),
        ("lon", pa.float64()),
        ("channel", pa.string()),
        ("device_id", pa.string()),
        ("schema_version", pa.int16()),
    ]
)

LABEL_SCHEMA = pa.schema(
    [
        ("txn_id", pa.string()),
        ("is_fraud", pa.bool_()),
        ("source", pa.string()),
        ("analyst_id", pa.string()),
        ("reason", pa.string()),
        ("labelled_at", pa.timestamp("us", tz="UTC")),
        ("schema_version", pa.int16()),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {"transactions": TRANSACTION_SCHEMA, "labels": LABEL_SCHEMA}
PARTITION_KEYS: dict[str, str] = {"transactions": "event_date", "labels": "labelled_date"}
TIME_COLUMNS: dict[str, str] = {"transactions": "event_time", "labels": "labelled_at"}


def table_dir(lake_dir: Path, table: TableName) -> Path:
    return lake_dir / table


def partition_dir(lake_dir: Path, table: TableName, day: date | str) -> Path:
    return lake_dir / table / f"{PARTITION_KEYS[table]}={day}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Atomic and durable: temp file in the same folder, fsync, rename, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_parquet_durable(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` as zstd Parquet, atomically and durably."""
    _write_durable(path, lambda fh: pq.write_table(table, fh, compression="zstd"))


def write_parquet_if_changed(table: pa.Table, path: Path) -> bool:
    """Like write_parquet_durable, but leaves an identical file alone (its modification time
    too, which is what the batch jobs' input fingerprints look at); True when written."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    if path.exists() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    write_bytes_durable(data, path)
    return True


def write_bytes_durable(data: bytes, path: Path) -> None:
    """The same for small files (manifests, checkpoints)."""
    _write_durable(path, lambda fh: fh.write(data))


def dataset(lake_dir: Path, table: TableName) -> ds.Dataset:
    """A pyarrow dataset over one lake table (files starting with ``.`` or ``_`` ignored)."""
    root = table_dir(lake_dir, table)
    if not root.exists():
        raise LakeError(
            f"no {table} in the lake at {root}; run `kestrel simulate --to lake` or "
            "`kestrel archive` first"
        )
    part = ds.partitioning(pa.schema([(PARTITION_KEYS[table], pa.string())]), flavor="hive")
    return ds.dataset(root, format="parquet", partitioning=part,
                      schema=SCHEMAS[table].append(pa.field(PARTITION_KEYS[table], pa.string())))


def read_table(
    lake_dir: Path,
    table: TableName,
    days: Iterable[date | str] | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """Read a lake table, optionally only some partitions, sorted by its time column."""
    data = dataset(lake_dir, table)
    key = PARTITION_KEYS[table]
    flt = None
    if days is not None:
        flt = ds.field(key).isin([str(d) for d in days])
    out = data.to_table(columns=columns, filter=flt)
    time_col = TIME_COLUMNS[table]
    if time_col in out.column_names and out.num_rows:
        out = out.sort_by([(time_col, "ascending")])
    return out


def list_partitions(lake_dir: Path, table: TableName) -> list[str]:
    """The partition values (dates) present for a table, sorted."""
    root = table_dir(lake_dir, table)
    if not root.exists():
        return []
    prefix = PARTITION_KEYS[table] + "="
    return sorted(p.name[len(prefix):] for p in root.iterdir()
                  if p.is_dir() and p.name.startswith(prefix))


def list_files(lake_dir: Path, table: TableName) -> list[Path]:
    """Every visible data file of a table."""
    root = table_dir(lake_dir, table)
    if not root.exists():
        return []
    return sorted(p for p in root.glob("*=*/*.parquet") if not p.name.startswith((".", "_")))
