"""The inputs a feature aggregates: an event field, or an expression derived from an event.

Each input is declared once with its type and its form in every engine, side by side:
``reference`` (one Event tuple → value), ``array`` (the time column and the field columns of
held events → one value per event) and ``spark`` (a Column over the lake's transactions, with
``t`` the event time in µs). ``reads`` names the event fields the array engine must keep for
it. A feature names its input (``"amount"``) or its filter (``"night"``) by the key of
:data:`INPUTS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from kestrel.features.event import (
    AMOUNT,
    COUNTRY,
    HOUR_US,
    LAT,
    LON,
    MCC,
    NIGHT_ENDS,
    NIGHT_STARTS,
    SPARK_COLUMNS,
    TERMINAL,
    TIME,
    Event,
    is_night,
)

if TYPE_CHECKING:
    from pyspark.sql import Column

DType = Literal["int64", "float64", "string", "bool"]
Columns = Mapping[int, np.ndarray]


@dataclass(frozen=True)
class Input:
    name: str
    dtype: DType
    reads: tuple[int, ...]
    reference: Callable[[Event], Any]
    array: Callable[[np.ndarray, Columns], np.ndarray]
    spark: Callable[[], Column]
    description: str


def _field(name: str, index: int, dtype: DType, description: str) -> Input:
    def spark() -> Column:
        from pyspark.sql import functions as F
        return F.col(SPARK_COLUMNS[index])

    def array(time: np.ndarray, cols: Columns) -> np.ndarray:
        return time if index == TIME else cols[index]

    return Input(name, dtype, () if index == TIME else (index,),
                 lambda e: e[index], array, spark, description)


def _night_array(time: np.ndarray, _cols: Columns) -> np.ndarray:
    hour = (time // HOUR_US) % 24
    return (hour >= NIGHT_STARTS) | (hour < NIGHT_ENDS)


def _night_spark() -> Column:
    from pyspark.sql import functions as F
    hour = F.pmod(F.floor(F.col(SPARK_COLUMNS[TIME]) / HOUR_US), 24)
    return (hour >= NIGHT_STARTS) | (hour < NIGHT_ENDS)


INPUTS: dict[str, Input] = {
    "amount": _field("amount", AMOUNT, "float64", "the payment's amount"),
    "country": _field("country", COUNTRY, "string", "the terminal's country"),
    "terminal": _field("terminal", TERMINAL, "string", "the terminal's id"),
    "mcc": _field("mcc", MCC, "string", "the merchant category code"),
    "lat": _field("lat", LAT, "float64", "the terminal's latitude"),
    "lon": _field("lon", LON, "float64", "the terminal's longitude"),
    "time": _field("time", TIME, "int64", "the event time, µs since the epoch"),
    "night": Input("night", "bool", (), lambda e: is_night(e[TIME]), _night_array,
                   _night_spark,
                   f"the payment is at night ({NIGHT_STARTS}:00–{NIGHT_ENDS - 1}:59 UTC)"),
}
