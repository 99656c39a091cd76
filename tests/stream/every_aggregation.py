"""A feature spec holding every registered aggregation (and each filtered form), for the
engine-equivalence tests: the declared features alone would leave unused aggregations
untested."""

from __future__ import annotations

from datetime import timedelta

from kestrel.features import Feature
from kestrel.windows import Entity

H1, H3 = timedelta(hours=1), timedelta(hours=3)


def every_aggregation(entity: Entity) -> tuple[Feature, ...]:
    return (Feature(entity, "count", window=H1),
            Feature(entity, "count", window=H3, filter="night"),
            Feature(entity, "sum", "amount", window=H1),
            Feature(entity, "sum", "amount", window=H3, filter="night"),
            Feature(entity, "min", "amount", window=H3),
            Feature(entity, "max", "lat", window=H1),
            Feature(entity, "mean", "amount", window=H3),
            Feature(entity, "distinct", "mcc", window=H3),
            Feature(entity, "last", "lon", max_age=H1),
            Feature(entity, "since_last", max_age=H1))
