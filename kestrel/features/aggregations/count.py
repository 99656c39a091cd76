"""``count``: how many events the window holds (with a filter: how many pass it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from kestrel.features.arrays import window_count
from kestrel.features.registry import Aggregation, ArrayWindow, SparkWindow, always

if TYPE_CHECKING:
    from pyspark.sql import Column


def reference(values: list[Any]) -> int:
    return len(values)


def array(w: ArrayWindow) -> np.ndarray:
    if w.mask is None:
        return w.idx - w.lo + 1
    return window_count(w.mask, w.lo, w.idx)


def spark(w: SparkWindow) -> Column:
    from pyspark.sql import functions as F
    if w.mask is None:
        return F.count(F.lit(1)).over(w.frame)
    return F.sum(F.when(w.mask, 1).otherwise(0)).over(w.frame).cast("long")


COUNT = Aggregation(
    name="count", windowed=True, takes_input=False, filterable=True, title="txn_count",
    output=always("int64"), reference=reference, array=array, spark=spark,
    description="number of transactions in the window")
