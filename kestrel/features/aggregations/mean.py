"""``mean``: the window's values added in time order, divided by their number; not rounded
(a mean at an exact half cent would round differently in Python and Spark)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from kestrel.features.arrays import window_sum
from kestrel.features.registry import Aggregation, ArrayWindow, SparkWindow, numeric

if TYPE_CHECKING:
    from pyspark.sql import Column


def reference(values: list[Any]) -> float:
    return sum(values) / len(values)


def array(w: ArrayWindow) -> np.ndarray:
    return window_sum(w.values.astype(np.float64), w.lo, w.idx) / (w.idx - w.lo + 1)


def spark(w: SparkWindow) -> Column:
    from pyspark.sql import functions as F
    return F.avg(w.values).over(w.frame)


MEAN = Aggregation(
    name="mean", windowed=True, takes_input=True, filterable=False, title="{input}_mean",
    output=numeric("mean"), reference=reference, array=array, spark=spark,
    description="mean of the values in the window")
