"""Entities, view names and the daily batch windows; stream features live in kestrel.features.

Stream features are declared in kestrel/features/definitions.py (one line each); this module
names the Feast views they land in and lists them per entity. Semantics (DESIGN.md, "the
simple one that fits Feast"): for each entity the stream writes its features *as of that
entity's latest event* — a window ``(t_last - length, t_last]``, that event included —
stamped with ``t_last``. The vector that scores a transaction at T takes, per entity, the
latest row strictly before T; ``seconds_since_last`` and ``km_from_last`` are computed
against that row's event. Offline, Feast's point-in-time join reproduces it when asked at
``T - 1 µs`` (the join includes rows stamped exactly T).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from kestrel.features import FEATURES, Feature, features_for
from kestrel.features.definitions import H24
from kestrel.features.event import ENTITIES, ENTITY_KEYS, Entity

__all__ = ["ENTITIES", "ENTITY_KEYS", "FEATURES", "Entity", "Feature", "features_for"]


def horizon(entity: Entity) -> timedelta:
    """The longest span (window or max_age) of an entity's features: how much history its
    stream state must keep."""
    return max(f.span for f in features_for(entity))


def stream_view_name(entity: Entity) -> str:
    """Name of the Feast feature view the stream writes for an entity."""
    return f"{entity}_stream_features"


def feature_names(entity: Entity) -> tuple[str, ...]:
    return tuple(f.name for f in features_for(entity))


# --- Batch windows (the Spark daily jobs) ---------------------------------------------------
# A daily run for day D has the cut-off C = D + 1 day 00:00 UTC and sees events with
# event_time < C; a window of N days is [C - N days, C). The 1-day window has the length of
# the stream's 24 h windows (H24): one definition of "a day".
BatchAggregation = Literal["count", "avg", "fraud_risk"]
BATCH_DAYS: tuple[int, ...] = (1, 7, 30)
BATCH_DAY = H24
# Where a customer usually pays: mean location of the transactions of this many days.
HOME_DAYS = 30


@dataclass(frozen=True)
class BatchWindow:
    entity: Entity
    days: int
    aggregation: BatchAggregation

    @property
    def name(self) -> str:
        what = {"count": "txn_count", "avg": "avg_amount", "fraud_risk": "fraud_risk"}
        return f"{self.entity}_{what[self.aggregation]}_{self.days}d"

    @property
    def length(self) -> timedelta:
        return BATCH_DAY * self.days


BATCH_WINDOWS: tuple[BatchWindow, ...] = (
    *(BatchWindow("customer", d, "count") for d in BATCH_DAYS),
    *(BatchWindow("customer", d, "avg") for d in BATCH_DAYS),
    *(BatchWindow("terminal", d, "count") for d in BATCH_DAYS),
    # Frauds ÷ transactions over the N days that end a label delay before the cut-off,
    # counting only labels known before the cut-off (pipelines/batch/jobs.py).
    *(BatchWindow("terminal", d, "fraud_risk") for d in BATCH_DAYS),
)
CUSTOMER_HOME_FEATURES: tuple[str, ...] = ("customer_home_lat", "customer_home_lon")


def batch_windows_for(entity: Entity) -> tuple[BatchWindow, ...]:
    return tuple(w for w in BATCH_WINDOWS if w.entity == entity)


def batch_feature_names(entity: Entity) -> tuple[str, ...]:
    extra = CUSTOMER_HOME_FEATURES if entity == "customer" else ()
    return tuple(w.name for w in batch_windows_for(entity)) + extra


def batch_view_name(entity: Entity) -> str:
    """Name of the Feast feature view the daily Spark job writes for an entity."""
    return f"{entity}_batch_features"
