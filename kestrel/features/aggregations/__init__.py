"""The registered aggregations: one module each, holding its reference, array and Spark
implementations. A new aggregation is a module here and an entry in AGGREGATIONS."""

from __future__ import annotations

from kestrel.features.aggregations.count import COUNT
from kestrel.features.aggregations.distinct import DISTINCT
from kestrel.features.aggregations.last import LAST
from kestrel.features.aggregations.max import MAX
from kestrel.features.aggregations.mean import MEAN
from kestrel.features.aggregations.min import MIN
from kestrel.features.aggregations.since_last import SINCE_LAST
from kestrel.features.aggregations.sum import SUM
from kestrel.features.registry import register

AGGREGATIONS = (COUNT, SUM, MIN, MAX, MEAN, DISTINCT, LAST, SINCE_LAST)
register(*AGGREGATIONS)
