"""Append-only audit logs: JSON lines under ``<var_dir>/audit/<kind>/<YYYY-MM-DD>.jsonl``.

Why files and not a Redis stream: the audit trail must survive exactly the failures that send
decisions to the degraded path (Redis unreachable), and an append-only local file (opened with
O_APPEND, one ``write`` per line, fsync'd per batch) is the simplest store that does; a log
shipper forwards it in production. Two kinds: ``decisions`` (inputs with the card token only,
feature vector, model version, outputs) and ``access`` (every authenticated call).

Writes go through a queue to one writer thread, so a request never waits on the disk.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

_OPTS = orjson.OPT_UTC_Z | orjson.OPT_SERIALIZE_NUMPY


class AuditLog:
    def __init__(self, root: Path):
        self.root = root
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def record(self, kind: str, doc: dict[str, Any]) -> None:
        self._queue.put((kind, doc))

    def _run(self) -> None:
        files: dict[tuple[str, str], int] = {}
        while True:
            item = self._queue.get()
            batch = [item]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            touched: set[int] = set()
            for entry in batch:
                if entry is None:
                    for fd in files.values():
                        os.fsync(fd)
                        os.close(fd)
                    return
                kind, doc = entry
                day = datetime.now(UTC).strftime("%Y-%m-%d")
                found = files.get((kind, day))
                if found is not None:
                    fd = found
                else:
                    path = self.root / kind / f"{day}.jsonl"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                    files[(kind, day)] = fd
                os.write(fd, orjson.dumps(doc, option=_OPTS, default=str) + b"\n")
                touched.add(fd)
            for fd in touched:
                os.fsync(fd)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until the queue is drained (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(10)
