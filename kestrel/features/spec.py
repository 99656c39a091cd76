"""A stream feature, declared: the only place a feature is written (definitions.py lists them).

``Feature(entity, aggregation, input, window=…)`` — or ``max_age=`` for an aggregation
without a window — with an optional ``filter`` (an input of type bool) and an optional
``name``. Everything else follows from the declaration and is checked when it is made: the
name (``card_amount_max_1h``), the output type (the aggregation's, given its input's), the
event fields the array engine must keep, and the span of history it needs. An unknown
aggregation, input or filter, a filter the aggregation cannot take, or a window where a
max_age belongs raises :class:`FeatureSpecError` saying what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from kestrel.features import aggregations as _registered  # noqa: F401  (fills the registry)
from kestrel.features.event import ENTITIES, Entity
from kestrel.features.inputs import INPUTS, DType, Input
from kestrel.features.registry import Aggregation, FeatureSpecError, aggregation


def window_label(length: timedelta) -> str:
    """``10m``, ``1h``, ``24h``, ``7d``: the suffix of a windowed feature's name."""
    seconds = int(length.total_seconds())
    if seconds % 86_400 == 0:
        return f"{seconds // 86_400 * 24}h" if seconds < 7 * 86_400 else f"{seconds // 86_400}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}m"


def _input(name: str, role: str, feature: str) -> Input:
    try:
        return INPUTS[name]
    except KeyError:
        raise FeatureSpecError(
            f"{feature}: unknown {role} {name!r} (known: {', '.join(INPUTS)}); declare it in "
            "INPUTS in kestrel/features/inputs.py with its reference, array and spark "
            "forms") from None


@dataclass(frozen=True)
class Feature:
    entity: Entity
    aggregation: str
    input: str | None = None
    window: timedelta | None = None
    max_age: timedelta | None = None
    filter: str | None = None
    named: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        what = self.named or f"{self.entity} {self.aggregation} feature"
        if self.entity not in ENTITIES:
            raise FeatureSpecError(f"{what}: unknown entity {self.entity!r}; use one of "
                                   f"{', '.join(ENTITIES)}")
        agg = aggregation(self.aggregation)
        if agg.takes_input != (self.input is not None):
            raise FeatureSpecError(
                f"{what}: {agg.name} {'needs' if agg.takes_input else 'takes no'} input")
        if agg.windowed and (self.window is None or self.max_age is not None):
            raise FeatureSpecError(f"{what}: {agg.name} is computed over a window; declare "
                                   "window= (and no max_age)")
        if not agg.windowed and (self.max_age is None or self.window is not None):
            raise FeatureSpecError(f"{what}: {agg.name} has no window; declare max_age= (how "
                                   "long an event still counts) and no window")
        if self.span <= timedelta(0):
            raise FeatureSpecError(f"{what}: its window or max_age must be positive")
        if self.filter is not None:
            if not agg.filterable:
                raise FeatureSpecError(f"{what}: {agg.name} takes no filter (count and sum "
                                       "do); implement a filtered form in its module first")
            if _input(self.filter, "filter", what).dtype != "bool":
                raise FeatureSpecError(f"{what}: filter {self.filter!r} is not a bool input")
        self.dtype  # noqa: B018  (checks the input's type against the aggregation)

    # --- what follows from the declaration ------------------------------------------------
    @property
    def aggregate(self) -> Aggregation:
        """The registered implementation (looked up now: a test's override applies)."""
        return aggregation(self.aggregation)

    @property
    def source(self) -> Input | None:
        return None if self.input is None else _input(self.input, "input", self.aggregation)

    @property
    def condition(self) -> Input | None:
        return None if self.filter is None else _input(self.filter, "filter", self.aggregation)

    @property
    def field(self) -> str | None:
        """The input's name (None for count and since_last)."""
        return self.input

    @property
    def name(self) -> str:
        if self.named:
            return self.named
        middle = aggregation(self.aggregation).title.format(input=self.input)
        if self.filter:
            middle = f"{self.filter}_{middle}"
        suffix = f"_{window_label(self.window)}" if self.window is not None else ""
        return f"{self.entity}_{middle}{suffix}"

    @property
    def dtype(self) -> DType:
        source = self.source
        dtype = aggregation(self.aggregation).output(source.dtype if source else "int64")
        if dtype not in ("int64", "float64"):
            raise FeatureSpecError(f"{self.name}: output type {dtype}; the online store "
                                   "keeps int64 and float64 features")
        return dtype

    @property
    def summary(self) -> str:
        """One line saying what the feature is (the declared description, or one derived)."""
        if self.description:
            return self.description
        agg = aggregation(self.aggregation)
        of = f" of {self.source.description}" if self.source else ""
        where = f", only where {self.condition.description}" if self.condition else ""
        over = (f"over the last {window_label(self.span)}" if agg.windowed
                else f"within {window_label(self.span)}")
        return f"{agg.description}{of}{where}, {over}, as of the {self.entity}'s latest event"

    @property
    def span(self) -> timedelta:
        """How far back from an event the feature looks: its window, or its max_age."""
        span = self.window if self.window is not None else self.max_age
        assert span is not None  # __post_init__ checked
        return span

    @property
    def micros(self) -> int:
        return int(self.span.total_seconds() * 1_000_000)

    @property
    def reads(self) -> tuple[int, ...]:
        """The event fields the array engine keeps for it."""
        return tuple(sorted({f for i in (self.source, self.condition) if i for f in i.reads}))


def check_unique(features: tuple[Feature, ...]) -> tuple[Feature, ...]:
    seen: dict[str, Feature] = {}
    for f in features:
        if f.name in seen:
            raise FeatureSpecError(f"two features are named {f.name!r}: {seen[f.name]} and "
                                   f"{f}; give one a name=")
        seen[f.name] = f
    return features
