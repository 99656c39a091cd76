"""One partition's state of one entity type (card, customer or terminal), as sorted arrays.

Kept as one EventLog per entity, a batch cost a dozen Python operations per entity it touched
(the lookup, the history slice, the appends, the txn_id set, the eviction check) — on the
simulated stream about one entity of each type per event, the largest share of the
processor's time. Here a partition's entities of one type share arrays and a batch is merged,
computed and evicted at once:

- ``code`` / ``time`` / ``txn`` and the value columns the entity's windows read (``fields``:
  amount, country, terminal, mcc, lat, lon, by their index in the Event tuple): every event
  held, sorted by (entity code, time); events of equal time stay in order of arrival (a later
  one after the ones it ties with, as ``EventLog.add`` places it);
- per entity code: ``last``, its latest event time, and ``marks``, the alert rules' marks
  (rules.evaluate);
- ``ids``: the txn_ids held (duplicate checks), unless made with ``keep_ids=False``.

A batch's result is the one applying its events one by one gives (EventLog +
WindowSet.features; tests/stream/test_entity_arrays.py checks it): an event older than its
entity's latest minus ``slack_us`` is refused; one out of order re-emits the rows of the
entity's later events whose windows now include it, once per batch with their final values
(the offline log keeps a batch's last version of a row anyway); events at or before the
clock (below) minus ``kept_us`` are evicted after the batch. Entities that need event-by-event work
(cards that may raise an alert, parity's capture, replaying a changelog) are checked out as
EventLogs (``checkout``, or ``apply``'s ``slow``) and written back with ``put``.

Bounded state (docs/feature-state.md): the arrays keep a ``clock``, the newest event time
they were given — for cards and customers the partition's stream time (every event the
partition accepts reaches both), for terminals the `transactions.by-terminal` partition's
own. An event older than the clock minus ``slack_us`` is refused like one too old for its
entity (for cards and customers the processor's lateness check already sent it to
`transactions.late`; for terminals this is what makes dropping a whole entity safe), so no
event the arrays accept can reach back to an entity whose latest event is at or before
``clock - kept_us``: its windows, its allowance for events out of order and its duplicate
check are all over. So every event at or before ``clock - kept_us`` is evicted, whatever its
entity, and so is every mark of that age; ``expire`` drops the entities left with nothing —
txn_ids, marks and code (freed codes are reused by new entities) — so the state holds the
entities active within the horizon plus the slack, not every entity ever seen. What is held
after ``expire`` is a function of the events accepted and the clock alone, not of where
batches were cut: a run restarted after a crash ends with the state of a clean run. The
processor calls it once per batch and partition, and a restore calls it after each
changelog batch it replays (tests/stream/test_bounded_state.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kestrel.errors import KestrelError
from kestrel.features.event import (
    AMOUNT,
    COUNTRY,
    ENTITY_KEYS,
    FLOAT_FIELDS,
    LAT,
    LON,
    MCC,
    TERMINAL,
    VALUES,
    Event,
)
from kestrel.features.registry import ArrayWindow
from pipelines.stream.arrays.sort_key import SortKey
from pipelines.stream.state import EventLog, WindowSet

_NO_TIME = np.iinfo(np.int64).min
_DEFAULTS: dict[int, Any] = {AMOUNT: 0.0, COUNTRY: "", TERMINAL: "", MCC: "", LAT: 0.0,
                             LON: 0.0}
RULE_FIELDS: dict[str, tuple[int, ...]] = {  # what the alert rules read (pipelines/stream/rules.py)
    "card": (COUNTRY,),
    "customer": (),
    "terminal": (),
}


@dataclass
class Applied:
    """What a batch did: per event whether it was placed (refused ones are too old for their
    entity's history); the offline rows as columns and the online rows (each touched
    entity's newest: keys, features, times µs), both None when no row was computed here;
    and the entities handed back for event-by-event work (``slow``: key → (its EventLog
    before the batch, the positions of its events in the batch)), which ``put`` takes back."""

    accepted: np.ndarray
    rows: dict[str, Any] | None = None
    latest: tuple[list[str], dict[str, np.ndarray], np.ndarray] | None = None
    slow: dict[str, tuple[EventLog, list[int]]] = field(default_factory=dict)


class EntityArrays:
    def __init__(self, windows: WindowSet, kept_us: int, slack_us: int,
                 keep_ids: bool = True) -> None:
        """``keep_ids``: keep the set of txn_ids held (``ids``), for the processor's
        duplicate checks (a customer's partition state; forwarded terminal updates). Cards
        need none, and a set insert and removal per event is a noticeable share of applying a
        batch."""
        self.entity = windows.entity
        # the event fields kept: what the declared features and the alert rules read
        self.fields = tuple(sorted({*windows.reads, *RULE_FIELDS[windows.entity]}))
        self.plan = [
            (micros, [(f.name, f.aggregate.array, f.source.array if f.source else None,
                       f.condition.array if f.condition else None) for f in group])
            for micros, group in windows.plan]
        self.horizon_us = windows.horizon_us
        self.kept_us = kept_us
        self.slack_us = slack_us
        self.key_name = ENTITY_KEYS[windows.entity]
        self.index: dict[str, int] = {}  # entity key → code
        self.keys: list[str] = []  # code → entity key
        self._key_array = np.zeros(0, dtype=object)  # the same, as an array (grown lazily)
        self.code = np.zeros(0, np.int64)
        self.time = np.zeros(0, np.int64)
        self.txn = np.zeros(0, dtype=object)
        self.values: dict[int, np.ndarray] = {f: np.zeros(0, _dtype(f)) for f in self.fields}
        self.last = np.zeros(0, np.int64)
        self.marks: dict[int, dict[str, int]] = {}
        self.ids: set[str] = set()
        self.keep_ids = keep_ids
        # the newest event time given (see the module docstring), and the codes of expired
        # entities, for new ones to take (last = _NO_TIME while free)
        self.clock = _NO_TIME
        self._free: list[int] = []

    def __len__(self) -> int:
        return len(self.time)

    @property
    def entities(self) -> int:
        """Entities held (the state's size besides its events)."""
        return len(self.index)

    # --- codes and rows ---------------------------------------------------------------------
    def _codes(self, keys: Iterable[str]) -> np.ndarray:
        index, known, free = self.index, self.keys, self._free
        codes: list[int] = []
        reused: list[int] = []
        for key in keys:
            code = index.get(key)
            if code is None:
                if free:  # an expired entity's code (its last and marks were reset)
                    code = index[key] = free.pop()
                    known[code] = key
                    reused.append(code)
                else:
                    code = index[key] = len(known)
                    known.append(key)
            codes.append(code)
        for c in reused:  # the cached array holds the expired entity's key
            if c < len(self._key_array):
                self._key_array[c] = known[c]
        grow = len(known) - len(self.last)
        if grow:
            self.last = np.concatenate((self.last, np.full(grow, _NO_TIME, np.int64)))
        return np.array(codes, np.int64)

    def _span(self, code: int) -> tuple[int, int]:
        """Positions of an entity's events in the arrays."""
        lo = int(np.searchsorted(self.code, code, "left"))
        return lo, int(np.searchsorted(self.code, code, "right"))

    def _filler(self, f: int, key: str) -> Any:
        """What an event of ``key`` holds in a field the arrays do not keep: a terminal's
        own id, otherwise a default (no window of the entity reads it)."""
        return key if f == TERMINAL and self.entity == "terminal" else _DEFAULTS[f]

    def _events(self, key: str, lo: int, hi: int) -> list[Event]:
        cols: list[list[Any]] = [self.txn[lo:hi].tolist(), self.time[lo:hi].tolist()]
        for f in VALUES:
            cols.append(self.values[f][lo:hi].tolist() if f in self.values
                        else [self._filler(f, key)] * (hi - lo))
        return list(zip(*cols, strict=True))

    def _marks(self, code: int) -> dict[str, int]:
        """An entity's marks as an EventLog holds them."""
        return dict(self.marks.get(code, {}))

    def _log(self, code: int) -> EventLog:
        lo, hi = self._span(code)
        return EventLog(self._events(self.keys[code], lo, hi), self._marks(code))

    def _drop(self, gone: np.ndarray) -> None:
        """Forget the events at the positions ``gone`` (a mask), and their txn_ids."""
        if self.keep_ids:
            self.ids.difference_update(self.txn[gone].tolist())
        keep = ~gone
        self.code, self.time, self.txn = self.code[keep], self.time[keep], self.txn[keep]
        self.values = {f: col[keep] for f, col in self.values.items()}

    def _merged(self, code: np.ndarray, time: np.ndarray, txn: np.ndarray,
                values: dict[int, np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, np.ndarray],
                           SortKey, np.ndarray]:
        """The held events and new ones (grouped or not) as one set of arrays sorted by
        (code, time) — the held ones are one sorted run, so a stable sort merges the new
        ones in; equal keys keep held first, then the order given — with the sort key and
        the permutation (positions past the held ones are the new events)."""
        code = np.concatenate((self.code, code))
        time = np.concatenate((self.time, time))
        txn = np.concatenate((self.txn, txn))
        cols = {f: np.concatenate((self.values[f], values[f])) for f in self.fields}
        sort = SortKey(code, time, len(self.keys))
        perm = np.argsort(sort.key, kind="stable")
        return (code[perm], time[perm], txn[perm], {f: col[perm] for f, col in cols.items()},
                sort, perm)

    # --- a batch ----------------------------------------------------------------------------
    def _prior(self, codes: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Per event, its entity's latest event time when it arrives (the state's, or an
        earlier event's of this batch; _NO_TIME when there is none)."""
        order = np.argsort(codes, kind="stable")  # per entity, in order of arrival
        c, t = codes[order], times[order]
        keys = SortKey(c, t, len(self.keys))
        running = np.maximum.accumulate(keys.key)  # per entity: its newest so far
        follows = c[1:] == c[:-1]
        before = np.full(len(c), _NO_TIME, np.int64)
        before[1:][follows] = keys.time_of(c[1:][follows], running[:-1][follows])
        prior = np.empty(len(c), np.int64)
        prior[order] = np.maximum(before, self.last[c])
        return prior

    def apply(self, keys: Sequence[str] | np.ndarray, txn: Sequence[str] | np.ndarray,
              times: np.ndarray,
              values: dict[int, np.ndarray] | None = None,
              rules: Sequence[tuple[int, int]] = ()) -> Applied:
        """Place a batch of events (in order of arrival, none already held): their entity
        keys, txn_ids, times (µs) and the value columns of ``fields``; compute the rows they
        change. ``rules`` (window µs, count): an entity with a computed row that has at
        least that many events within that window is not applied here but handed back in
        ``slow`` (a card that may raise an alert goes event by event)."""
        n = len(times)
        if not n:
            return Applied(np.zeros(0, dtype=bool))
        codes = self._codes(keys)
        # behind the clock (the newest time so far, this one included: it changes nothing);
        # such an event must not count as its entity's latest for the ones after it
        behind = times < np.maximum(np.maximum.accumulate(times), self.clock) - self.slack_us
        if behind.all():
            return Applied(~behind)
        if behind.any():
            prior = np.full(n, _NO_TIME, np.int64)
            prior[~behind] = self._prior(codes[~behind], times[~behind])
        else:
            prior = self._prior(codes, times)
        known = prior != _NO_TIME
        refused = behind | known & (times < np.where(known, prior, 0) - self.slack_us)
        accepted = ~refused
        out_of_order = known & ~refused & (times < prior)
        if not accepted.any():
            return Applied(accepted)
        placed = np.flatnonzero(accepted)
        self.clock = max(self.clock, int(times[placed].max()))
        values = values or {}
        held = len(self.time)
        old_code = self.code
        new_txn = np.asarray(txn, dtype=object)[placed]
        code, time, txns, cols, sort, perm = self._merged(
            codes[placed], times[placed], new_txn,
            {f: np.asarray(values[f])[placed] for f in self.fields})
        key = sort.key[perm]
        is_new = perm >= held

        def first_after(at: np.ndarray, bound: np.ndarray) -> np.ndarray:
            """Per query: the first position of entity ``at`` whose time is > bound."""
            return np.searchsorted(key, sort.query(at, bound), "right")

        emit = is_new.copy()
        if out_of_order.any():  # the later events whose windows now include it
            where = np.empty(len(perm), np.int64)
            where[perm] = np.arange(len(perm))
            late = where[held + np.flatnonzero(out_of_order[placed])]
            stops = first_after(code[late], time[late] + self.horizon_us)
            marks = np.zeros(len(perm) + 1, np.int64)
            np.add.at(marks, late, 1)
            np.add.at(marks, stops, -1)
            emit |= np.cumsum(marks[:-1]) > 0
        group_end = np.ones(len(code), dtype=bool)
        group_end[:-1] = code[1:] != code[:-1]
        touched = np.zeros(len(self.keys), dtype=bool)
        touched[codes[placed]] = True
        newest = group_end & touched[code]
        query = np.flatnonzero(emit | newest)
        at, at_time = code[query], time[query]
        slow: dict[str, tuple[EventLog, list[int]]] = {}
        hot = np.zeros(len(query), dtype=bool)
        for window_us, count in rules:
            hot |= query - first_after(at, at_time - window_us) + 1 >= count
        if hot.any():  # handed back: before the batch, with the positions of their events
            slow_codes = np.unique(at[hot])
            is_slow = np.zeros(len(self.keys), dtype=bool)
            is_slow[slow_codes] = True
            for c in slow_codes.tolist():
                slow[self.keys[c]] = (self._log(c), [])
            for i in placed[is_slow[codes[placed]]].tolist():
                slow[keys[i]][1].append(i)
            gone_before = is_slow[old_code]
            if self.keep_ids:
                self.ids.difference_update(self.txn[gone_before].tolist())
            keep = ~is_slow[code]
            code, time, txns, key = code[keep], time[keep], txns[keep], key[keep]
            cols = {f: col[keep] for f, col in cols.items()}
            emit, newest = emit[keep], newest[keep]
            query = np.flatnonzero(emit | newest)
            at, at_time = code[query], time[query]
            new_txn = new_txn[~is_slow[codes[placed]]]
        features = self._features(query, at, at_time, first_after, code, time, cols)
        if len(self._key_array) < len(self.keys):
            self._key_array = np.array(self.keys, dtype=object)
        rows_mask, newest_mask = emit[query], newest[query]
        rows = {name: col[rows_mask] for name, col in features.items()}
        rows[self.key_name] = self._key_array[at[rows_mask]]
        rows["event_timestamp"] = at_time[rows_mask]
        latest_codes = at[newest_mask]
        latest = ([self.keys[c] for c in latest_codes.tolist()],
                  {name: col[newest_mask] for name, col in features.items()},
                  at_time[newest_mask])
        self.last[latest_codes] = at_time[newest_mask]
        if self.keep_ids:
            self.ids.update(new_txn.tolist())
        self.code, self.time, self.txn, self.values = code, time, txns, cols
        self._evict()
        if not len(query):  # every entity was handed back
            return Applied(accepted, slow=slow)
        return Applied(accepted, rows, latest, slow)

    def _features(self, query: np.ndarray, at: np.ndarray, at_time: np.ndarray,
                  first_after: Any, code: np.ndarray, time: np.ndarray,
                  cols: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
        """The entity's features as of each queried position (WindowSet.features), with each
        aggregation's array implementation."""
        out: dict[str, np.ndarray] = {}
        for micros, group in self.plan:
            lo = first_after(at, at_time - micros)
            for name, array, value, keep in group:
                out[name] = array(ArrayWindow(
                    values=time if value is None else value(time, cols),
                    mask=None if keep is None else keep(time, cols),
                    lo=lo, idx=query, group=code, time=time))
        return out

    def _evict(self) -> None:
        """Forget events at or before the clock minus kept_us: no event the arrays can still
        accept has them in a window or within its allowance for events out of order."""
        if self.clock == _NO_TIME or not len(self.time) \
                or self.time.min() > self.clock - self.kept_us:
            return
        self._drop(self.time <= self.clock - self.kept_us)

    def expire(self) -> int:
        """Drop every entity whose latest event is at or before ``clock - kept_us`` (nothing
        the arrays can still accept reaches it: see the module docstring), and the codes no
        event ever reached (an entity checked out and handed back empty, or whose events
        were all refused); returns how many entities went. Driven by event time only, so a
        changelog replayed batch by batch expires what the live run did."""
        self._evict()  # entities handed back from event-by-event work hold older ones
        last = self.last
        dead = last == _NO_TIME
        if self.clock != _NO_TIME:
            bound = self.clock - self.kept_us
            dead |= last <= bound
            for c, marks in list(self.marks.items()):  # a mark that old bounds no evidence
                kept = {rule: t for rule, t in marks.items() if t > bound}
                if len(kept) < len(marks):
                    self.marks[c] = kept
        if self._free:
            dead[self._free] = False  # already free
        if not dead.any():
            return 0
        if len(self.code):
            gone = dead[self.code]
            if gone.any():
                self._drop(gone)
        codes = np.flatnonzero(dead)
        last[codes] = _NO_TIME
        index, keys, held = self.index, self.keys, self.marks
        for c in codes.tolist():
            del index[keys[c]]
            keys[c] = ""
            held.pop(c, None)
        self._free.extend(codes[::-1].tolist())  # the lowest first
        return len(codes)

    # --- event by event -------------------------------------------------------------------
    def checkout(self, key: str) -> EventLog:
        """An entity's state as an EventLog (empty for an entity not seen yet), to be
        applied event by event and handed back with ``put``; until then the arrays still
        hold its events as they were."""
        return self._log(int(self._codes([key])[0]))

    def put(self, logs: dict[str, EventLog]) -> None:
        """Take entities back from event-by-event work: their events and marks replace what
        the arrays held for them."""
        if not logs:
            return
        codes = self._codes(logs)
        mine = np.zeros(len(self.keys), dtype=bool)
        mine[codes] = True
        self._drop(mine[self.code])
        events = [e for log in logs.values() for e in log.events]
        sizes = [len(log.events) for log in logs.values()]
        for c, log in zip(codes.tolist(), logs.values(), strict=True):
            marks = dict(log.marks)
            marks.pop("_floor", None)  # what snapshots written before expire() held
            if marks:
                self.marks[c] = marks
            else:
                self.marks.pop(c, None)
            if log.times:
                self.last[c] = log.times[-1]
                self.clock = max(self.clock, log.times[-1])
            if self.keep_ids:
                self.ids.update(log.ids)
        if events:
            self._append(np.repeat(codes, sizes), events)

    def _append(self, code: np.ndarray, events: list[Event]) -> None:
        """Add events (grouped by entity, in order within each) and sort."""
        columns = list(zip(*events, strict=True))
        self.code, self.time, self.txn, self.values, _, _ = self._merged(
            code, np.array(columns[1], np.int64), np.array(columns[0], dtype=object),
            {f: np.array(columns[f], _dtype(f)) for f in self.fields})

    # --- snapshots and parity -----------------------------------------------------------
    def _groups(self) -> list[tuple[int, int, int]]:
        """Per entity held: (code, first position, one past its last)."""
        if not len(self.code):
            return []
        bounds = np.flatnonzero(np.diff(self.code)) + 1
        starts = [0, *bounds.tolist()]
        ends = [*bounds.tolist(), len(self.code)]
        return list(zip(self.code[starts].tolist(), starts, ends, strict=True))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The state as a snapshot document: key → {"e": [[txn_id, time µs, *the values of
        ``fields``], …], "m": the rules' marks}."""
        txns, times = self.txn.tolist(), self.time.tolist()
        values = [self.values[f].tolist() for f in self.fields]
        out: dict[str, dict[str, Any]] = {}
        for c, lo, hi in self._groups():
            out[self.keys[c]] = {"e": [list(e) for e in zip(
                txns[lo:hi], times[lo:hi], *[v[lo:hi] for v in values], strict=True)],
                "m": self._marks(c)}
        return out

    def load(self, doc: dict[str, dict[str, Any]],
             fields: tuple[int, ...] | None = None) -> None:
        """Add a snapshot document's entities (``snapshot``'s format, its values those of
        ``fields`` — by default the state's own — or EventLog tuples: an event of 8 values)
        to an empty state. Fields the state keeps and the snapshot lacks are refused
        (SnapshotFieldsChanged): their values are not in it."""
        held = self.fields if fields is None else fields
        if set(self.fields) - set(held):
            raise SnapshotFieldsChanged(self.entity, sorted(set(self.fields) - set(held)))
        logs: dict[str, EventLog] = {}
        for key, d in doc.items():
            events: list[Event] = []
            for e in d["e"]:
                if len(e) == 8:
                    events.append(tuple(e))
                    continue
                if len(e) != 2 + len(held):
                    raise SnapshotFieldsChanged(self.entity, [])
                kept = dict(zip(held, e[2:], strict=True))
                events.append((e[0], e[1], *(kept[f] if f in kept else self._filler(f, key)
                                             for f in VALUES)))
            logs[key] = EventLog(events, d.get("m") or {})
        self.put(logs)

    def logs(self) -> dict[str, EventLog]:
        """Every entity's events as an EventLog (with its marks)."""
        return {self.keys[c]: self._log(c) for c, _, _ in self._groups()}


class SnapshotFieldsChanged(KestrelError):
    """A snapshot whose events lack a field the entity's declared features now read."""

    def __init__(self, entity: str, fields: list[int]):
        self.fields = fields
        super().__init__(f"the {entity} state's snapshot lacks event fields the declared "
                         f"features now read ({fields or 'another set of fields'})")


def _dtype(f: int) -> Any:
    return np.float64 if f in FLOAT_FIELDS else object
