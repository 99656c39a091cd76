"""Asset checks: row counts, null rates, value ranges, freshness, and feature drift.

The arithmetic is in dagster_project/quality.py and dagster_project/drift.py; here are the
thresholds and what each check reads. A failed ERROR check marks the partition red in the UI;
the drift check warns at PSI 0.1 and fails at 0.25 (DESIGN's reading of PSI).
"""


from datetime import date, timedelta
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dagster_project.partitions import daily, day_of, days_of
from dagster_project.quality import (
    Measured,
    check_freshness,
    check_null_rates,
    check_ranges,
    check_row_count,
)
from dagster_project.resources import KestrelSettings
from kestrel.contract import FIELDS
from kestrel.events import MAX_AMOUNT
from kestrel.lake import read_table
from kestrel.windows import Entity, batch_feature_names, batch_view_name

REQUIRED = ["txn_id", "event_time", "customer_id", "card_id", "terminal_id", "mcc", "amount",
            "country", "lat", "lon", "channel"]


def _result(m: Measured, severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR
            ) -> dg.AssetCheckResult:
    metadata: dict[str, Any] = {k: dg.MetadataValue.json(v) if isinstance(v, dict | list)
                                else v for k, v in m.metadata.items()}
    return dg.AssetCheckResult(passed=m.passed, severity=severity, metadata=metadata)


def _days(context: dg.AssetCheckExecutionContext) -> list[date]:
    first, last = days_of(context)
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _lake_day(context: dg.AssetCheckExecutionContext, kestrel: KestrelSettings) -> pd.DataFrame:
    return read_table(kestrel.get().lake_dir, "transactions",
                      days=_days(context)).to_pandas()


@dg.asset_check(asset="lake_transactions", partitions_def=daily, blocking=True,
                description="The day has transactions, and no required field is null.")
def lake_rows_and_nulls(context: dg.AssetCheckExecutionContext,
                        kestrel: KestrelSettings) -> dg.AssetCheckResult:
    frame = _lake_day(context, kestrel)
    rows = check_row_count(len(frame), 1)
    nulls = check_null_rates(frame, dict.fromkeys(REQUIRED, 0.0))
    return _result(Measured(rows.passed and nulls.passed, {**rows.metadata, **nulls.metadata}))


@dg.asset_check(asset="lake_transactions", partitions_def=daily, blocking=True,
                description="Amounts in (0, 1,000,000], coordinates on the globe, every event "
                            "time inside its partition's day.")
def lake_value_ranges(context: dg.AssetCheckExecutionContext,
                      kestrel: KestrelSettings) -> dg.AssetCheckResult:
    frame = _lake_day(context, kestrel)
    m = check_ranges(frame, {"amount": (1e-9, MAX_AMOUNT),
                             "lat": (FIELDS["lat"].bound("ge"), FIELDS["lat"].bound("le")),
                             "lon": (FIELDS["lon"].bound("ge"), FIELDS["lon"].bound("le"))})
    days = pd.to_datetime(frame["event_time"], utc=True).dt.date
    outside_day = int((~days.isin(_days(context))).sum())
    return _result(Measured(m.passed and outside_day == 0,
                            {**m.metadata, "events_outside_the_day": outside_day}))


@dg.asset_check(asset="lake_transactions", partitions_def=daily,
                description="Data-time freshness: the day's newest event lies within 6 h of "
                            "the day's end (a partition cut short means the archiver lags).")
def lake_freshness(context: dg.AssetCheckExecutionContext,
                   kestrel: KestrelSettings) -> dg.AssetCheckResult:
    frame = _lake_day(context, kestrel)
    newest = pd.to_datetime(frame["event_time"], utc=True).max() if len(frame) else None
    return _result(check_freshness(newest.to_pydatetime() if newest is not None else None,
                                   day_of(context), timedelta(hours=6)),
                   dg.AssetCheckSeverity.WARN)


def batch_rows(kestrel: KestrelSettings, entity: Entity, day: str) -> pd.DataFrame:
    from pipelines.batch.layout import batch_table, partition_files

    settings = kestrel.get()
    files = partition_files(batch_table(settings, entity), "run_date", day)
    if not files:
        return pd.DataFrame(columns=list(batch_feature_names(entity)))
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()


@dg.asset_check(asset="batch_feature_tables", partitions_def=daily, blocking=True,
                description="Both batch views have rows for the day; counts ≥ 0, average "
                            "amounts within the contract, fraud risk in [0, 1]; at most 1 % "
                            "nulls in count features.")
def batch_tables_valid(context: dg.AssetCheckExecutionContext,
                       kestrel: KestrelSettings) -> dg.AssetCheckResult:
    metadata: dict[str, object] = {}
    passed = True
    entities: tuple[Entity, ...] = ("customer", "terminal")
    for entity in entities:
        frame = pd.concat([batch_rows(kestrel, entity, str(d)) for d in _days(context)])
        names = batch_feature_names(entity)
        ranges: dict[str, tuple[float, float]] = {}
        for n in names:
            if "_txn_count_" in n:
                ranges[n] = (0, 1e9)
            elif "_avg_amount_" in n:
                ranges[n] = (0, MAX_AMOUNT)
            elif "_fraud_risk_" in n:
                ranges[n] = (0.0, 1.0)
        counts = {n: 0.01 for n in names if "_txn_count_" in n}
        parts = [check_row_count(len(frame), 1), check_ranges(frame, ranges),
                 check_null_rates(frame, counts)]
        passed &= all(p.passed for p in parts)
        metadata[batch_view_name(entity)] = {k: v for p in parts for k, v in p.metadata.items()}
    return _result(Measured(passed, metadata))


ALL_CHECKS = [lake_rows_and_nulls, lake_value_ranges, lake_freshness, batch_tables_valid]
