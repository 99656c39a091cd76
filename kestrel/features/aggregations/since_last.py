"""``since_last``: seconds from the entity's previous event to its latest one; missing when
there is none within the declared max_age (a tie of two events at one µs gives 0)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from kestrel.features.registry import Aggregation, ArrayWindow, SparkWindow, always

if TYPE_CHECKING:
    from pyspark.sql import Column


def reference(values: list[Any]) -> float | None:
    return (values[-1] - values[-2]) / 1e6 if len(values) > 1 else None


def array(w: ArrayWindow) -> np.ndarray:
    has = w.idx > w.lo
    prev = np.where(has, w.idx - 1, w.idx)
    return np.where(has, (w.time[w.idx] - w.time[prev]) / 1e6, np.nan)


def spark(w: SparkWindow) -> Column:
    from pyspark.sql import functions as F
    gap = w.values - F.lag(w.values).over(w.ordered)
    return F.when(gap < w.micros, gap / 1e6)


SINCE_LAST = Aggregation(
    name="since_last", windowed=False, takes_input=False, filterable=False,
    title="seconds_since_last", output=always("float64"), reference=reference, array=array,
    spark=spark, description="seconds since the entity's previous event")
