"""Feature assets: the same functions `kestrel batch` and `kestrel features …` call.

- ``stream_feature_history``: the stream views' rows for the day, computed by Spark from the
  lake with the stream's window definitions (for history the stream never saw; rows the live
  stream wrote win over them in Feast's point-in-time join);
- ``batch_feature_tables``: the daily Spark run (Feast batch views + insight tables), which
  reads up to 30 days of lake history and the labels known at the cut-off;
- ``online_materialization``: the latest batch values and insight documents into Redis.
"""


from typing import Any

import dagster as dg

from dagster_project.partitions import ONE_RUN, daily, days_back, days_of
from dagster_project.resources import KestrelSettings, SparkResource

# The longest batch window, plus the label delay the fraud risk shifts by (kestrel/windows.py)
HISTORY_DAYS = 38


def _say(context: dg.AssetExecutionContext) -> Any:
    return lambda line: context.log.info(line)


def _table(rows: dict[str, int]) -> dg.MetadataValue:
    lines = ["| table | rows |", "|---|---|", *(f"| {k} | {v:,} |" for k, v in rows.items())]
    return dg.MetadataValue.md("\n".join(lines))


@dg.asset(
    partitions_def=daily, group_name="features", kinds={"spark", "parquet"},
    deps=[dg.AssetDep("lake_transactions", partition_mapping=days_back(2))],
    description="The stream views' rows for the day's events, computed by Spark from the lake "
                "with the stream's own window definitions (kestrel/windows.py), in the "
                "stream's offline feature log. Training sets over history read them.",
    owners=["team:fraud-platform"], tags={"layer": "features", "engine": "spark"},
    backfill_policy=ONE_RUN,
)
def stream_feature_history(context: dg.AssetExecutionContext, kestrel: KestrelSettings,
                           spark: SparkResource) -> dg.MaterializeResult:
    from pipelines.batch.backfill import backfill_stream_features

    first, last = days_of(context)
    spark.session()
    result = backfill_stream_features(kestrel.get(), first, last, progress=_say(context))
    views = result.get("views", {})
    rows = {view: int(info.get("rows", 0)) if isinstance(info, dict) else int(info)
            for view, info in views.items()}
    return dg.MaterializeResult(metadata={
        "rows": _table(rows), "total_rows": sum(rows.values()),
        "seconds": round(float(result.get("seconds", 0.0)), 2),
    })


@dg.asset(
    partitions_def=daily, group_name="features", kinds={"spark", "parquet"},
    deps=[dg.AssetDep("lake_transactions", partition_mapping=days_back(HISTORY_DAYS)),
          dg.AssetDep("label_table", partition_mapping=days_back(HISTORY_DAYS))],
    description="The daily Spark run with cut-off at the end of the day: per customer count, "
                "average amount (1/7/30 days) and home location; per terminal count and fraud "
                "risk from labels known by then; the insight tables. Recomputed only when "
                "its inputs changed.",
    owners=["team:fraud-platform"], tags={"layer": "features", "engine": "spark"},
    backfill_policy=ONE_RUN,
)
def batch_feature_tables(context: dg.AssetExecutionContext, kestrel: KestrelSettings,
                         spark: SparkResource) -> dg.MaterializeResult:
    from pipelines.batch.jobs import run_batch_features

    first, last = days_of(context)
    spark.session()
    result = run_batch_features(kestrel.get(), first, last, progress=_say(context))
    groups = result.get("groups", {})
    return dg.MaterializeResult(metadata={
        "rows": _table({k: int(v) for k, v in result.get("rows", {}).items()}),
        "recomputed": dg.MetadataValue.json({k: v.get("computed", []) for k, v in groups.items()}),
        "skipped_unchanged": sum(int(v.get("skipped", 0)) for v in groups.values()),
        "seconds": round(float(result.get("seconds", 0.0)), 2),
    })


@dg.asset(
    partitions_def=daily, group_name="features", kinds={"redis"},
    deps=[batch_feature_tables],
    description="The newest batch feature rows (Feast's Redis format) and the customers' "
                "insight documents and top-spender lists, loaded into Redis incrementally "
                "(a watermark per table; only partitions newer than it are read).",
    owners=["team:fraud-platform"], tags={"layer": "online"},
    backfill_policy=ONE_RUN,
)
def online_materialization(context: dg.AssetExecutionContext,
                           kestrel: KestrelSettings) -> dg.MaterializeResult:
    from pipelines.features.materialize import materialize

    _, last = days_of(context)
    result = materialize(kestrel.get(), None, last, progress=_say(context))
    views = result.get("views", {})
    return dg.MaterializeResult(metadata={
        "rows": _table({k: int(v.get("rows", 0)) for k, v in views.items()}),
        "rows_per_s": round(float(result.get("rows_per_s", 0.0))),
        "insights": dg.MetadataValue.json(result.get("insights", {})),
        "seconds": round(float(result.get("seconds", 0.0)), 2),
    })
