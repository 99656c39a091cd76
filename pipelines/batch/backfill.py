"""``backfill_stream_features``: the stream views' rows for history, computed by Spark.

The stream writes, per entity, its window aggregates as of each event over ``(t − length,
t]``, that event included, stamped with the event's time (kestrel/windows.py). Here the same
declared features (kestrel/features/definitions.py), each with its aggregation's Spark
implementation, are computed over range frames on event time in µs: ``rangeBetween(-(length −
1 µs), 0)``. A range frame includes every event at the same
µs as the current one, which is what the stream's log holds in the end for such a tie (the
row of the later event of the two, re-emitted, is the newest version of that (key, time)
row); so there is one row per (key, event_timestamp), and for a card the last event of a tie
(in lake order) gives ``card_last_lat`` / ``card_last_lon``. Sums are rounded to cents, as
the stream rounds them.

Rows go to the stream's offline feature log (``var/features/log/<view>/``), in its schema
(``pipelines.stream.offline_log.view_schema``), one file per event day,
``backfill-YYYY-MM-DD.parquet`` (re-running replaces it; ``kestrel features compact`` leaves
it alone). ``created`` is the event time itself, older than any row the real stream writes
for the same event, so where both exist Feast's point-in-time join prefers the stream's row.

A feature added to a deployment with history (docs/schema-evolution.md): the stream's rows
written before it existed lack its column (they read as nulls: offline_log.open_log), and
being newer they would hide the backfill's value. So for each backfilled day the stream
served, :func:`fill_stream_rows` writes ``fill-YYYY-MM-DD.parquet``: a new version of every
stream row whose newest version lacks a declared feature, holding the stream's values and the
backfill's for what it lacks, ``created`` 1 µs after the stream's version. It is then the
newest version of that row for both engines (the as-of join and Feast's), the served values
stay what they were, and a later re-emission by the stream (complete, created now) still
wins. The stream's own files are never rewritten. :func:`fill_online` then writes the newest
backfill value of each missing feature into Redis (``kestrel backfill --online``) with
HSETNX, so a field the stream has written since is never overwritten.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Collection
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from kestrel.errors import LakeError
from kestrel.features import FEATURES, Feature, features_for
from kestrel.features.inputs import INPUTS
from kestrel.features.registry import SparkWindow
from kestrel.lake import list_partitions, write_parquet_durable
from kestrel.settings import Settings
from kestrel.windows import ENTITIES, ENTITY_KEYS, Entity, horizon, stream_view_name
from pipelines.batch.jobs import _read_lake, days_between
from pipelines.batch.layout import staging_dir
from pipelines.batch.session import spark_session
from pipelines.stream.offline_log import log_dir, open_log, view_schema

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

Progress = Callable[[str], None]
BACKFILL_FILE = "backfill-{day}.parquet"
FILL_FILE = "fill-{day}.parquet"
MICROSECOND = pd.Timedelta(microseconds=1)
TX_COLUMNS = ["txn_id", "event_time", "customer_id", "card_id", "terminal_id", "mcc", "amount",
              "country", "lat", "lon"]


def _aggregate(feature: Feature) -> Column:
    from pyspark.sql import Window as W

    key = ENTITY_KEYS[feature.entity]
    source, condition = feature.source, feature.condition
    return feature.aggregate.spark(SparkWindow(
        frame=W.partitionBy(key).orderBy("t").rangeBetween(-(feature.micros - 1), 0),
        ordered=W.partitionBy(key).orderBy("t", "ord"),
        micros=feature.micros,
        values=(source or INPUTS["time"]).spark(),
        mask=condition.spark() if condition else None))


def entity_rows(tx: DataFrame, entity: Entity,
                features: tuple[Feature, ...] | None = None) -> DataFrame:
    """One row per (key, event time) of ``tx``: the stream's row for that event, with the
    entity's declared features (or ``features``, for tests)."""
    from pyspark.sql import Window as W
    from pyspark.sql import functions as F

    key = ENTITY_KEYS[entity]
    features = features_for(entity) if features is None else features
    rows = tx.select(key, "t", "ord", "event_time",
                     *[_aggregate(f).alias(f.name) for f in features])
    last_of_tie = W.partitionBy(key, "t").orderBy(F.col("ord").desc())
    return (rows.withColumn("_n", F.row_number().over(last_of_tie)).where(F.col("_n") == 1)
            .select(key, *[f.name for f in features],
                    F.col("event_time").alias("event_timestamp"),
                    F.col("event_time").alias("created"),
                    F.date_format("event_time", "yyyy-MM-dd").alias("day")))


