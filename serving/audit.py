"""Append-only audit logs: JSON lines under ``<var_dir>/audit/<kind>/<YYYY-MM-DD>.jsonl``.

Why files and not a Redis stream: the audit trail must survive exactly the failures that send
decisions to the degraded path (Redis unreachable), and an append-only local file (opened with
O_APPEND, whole lines per ``write``) is the simplest store that does; a log shipper forwards
it in production. Two kinds: ``decisions`` (inputs with the card token only, feature vector,
model version, outputs) and ``access`` (every authenticated call).

Writes go through a queue to one writer thread, so a request never waits on the disk. The
writer writes what is queued at once (a crash of the process loses nothing written) and
fsyncs at most every ``fsync_ms`` (group commit: at 500 decisions/s an fsync and a thread
wake-up per record cost more CPU than the decisions; a machine crash may lose the last
``fsync_ms`` of records). ``fsync_ms=0`` fsyncs after every write.
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
_STOP = None
WRITE_BATCH_S = 0.005  # how long the writer lets records gather after waking


class AuditLog:
    def __init__(self, root: Path, fsync_ms: float = 100.0):
        self.root = root
        self.fsync_s = fsync_ms / 1000
        self._queue: queue.SimpleQueue[tuple[str, list[dict[str, Any]]] | None] = \
            queue.SimpleQueue()
        self._files: dict[tuple[str, str], int] = {}
        self._dirty: set[int] = set()
        self._queued = 0
        self._written = 0
        self._progress = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def record(self, kind: str, doc: dict[str, Any]) -> None:
        self.record_many(kind, [doc])

    def record_many(self, kind: str, docs: list[dict[str, Any]]) -> None:
        """Queue several records at once (a batch of decisions: one queue entry)."""
        with self._progress:
            self._queued += len(docs)
        self._queue.put((kind, docs))

    def _run(self) -> None:
        last_sync = time.monotonic()
        stop = False
        while not stop:
            timeout = (max(0.0, last_sync + self.fsync_s - time.monotonic())
                       if self._dirty else None)
            batch: list[tuple[str, list[dict[str, Any]]] | None] = []
            try:
                batch.append(self._queue.get(timeout=timeout))
                if self.fsync_s:
                    time.sleep(WRITE_BATCH_S)  # let a few more arrive: one wake-up, one write
            except queue.Empty:
                pass  # the fsync deadline came first
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = _STOP in batch
            entries = [e for e in batch if e is not None]
            written = self._write(entries)
            if stop or not self.fsync_s or time.monotonic() - last_sync >= self.fsync_s:
                self._sync()
                last_sync = time.monotonic()
            with self._progress:
                self._written += written
                self._progress.notify_all()
        for fd in self._files.values():
            os.close(fd)

    def _write(self, entries: list[tuple[str, list[dict[str, Any]]]]) -> int:
        """Append the entries' records to their kind's file of the day; returns how many."""
        day = datetime.now(UTC).strftime("%Y-%m-%d")  # one writer pass: one day
        chunks: dict[int, list[bytes]] = {}
        count = 0
        for kind, docs in entries:
            fd = self._files.get((kind, day))
            if fd is None:
                path = self.root / kind / f"{day}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                self._files[(kind, day)] = fd
            chunks.setdefault(fd, []).extend(
                [orjson.dumps(doc, option=_OPTS, default=str) + b"\n" for doc in docs])
            count += len(docs)
        for fd, lines in chunks.items():
            os.write(fd, b"".join(lines))
            self._dirty.add(fd)
        return count

    def _sync(self) -> None:
        for fd in self._dirty:
            os.fsync(fd)
        self._dirty.clear()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every record queued so far is written (tests, shutdown)."""
        with self._progress:
            target = self._queued
            self._progress.wait_for(lambda: self._written >= target, timeout)

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(10)
