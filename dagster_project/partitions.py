"""The daily partitions every asset shares, and how a partition key becomes dates."""


from datetime import date, timedelta

import dagster as dg

# The simulated history starts here (DESIGN.md, "Simulated data"); production sets its own.
FIRST_DAY = "2018-04-01"

daily = dg.DailyPartitionsDefinition(start_date=FIRST_DAY, timezone="UTC")


def day_of(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> date:
    """The run's day (the last one, when a backfill runs a range as one run)."""
    return days_of(context)[1]


def days_of(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext
            ) -> tuple[date, date]:
    """First and last day of the run's partitions: one day, or a whole range when a backfill
    runs as a single run (the Spark assets' backfill policy: one Spark job for the range)."""
    keys = context.partition_key_range
    return date.fromisoformat(keys.start), date.fromisoformat(keys.end)


# Spark assets take a backfill of many days as one run (one job over the range, not N jobs)
ONE_RUN = dg.BackfillPolicy.single_run()


def days_back(n: int) -> dg.TimeWindowPartitionMapping:
    """Depend on the same day and the ``n - 1`` days before it (a window's history)."""
    return dg.TimeWindowPartitionMapping(start_offset=-(n - 1),
                                         allow_nonexistent_upstream_partitions=True)


def day_range(end: date, days: int) -> list[date]:
    return [end - timedelta(days=i) for i in range(days - 1, -1, -1)]
