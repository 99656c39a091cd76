"""Jobs, schedules and the retraining sensor.

Partitions are days of *data*: a schedule runs the newest complete day the lake holds (the
day before today in production, where the lake is current; the last simulated day in dev,
where it is 2018). Re-running a day is cheap and safe — the batch run recomputes only the
partitions whose inputs changed — so the hourly batch schedule picks up late events and new
labels for that day without recomputing anything else.
"""


from datetime import UTC, date, datetime

import dagster as dg
import pyarrow.parquet as pq

from dagster_project.partitions import daily
from dagster_project.resources import KestrelSettings
from kestrel.lake import list_files, list_partitions
from kestrel.settings import Settings

FEATURE_ASSETS = ["stream_feature_history", "batch_feature_tables", "online_materialization"]
TRAINING_ASSETS = ["training_set", "model", "evaluation", "registered_model"]

batch_features_job = dg.define_asset_job(
    "batch_features", selection=dg.AssetSelection.assets(
        "lake_transactions", "label_table", *FEATURE_ASSETS),
    partitions_def=daily, description="The day's lake checks, stream-feature history, batch "
    "feature tables and their materialization into Redis.")

training_job = dg.define_asset_job(
    "training", selection=dg.AssetSelection.assets(*TRAINING_ASSETS), partitions_def=daily,
    description="Training set (Feast point-in-time join), models, evaluation, registry gate.")


def newest_complete_day(settings: Settings, today: date | None = None) -> str | None:
    """The newest lake day before today (UTC): the day a scheduled run should process."""
    today = today or datetime.now(UTC).date()
    days = [d for d in list_partitions(settings.lake_dir, "transactions")
            if date.fromisoformat(d) < today]
    return days[-1] if days else None


def label_count(settings: Settings) -> int:
    """Labels in the lake, from the Parquet footers (no data read)."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in list_files(settings.lake_dir, "labels"))


def _run_for_newest_day(job_name: str, kestrel: KestrelSettings,
                        when: datetime) -> dg.RunRequest | dg.SkipReason:
    day = newest_complete_day(kestrel.get(), when.date())
    if day is None:
        return dg.SkipReason("the lake holds no complete day yet")
    return dg.RunRequest(run_key=f"{job_name}:{day}:{when:%Y%m%dT%H}", partition_key=day)


@dg.schedule(job=batch_features_job, cron_schedule="15 * * * *", execution_timezone="UTC",
             description="Hourly: the batch features of the newest complete lake day "
                         "(unchanged partitions are skipped).")
def hourly_batch_features(context: dg.ScheduleEvaluationContext,
                          kestrel: KestrelSettings) -> dg.RunRequest | dg.SkipReason:
    when = context.scheduled_execution_time or datetime.now(UTC)
    return _run_for_newest_day("batch_features", kestrel, when)


@dg.schedule(job=training_job, cron_schedule="0 3 * * *", execution_timezone="UTC",
             description="Daily: train, evaluate and gate a challenger on the newest day.")
def daily_training(context: dg.ScheduleEvaluationContext,
                   kestrel: KestrelSettings) -> dg.RunRequest | dg.SkipReason:
    when = context.scheduled_execution_time or datetime.now(UTC)
    return _run_for_newest_day("training", kestrel, when)


@dg.sensor(job=training_job, minimum_interval_seconds=300,
           description="Retrain when at least KESTREL_RETRAIN_MIN_NEW_LABELS labels arrived "
                       "since the last training request (the cursor holds the count then).")
def retrain_on_new_labels(context: dg.SensorEvaluationContext,
                          kestrel: KestrelSettings) -> dg.SensorResult | dg.SkipReason:
    settings = kestrel.get()
    now = label_count(settings)
    before = int(context.cursor) if context.cursor else 0
    new = now - before
    if new < settings.retrain_min_new_labels:
        return dg.SkipReason(f"{new:,} new labels since the last training request; "
                             f"retraining needs {settings.retrain_min_new_labels:,}")
    day = newest_complete_day(settings, datetime.now(UTC).date())
    if day is None:
        return dg.SkipReason("labels arrived but the lake holds no complete day to train on")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"labels:{now}", partition_key=day,
                                    tags={"kestrel/new_labels": str(new)})],
        cursor=str(now))
