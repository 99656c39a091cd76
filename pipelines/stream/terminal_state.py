"""The terminal state of one `transactions.by-terminal` partition, as sorted arrays.

Terminals have count windows only (kestrel.windows) and far more keys per batch than any other
entity (every terminal a batch touches, about one per event on the simulated stream). Kept as
one EventLog per terminal, a batch cost a dozen Python operations per terminal (the lookup,
the history slice, the appends, the txn_id set, the eviction check): 5.8 µs per event of the
processor's ~28, the largest single share. Here a partition's terminals share three arrays and
a batch is merged, counted and evicted at once:

- ``code`` / ``time`` / ``txn``: every event held, sorted by (terminal code, time); events of
  equal time stay in order of arrival (a later one after the ones it ties with, as
  ``EventLog.add`` places it);
- per terminal code: ``last``, its latest event time, and ``floor``, the newest event time
  evicted (what ``WindowSet.served_before`` needs to say "history gone");
- ``ids``: the txn_ids held, so an update forwarded again (a replay after a crash) is skipped.

The result is the one applying the updates one by one gives (EventLog + WindowSet.features,
tests/stream/test_terminal_state.py checks it): an update older than its terminal's latest
event minus the reorder slack is refused; one out of order re-emits the rows of the terminal's
later events whose windows now include it, once per batch with their final values (the offline
log keeps only a batch's last version of a row anyway); events at or before the latest minus
``kept_us`` are evicted after the batch.

Window bounds are found with ``searchsorted`` on one composite (code, time) key (_SortKey).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from kestrel.errors import KestrelError
from kestrel.windows import ENTITY_KEYS
from pipelines.stream.state import Event, EventLog, WindowSet

Update = tuple[str, int, str]
"""A terminal update as the repartition topic carries it: (txn_id, event time µs, terminal_id)."""

_NO_TIME = np.iinfo(np.int64).min
_KEY_BITS = 62  # of a _SortKey (non-negative int64)
_KEY = ENTITY_KEYS["terminal"]


class _SortKey:
    """One int64 per (terminal code, time) that sorts code-major, time-minor, and queries
    against it. The time part is the µs offset from the earliest time when the span fits
    beside the code's bits (_KEY_BITS in all: about 2 years with 100,000 terminals), else the
    rank among the distinct times (np.unique: slower, any span)."""

    def __init__(self, code: np.ndarray, time: np.ndarray, codes: int) -> None:
        self.shift = _KEY_BITS - max(1, codes).bit_length()
        self.origin = int(time.min())
        self.ranks: np.ndarray | None = None
        if int(time.max()) - self.origin < (1 << self.shift):
            self.key = (code << self.shift) + (time - self.origin)
        else:
            self.ranks = np.unique(time)
            self.scale = len(self.ranks) + 1  # a query's rank can be -1
            self.key = code * self.scale + np.searchsorted(self.ranks, time)

    def query(self, code: np.ndarray, bound: np.ndarray) -> np.ndarray:
        """Keys q such that, in the sorted keys, searchsorted(q, "right") is the first
        position of ``code`` with a time > ``bound``."""
        if self.ranks is None:
            offset = np.clip(bound - self.origin, -1, (1 << self.shift) - 1)
            return (code << self.shift) + offset
        return code * self.scale + np.searchsorted(self.ranks, bound, "right") - 1

    def time_of(self, code: np.ndarray, key: np.ndarray) -> np.ndarray:
        """The time a key of ``code`` stands for."""
        if self.ranks is None:
            return key - (code << self.shift) + self.origin
        return self.ranks[key - code * self.scale]


@dataclass
class Applied:
    """What a batch of updates did: per update whether it was placed (refused ones are too
    old for their terminal's history), the offline rows as columns (None when nothing was
    placed) and the online rows, each touched terminal's newest (keys, features, times µs)."""

    accepted: np.ndarray
    rows: dict[str, Any] | None = None
    latest: tuple[list[str], dict[str, np.ndarray], np.ndarray] | None = None


