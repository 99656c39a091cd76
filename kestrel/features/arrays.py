"""Window arithmetic on numpy columns sorted by (entity, time): the array engine's kernels.

Each operation takes the query positions ``idx`` and the first position ``lo`` of each one's
window (same entity, time within the window) and walks the windows position by position, one
array pass per position in the longest window, so that

- sums add the window's values left to right: every sum is bit for bit the one Python's
  ``sum`` gives over the same values, as the reference engine computes it (rounded to cents
  with Python's ``round``: ``round2``);
- distinct counts count the window's events whose previous occurrence (same entity, same
  value) lies before the window;
- minima and maxima compare the same values the reference's ``min`` / ``max`` compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa


def strings(values: np.ndarray | Sequence[str]) -> pa.Array:
    """Arrow strings of a column. pyarrow's default path for a numpy object array cost
    ~0.77 µs per value here, 13 times that of a list; its pandas path (``from_pandas``: only
    NaN would read differently, as null, and a string column holds none) is as fast as a
    list's."""
    return pa.array(values, pa.string(), from_pandas=True)


def codes(values: np.ndarray | list[Any]) -> np.ndarray:
    """A code per value, equal for equal values (Arrow's dictionary encoding: C, about half
    the cost of numbering them in a dict). Numbers are coded as themselves."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        return np.unique(values, return_inverse=True)[1].astype(np.int64)
    return strings(values).dictionary_encode().indices.to_numpy().astype(np.int64)


def prev_same(group: np.ndarray, coded: np.ndarray) -> np.ndarray:
    """Per position: the previous position with the same group and value, or -1."""
    pos = np.arange(len(coded))
    order = np.lexsort((pos, coded, group))
    g, c = group[order], coded[order]
    same = (g[1:] == g[:-1]) & (c[1:] == c[:-1])
    prev = np.full(len(coded), -1, dtype=np.int64)
    prev[order[1:][same]] = order[:-1][same]
    return prev


def prev_same_in_windows(group: np.ndarray, values: np.ndarray, lo: np.ndarray,
                         idx: np.ndarray) -> np.ndarray:
    """prev_same for window_distinct over the windows ``lo[i]..idx[i]`` only: per position
    inside some window, the previous position inside some window with the same group and
    value (-1 when none; -1 too outside every window). A window's own earlier positions are
    all inside, so whether a position's previous same value lies before its window is
    answered as over all positions — at the cost of the windows, not of the whole state."""
    n = len(group)
    inside = np.cumsum(np.bincount(lo, minlength=n + 1) - np.bincount(idx + 1, minlength=n + 1))
    pos = np.flatnonzero(inside[:n] > 0)
    prev = np.full(n, -1, dtype=np.int64)
    if len(pos):
        found = prev_same(group[pos], codes(values[pos]))
        prev[pos] = np.where(found >= 0, pos[found], -1)
    return prev


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


def _width(lo: np.ndarray, idx: np.ndarray) -> int:
    return int((idx - lo).max()) + 1 if len(idx) else 0


def window_sum(values: np.ndarray, lo: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per position ``idx[i]``: the sum of ``values[lo[i]..idx[i]]``, added left to right."""
    acc = np.zeros(len(idx))
    for k in range(_width(lo, idx)):
        j = lo + k
        acc += np.where(j <= idx, values[np.minimum(j, idx)], 0.0)
    return acc


def window_count(mask: np.ndarray, lo: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per position ``idx[i]``: how many of ``mask[lo[i]..idx[i]]`` are true."""
    running = np.concatenate(([0], np.cumsum(mask, dtype=np.int64)))
    return running[idx + 1] - running[lo]


def window_extreme(values: np.ndarray, lo: np.ndarray, idx: np.ndarray,
                   largest: bool) -> np.ndarray:
    """Per position ``idx[i]``: the max (``largest``) or min of ``values[lo[i]..idx[i]]``."""
    pick, blank = (np.maximum, -np.inf) if largest else (np.minimum, np.inf)
    acc = np.full(len(idx), blank)
    for k in range(_width(lo, idx)):
        j = lo + k
        acc = pick(acc, np.where(j <= idx, values[np.minimum(j, idx)], blank))
    return acc


def window_distinct(prev: np.ndarray, lo: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per position ``idx[i]``: the distinct values among ``lo[i]..idx[i]``, given each
    position's previous one with the same entity and value (prev_same)."""
    distinct = np.zeros(len(idx), dtype=np.int64)
    for k in range(_width(lo, idx)):
        j = lo + k
        distinct += (j <= idx) & (prev[np.minimum(j, idx)] < lo)
    return distinct
