"""The customer insight tables as Spark transformations.

- ``customer_daily_category``: per customer, day and spending category (kestrel.mcc), the
  amount spent (rounded to cents) and the number of transactions;
- ``customer_monthly``: per customer and calendar month, amount and count, and the
  month-over-month change (amount ÷ previous month's amount − 1; None when the previous
  month had no spend). A month without spend after one with spend gets a row with 0 and -1;
  the current month is month-to-date;
- ``top_spenders``: per day the 100 customers who spent most (rank 1 = most; ties by id).
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

from kestrel.mcc import MCC_CATEGORIES, UNKNOWN_CATEGORY

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

TOP_N = 100


def daily_category(tx: DataFrame, days: list[date]) -> DataFrame:
    from pyspark.sql import functions as F

    categories = tx.sparkSession.createDataFrame(
        sorted(MCC_CATEGORIES.items()), "mcc string, category string")
    return (tx.where(F.col("day").isin(days))
            .join(F.broadcast(categories), "mcc", "left")
            .fillna(UNKNOWN_CATEGORY, subset=["category"])
            .groupBy("customer_id", "day", "category")
            .agg(F.round(F.sum("amount"), 2).alias("amount"),
                 F.count(F.lit(1)).alias("count"))
            .select("customer_id", "category", "amount", "count",
                    F.date_format("day", "yyyy-MM-dd").alias("date")))


def top_spenders(tx: DataFrame, days: list[date]) -> DataFrame:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    per_day = (tx.where(F.col("day").isin(days)).groupBy("day", "customer_id")
               .agg(F.round(F.sum("amount"), 2).alias("amount"),
                    F.count(F.lit(1)).alias("count")))
    order = Window.partitionBy("day").orderBy(F.col("amount").desc(), "customer_id")
    return (per_day.withColumn("rank", F.row_number().over(order))
            .where(F.col("rank") <= TOP_N)
            .select("rank", "customer_id", "amount", "count",
                    F.date_format("day", "yyyy-MM-dd").alias("date")))


def monthly(tx: DataFrame, months: list[str]) -> DataFrame:
    """``tx`` must cover each month and the one before it."""
    from pyspark.sql import functions as F

    totals = (tx.withColumn("month", F.date_format("day", "yyyy-MM"))
              .groupBy("customer_id", "month")
              .agg(F.sum("amount").alias("amount"), F.count(F.lit(1)).alias("count")))
    following = F.date_format(F.add_months(F.to_date(F.concat("month", F.lit("-01"))), 1),
                              "yyyy-MM")
    previous = totals.select("customer_id", following.alias("month"),
                             F.col("amount").alias("prev"))
    joined = totals.join(previous, ["customer_id", "month"], "full_outer")
    amount = F.coalesce(F.col("amount"), F.lit(0.0))
    change = F.when(F.col("prev") > 0, F.round(amount / F.col("prev") - 1, 4))
    return (joined.where(F.col("month").isin(months))
            .select("customer_id", F.round(amount, 2).alias("amount"),
                    F.coalesce(F.col("count"), F.lit(0)).cast("long").alias("count"),
                    change.cast("double").alias("mom_change"), "month"))
