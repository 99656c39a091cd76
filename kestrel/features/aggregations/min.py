"""``min``: the smallest value in the window."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from kestrel.features.arrays import window_extreme
from kestrel.features.registry import Aggregation, ArrayWindow, SparkWindow, numeric

if TYPE_CHECKING:
    from pyspark.sql import Column


def reference(values: list[Any]) -> float:
    return float(min(values))


def array(w: ArrayWindow) -> np.ndarray:
    return window_extreme(w.values.astype(np.float64), w.lo, w.idx, largest=False)


def spark(w: SparkWindow) -> Column:
    from pyspark.sql import functions as F
    return F.min(w.values).over(w.frame).cast("double")


MIN = Aggregation(
    name="min", windowed=True, takes_input=True, filterable=False, title="{input}_min",
    output=numeric("min"), reference=reference, array=array, spark=spark,
    description="smallest value in the window")
