"""The label store: ``lake/labels/labelled_date=YYYY-MM-DD/*.parquet``, one row per label.

Every label is kept (an investigator may overturn a chargeback, or the other way round); a
reader asks for the labels *known at T*, which means exactly those with ``labelled_at < T``
(DESIGN.md, the point-in-time contract), and of those the latest per txn_id wins. Two
writers feed it: the simulator (ground truth, ``labelled_at`` = event time + the label delay)
and the intake from the `labels` topic (labels/intake.py). The same label written twice
(a retried POST, a replay) is harmless: identical rows collapse, and the latest still wins.

Ties (two different verdicts for one txn_id with the same ``labelled_at``) are broken the same
way every time: fraud wins, so a reader never depends on file order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from kestrel.lake import LABEL_SCHEMA, PARTITION_KEYS, dataset, list_partitions

PARTITION = PARTITION_KEYS["labels"]


def _utc(when: datetime | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(when)
    if ts.tzinfo is None:
        raise ValueError(f"a time without a timezone is ambiguous: {when!r}; give UTC")
    return ts.tz_convert(UTC)


def read_labels(lake_dir: Path, known_before: datetime | pd.Timestamp | None = None) -> pa.Table:
    """Every label row (LABEL_SCHEMA) with ``labelled_at < known_before`` (all when None),
    exact duplicates removed. Partitions after ``known_before``'s date are not opened."""
    if not list_partitions(lake_dir, "labels"):
        return LABEL_SCHEMA.empty_table()
    flt = None
    if known_before is not None:
        t = _utc(known_before)
        flt = (ds.field(PARTITION) <= t.date().isoformat()) & (
            ds.field("labelled_at") < pa.scalar(t.to_pydatetime(), LABEL_SCHEMA.field(
                "labelled_at").type))
    table = dataset(lake_dir, "labels").to_table(columns=LABEL_SCHEMA.names, filter=flt)
    return table.group_by(LABEL_SCHEMA.names, use_threads=False).aggregate([]).select(
        LABEL_SCHEMA.names) if table.num_rows else table


def latest_per_txn(frame: pd.DataFrame,
                   known_before: datetime | pd.Timestamp | None = None) -> pd.DataFrame:
    """In memory: of label rows (txn_id, is_fraud, labelled_at, ...), those known before
    ``known_before``, then one per txn_id — the latest (fraud wins a tie)."""
    if known_before is not None:
        frame = frame[frame["labelled_at"] < _utc(known_before)]
    ordered = frame.sort_values(["txn_id", "labelled_at", "is_fraud"], kind="stable")
    return ordered.drop_duplicates("txn_id", keep="last").reset_index(drop=True)


def latest_labels(lake_dir: Path,
                  known_before: datetime | pd.Timestamp | None = None) -> pd.DataFrame:
    """One row per txn_id: its latest label known before ``known_before`` (columns txn_id,
    is_fraud, labelled_at, source, reason), sorted by txn_id."""
    table = read_labels(lake_dir, known_before)
    cols = ["txn_id", "is_fraud", "labelled_at", "source", "reason"]
    return latest_per_txn(table.select(cols).to_pandas())


def label_counts(lake_dir: Path, known_before: datetime | pd.Timestamp | None = None
                 ) -> dict[str, int]:
    """Rows, labelled transactions and frauds among the latest labels (for manifests)."""
    rows = read_labels(lake_dir, known_before).num_rows
    latest = latest_labels(lake_dir, known_before)
    return {"label_rows": rows, "labelled_txns": len(latest),
            "frauds": int(latest["is_fraud"].sum()) if len(latest) else 0}
