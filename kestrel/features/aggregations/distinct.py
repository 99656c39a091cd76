"""``distinct``: how many different values the window holds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from kestrel.features.arrays import prev_same_in_windows, window_distinct
from kestrel.features.registry import Aggregation, ArrayWindow, SparkWindow, always

if TYPE_CHECKING:
    from pyspark.sql import Column


def reference(values: list[Any]) -> int:
    return len(set(values))


def array(w: ArrayWindow) -> np.ndarray:
    prev = prev_same_in_windows(w.group, w.values, w.lo, w.idx)
    return window_distinct(prev, w.lo, w.idx)


def spark(w: SparkWindow) -> Column:
    from pyspark.sql import functions as F
    return F.size(F.collect_set(w.values).over(w.frame)).cast("long")


DISTINCT = Aggregation(
    name="distinct", windowed=True, takes_input=True, filterable=False,
    title="distinct_{input}", output=always("int64"), reference=reference, array=array,
    spark=spark, description="number of distinct values in the window")
