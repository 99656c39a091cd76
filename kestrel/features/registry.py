"""The aggregation registry: every aggregation a feature may name, implemented once per engine.

An :class:`Aggregation` carries its three implementations side by side — ``reference`` (the
values of the events in one window, in time order → the value), ``array`` (an
:class:`ArrayWindow`: many windows over sorted numpy columns → one value per window) and
``spark`` (a :class:`SparkWindow` → a Column) — and ``output``, its type given its input's.
The engines look an aggregation up by name when they are built (``aggregation(name)``), so
:func:`override` swaps an implementation in for a test (the mutation checks do: a wrong
implementation must fail parity and the reference test).

Without an input (``count``, ``since_last``) an aggregation sees the events' times as values.
A window is ``(t - length, t]`` as of an entity's event at ``t``; an aggregation without a
window (``last``, ``since_last``) is computed over ``(t - max_age, t]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from kestrel.errors import ConfigError
from kestrel.features.inputs import DType

if TYPE_CHECKING:
    from pyspark.sql import Column, WindowSpec


class FeatureSpecError(ConfigError):
    """A feature definition the engines cannot compute (unknown aggregation, input, type)."""


@dataclass(frozen=True)
class ArrayWindow:
    """Windows over one entity type's held events, sorted by (entity, time): per query
    position ``idx[i]``, its window is positions ``lo[i] .. idx[i]`` (same entity).
    ``values``: the input per position (the times without an input); ``mask``: the filter
    per position, or None; ``group``: the entity code per position; ``time``: µs."""

    values: np.ndarray
    mask: np.ndarray | None
    lo: np.ndarray
    idx: np.ndarray
    group: np.ndarray
    time: np.ndarray


@dataclass(frozen=True)
class SparkWindow:
    """One feature's frame over the lake's transactions: ``frame`` the range frame of the
    window over ``t`` (µs), ``ordered`` the entity's rows in time then arrival order,
    ``micros`` the window length, ``values`` the input Column (``t`` without an input),
    ``mask`` the filter Column or None."""

    frame: WindowSpec
    ordered: WindowSpec
    micros: int
    values: Column
    mask: Column | None


@dataclass(frozen=True)
class Aggregation:
    name: str
    windowed: bool  # False: computed over the declared max_age instead of a window
    takes_input: bool
    filterable: bool
    title: str  # the middle of a feature's name: "{input}" is replaced by the input's name
    output: Callable[[DType], DType]  # raises FeatureSpecError for an input it cannot take
    reference: Callable[[list[Any]], Any]
    array: Callable[[ArrayWindow], np.ndarray]
    spark: Callable[[SparkWindow], Column]
    description: str


_REGISTRY: dict[str, Aggregation] = {}


def register(*aggregations: Aggregation) -> None:
    for agg in aggregations:
        if agg.name in _REGISTRY:
            raise FeatureSpecError(f"aggregation {agg.name!r} is registered twice")
        _REGISTRY[agg.name] = agg


def aggregation(name: str) -> Aggregation:
    """The registered aggregation ``name``; an unknown one says what to implement."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FeatureSpecError(
            f"unknown aggregation {name!r} (known: {', '.join(sorted(_REGISTRY))}); implement "
            f"it in kestrel/features/aggregations/{name}.py — reference, array and spark, "
            "and its output type — and add it to AGGREGATIONS in "
            "kestrel/features/aggregations/__init__.py") from None


def registered() -> tuple[str, ...]:
    return tuple(_REGISTRY)


@contextmanager
def override(name: str, **implementations: Any) -> Iterator[Aggregation]:
    """Replace some of an aggregation's implementations (``reference=``, ``array=``,
    ``spark=``) while the block runs; engines built inside the block use them."""
    original = aggregation(name)
    unknown = set(implementations) - {"reference", "array", "spark"}
    if unknown:
        raise FeatureSpecError(f"override({name!r}): no engine {sorted(unknown)}; "
                               "use reference=, array= or spark=")
    _REGISTRY[name] = replace(original, **implementations)
    try:
        yield _REGISTRY[name]
    finally:
        _REGISTRY[name] = original


def numeric(name: str) -> Callable[[DType], DType]:
    """``output`` of an aggregation of numbers into a float."""
    def output(dtype: DType) -> DType:
        if dtype not in ("int64", "float64"):
            raise FeatureSpecError(f"{name} aggregates numbers; its input is {dtype}")
        return "float64"
    return output


def always(result: DType) -> Callable[[DType], DType]:
    return lambda _dtype: result