class TerminalState:
    def __init__(self, windows: WindowSet, kept_us: int, slack_us: int) -> None:
        counts = [(name, micros) for micros, group in windows.groups
                  for name, kind, _ in group if kind == "count"]
        if len(counts) != sum(len(group) for _, group in windows.groups):
            raise KestrelError(
                "terminal windows other than counts are defined in kestrel/windows.py; the "
                "terminal state (pipelines/stream/terminal_state.py) computes counts only — "
                "extend it before adding such a window")
        self._counts = counts
        self.horizon_us = windows.horizon_us
        self.kept_us = kept_us
        self.slack_us = slack_us
        self.index: dict[str, int] = {}  # terminal_id → code
        self.keys: list[str] = []  # code → terminal_id
        self._key_array = np.zeros(0, dtype=object)  # the same, as an array (grown lazily)
        self.code = np.zeros(0, np.int64)
        self.time = np.zeros(0, np.int64)
        self.txn = np.zeros(0, dtype=object)
        self.last = np.zeros(0, np.int64)
        self.floor = np.zeros(0, np.int64)
        self.ids: set[str] = set()

    def __len__(self) -> int:
        return len(self.time)

    # --- applying updates -----------------------------------------------------------------
    def _codes(self, updates: Sequence[Update]) -> np.ndarray:
        index, keys = self.index, self.keys
        codes: list[int] = []
        for _, _, terminal_id in updates:
            code = index.get(terminal_id)
            if code is None:
                code = index[terminal_id] = len(keys)
                keys.append(terminal_id)
            codes.append(code)
        grow = len(keys) - len(self.last)
        if grow:
            self.last = np.concatenate((self.last, np.full(grow, _NO_TIME, np.int64)))
            self.floor = np.concatenate((self.floor, np.zeros(grow, np.int64)))
        return np.array(codes, np.int64)

    def _prior(self, codes: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Per update, its terminal's latest event time when it arrives (the state's, or an
        earlier update's of this batch; _NO_TIME when there is none)."""
        order = np.argsort(codes, kind="stable")  # per terminal, in order of arrival
        c, t = codes[order], times[order]
        keys = _SortKey(c, t, len(self.keys))
        running = np.maximum.accumulate(keys.key)  # per terminal: its newest so far
        same = np.zeros(len(c), dtype=bool)
        same[1:] = c[1:] == c[:-1]
        before = np.full(len(c), _NO_TIME, np.int64)
        follows = same[1:]
        before[1:][follows] = keys.time_of(c[1:][follows], running[:-1][follows])
        prior = np.empty(len(c), np.int64)
        prior[order] = np.maximum(before, self.last[c])
        return prior

    def apply(self, updates: Sequence[Update]) -> Applied:
        """Place a batch of updates (in order of arrival, none already held) and compute the
        rows they change."""
        if not updates:
            return Applied(np.zeros(0, dtype=bool))
        codes = self._codes(updates)
        times = np.fromiter([u[1] for u in updates], np.int64, len(updates))
        prior = self._prior(codes, times)
        known = prior != _NO_TIME
        refused = known & (times < np.where(known, prior, 0) - self.slack_us)
        accepted = ~refused
        out_of_order = known & ~refused & (times < prior)
        if not accepted.any():
            return Applied(accepted)
        placed = np.flatnonzero(accepted)
        new_txn = np.array([updates[i][0] for i in placed.tolist()], dtype=object)
        held = len(self.time)
        code = np.concatenate((self.code, codes[placed]))
        time = np.concatenate((self.time, times[placed]))
        txn = np.concatenate((self.txn, new_txn))
        keys = _SortKey(code, time, len(self.keys))
        # the held events are one sorted run: a stable sort merges the new ones into it
        # (equal keys: held first, then in order of arrival)
        perm = np.argsort(keys.key, kind="stable")
        code, time, txn, key = code[perm], time[perm], txn[perm], keys.key[perm]
        is_new = perm >= held

        def first_after(at: np.ndarray, bound: np.ndarray) -> np.ndarray:
            """Per query: the first position of terminal ``at`` whose time is > bound."""
            return np.searchsorted(key, keys.query(at, bound), "right")

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
        features = {name: query - first_after(at, at_time - micros) + 1
                    for name, micros in self._counts}
        if len(self._key_array) < len(self.keys):
            self._key_array = np.array(self.keys, dtype=object)
        rows_mask, newest_mask = emit[query], newest[query]
        rows = {name: col[rows_mask] for name, col in features.items()}
        rows[_KEY] = self._key_array[at[rows_mask]]
        rows["event_timestamp"] = at_time[rows_mask]
        latest_codes = at[newest_mask]
        latest = ([self.keys[c] for c in latest_codes.tolist()],
                  {name: col[newest_mask] for name, col in features.items()},
                  at_time[newest_mask])
        self.last[latest_codes] = at_time[newest_mask]
        self.ids.update(new_txn.tolist())
        self.code, self.time, self.txn = code, time, txn
        self._evict()
        return Applied(accepted, rows, latest)

    def _evict(self) -> None:
        """Forget events at or before their terminal's latest minus kept_us (they left every
        window, and the reorder slack)."""
        gone = self.time <= self.last[self.code] - self.kept_us
        if not gone.any():
            return
        np.maximum.at(self.floor, self.code[gone], self.time[gone])
        self.ids.difference_update(self.txn[gone].tolist())
        keep = ~gone
        self.code, self.time, self.txn = self.code[keep], self.time[keep], self.txn[keep]

    # --- snapshots and parity -----------------------------------------------------------
    def _groups(self) -> list[tuple[str, list[Any], list[Any], int]]:
        """Per terminal held: (terminal_id, txn_ids, times, floor), in code order."""
        if not len(self.code):
            return []
        bounds = np.flatnonzero(np.diff(self.code)) + 1
        starts = [0, *bounds.tolist()]
        ends = [*bounds.tolist(), len(self.code)]
        codes = self.code[starts].tolist() if len(self.code) else []
        txns, times, floors = self.txn.tolist(), self.time.tolist(), self.floor.tolist()
        return [(self.keys[c], txns[s:e], times[s:e], floors[c])
                for c, s, e in zip(codes, starts, ends, strict=True)]

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The state as a snapshot document: terminal_id → {"e": [[txn_id, time µs], …],
        "m": {"_floor": newest time evicted} (empty when none)}."""
        return {key: {"e": [list(e) for e in zip(txns, times, strict=True)],
                      "m": {"_floor": floor} if floor else {}}
                for key, txns, times, floor in self._groups()}

    def load(self, doc: dict[str, dict[str, Any]]) -> None:
        """Add a snapshot document's terminals (``snapshot``'s format; events written as
        EventLog tuples, txn_id and time first, read as well) to an empty state."""
        updates: list[Update] = [(e[0], e[1], key) for key, d in doc.items() for e in d["e"]]
        if not updates:
            return
        code = self._codes(updates)
        time = np.fromiter([u[1] for u in updates], np.int64, len(updates))
        txn = np.array([u[0] for u in updates], dtype=object)
        order = np.lexsort((np.arange(len(time)), time, code))
        self.code, self.time, self.txn = code[order], time[order], txn[order]
        np.maximum.at(self.last, self.code, self.time)
        for key, d in doc.items():
            self.floor[self.index[key]] = d.get("m", {}).get("_floor", 0)
        self.ids.update(self.txn.tolist())

    def logs(self) -> dict[str, EventLog]:
        """Each terminal's events as an EventLog (with its floor mark), for
        ``WindowSet.served_before`` (parity's comparison)."""
        out: dict[str, EventLog] = {}
        for key, txns, times, floor in self._groups():
            events: list[Event] = [(txn, t, 0.0, "", key, "", 0.0, 0.0)
                                   for txn, t in zip(txns, times, strict=True)]
            out[key] = EventLog(events, {"_floor": floor} if floor else {})
        return out
