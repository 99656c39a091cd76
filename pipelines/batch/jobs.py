"""``run_batch_features``: the daily batch run over the lake and the labels.

For every day D in the range (default: the lake's first to last transaction day) it
produces the run with cut-off D + 1 day 00:00 UTC: the Feast batch views
(pipelines/batch/features.py) and the insight tables (pipelines/batch/insights.py), as
date-partitioned Parquet (layout in pipelines/batch/layout.py). A partition is recomputed
only when the fingerprint of its inputs (the lake partitions of its windows, plus the job
version and the label delay) differs from the one in the manifest, or its output is gone.

Plain function, plain arguments, a progress callback taking one line of text: the CLI prints
the lines, a Dagster asset logs them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from kestrel.errors import LakeError
from kestrel.lake import PARTITION_KEYS, TableName, table_dir
from kestrel.settings import Settings
from kestrel.windows import ENTITIES, batch_view_name
from pipelines.batch import features, insights
from pipelines.batch.fingerprint import DayDigests, Manifest
from pipelines.batch.layout import (
    DAILY_CATEGORY,
    MONTHLY,
    PARTITION_KEY,
    TOP_SPENDERS,
    batch_table,
    insight_table,
    manifest_path,
    partition_values,
    staging_dir,
    swap_partitions,
)
from pipelines.batch.session import session_info, spark_session

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# Bump when a computation changes: every partition's fingerprint changes with it.
JOB_VERSION = "1"
Progress = Callable[[str], None]
TX_COLUMNS = ["txn_id", "event_time", "customer_id", "terminal_id", "mcc", "amount", "lat",
              "lon"]


def label_delay(settings: Settings) -> int:
    """The label delay in whole days (rounded up): the risk windows end this far back."""
    return math.ceil(settings.label_delay_days)


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def month_of(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


def month_days(month: str) -> list[date]:
    first = date.fromisoformat(month + "-01")
    nxt = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return days_between(first, nxt - timedelta(days=1))


def previous_month(month: str) -> str:
    return month_of(date.fromisoformat(month + "-01") - timedelta(days=1))


@dataclass
class Group:
    """One set of output partitions computed together, with their fingerprints."""

    name: str
    fingerprints: dict[str, str]  # partition value → fingerprint of its inputs
    tables: list[tuple[Path, str]]  # (table folder, partition key)
    dirty: list[str] = field(default_factory=list)

    def plan(self, manifest: Manifest) -> None:
        present = [set(partition_values(folder, key)) for folder, key in self.tables]
        self.dirty = [p for p, fp in sorted(self.fingerprints.items())
                      if manifest.get(self.name, p) != fp
                      or not any(p in values for values in present)]


def _inputs(days: list[date], tables: tuple[TableName, ...]) -> list[tuple[TableName, date]]:
    return [(t, d) for t in tables for d in days]


def plan_groups(settings: Settings, digests: DayDigests, run_days: list[date]) -> list[Group]:
    """The three groups of output partitions for ``run_days`` and their input fingerprints."""
    delay = label_delay(settings)
    reach = features.reach_days(delay)
    salt = f"{JOB_VERSION}:delay={delay}"
    both: tuple[TableName, ...] = ("transactions", "labels")
    feature_fp = {d.isoformat(): digests.fingerprint(
        _inputs(days_between(d - timedelta(days=reach), d), both), "features:" + salt)
        for d in run_days}
    daily_fp = {d.isoformat(): digests.fingerprint([("transactions", d)], "daily:" + salt)
                for d in run_days}
    months = sorted({month_of(d) for d in run_days})
    monthly_fp = {m: digests.fingerprint(
        _inputs(month_days(previous_month(m)) + month_days(m), ("transactions",)),
        "monthly:" + salt) for m in months}
    return [
        Group("features", feature_fp,
              [(batch_table(settings, e), "run_date") for e in ("customer", "terminal")]),
        Group("insights_daily", daily_fp,
              [(insight_table(settings, t), PARTITION_KEY[t])
               for t in (DAILY_CATEGORY, TOP_SPENDERS)]),
        Group("insights_monthly", monthly_fp,
              [(insight_table(settings, MONTHLY), PARTITION_KEY[MONTHLY])]),
    ]


def _read_lake(spark: SparkSession, lake_dir: Path, table: TableName, first: date,
               last: date, columns: list[str]) -> DataFrame:
    from pyspark.sql import functions as F

    key = PARTITION_KEYS[table]
    frame = spark.read.parquet(str(table_dir(lake_dir, table)))
    return (frame.where((F.col(key) >= first.isoformat()) & (F.col(key) <= last.isoformat()))
            .select(*columns))


def _write(frame: DataFrame, settings: Settings, folder: Path, key: str,
           values: list[str]) -> int:
    """Stage ``frame`` partitioned by ``key`` (one file per partition), swap the partitions
    ``values`` into ``folder``; returns the rows now in them."""
    staged = staging_dir(settings) / folder.name
    (frame.repartition(key).write.mode("overwrite").partitionBy(key).parquet(str(staged)))
    files = swap_partitions(staged, folder, key, values)
    import shutil

    shutil.rmtree(staged.parent, ignore_errors=True)
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def run_batch_features(settings: Settings, start: date | None = None, end: date | None = None,
                       progress: Progress | None = None) -> dict[str, Any]:
    """Compute the daily runs of days ``start`` … ``end`` (default: the whole lake) whose
    inputs changed; returns what was computed and what was skipped, per group."""
    say = progress or (lambda _line: None)
    began = time.perf_counter()
    digests = DayDigests(settings.lake_dir)
    lake_days = digests.days("transactions")
    if not lake_days:
        raise LakeError(f"no transactions in the lake at {settings.lake_dir}; run "
                        "`kestrel simulate --to lake` or `kestrel archive` first")
    first = max(date.fromisoformat(lake_days[0]), start or date.min)
    last = min(date.fromisoformat(lake_days[-1]), end or date.max)
    result: dict[str, Any] = {"start": first.isoformat(), "end": last.isoformat(),
                              "run_days": 0, "groups": {}, "rows": {}}
    if first > last:
        say(f"nothing to do: the lake holds {lake_days[0]} … {lake_days[-1]}")
        result["seconds"] = time.perf_counter() - began
        return result
    run_days = days_between(first, last)
    result["run_days"] = len(run_days)
    manifest = Manifest(manifest_path(settings))
    groups = plan_groups(settings, digests, run_days)
    for g in groups:
        g.plan(manifest)
        result["groups"][g.name] = {"partitions": len(g.fingerprints), "computed": g.dirty,
                                    "skipped": len(g.fingerprints) - len(g.dirty)}
        say(f"{g.name}: {len(g.dirty)} of {len(g.fingerprints)} partitions to compute "
            f"({len(g.fingerprints) - len(g.dirty)} unchanged)")
    if not any(g.dirty for g in groups):
        result["seconds"] = time.perf_counter() - began
        return result

    spark = spark_session(settings, echo=say)
    info = session_info()
    result["spark_startup_s"] = info.startup_s if info else 0.0
    delay = label_delay(settings)
    reach = features.reach_days(delay)
    by_name = {g.name: g for g in groups}
    feature_days = [date.fromisoformat(d) for d in by_name["features"].dirty]
    daily_days = [date.fromisoformat(d) for d in by_name["insights_daily"].dirty]
    months = by_name["insights_monthly"].dirty
    lows, highs = [], []
    if feature_days:
        lows.append(min(feature_days) - timedelta(days=reach))
        highs.append(max(feature_days))
    if daily_days:
        lows.append(min(daily_days))
        highs.append(max(daily_days))
    if months:
        lows.append(month_days(previous_month(months[0]))[0])
        highs.append(month_days(months[-1])[-1])
    lo, hi = min(lows), max(highs)

    from pyspark.sql import functions as F

    # not cached: each group reads only the columns and days it needs, and re-reading the
    # columnar files costs less than building Spark's in-memory copy of them
    tx = (_read_lake(spark, settings.lake_dir, "transactions", lo, hi, TX_COLUMNS)
          .withColumn("day", F.to_date("event_time")))
    say(f"transactions {lo} … {hi}")

    if feature_days:
        step = time.perf_counter()
        f_lo = min(feature_days) - timedelta(days=reach)
        labels = _read_lake(spark, settings.lake_dir, "labels", f_lo, max(feature_days),
                            ["txn_id", "is_fraud", "labelled_at"]) \
            if digests.days("labels") else spark.createDataFrame(
                [], "txn_id string, is_fraud boolean, labelled_at timestamp")
        cut_off = max(feature_days) + timedelta(days=1)
        labels = labels.where(F.col("labelled_at") < F.lit(cut_off).cast("timestamp"))
        span = tx.where(F.col("day") >= f_lo)
        frames = {"customer": features.customer_features(span, feature_days, f_lo),
                  "terminal": features.terminal_features(span, labels, feature_days, f_lo,
                                                         delay)}
        for entity in ENTITIES:
            if entity not in frames:
                continue
            view = batch_view_name(entity)
            rows = _write(frames[entity], settings, batch_table(settings, entity),
                          "run_date", by_name["features"].dirty)
            result["rows"][view] = rows
            say(f"  {view}: {rows:,} rows in {len(feature_days)} run days")
        manifest.update("features", {d: by_name["features"].fingerprints[d]
                                     for d in by_name["features"].dirty})
        say(f"features done ({time.perf_counter() - step:.1f} s)")

    if daily_days:
        step = time.perf_counter()
        for table, frame in ((DAILY_CATEGORY, insights.daily_category(tx, daily_days)),
                             (TOP_SPENDERS, insights.top_spenders(tx, daily_days))):
            rows = _write(frame, settings, insight_table(settings, table), "date",
                          by_name["insights_daily"].dirty)
            result["rows"][table] = rows
            say(f"  {table}: {rows:,} rows in {len(daily_days)} days")
        manifest.update("insights_daily", {d: by_name["insights_daily"].fingerprints[d]
                                           for d in by_name["insights_daily"].dirty})
        say(f"daily insights done ({time.perf_counter() - step:.1f} s)")

    if months:
        step = time.perf_counter()
        rows = _write(insights.monthly(tx, months), settings, insight_table(settings, MONTHLY),
                      "month", months)
        result["rows"][MONTHLY] = rows
        say(f"  {MONTHLY}: {rows:,} rows in {len(months)} months")
        manifest.update("insights_monthly", {m: by_name["insights_monthly"].fingerprints[m]
                                             for m in months})
        say(f"monthly insights done ({time.perf_counter() - step:.1f} s)")
    result["seconds"] = time.perf_counter() - began
    say(f"batch run done in {result['seconds']:.1f} s")
    return result