def backfill_stream_features(settings: Settings, start: date | None = None,
                             end: date | None = None,
                             progress: Progress | None = None,
                             exclude_txn_ids: Collection[str] = ()) -> dict[str, Any]:
    """Write the stream views' rows for the events of days ``start`` … ``end`` (default:
    the whole lake) to the offline feature log; returns rows and files per view.

    ``exclude_txn_ids``: events to leave out as if the lake lacked them — what the stream
    did not apply (sent to ``transactions.late`` or the DLQ), so that the backfill's rows
    are comparable with the stream's (``kestrel parity``); empty by default."""
    from pyspark.sql import functions as F

    say = progress or (lambda _line: None)
    began = time.perf_counter()
    days = list_partitions(settings.lake_dir, "transactions")
    if not days:
        raise LakeError(f"no transactions in the lake at {settings.lake_dir}; run "
                        "`kestrel simulate --to lake` or `kestrel archive` first")
    first = max(date.fromisoformat(days[0]), start or date.min)
    last = min(date.fromisoformat(days[-1]), end or date.max)
    result: dict[str, Any] = {"start": first.isoformat(), "end": last.isoformat(), "views": {}}
    if first > last:
        result["seconds"] = time.perf_counter() - began
        return result
    history = max(math.ceil(horizon(e) / timedelta(days=1)) for e in ENTITIES)
    spark = spark_session(settings, echo=say)
    tx = _read_lake(spark, settings.lake_dir, "transactions",
                    first - timedelta(days=history), last, TX_COLUMNS)
    if exclude_txn_ids:
        tx = tx.where(~F.col("txn_id").isin(sorted(exclude_txn_ids)))
    tx = (tx.withColumn("ord", F.monotonically_increasing_id())
          .withColumn("t", F.unix_micros("event_time")).cache())
    say(f"backfill: {tx.count():,} transactions read ({first - timedelta(days=history)} … "
        f"{last}); features {', '.join(sorted(f.name for f in FEATURES))}")
    wanted = [d.isoformat() for d in days_between(first, last)]
    for entity in ENTITIES:
        view = stream_view_name(entity)
        staged = staging_dir(settings) / view
        (entity_rows(tx, entity).where(F.col("day").isin(wanted)).repartition("day")
         .write.mode("overwrite").partitionBy("day").parquet(str(staged)))
        schema = view_schema(entity)
        target = log_dir(settings.var_dir) / view
        rows = files = 0
        for day in wanted:
            parts = sorted((staged / f"day={day}").glob("*.parquet"))
            path = target / BACKFILL_FILE.format(day=day)
            if not parts:
                path.unlink(missing_ok=True)
                continue
            table = pq.ParquetDataset(parts).read().select(schema.names).cast(schema)
            write_parquet_durable(table.sort_by([(schema.names[0], "ascending"),
                                                 ("event_timestamp", "ascending")]), path)
            rows += table.num_rows
            files += 1
        shutil.rmtree(staged.parent, ignore_errors=True)
        filled = fill_stream_rows(settings, entity, wanted)
        result["views"][view] = {"rows": rows, "files": files, "filled": filled}
        say(f"  {view}: {rows:,} rows in {files} files"
            + (f"; {filled:,} stream rows lacking a feature filled" if filled else ""))
    tx.unpersist()
    result["seconds"] = time.perf_counter() - began
    say(f"backfill done in {result['seconds']:.1f} s")
    return result


