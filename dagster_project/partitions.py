"""The daily partitions every asset shares, and how a partition key becomes dates."""


from datetime import date, timedelta

import dagster as dg

# The simulated history starts here (DESIGN.md, "Simulated data"); production sets its own.
FIRST_DAY = "2018-04-01"

daily = dg.DailyPartitionsDefinition(start_date=FIRST_DAY, timezone="UTC")


def day_of(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> date:
    return date.fromisoformat(context.partition_key)


def days_back(n: int) -> dg.TimeWindowPartitionMapping:
    """Depend on the same day and the ``n - 1`` days before it (a window's history)."""
    return dg.TimeWindowPartitionMapping(start_offset=-(n - 1),
                                         allow_nonexistent_upstream_partitions=True)


def day_range(end: date, days: int) -> list[date]:
    return [end - timedelta(days=i) for i in range(days - 1, -1, -1)]
