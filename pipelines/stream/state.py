"""Per-entity stream state: the entity's recent events, and its window aggregates.

Each card, customer and terminal keeps the events of its longest window plus the allowed
lateness, sorted by event time (an out-of-order event is inserted in place). Aggregates are
computed as of the entity's latest event (kestrel.windows explains why), from the same
:data:`kestrel.windows.WINDOWS` the offline side uses. State serializes to compact JSON for
Redis, where it is committed atomically with the feature rows and the offsets.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from typing import Any, Final

import orjson

from kestrel.windows import Entity, Window, windows_for

# An event as the state keeps it: (txn_id, time_us, amount, country, terminal_id, mcc, lat, lon)
Event = tuple[str, int, float, str, str, str, float, float]
TXN: Final = 0
TIME: Final = 1
AMOUNT: Final = 2
COUNTRY: Final = 3
TERMINAL: Final = 4
MCC: Final = 5
LAT: Final = 6
LON: Final = 7
_FIELDS = {"country": COUNTRY, "terminal": TERMINAL, "mcc": MCC}  # distinct-counted


class EventLog:
    """One entity's events within its horizon, ordered by time; knows its txn_ids."""

    __slots__ = ("events", "ids", "marks", "times")

    def __init__(self, events: list[Event] | None = None, marks: dict[str, int] | None = None):
        self.events: list[Event] = events or []
        self.marks: dict[str, int] = marks or {}  # e.g. per alert rule: end of last evidence
        self.times: list[int] = [e[TIME] for e in self.events]
        self.ids: set[str] = {e[TXN] for e in self.events}

    def __len__(self) -> int:
        return len(self.events)

    def add(self, event: Event) -> None:
        t = event[TIME]
        if not self.times or t >= self.times[-1]:
            self.times.append(t)
            self.events.append(event)
        else:  # out of order, within the allowed lateness
            i = bisect_right(self.times, t)
            self.times.insert(i, t)
            self.events.insert(i, event)
        self.ids.add(event[TXN])

    def evict_before(self, time_us: int) -> None:
        """Forget events at or before ``time_us`` (they left every window)."""
        i = bisect_right(self.times, time_us)
        if i:
            for e in self.events[:i]:
                self.ids.discard(e[TXN])
            del self.times[:i]
            del self.events[:i]

    @property
    def last(self) -> Event:
        return self.events[-1]

    def dumps(self) -> bytes:
        return orjson.dumps({"e": self.events, "m": self.marks})

    @classmethod
    def loads(cls, raw: bytes) -> EventLog:
        doc = orjson.loads(raw)
        return cls([tuple(e) for e in doc["e"]], doc["m"])


class WindowSet:
    """Computes one entity type's window features from its EventLog."""

    def __init__(self, entity: Entity):
        self.entity = entity
        self.windows: tuple[Window, ...] = windows_for(entity)
        by_length: dict[int, list[Window]] = defaultdict(list)
        for w in self.windows:
            by_length[w.micros].append(w)
        self._groups = sorted(by_length.items())
        self.horizon_us = max(w.micros for w in self.windows)

    def features(self, log: EventLog) -> dict[str, Any]:
        """Aggregates over ``(t_last - length, t_last]`` for every window of the entity."""
        times, events = log.times, log.events
        t_last = times[-1]
        out: dict[str, Any] = {}
        for micros, group in self._groups:
            chunk = events[bisect_right(times, t_last - micros):]
            for w in group:
                if w.aggregation == "count":
                    out[w.name] = len(chunk)
                elif w.aggregation == "sum":  # only amounts are summed
                    out[w.name] = round(sum(e[AMOUNT] for e in chunk), 2)
                else:
                    i = _FIELDS[w.field or ""]
                    out[w.name] = len({e[i] for e in chunk})
        if self.entity == "card":
            last = log.last
            out["card_last_event_time_us"] = last[TIME]
            out["card_last_lat"] = last[LAT]
            out["card_last_lon"] = last[LON]
        return out

