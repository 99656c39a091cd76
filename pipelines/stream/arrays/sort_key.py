"""The sort key of an entity type's held events: code-major, time-minor, as one int64."""

from __future__ import annotations

import numpy as np

KEY_BITS = 62  # of a SortKey (non-negative int64)


class SortKey:
    """One int64 per (entity code, time) that sorts code-major, time-minor, and queries
    against it. The time part is the µs offset from the earliest time when the span fits
    beside the code's bits (KEY_BITS in all: about 2 years with 100,000 entities), else the
    rank among the distinct times (np.unique: slower, any span)."""

    def __init__(self, code: np.ndarray, time: np.ndarray, codes: int) -> None:
        self.shift = KEY_BITS - max(1, codes).bit_length()
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
