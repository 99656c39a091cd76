"""One entity's stream state as an event list, and its window aggregates: the reference.

An EventLog keeps an entity's events of its longest window plus the allowed lateness, sorted
by event time (an out-of-order event is inserted in place); WindowSet computes the declared
features (kestrel/features/definitions.py) as of an event — kestrel.windows explains why the
latest — with each aggregation's reference implementation (kestrel/features/aggregations).
The processor holds its state as arrays per partition (arrays/entity_arrays.py, which must give the
same rows: its tests compare the two) and checks entities out as EventLogs for work event by
event: cards that may raise an alert, replaying a changelog.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from typing import Any

import orjson

from kestrel.features import features_for
from kestrel.features.event import (
    AMOUNT,
    COUNTRY,
    LAT,
    LON,
    MCC,
    TERMINAL,
    TIME,
    TXN,
    VALUES,
    Entity,
    Event,
)
from kestrel.features.spec import Feature

__all__ = ["AMOUNT", "COUNTRY", "LAT", "LON", "MCC", "TERMINAL", "TIME", "TXN", "VALUES",
           "Event", "EventLog", "WindowSet"]


class EventLog:
    """One entity's events within its horizon, ordered by time; knows its txn_ids."""

    __slots__ = ("events", "ids", "marks", "times")

    def __init__(self, events: list[Event] | None = None, marks: dict[str, int] | None = None):
        self.events: list[Event] = events or []
        self.marks: dict[str, int] = marks or {}  # e.g. per alert rule: end of last evidence
        if events:
            self.times: list[int] = [e[TIME] for e in events]
            self.ids: set[str] = {e[TXN] for e in events}
        else:  # most states start empty, in the hot path
            self.times, self.ids = [], set()

    def __len__(self) -> int:
        return len(self.events)

    def add(self, event: Event) -> int:
        """Insert in event-time order (an equal time goes after); returns its index."""
        t = event[TIME]
        self.ids.add(event[TXN])
        if not self.times or t >= self.times[-1]:
            self.times.append(t)
            self.events.append(event)
            return len(self.events) - 1
        i = bisect_right(self.times, t)  # out of order
        self.times.insert(i, t)
        self.events.insert(i, event)
        return i

    def evict_before(self, time_us: int) -> None:
        """Forget events at or before ``time_us`` (they left every window)."""
        if not self.times or self.times[0] > time_us:
            return  # the usual case: nothing left every window since the last event
        i = bisect_right(self.times, time_us)
        if i:
            for e in self.events[:i]:
                self.ids.discard(e[TXN])
            del self.times[:i]
            del self.events[:i]

    def dumps(self) -> bytes:
        return orjson.dumps({"e": self.events, "m": self.marks})

    @classmethod
    def loads(cls, raw: bytes) -> EventLog:
        doc = orjson.loads(raw)
        return cls([tuple(e) for e in doc["e"]], doc["m"])


class WindowSet:
    """Computes one entity type's declared features from its EventLog, with the reference
    implementations; ``plan`` groups them by span for the array engine too."""

    def __init__(self, entity: Entity, features: tuple[Feature, ...] | None = None):
        """``features``: the entity's declared features unless given (tests give others)."""
        self.entity = entity
        self.declared: tuple[Feature, ...] = (features_for(entity) if features is None
                                              else features)
        by_span: dict[int, list[Feature]] = defaultdict(list)
        for f in self.declared:
            by_span[f.micros].append(f)
        # per span (µs, ascending): its features — resolved once, not per event
        self.plan: list[tuple[int, list[Feature]]] = sorted(by_span.items())
        self._reference = [
            (micros, [(f.name, f.aggregate.reference, f.source.reference if f.source else None,
                       f.condition.reference if f.condition else None) for f in group])
            for micros, group in self.plan]
        self.horizon_us = max(f.micros for f in self.declared)
        self.names = tuple(f.name for f in self.declared)
        self.reads = sorted({i for f in self.declared for i in f.reads})

    def served_before(self, log: EventLog, time_us: int) -> dict[str, Any]:
        """The row the online store holds for a lookup at ``time_us``: the features as of
        the entity's latest event strictly before it held (all None when there is none)."""
        j = bisect_left(log.times, time_us) - 1
        return dict.fromkeys(self.names) if j < 0 else self.features(log, j)

    def features(self, log: EventLog, at: int = -1) -> dict[str, Any]:
        """The features as of event ``at`` (default: the latest): each over ``(t - span,
        t]``, with t that event's time."""
        times, events = log.times, log.events
        end = len(events) if at == -1 else at + 1
        t_last = times[end - 1]
        out: dict[str, Any] = {}
        for micros, group in self._reference:
            lo = bisect_right(times, t_last - micros, 0, end)
            chunk = events[lo:end]
            for name, reference, value, keep in group:
                if keep is not None:
                    kept = [e for e in chunk if keep(e)]
                    out[name] = reference([e[TIME] for e in kept] if value is None
                                          else [value(e) for e in kept])
                else:  # without an input, an aggregation sees the times
                    out[name] = reference(times[lo:end] if value is None
                                          else [value(e) for e in chunk])
        return out
