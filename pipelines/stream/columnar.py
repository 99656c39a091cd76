"""Window arithmetic on arrays sorted by (entity, time), with numpy.

pipelines/stream/entity_arrays.py keeps each partition's entities of one type in such arrays
and computes a batch's rows at once; these are its per-window operations, over positions
``idx`` and the first position ``lo`` of each one's window (same entity, time within the
window):

- sums add the window's amounts left to right, one array pass per position in the window, so
  every sum is bit-for-bit the one Python's ``sum`` gives (then rounded with Python's
  ``round``: round2), as ``WindowSet.features`` computes them;
- distinct counts count the window's events whose previous occurrence (same entity, same
  value) lies before the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import compress, pairwise
from typing import Any

import numpy as np
import pyarrow as pa


def prev_same(group: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per position: the previous position with the same group and value, or -1."""
    pos = np.arange(len(codes))
    order = np.lexsort((pos, codes, group))
    g, c = group[order], codes[order]
    same = (g[1:] == g[:-1]) & (c[1:] == c[:-1])
    prev = np.full(len(codes), -1, dtype=np.int64)
    prev[order[1:][same]] = order[:-1][same]
    return prev


def prev_same_in_windows(group: np.ndarray, values: np.ndarray, lo: np.ndarray,
                         idx: np.ndarray) -> np.ndarray:
    """prev_same for window_distinct over the windows ``lo[i]..idx[i]`` only: per position
    inside some window, the previous position inside some window with the same group and
    value (-1 when none; -1 too outside every window). A window's own earlier positions are
    all inside, so whether a position's previous same value lies before its window is
    answered as over all positions — at the cost of the windows, not of the whole state
    (a partition's 24 hours of events, encoded and sorted every batch, were most of the
    distinct counts' cost)."""
    n = len(group)
    inside = np.cumsum(np.bincount(lo, minlength=n + 1) - np.bincount(idx + 1, minlength=n + 1))
    pos = np.flatnonzero(inside[:n] > 0)
    prev = np.full(n, -1, dtype=np.int64)
    if len(pos):
        found = prev_same(group[pos], codes(values[pos]))
        prev[pos] = np.where(found >= 0, pos[found], -1)
    return prev


def strings(values: np.ndarray | Sequence[str]) -> pa.Array:
    """Arrow strings of a column. pyarrow's default path for a numpy object array cost
    ~0.77 µs per value here, 13 times that of a list; its pandas path (``from_pandas``: only
    NaN would read differently, as null, and a string column holds none) is as fast as a
    list's."""
    return pa.array(values, pa.string(), from_pandas=True)


def codes(values: np.ndarray | list[Any]) -> np.ndarray:
    """A code per value, equal for equal values (Arrow's dictionary encoding: C, about half
    the cost of numbering them in a dict)."""
    return strings(values).dictionary_encode().indices.to_numpy().astype(np.int64)


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


def window_sum(values: np.ndarray, lo: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per position ``idx[i]``: the sum of ``values[lo[i]..idx[i]]``, added left to right."""
    acc = np.zeros(len(idx))
    for k in range(int((idx - lo).max()) + 1 if len(idx) else 0):
        j = lo + k
        acc += np.where(j <= idx, values[np.minimum(j, idx)], 0.0)
    return acc


def window_distinct(prev: np.ndarray, lo: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per position ``idx[i]``: the distinct values among ``lo[i]..idx[i]``, given each
    position's previous one with the same entity and value (prev_same)."""
    distinct = np.zeros(len(idx), dtype=np.int64)
    for k in range(int((idx - lo).max()) + 1 if len(idx) else 0):
        j = lo + k
        distinct += (j <= idx) & (prev[np.minimum(j, idx)] < lo)
    return distinct


def split(items: list[Any], holding: np.ndarray) -> tuple[list[Any], list[Any]]:
    """``items`` where ``holding`` is False, and where it is True, each in order. A buffer
    holds long runs of one partition's records (a poll's worth), so it is copied as slices
    run by run; item by item (``compress``) only when the runs are short."""
    edges = np.flatnonzero(holding[1:] != holding[:-1]) + 1
    if len(edges) * 16 > len(items):
        return (list(compress(items, (~holding).tolist())),
                list(compress(items, holding.tolist())))
    bounds = [0, *edges.tolist(), len(items)]
    runs: tuple[list[Any], list[Any]] = ([], [])
    held = bool(holding[0]) if len(items) else False
    for lo, hi in pairwise(bounds):
        runs[held].extend(items[lo:hi])
        held = not held
    return runs
