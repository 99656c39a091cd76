"""The daily feature tables as Spark transformations (kestrel.windows.BATCH_WINDOWS).

A run for day D has the cut-off C = D + 1 day 00:00 UTC; a window of N days holds the events
of days D - N + 1 … D, i.e. event_time in [C - N days, C). Per entity the daily aggregates are
laid on a dense (entity × day) grid, so every window is a row frame of a Spark window
function over days, not a join per window.

Terminal fraud risk over N days: frauds ÷ transactions among the transactions of the N days
that end ``delay`` days before the cut-off (days D - delay - N + 1 … D - delay), where a
transaction counts as fraud when the latest of its labels with ``labelled_at < C`` says so.
Labels turn into +1/-1 changes of a transaction's fraud state on the day they became known;
a change counts for run D when it was known by D, which is exact for relabelled transactions
too.
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

from kestrel.windows import (
    BATCH_DAYS,
    CUSTOMER_HOME_FEATURES,
    ENTITY_KEYS,
    HOME_DAYS,
    batch_feature_names,
    batch_windows_for,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame
    from pyspark.sql.window import WindowSpec


def reach_days(delay: int) -> int:
    """How many days before a run day its inputs reach back."""
    return max(*BATCH_DAYS, HOME_DAYS) - 1 + delay


def _calendar(tx: DataFrame, first: date, last: date) -> DataFrame:
    from pyspark.sql import functions as F

    days = (last - first).days + 1
    return tx.sparkSession.range(days).select(
        F.date_add(F.lit(first), F.col("id").cast("int")).alias("day"))


def _frame(key: str, back: int, upto: int = 0) -> WindowSpec:
    from pyspark.sql import Window

    return Window.partitionBy(key).orderBy("day").rowsBetween(-back, -upto)


def _dense(daily: DataFrame, key: str, first: date, last: date, zero: list[str]) -> DataFrame:
    """``daily`` (key, day, values…) with a row for every key and every day of the range."""
    grid = daily.select(key).distinct().crossJoin(_calendar(daily, first, last))
    return grid.join(daily, [key, "day"], "left").fillna(0, subset=zero)


def _stamped(frame: DataFrame, entity: str) -> DataFrame:
    """Key, features in the view's order, event_timestamp = cut-off, created, run_date."""
    from pyspark.sql import functions as F

    return frame.select(
        ENTITY_KEYS[entity],  # type: ignore[index]
        *batch_feature_names(entity),  # type: ignore[arg-type]
        F.date_add("day", 1).cast("timestamp").alias("event_timestamp"),
        F.current_timestamp().alias("created"),
        F.date_format("day", "yyyy-MM-dd").alias("run_date"))


def _ratio(num: Column, den: Column) -> Column:
    from pyspark.sql import functions as F

    return F.when(den > 0, num / den).cast("double")


def customer_features(tx: DataFrame, run_days: list[date], first: date) -> DataFrame:
    """``tx``: transactions with a ``day`` column, covering [first, max(run_days)]."""
    from pyspark.sql import functions as F

    key = ENTITY_KEYS["customer"]
    daily = tx.groupBy(key, "day").agg(
        F.count(F.lit(1)).alias("n"), F.sum("amount").alias("amount"),
        F.sum("lat").alias("lat"), F.sum("lon").alias("lon"))
    grid = _dense(daily, key, first, max(run_days), ["n", "amount", "lat", "lon"])
    # window sums first (one per length and column), then the features from them
    sums = {f"{c}{d}": F.sum(c).over(_frame(key, d - 1))
            for d in sorted({*BATCH_DAYS, HOME_DAYS}) for c in ("n", "amount", "lat", "lon")
            if c == "n" or c == "amount" or d == HOME_DAYS}
    grid = grid.select(key, "day", *(c.alias(name) for name, c in sums.items()))
    cols: dict[str, Column] = {}
    for w in batch_windows_for("customer"):
        n = F.col(f"n{w.days}")
        cols[w.name] = n.cast("long") if w.aggregation == "count" else _ratio(
            F.col(f"amount{w.days}"), n)
    lat, lon = CUSTOMER_HOME_FEATURES
    cols[lat] = _ratio(F.col(f"lat{HOME_DAYS}"), F.col(f"n{HOME_DAYS}"))
    cols[lon] = _ratio(F.col(f"lon{HOME_DAYS}"), F.col(f"n{HOME_DAYS}"))
    widest = f"customer_txn_count_{max(BATCH_DAYS)}d"
    out = grid.select(key, "day", *(c.alias(name) for name, c in cols.items()))
    out = out.where(F.col("day").isin(run_days) & ((F.col(widest) > 0) | F.col(lat).isNotNull()))
    return _stamped(out, "customer")


def terminal_features(tx: DataFrame, labels: DataFrame, run_days: list[date], first: date,
                      delay: int) -> DataFrame:
    """``labels``: (txn_id, is_fraud, labelled_at) known by max(run_days); ``tx`` as above."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    key = ENTITY_KEYS["terminal"]
    daily = tx.groupBy(key, "day").agg(F.count(F.lit(1)).alias("n"))
    grid = _dense(daily, key, first, max(run_days), ["n"])

    # label → change of the transaction's fraud state, on the day it became known
    # only transactions ever labelled fraud can change state: the rest never count, and
    # leaving them out keeps the join with the transactions small
    by_txn = Window.partitionBy("txn_id").orderBy("labelled_at", "is_fraud")
    ever_fraud = labels.where(F.col("is_fraud")).select("txn_id").distinct()
    relevant = labels.join(ever_fraud, "txn_id", "left_semi")
    changes = (relevant.join(tx.select("txn_id", key, F.col("day").alias("txn_day")), "txn_id")
               .withColumn("state", F.col("is_fraud").cast("int"))
               .withColumn("delta", F.col("state") - F.lag("state", 1, 0).over(by_txn))
               .where(F.col("delta") != 0)
               .select(key, "txn_day", "delta", F.to_date("labelled_at").alias("known")))
    # run D counts a change for window N when txn_day ∈ [D-delay-N+1, D-delay] and known ≤ D
    widest = max(BATCH_DAYS)
    frauds = (changes
              .withColumn("k", F.explode(F.sequence(F.lit(0), F.lit(widest - 1))))
              .withColumn("day", F.date_add("txn_day", F.col("k") + F.lit(delay)))
              .where(F.col("day") >= F.col("known"))
              .groupBy(key, "day")
              .agg(*(F.sum(F.when(F.col("k") < d, F.col("delta")).otherwise(0)).alias(f"f{d}")
                     for d in BATCH_DAYS)))
    grid = grid.join(frauds, [key, "day"], "left").fillna(0, subset=[f"f{d}" for d in BATCH_DAYS])

    cols: dict[str, Column] = {}
    for w in batch_windows_for("terminal"):
        if w.aggregation == "count":
            cols[w.name] = F.sum("n").over(_frame(key, w.days - 1)).cast("long")
        else:
            shifted = F.sum("n").over(_frame(key, w.days - 1 + delay, delay))
            cols[w.name] = _ratio(F.col(f"f{w.days}").cast("double"), shifted)
            cols[f"_shifted_{w.days}"] = shifted
    out = grid.select(key, "day", *(c.alias(name) for name, c in cols.items()))
    out = out.where(F.col("day").isin(run_days)
                    & ((F.col(f"terminal_txn_count_{widest}d") > 0)
                       | (F.col(f"_shifted_{widest}") > 0)))
    return _stamped(out, "terminal")
