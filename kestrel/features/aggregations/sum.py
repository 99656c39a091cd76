"""``sum``: the window's values added in time order, rounded to cents (amounts are money)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from kestrel.features.arrays import round2, window_sum
from kestrel.features.registry import Aggregation, ArrayWindow, SparkWindow, numeric

if TYPE_CHECKING:
    from pyspark.sql import Column


def reference(values: list[Any]) -> float:
    return round(sum(values), 2)


def array(w: ArrayWindow) -> np.ndarray:
    values = w.values if w.mask is None else np.where(w.mask, w.values, 0.0)
    return round2(window_sum(values, w.lo, w.idx))


def spark(w: SparkWindow) -> Column:
    from pyspark.sql import functions as F
    values = w.values if w.mask is None else F.when(w.mask, w.values).otherwise(F.lit(0.0))
    return F.round(F.sum(values).over(w.frame), 2)


SUM = Aggregation(
    name="sum", windowed=True, takes_input=True, filterable=True, title="{input}_sum",
    output=numeric("sum"), reference=reference, array=array, spark=spark,
    description="sum of the values in the window, rounded to cents")
