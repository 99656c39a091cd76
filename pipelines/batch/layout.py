"""Where the batch jobs read and write, and how a table's daily partitions are replaced.

Outputs (under ``<var_dir>/features``)::

    batch/customer_batch_features/run_date=YYYY-MM-DD/*.parquet   Feast batch views: one row
    batch/terminal_batch_features/run_date=YYYY-MM-DD/*.parquet   per entity per daily run
    batch/_manifest.json                                          input fingerprints per partition
    insights/customer_daily_category/date=YYYY-MM-DD/*.parquet    spend per customer, day, category
    insights/customer_monthly/month=YYYY-MM/*.parquet             monthly totals, month-over-month
    insights/top_spenders/date=YYYY-MM-DD/*.parquet               the day's top 100 customers

Spark writes a job's partitions to ``batch/_staging/<job>/``; each is then swapped into its
table by two renames (new folder in under a hidden name, old one out, new one to its real
name), so a reader sees either the old or the new partition of a day, never a half-written
one, and a partition the job found empty is removed.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from kestrel.lake import fsync_dir
from kestrel.settings import Settings
from kestrel.windows import Entity, batch_view_name

DAILY_CATEGORY = "customer_daily_category"
MONTHLY = "customer_monthly"
TOP_SPENDERS = "top_spenders"
INSIGHT_TABLES = (DAILY_CATEGORY, MONTHLY, TOP_SPENDERS)
PARTITION_KEY: dict[str, str] = {DAILY_CATEGORY: "date", MONTHLY: "month", TOP_SPENDERS: "date",
                                 batch_view_name("customer"): "run_date",
                                 batch_view_name("terminal"): "run_date"}


def features_dir(settings: Settings) -> Path:
    """Root of the offline feature tables; the same absolute path Feast's sources use."""
    return (settings.var_dir / "features").resolve()


def batch_dir(settings: Settings) -> Path:
    return features_dir(settings) / "batch"


def batch_table(settings: Settings, entity: Entity) -> Path:
    return batch_dir(settings) / batch_view_name(entity)


def insights_dir(settings: Settings) -> Path:
    return features_dir(settings) / "insights"


def insight_table(settings: Settings, table: str) -> Path:
    return insights_dir(settings) / table


def manifest_path(settings: Settings) -> Path:
    return batch_dir(settings) / "_manifest.json"


def staging_dir(settings: Settings) -> Path:
    return batch_dir(settings) / "_staging" / uuid.uuid4().hex[:12]


def partition_values(table_dir: Path, key: str) -> list[str]:
    """The partition values present in a table folder, sorted."""
    if not table_dir.exists():
        return []
    prefix = key + "="
    return sorted(p.name[len(prefix):] for p in table_dir.iterdir()
                  if p.is_dir() and p.name.startswith(prefix))


def partition_files(table_dir: Path, key: str, value: str) -> list[Path]:
    folder = table_dir / f"{key}={value}"
    return sorted(folder.glob("*.parquet")) if folder.exists() else []


def swap_partitions(staged: Path, table_dir: Path, key: str,
                    values: Iterable[str]) -> list[Path]:
    """Replace each partition ``key=value`` of ``table_dir`` by the staged one (removing it
    when the job staged nothing for it). Only ``*.parquet`` files move (no checksums, no
    markers). Returns the files now in the replaced partitions."""
    table_dir.mkdir(parents=True, exist_ok=True)
    moved: list[Path] = []
    for value in values:
        name = f"{key}={value}"
        target = table_dir / name
        files = sorted((staged / name).glob("*.parquet")) if (staged / name).exists() else []
        fresh = table_dir / f".{name}.new"
        old = table_dir / f".{name}.old"
        for leftover in (fresh, old):
            shutil.rmtree(leftover, ignore_errors=True)
        if files:
            fresh.mkdir()
            for i, f in enumerate(files):
                os.replace(f, fresh / f"part-{i:03d}.parquet")
            fsync_dir(fresh)
            moved += [target / f"part-{i:03d}.parquet" for i in range(len(files))]
        if target.exists():
            os.replace(target, old)
        if files:
            os.replace(fresh, target)
        fsync_dir(table_dir)
        shutil.rmtree(old, ignore_errors=True)
    return moved
