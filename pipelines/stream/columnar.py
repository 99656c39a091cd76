"""Splitting a poll's buffer, and Arrow strings (kestrel.features.arrays has the window math).

``split`` copies a buffer's held and taken records apart; ``strings`` (from
kestrel.features.arrays, where the entity arrays' window kernels live) is Arrow's string
column of a numpy object array, which the processor and the offline log encode with.
"""

from __future__ import annotations

from itertools import compress, pairwise
from typing import Any

import numpy as np

from kestrel.features.arrays import strings

__all__ = ["split", "strings"]


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
