"""``max``: the largest value in the window."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from kestrel.features.arrays import window_extreme
from kestrel.features.registry import Aggregation, ArrayWindow, SparkWindow, numeric

if TYPE_CHECKING:
    from pyspark.sql import Column


def reference(values: list[Any]) -> float:
    return float(max(values))


def array(w: ArrayWindow) -> np.ndarray:
    return window_extreme(w.values.astype(np.float64), w.lo, w.idx, largest=True)


def spark(w: SparkWindow) -> Column:
    from pyspark.sql import functions as F
    return F.max(w.values).over(w.frame).cast("double")


MAX = Aggregation(
    name="max", windowed=True, takes_input=True, filterable=False, title="{input}_max",
    output=numeric("max"), reference=reference, array=array, spark=spark,
    description="largest value in the window")
