"""One entity's stream state as an event list, and its window aggregates: the reference.

An EventLog keeps an entity's events of its longest window plus the allowed lateness, sorted
by event time (an out-of-order event is inserted in place); WindowSet computes aggregates as
of an event (kestrel.windows explains why the latest), from the same
:data:`kestrel.windows.WINDOWS` the offline side uses. The processor holds its state as
arrays per partition (entity_arrays.py, which must give the same rows: its tests compare the
two) and checks entities out as EventLogs for work event by event: cards that may raise an
alert, parity's capture, replaying a changelog.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from typing import Any, Final

import orjson

from kestrel.windows import Entity, Window, feature_names, windows_for

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
VALUES: Final = (AMOUNT, COUNTRY, TERMINAL, MCC, LAT, LON)  # the fields after txn_id and time
_FIELDS = {"country": COUNTRY, "terminal": TERMINAL, "mcc": MCC}  # distinct-counted


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
            self.marks["_floor"] = max(self.marks.get("_floor", 0), self.times[i - 1])
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
    """Computes one entity type's window features from its EventLog."""

    def __init__(self, entity: Entity):
        self.entity = entity
        self.windows: tuple[Window, ...] = windows_for(entity)
        by_length: dict[int, list[Window]] = defaultdict(list)
        for w in self.windows:
            by_length[w.micros].append(w)
        # per window length: (feature name, kind, event field) — resolved once, not per event
        self._groups = [
            (micros, [(w.name, w.aggregation, _FIELDS.get(w.field or "", AMOUNT)) for w in ws])
            for micros, ws in sorted(by_length.items())]
        self.horizon_us = max(w.micros for w in self.windows)
        self.groups = self._groups  # what entity_arrays takes
        self.names = feature_names(entity)

    def served_before(self, log: EventLog, time_us: int) -> dict[str, Any] | None:
        """The row the online store holds for a lookup at ``time_us``: the features as of
        the entity's latest event strictly before it (all None when there is none). None
        when the state no longer holds the history to say (evicted)."""
        j = bisect_left(log.times, time_us) - 1
        floor = log.marks.get("_floor", 0)
        if j < 0:
            return None if floor else dict.fromkeys(self.names)
        if floor and floor > log.times[j] - self.horizon_us:
            return None
        return self.features(log, j)

    def features(self, log: EventLog, at: int = -1) -> dict[str, Any]:
        """Aggregates as of event ``at`` (default: the latest): over ``(t - length, t]``
        for every window of the entity, with t that event's time."""
        times, events = log.times, log.events
        end = len(events) if at == -1 else at + 1
        t_last = times[end - 1]
        out: dict[str, Any] = {}
        for micros, group in self._groups:
            lo = bisect_right(times, t_last - micros, 0, end)
            chunk: list[Event] | None = None  # sliced only when a value is aggregated
            for name, kind, i in group:
                if kind == "count":
                    out[name] = end - lo
                    continue
                if chunk is None:
                    chunk = events[lo:end]
                if kind == "sum":  # only amounts are summed
                    out[name] = round(sum(e[AMOUNT] for e in chunk), 2)
                else:
                    out[name] = len({e[i] for e in chunk})
        if self.entity == "card":
            last = events[end - 1]
            out["card_last_event_time_us"] = last[TIME]
            out["card_last_lat"] = last[LAT]
            out["card_last_lon"] = last[LON]
        return out

