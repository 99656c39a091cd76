"""Lake assets: the day's raw transactions and the labels that became known that day.

The archiver (or `kestrel simulate --to lake`) writes these partitions; the assets observe
them, so the graph starts at data a person can count, and the checks catch bad input before
any feature is computed from it. A missing day is an error that says how to fill it.
"""


from datetime import date, timedelta

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc

from dagster_project.partitions import ONE_RUN, daily, days_of
from dagster_project.resources import KestrelSettings
from kestrel.errors import LakeError
from kestrel.lake import list_files, partition_dir, read_table
from kestrel.settings import Settings


def _files(settings: Settings, table: str, day: date) -> list[str]:
    folder = partition_dir(settings.lake_dir, table, day)  # type: ignore[arg-type]
    return [str(p) for p in list_files(settings.lake_dir, table)  # type: ignore[arg-type]
            if p.parent == folder]


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


@dg.asset(
    partitions_def=daily, group_name="lake", kinds={"parquet"}, backfill_policy=ONE_RUN,
    description="The day's raw transactions in the lake (written by the archiver from "
                "`transactions`, or by the simulator). Observed, never rewritten here.",
    owners=["team:fraud-platform"], tags={"layer": "lake"},
)
def lake_transactions(context: dg.AssetExecutionContext,
                      kestrel: KestrelSettings) -> dg.MaterializeResult:
    settings = kestrel.get()
    days = _days(*days_of(context))
    missing = [d for d in days if not _files(settings, "transactions", d)]
    if missing:
        raise LakeError(f"no transactions for {', '.join(map(str, missing[:5]))} in "
                        f"{settings.lake_dir}; run `make demo`, `kestrel simulate --to lake` "
                        "or the archiver first")
    table = read_table(settings.lake_dir, "transactions", days=days)
    return dg.MaterializeResult(metadata={
        "rows": table.num_rows,
        "files": sum(len(_files(settings, "transactions", d)) for d in days),
        "customers": pc.count_distinct(table.column("customer_id")).as_py(),
        "cards": pc.count_distinct(table.column("card_id")).as_py(),
        "amount_total": round(float(pc.sum(table.column("amount")).as_py() or 0.0), 2),
        "path": dg.MetadataValue.path(str(partition_dir(settings.lake_dir, "transactions",
                                                        days[-1]))),
    })


@dg.asset(
    partitions_def=daily, group_name="lake", kinds={"parquet"}, backfill_policy=ONE_RUN,
    description="Labels that became known on the day (labelled_at within it): investigator "
                "decisions, chargebacks and the simulator's delayed ground truth.",
    owners=["team:fraud-platform"], tags={"layer": "lake"},
)
def label_table(context: dg.AssetExecutionContext,
                kestrel: KestrelSettings) -> dg.MaterializeResult:
    settings = kestrel.get()
    days = _days(*days_of(context))
    try:
        table = read_table(settings.lake_dir, "labels", days=days)
    except LakeError:
        table = pa.table({"is_fraud": pa.array([], pa.bool_())})
    frauds = int(pc.sum(table.column("is_fraud")).as_py() or 0) if table.num_rows else 0
    return dg.MaterializeResult(metadata={
        "rows": table.num_rows, "frauds": frauds,
        "fraud_share": round(frauds / table.num_rows, 5) if table.num_rows else 0.0,
        "path": dg.MetadataValue.path(str(partition_dir(settings.lake_dir, "labels",
                                                        days[-1]))),
    })