def fill_stream_rows(settings: Settings, entity: Entity, days: list[str]) -> int:
    """For each of ``days`` the stream served: a new version of every stream row whose newest
    version lacks a declared feature, with the day's backfill value for what it lacks (the
    module's docstring says why); writes or removes ``fill-<day>.parquet``; returns the rows
    written."""
    view = stream_view_name(entity)
    folder = log_dir(settings.var_dir) / view
    parts = sorted(folder.glob("part-*.parquet"))
    schema = view_schema(entity)
    key = ENTITY_KEYS[entity]
    names = [f.name for f in features_for(entity)]
    written = 0
    data = open_log(parts, schema.names) if parts else None
    for day in days:
        path = folder / FILL_FILE.format(day=day)
        backfill = folder / BACKFILL_FILE.format(day=day)
        if data is None or not backfill.exists():
            path.unlink(missing_ok=True)
            continue
        lo = pd.Timestamp(day, tz="UTC")
        ts_type = schema.field("event_timestamp").type
        flt = ((ds.field("event_timestamp") >= pa.scalar(lo.to_pydatetime(), ts_type))
               & (ds.field("event_timestamp") < pa.scalar(
                   (lo + pd.Timedelta(days=1)).to_pydatetime(), ts_type)))
        stream = data.to_table(columns=schema.names, filter=flt).to_pandas()
        newest = stream.sort_values("created", kind="stable").drop_duplicates(
            [key, "event_timestamp"], keep="last")
        lacking = newest[newest[names].isna().any(axis=1)]
        if lacking.empty:
            path.unlink(missing_ok=True)
            continue
        computed = pq.read_table(backfill, columns=[key, "event_timestamp", *names]).to_pandas()
        merged = lacking.merge(computed, on=[key, "event_timestamp"], how="left",
                               suffixes=("", "_backfill"))
        for name in names:
            merged[name] = merged[name].fillna(merged[f"{name}_backfill"])
        merged["created"] = merged["created"] + MICROSECOND
        table = pa.Table.from_pandas(merged[schema.names], preserve_index=False).cast(schema)
        write_parquet_durable(table.sort_by([(key, "ascending"),
                                             ("event_timestamp", "ascending")]), path)
        written += table.num_rows
    return written


def fill_online(settings: Settings, features: list[str] | None = None,
                progress: Progress | None = None) -> dict[str, int]:
    """Write each entity's newest backfill value of ``features`` (default: every declared
    stream feature) into the online store where the entity's hash lacks that field: what a
    new feature needs before a model reading it serves (entities the stream has not seen
    since the feature was deployed have no value online). HSETNX per field: a value the
    stream wrote is never overwritten, and the stream may run meanwhile. Returns fields set
    per view."""
    from redis import Redis

    from kestrel.feast_codec import encode_double, encode_int64
    from pipelines.features.online_writer import ViewWriter
    from pipelines.features.store import feature_store

    say = progress or (lambda _line: None)
    store = feature_store(settings)
    client = Redis.from_url(settings.redis_url)
    out: dict[str, int] = {}
    try:
        for entity in ENTITIES:
            view = stream_view_name(entity)
            wanted = [f for f in features_for(entity) if features is None or f.name in features]
            files = sorted((log_dir(settings.var_dir) / view).glob("backfill-*.parquet"))
            if not wanted or not files:
                continue
            key = ENTITY_KEYS[entity]
            names = [f.name for f in wanted]
            rows = open_log(files, names).to_table(
                columns=[key, "event_timestamp", *names]).to_pandas()
            newest = rows.sort_values("event_timestamp", kind="stable").drop_duplicates(
                key, keep="last")
            writer = ViewWriter.for_view(store, view)
            fields = {f.name: (_mmh3_field(writer.view_name, f.name),
                               encode_int64 if f.dtype == "int64" else encode_double)
                      for f in wanted}
            set_count = 0
            for start in range(0, len(newest), 5000):
                chunk = newest.iloc[start:start + 5000]
                pipe = client.pipeline(transaction=False)
                for row in chunk.itertuples(index=False):
                    redis_key = writer.key(getattr(row, key))
                    for name in names:
                        value = getattr(row, name)
                        if pd.notna(value):
                            field, encode = fields[name]
                            pipe.hsetnx(redis_key, field, encode(value))  # type: ignore[arg-type]
                set_count += sum(int(r) for r in pipe.execute())
            out[view] = set_count
            say(f"  {view}: {set_count:,} missing online values filled for "
                f"{len(newest):,} entities ({', '.join(names)})")
    finally:
        client.close()
    return out


def _mmh3_field(view: str, feature: str) -> bytes:
    from feast.infra.online_stores.helpers import _mmh3

    return _mmh3(f"{view}:{feature}")
