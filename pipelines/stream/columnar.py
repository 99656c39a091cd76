"""Window aggregates for a whole micro-batch at once, with numpy.

The per-event path (``WindowSet.features``) costs tens of µs per event and entity in Python.
For the common case — an entity whose new events arrive in event-time order after its state —
the rows of all such entities of a batch are computed here in a few array passes:

- the entities' recent history (what their windows can still reach) and their new events are
  laid out as one array, grouped by entity, sorted by time within a group;
- a window's first event is a ``searchsorted`` over a composite (group, time) key;
- counts are index differences; sums add the window's amounts left to right, one array pass
  per position in the window, so every sum is bit-for-bit the one Python's ``sum`` gives (and
  is then rounded with Python's ``round``, as the per-event path does);
- distinct counts count the window's events whose previous occurrence (same group, same
  value) lies before the window.

Results are therefore identical to the per-event path; out-of-order entities and cards that
may raise an alert still take that path (pipelines/stream/processor.py decides).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from kestrel.windows import Aggregation
from pipelines.stream.state import AMOUNT, LAT, LON, TIME, Event

_GROUP_BITS = 46  # µs relative to the batch's earliest time: ~2.2 years of span


class Layout:
    """Events of several entities, grouped: per entity its history (what its windows can
    still reach), then its new events (the ones to emit rows for). Only the sizes are kept
    per entity; positions are derived with numpy in :func:`compute`. The caller appends
    to the three lists together (once per entity of a batch, so without a method call)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.sizes: list[int] = []  # per group: history + new events
        self.fresh: list[int] = []  # per group: its new events (the last ones of the group)


def _prev_same(group: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per position: the previous position with the same group and value, or -1."""
    pos = np.arange(len(codes))
    order = np.lexsort((pos, codes, group))
    g, c = group[order], codes[order]
    same = (g[1:] == g[:-1]) & (c[1:] == c[:-1])
    prev = np.full(len(codes), -1, dtype=np.int64)
    prev[order[1:][same]] = order[:-1][same]
    return prev


def _codes(values: list[Any]) -> np.ndarray:
    """A code per value, equal for equal values (Arrow's dictionary encoding: C, about half
    the cost of numbering them in a dict)."""
    return pa.array(values, pa.string()).dictionary_encode().indices.to_numpy().astype(np.int64)


def round2(values: np.ndarray) -> np.ndarray:
    """``round(x, 2)`` of every value, bit for bit, without a Python call per value.

    ``rint(x * 100) / 100`` is the double nearest k/100 for the integer k it picks, as
    Python's ``round`` returns; the two can only pick a different k when ``x * 100``
    (rounded to a double) lies within its rounding error of a half-integer, or is too large
    to hold a fraction — those values go through Python's ``round``."""
    scaled = values * 100.0
    out = np.rint(scaled) / 100.0
    magnitude = np.abs(scaled)
    risky = (np.abs(scaled - np.floor(scaled) - 0.5) <= np.maximum(magnitude, 1.0) * 1e-14) \
        | (magnitude >= 2.0 ** 52) | ~np.isfinite(scaled)
    for i in np.flatnonzero(risky).tolist():
        out[i] = round(float(values[i]), 2)
    return out


def compute(layout: Layout, groups: list[tuple[int, list[tuple[str, Aggregation, int]]]],
            extra_counts: tuple[int, ...] = (), card: bool = False
            ) -> tuple[dict[str, np.ndarray], dict[int, np.ndarray], np.ndarray] | None:
    """Feature columns for the new events (group by group, in order), per extra window
    length the counts (for alert pre-checks), and the new events' times (µs).
    ``groups``: per window length, (feature name, aggregation, index of the event field), as
    WindowSet.groups has them. None when the batch's time span does not fit the composite
    key (the caller then uses the per-event path)."""
    events = layout.events
    n = len(events)
    times = np.fromiter([e[TIME] for e in events], np.int64, n)
    t0 = int(times.min())
    if int(times.max()) - t0 >= (1 << _GROUP_BITS) or len(layout.sizes) >= (1 << 16):
        return None
    sizes = np.array(layout.sizes, dtype=np.int64)
    fresh = np.array(layout.fresh, dtype=np.int64)
    ends = np.cumsum(sizes)  # per group: one past its last position
    group = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    comp = (group << _GROUP_BITS) + (times - t0)
    # group g's new events are its last fresh[g] positions
    idx = np.arange(int(fresh.sum()), dtype=np.int64) + np.repeat(ends - np.cumsum(fresh),
                                                                  fresh)
    starts = np.repeat(ends - sizes, fresh)
    amounts: np.ndarray | None = None  # only the fields some window needs are read
    prev: dict[int, np.ndarray] = {}
    out: dict[str, np.ndarray] = {}

    def lower(micros: int) -> np.ndarray:
        lo = np.searchsorted(comp, comp[idx] - micros, side="right")
        return np.maximum(lo, starts)

    for micros, ws in groups:
        lo = lower(micros)
        width = idx - lo + 1
        longest = int(width.max()) if len(width) else 0
        for name, kind, field in ws:
            if kind == "count":
                out[name] = width
            elif kind == "sum":
                if amounts is None:
                    amounts = np.fromiter([e[AMOUNT] for e in events], np.float64, n)
                acc = np.zeros(len(idx))
                for k in range(longest):  # left to right, as Python's sum adds
                    j = lo + k
                    acc += np.where(j <= idx, amounts[np.minimum(j, idx)], 0.0)
                out[name] = round2(acc)
            else:
                if field not in prev:
                    prev[field] = _prev_same(group, _codes([e[field] for e in events]))
                p = prev[field]
                distinct = np.zeros(len(idx), dtype=np.int64)
                for k in range(longest):
                    j = lo + k
                    jj = np.minimum(j, idx)
                    distinct += (j <= idx) & (p[jj] < lo)
                out[name] = distinct
    new_times = times[idx]
    if card:
        out["card_last_event_time_us"] = new_times
        positions = idx.tolist()
        out["card_last_lat"] = np.array([events[i][LAT] for i in positions], np.float64)
        out["card_last_lon"] = np.array([events[i][LON] for i in positions], np.float64)
    extra = {micros: idx - lower(micros) + 1 for micros in extra_counts}
    return out, extra, new_times
