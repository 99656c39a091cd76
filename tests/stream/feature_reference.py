"""Every stream feature computed straight from its definition, with pandas: the reference.

The stream has two engines of its own (the per-event WindowSet and the array path that
`kestrel stream` runs) and the batch side a third (Spark); each was written from the same
definitions, and until now they were checked against one another. This module is written
from the *definitions* only — it imports nothing from ``pipelines/stream`` nor
``pipelines/batch`` — so that a definition added to the features tuple is checked against
an implementation that shares no code with the engines: one that cannot share their bugs.

The semantics it implements (kestrel/windows.py): for each entity, per applied event at time
t, every window aggregates the entity's events in ``(t - length, t]``, that event included,
and the row is stamped t. Several events of one entity at the same microsecond give one row,
over every event at or before t (a range frame, not a row frame: the stream emits a row per
event, and the last version of the tie, the one Feast's join reads, has seen them all); a
value that depends on the order within the tie (``last``, the card's latest event) takes
the last one in order of arrival.

Each definition is read by its attributes only — ``entity``, ``name``, ``micros``,
``aggregation``, ``field`` (an input name, or None) and ``filter`` (None, or a filter name) —
so any feature spec (``kestrel.features.FEATURES``, or a test's own) is checked as it is.
An aggregation, input or filter this module does not know raises and names what to add:
a new kind of feature cannot pass unchecked.

Kept obvious rather than fast (a loop per entity and distinct time, slices found with
searchsorted): a few thousand events take seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np
import pandas as pd

HOUR_US = 3_600 * 1_000_000
DAY_US = 24 * HOUR_US


class Definition(Protocol):
    """What the reference reads of a feature definition."""

    @property
    def entity(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def micros(self) -> int: ...
    @property
    def aggregation(self) -> str: ...
    @property
    def field(self) -> str | None: ...


# input name (a definition's ``field``) → the column of the replayed events that holds it;
# "time" is the event time in µs since the epoch (an int, as the stream keeps it)
INPUTS: dict[str, str] = {"amount": "amount", "country": "country", "terminal": "terminal_id",
                          "mcc": "mcc", "lat": "lat", "lon": "lon", "time": "time_us"}

def _values(window: pd.DataFrame, column: str | None) -> pd.Series:
    if column is None:
        raise ValueError("this aggregation reads an input: the definition's field is None")
    return window[column]


def _count(window: pd.DataFrame, column: str | None) -> int:
    return len(window)


def _sum(window: pd.DataFrame, column: str | None) -> float:
    # rounded to cents with Python's round, as the definition says (an empty window: 0.0)
    return round(float(_values(window, column).sum()), 2)


def _distinct(window: pd.DataFrame, column: str | None) -> int:
    return int(_values(window, column).nunique())


def _min(window: pd.DataFrame, column: str | None) -> Any:
    return _values(window, column).min() if len(window) else math.nan


def _max(window: pd.DataFrame, column: str | None) -> Any:
    return _values(window, column).max() if len(window) else math.nan


def _mean(window: pd.DataFrame, column: str | None) -> float:
    # unrounded: the sum over the count (NaN for an empty window, e.g. a filter kept none)
    values = _values(window, column)
    return float(values.sum()) / len(values) if len(values) else math.nan


def _last(window: pd.DataFrame, column: str | None) -> Any:
    # the window is in (time, arrival) order: the latest event, the last of a tie
    return _values(window, column).iloc[-1] if len(window) else math.nan


def _since_last(window: pd.DataFrame, column: str | None) -> float:
    # seconds from the previous event in the window to the latest (0.0 within a tie);
    # NaN when the window holds fewer than two events. Reads the time whatever the field.
    times = window["time_us"]
    if len(times) < 2:
        return math.nan
    return (int(times.iloc[-1]) - int(times.iloc[-2])) / 1_000_000


# aggregation name → (window events in (time, arrival) order, input column) → value
AGGREGATIONS: dict[str, Callable[[pd.DataFrame, str | None], Any]] = {
    "count": _count, "sum": _sum, "distinct": _distinct, "min": _min, "max": _max,
    "mean": _mean, "last": _last, "since_last": _since_last,
}

def _night(events: pd.DataFrame) -> pd.Series:
    # 22:00-05:59 UTC: the project's night since the request-time txn_is_night flag
    # (feature_repo/kestrel_repo/request_views.py), not just the hours before 06:00
    hour = (events["time_us"] % DAY_US) // HOUR_US
    return (hour >= 22) | (hour < 6)


# filter name → per event, whether the filtered windows count it (from the events' columns)
FILTERS: dict[str, Callable[[pd.DataFrame], pd.Series]] = {"night": _night}


class UnknownDefinition(ValueError):
    """A definition uses an aggregation, input or filter the reference cannot compute."""


def key_column(entity: str) -> str:
    return f"{entity}_id"


def stream_definitions() -> tuple[Any, ...]:
    """The declared stream features (kestrel/features/definitions.py)."""
    from kestrel.features import FEATURES

    return FEATURES


def _filter_of(definition: Any) -> str | None:
    return definition.filter


def _column_of(definition: Any) -> str | None:
    field = definition.field
    if field is None:
        return None
    if field not in INPUTS:
        raise UnknownDefinition(
            f"{definition.name}: input {field!r} is not in INPUTS of "
            f"tests/stream/feature_reference.py (known: {sorted(INPUTS)}); add the column of "
            "the replayed events that holds it")
    return INPUTS[field]


def check_known(definitions: Iterable[Any]) -> None:
    """Raise UnknownDefinition for a definition the reference cannot compute."""
    for d in definitions:
        if d.aggregation not in AGGREGATIONS:
            raise UnknownDefinition(
                f"{d.name}: aggregation {d.aggregation!r} is not in AGGREGATIONS of "
                f"tests/stream/feature_reference.py (known: {sorted(AGGREGATIONS)}); add its "
                "pandas implementation there, written from the definition")
        flt = _filter_of(d)
        if flt is not None and flt not in FILTERS:
            raise UnknownDefinition(
                f"{d.name}: filter {flt!r} is not in FILTERS of tests/stream/"
                f"feature_reference.py (known: {sorted(FILTERS)}); add what it keeps there")
        _column_of(d)


def prepare(events: pd.DataFrame) -> pd.DataFrame:
    """The replayed events (txn_id, card_id, customer_id, terminal_id, event_time, amount,
    country, mcc, lat, lon; in order of arrival) with what the reference reads besides: the
    event time in µs (``time_us``), the arrival order (``arrival``) and one boolean column
    per filter (``filter:<name>``)."""
    out = events.reset_index(drop=True).copy()
    times = pd.to_datetime(out["event_time"], utc=True).dt.as_unit("us")
    out["time_us"] = times.astype("int64")
    out["arrival"] = np.arange(len(out), dtype=np.int64)
    for name, keep in FILTERS.items():
        out[f"filter:{name}"] = keep(out).astype(bool)
    return out


def expected_rows(events: pd.DataFrame, entity: str,
                  definitions: Iterable[Any] | None = None) -> pd.DataFrame:
    """One row per (entity key, event time t) of ``prepare``d events: the key, ``time_us``
    (t) and every feature of ``entity`` as its definition says."""
    defs = [d for d in (stream_definitions() if definitions is None else definitions)
            if d.entity == entity]
    check_known(defs)
    plan = [(d.name, d.micros, AGGREGATIONS[d.aggregation], _column_of(d), _filter_of(d))
            for d in defs]
    key = key_column(entity)
    out: list[dict[str, Any]] = []
    for value, group in events.groupby(key, sort=True):
        group = group.sort_values(["time_us", "arrival"], kind="stable")
        times = group["time_us"].to_numpy()
        for t in np.unique(times).tolist():
            hi = int(np.searchsorted(times, t, "right"))  # every event at or before t
            row: dict[str, Any] = {key: value, "time_us": t}
            for name, micros, aggregate, column, flt in plan:
                lo = 0 if micros is None else int(np.searchsorted(times, t - micros, "right"))
                window = group.iloc[lo:hi]  # (t - length, t]
                if flt is not None:
                    window = window[window[f"filter:{flt}"]]
                row[name] = aggregate(window, column)
            out.append(row)
    return pd.DataFrame(out)


def _same(expected: Any, actual: Any, tolerance: float) -> tuple[bool, float]:
    """Equal, with the absolute difference: exact for ints and strings, within
    ``tolerance`` for floats; a missing value (None, NaN) equals only a missing value."""
    e_missing = expected is None or (isinstance(expected, float) and math.isnan(expected))
    a_missing = actual is None or (isinstance(actual, float) and math.isnan(actual))
    if e_missing or a_missing:
        return e_missing == a_missing, 0.0
    if isinstance(expected, str) or isinstance(actual, str):
        return expected == actual, 0.0
    if isinstance(expected, (int, np.integer)) and isinstance(actual, (int, np.integer)):
        return int(expected) == int(actual), float(abs(int(expected) - int(actual)))
    diff = abs(float(expected) - float(actual))
    return diff <= tolerance, diff


def compare(expected: pd.DataFrame, actual: pd.DataFrame, entity: str, names: Iterable[str],
            tolerance: float = 1e-9, examples: int = 3) -> dict[str, list[str]]:
    """Per feature name, what differs between the reference rows and ``actual`` (one row
    per key and ``time_us``, e.g. the offline log's newest versions): a few examples, and
    the count of mismatches first ("N of M rows differ"). Rows present on one side only are
    reported under "<rows>". An empty dict: everything agrees."""
    key = key_column(entity)
    problems: dict[str, list[str]] = {}
    merged = expected.merge(actual, on=[key, "time_us"], how="outer",
                            suffixes=("", ":actual"), indicator=True)
    one_side = merged[merged["_merge"] != "both"]
    if len(one_side):
        problems["<rows>"] = [f"{len(one_side)} (key, time) rows on one side only"] + [
            f"{r[key]} @ {r['time_us']}: only in "
            + ("the reference" if r["_merge"] == "left_only" else "actual")
            for _, r in one_side.head(examples).iterrows()]
    both = merged[merged["_merge"] == "both"]
    for name in names:
        if f"{name}:actual" not in both:
            problems[name] = ["no such column in actual"]
            continue
        bad: list[str] = []
        count = 0
        for k, t, e, a in zip(both[key], both["time_us"], both[name].tolist(),
                              both[f"{name}:actual"].tolist(), strict=True):
            same, diff = _same(e, a, tolerance)
            if not same:
                count += 1
                if len(bad) < examples:
                    bad.append(f"{k} @ {t}: expected {e!r}, got {a!r} (|diff| {diff:g})")
        if count:
            problems[name] = [f"{count} of {len(both)} rows differ", *bad]
    return problems
