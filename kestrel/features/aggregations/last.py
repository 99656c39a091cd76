"""``last``: the value of the entity's latest event (the one the row is stamped with)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from kestrel.features.inputs import DType
from kestrel.features.registry import Aggregation, ArrayWindow, FeatureSpecError, SparkWindow

if TYPE_CHECKING:
    from pyspark.sql import Column


def output(dtype: DType) -> DType:
    if dtype not in ("int64", "float64"):
        raise FeatureSpecError(f"last of a {dtype} input: the online store keeps int64 and "
                               "float64 features; aggregate it (distinct) instead")
    return dtype


def reference(values: list[Any]) -> Any:
    return values[-1]


def array(w: ArrayWindow) -> np.ndarray:
    return w.values[w.idx]


def spark(w: SparkWindow) -> Column:
    return w.values  # the row of an (entity, time) is its latest event's (the last of a tie)


LAST = Aggregation(
    name="last", windowed=False, takes_input=True, filterable=False, title="last_{input}",
    output=output, reference=reference, array=array, spark=spark,
    description="value of the latest event")
