"""Which txn_ids the lake already holds, per event-date partition.

A client retry can publish the same transaction twice as two Kafka records; the lake must
keep it once. A duplicate carries the same event time, so it lands in the same partition: the
archiver only needs the txn_ids of the partitions it is touching. They are loaded from the
lake on first touch and kept for the most recently used partitions only, so memory stays
bounded however long the archiver runs.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pyarrow.parquet as pq

from kestrel.lake import partition_dir


class TxnIdIndex:
    def __init__(self, lake_dir: Path, max_partitions: int = 64):
        self.lake_dir = lake_dir
        self.max_partitions = max_partitions
        self._days: OrderedDict[str, set[str]] = OrderedDict()

    def ids(self, day: str) -> set[str]:
        """The txn_ids of one partition (loaded from the lake on first use)."""
        if day in self._days:
            self._days.move_to_end(day)
            return self._days[day]
        found: set[str] = set()
        folder = partition_dir(self.lake_dir, "transactions", day)
        if folder.exists():
            for f in folder.glob("*.parquet"):
                if not f.name.startswith((".", "_")):
                    found.update(pq.read_table(f, columns=["txn_id"]).column(0).to_pylist())
        self._days[day] = found
        while len(self._days) > self.max_partitions:
            self._days.popitem(last=False)
        return found
