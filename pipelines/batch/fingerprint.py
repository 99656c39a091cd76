"""Input fingerprints: which daily partitions must be recomputed.

A partition of an output table depends on a known set of lake partitions (the days of its
windows). Its fingerprint is a hash of those partitions' files (name, size, modification
time) plus the job's version and parameters; the manifest keeps the fingerprint each output
partition was computed from. A partition whose fingerprint is unchanged and whose output is
there is skipped; any new, rewritten or removed input file changes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import date
from pathlib import Path

from kestrel.lake import PARTITION_KEYS, TableName, table_dir, write_bytes_durable


class DayDigests:
    """Per lake table and day, a digest of the partition's files (computed once, by stat)."""

    def __init__(self, lake_dir: Path):
        self.lake_dir = lake_dir
        self._cache: dict[TableName, dict[str, str]] = {}

    def _table(self, table: TableName) -> dict[str, str]:
        if table not in self._cache:
            digests: dict[str, str] = {}
            root = table_dir(self.lake_dir, table)
            prefix = PARTITION_KEYS[table] + "="
            if root.exists():
                for folder in sorted(root.iterdir()):
                    if not (folder.is_dir() and folder.name.startswith(prefix)):
                        continue
                    h = hashlib.sha1()
                    for f in sorted(folder.glob("*.parquet")):
                        if f.name.startswith((".", "_")):
                            continue
                        st = f.stat()
                        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
                    digests[folder.name[len(prefix):]] = h.hexdigest()
            self._cache[table] = digests
        return self._cache[table]

    def days(self, table: TableName) -> list[str]:
        return sorted(self._table(table))

    def fingerprint(self, inputs: Iterable[tuple[TableName, date]], salt: str) -> str:
        """One hash over the named lake partitions (a missing one counts as empty)."""
        h = hashlib.sha1(salt.encode())
        for table, day in sorted(inputs, key=lambda x: (x[0], x[1])):
            h.update(f"{table}/{day}={self._table(table).get(day.isoformat(), '-')};".encode())
        return h.hexdigest()


class Manifest:
    """``{group: {partition: fingerprint}}`` on disk, written atomically after the outputs."""

    def __init__(self, path: Path):
        self.path = path
        self.groups: dict[str, dict[str, str]] = {}
        if path.exists():
            self.groups = json.loads(path.read_bytes()).get("groups", {})

    def get(self, group: str, partition: str) -> str | None:
        return self.groups.get(group, {}).get(partition)

    def update(self, group: str, fingerprints: dict[str, str]) -> None:
        self.groups.setdefault(group, {}).update(fingerprints)
        body = json.dumps({"groups": self.groups}, indent=1, sort_keys=True).encode()
        write_bytes_durable(body, self.path)
