"""Window definitions, written once: the stream processor and the offline builder import them.

A window is (entity, length, aggregation, field). Its feature name is derived from those
(``card_amount_sum_1h``), so the two engines cannot disagree on a name or a length.

Semantics (DESIGN.md, "the simple one that fits Feast"): for each entity the stream writes its
window aggregates *as of that entity's latest event* — the window ``(t_last - length,
t_last]``, that event included — stamped with ``t_last``. The vector that scores a transaction
at T takes, per entity, the latest row strictly before T; ``seconds_since_last`` and
``km_from_last`` are computed against that row's event. Offline, Feast's point-in-time join
reproduces it when asked at ``T - 1 µs`` (the join includes rows stamped exactly T).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

Entity = Literal["card", "customer", "terminal"]
Aggregation = Literal["count", "sum", "distinct"]

ENTITIES: tuple[Entity, ...] = ("card", "customer", "terminal")
ENTITY_KEYS: dict[Entity, str] = {"card": "card_id", "customer": "customer_id",
                               "terminal": "terminal_id"}


def _label(length: timedelta) -> str:
    seconds = int(length.total_seconds())
    if seconds % 86_400 == 0:
        return f"{seconds // 86_400 * 24}h" if seconds < 7 * 86_400 else f"{seconds // 86_400}d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}m"


@dataclass(frozen=True)
class Window:
    entity: Entity
    length: timedelta
    aggregation: Aggregation
    field: str | None = None  # summed or distinct-counted field; None for count

    @property
    def name(self) -> str:
        what = {"count": "txn_count", "sum": f"{self.field}_sum",
                "distinct": f"distinct_{self.field}"}[self.aggregation]
        return f"{self.entity}_{what}_{_label(self.length)}"

    @property
    def micros(self) -> int:
        return int(self.length.total_seconds() * 1_000_000)


MIN10, H1, H24 = timedelta(minutes=10), timedelta(hours=1), timedelta(hours=24)

WINDOWS: tuple[Window, ...] = (
    Window("card", MIN10, "count"),
    Window("card", H1, "count"),
    Window("card", H24, "count"),
    Window("card", MIN10, "sum", "amount"),
    Window("card", H1, "sum", "amount"),
    Window("card", H24, "sum", "amount"),
    Window("card", H1, "distinct", "country"),
    Window("card", H1, "distinct", "terminal"),
    Window("customer", H1, "count"),
    Window("customer", H24, "count"),
    Window("customer", H1, "sum", "amount"),
    Window("customer", H24, "sum", "amount"),
    Window("customer", H24, "distinct", "mcc"),
    Window("terminal", H1, "count"),
    Window("terminal", H24, "count"),
)

# Per-card features that are not windows: about the card's latest event itself.
CARD_LAST_EVENT_FEATURES: tuple[str, ...] = ("card_last_event_time_us", "card_last_lat",
                                             "card_last_lon")


def windows_for(entity: Entity) -> tuple[Window, ...]:
    return tuple(w for w in WINDOWS if w.entity == entity)


def horizon(entity: Entity) -> timedelta:
    """The longest window of an entity: how much history its stream state must keep."""
    return max(w.length for w in windows_for(entity))


def stream_view_name(entity: Entity) -> str:
    """Name of the Feast feature view the stream writes for an entity."""
    return f"{entity}_stream_features"


def feature_names(entity: Entity) -> tuple[str, ...]:
    extra = CARD_LAST_EVENT_FEATURES if entity == "card" else ()
    return tuple(w.name for w in windows_for(entity)) + extra


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
