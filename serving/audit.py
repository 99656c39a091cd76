"""Append-only, tamper-evident audit logs: hash-chained JSON lines under
``<var_dir>/audit/<kind>/``, one file per writer process and day, each anchored with an HMAC.

Why files and not a Redis stream: the audit trail must survive exactly the failures that send
decisions to the degraded path (Redis unreachable), and an append-only local file is the
simplest store that does; a log shipper forwards it in production. Two kinds: ``decisions``
(inputs with the card token only, feature vector, model version, outputs) and ``access``
(every authenticated call, and every 401 and 403 answer).

**Layout.** ``<kind>/<day>_<host>_<pid>_<token>.jsonl`` (``day`` in UTC, ``token`` the writer's
start time and a random suffix; the file is created with O_EXCL, so no two writers ever share
one): each file has exactly one writer, so its records form one chain even when several
service workers log the same day. The files stay flat in the kind's directory (a glob of
``<kind>/*.jsonl`` still finds every record); the verifier walks the same names.

**Chain.** Every line starts ``{"seq":n,"prev":"<hex>"`` and goes on with the record's own
fields: ``seq`` counts from 1 in the file, ``prev`` is the SHA-256 of the previous line's bytes
(record 1: a genesis hash of the file's name, ``<kind>/<file>``). Editing, removing, inserting
or reordering a record breaks the chain at that record; renaming or moving a file breaks it at
record 1. The format is in serving/audit_chain.py, with the verifier (``kestrel audit verify``).

**Anchor.** A chain alone does not show that records were cut off its end, and anyone can
rewrite a whole chain. So next to each file, ``<...>.anchor`` holds ``count``, ``last`` (the
hash of record ``count``) and ``mac = HMAC(audit_key, name|count|last|closed|at)``; it is
rewritten atomically (temporary file, fsync, rename). Without the key nobody can produce an
anchor for a different chain or count, so a removed tail, an edited last record or a
rewritten chain does not verify.

**When the anchor is written, and what a crash looks like.** The anchor is written at each
group commit, right after the data file's fsync (and when a file is created, with count 0,
and when it is closed, with ``closed: true``), never before: the anchor therefore never
claims a record that is not on disk, even after a machine crash, so "the anchor counts more
records than the file holds" can only mean records were cut off (tampering). The other way
round is what a crash leaves: records written (they reach the file at once) but not yet
anchored, at most those of the last fsync interval (``fsync_ms``, or a write batch with
``fsync_ms=0``), possibly with a torn last line after a machine crash. Well-chained records
after the anchor are exactly what someone without the key can append, too, so the verifier
cannot tell those two apart from the file alone; it narrows it down instead:

- while the writer runs (it holds an exclusive ``flock`` on its file from creation to close;
  the kernel drops it when the process dies, however it dies) records after the anchor are
  only waiting for the next fsync: ``ok``, saying how many;
- after a clean close (``closed: true``, covered by the MAC) the writer appends nothing more,
  so any record after the closing anchor was appended by someone else: ``broken``;
- a writer gone without closing the file left a tail: ``unanchored`` (a crash, or records
  appended without the key; neither verified), with its own exit status (3, not 1) so that
  a crash is told from evident tampering, and the line says how many records and since when.

A writer closes its files in ``close()`` (the service's shutdown) and when the UTC day
changes.

**Writing.** Writes go through a queue to one writer thread, so a request never waits on the
disk: the record is built per request (or per batch), the chain (one SHA-256 per record) and
the JSON encoding run in the writer thread. The writer writes what is queued at once (a crash
of the process loses nothing written) and fsyncs, then anchors, at most every ``fsync_ms``
(group commit: at 500 decisions/s an fsync and a thread wake-up per record cost more CPU than
the decisions; a machine crash may lose the last ``fsync_ms`` of records). ``fsync_ms=0``
fsyncs and anchors after every write.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import queue
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from serving.audit_chain import (
    ANCHOR_SUFFIX,
    RESERVED,
    anchor_bytes,
    fsync_dir,
    genesis,
    record_head,
)

log = logging.getLogger("kestrel.audit")
_OPTS = orjson.OPT_UTC_Z | orjson.OPT_SERIALIZE_NUMPY
_STOP = None
WRITE_BATCH_S = 0.005  # how long the writer lets records gather after waking

_Entry = tuple[str, list[dict[str, Any]]]


@dataclass(eq=False)
class _Chain:
    """One open audit file: its writer's state of the chain."""

    name: str  # <kind>/<file>.jsonl: what the genesis and the anchor's MAC bind
    path: Path
    day: str
    fd: int
    seq: int  # records written
    last: bytes  # hash of record ``seq`` (the genesis while there is none)
    anchored: int = 0  # records the anchor on disk counts


def _host() -> str:
    name = "".join(c if c.isalnum() or c in ".-" else "-" for c in socket.gethostname())
    return name[:64] or "host"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class AuditLog:
    """The audit writer of one process; ``key`` is the ``audit_key`` secret that signs the
    anchors."""

    def __init__(self, root: Path, fsync_ms: float, key: bytes):
        self.root = root
        self.fsync_s = fsync_ms / 1000
        self._key = key
        self._token = f"{datetime.now(UTC):%H%M%S}-{secrets.token_hex(3)}"
        self._host = _host()
        self._queue: queue.SimpleQueue[_Entry | threading.Event | None] = queue.SimpleQueue()
        self._chains: dict[str, _Chain] = {}  # by kind, all of one day
        self._dirty: set[_Chain] = set()  # written since their last fsync
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def record(self, kind: str, doc: dict[str, Any]) -> None:
        self.record_many(kind, [doc])

    def record_many(self, kind: str, docs: list[dict[str, Any]]) -> None:
        """Queue several records at once (a batch of decisions: one queue entry)."""
        self._queue.put((kind, docs))

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every record queued so far is written, fsynced and anchored (tests,
        shutdown)."""
        if not self._thread.is_alive():
            return
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self) -> None:
        """Write what is queued, anchor and close every file (``closed: true``)."""
        self._queue.put(_STOP)
        self._thread.join(10)

    # --- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        last_sync = time.monotonic()
        stop = False
        while not stop:
            timeout = (max(0.0, last_sync + self.fsync_s - time.monotonic())
                       if self._dirty else None)
            batch: list[_Entry | threading.Event | None] = []
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
            entries: list[_Entry] = []
            waiting: list[threading.Event] = []
            for item in batch:
                if item is _STOP:
                    stop = True
                elif isinstance(item, threading.Event):
                    waiting.append(item)
                else:
                    entries.append(item)
            try:
                if entries:
                    self._write(entries)
                if (stop or waiting or not self.fsync_s
                        or time.monotonic() - last_sync >= self.fsync_s):
                    self._sync()
                    last_sync = time.monotonic()
            except Exception:  # the thread must outlive a full disk; the chain says what is lost
                log.exception("audit writer failed")
            for done in waiting:
                done.set()
        for chain in list(self._chains.values()):
            self._close(chain)

    def _write(self, entries: list[_Entry]) -> None:
        """Chain the entries' records and append them to their kind's file of the day."""
        day = datetime.now(UTC).strftime("%Y-%m-%d")  # one writer pass: one day
        for chain in [c for c in self._chains.values() if c.day != day]:
            self._close(chain)  # the day is over: anchor it as closed
        lines: dict[_Chain, list[bytes]] = {}
        for kind, docs in entries:
            chain = self._chains.get(kind) or self._open(kind, day)
            out = lines.setdefault(chain, [])
            seq, prev = chain.seq, chain.last
            for doc in docs:
                if "seq" in doc or "prev" in doc:  # the chain's fields come first, once
                    doc = {f"doc_{k}" if k in RESERVED else k: v for k, v in doc.items()}
                try:
                    body = orjson.dumps(doc, option=_OPTS, default=str)
                except TypeError:  # orjson.JSONEncodeError: drop the record, keep the rest
                    log.exception("audit record of kind %s not serializable", kind)
                    continue
                seq += 1
                # the chain's fields, then the record's own after its "{" (one copy: a
                # memoryview and separate parts cost more than they saved)
                line = (record_head(seq, prev) + b"," + body[1:] if len(body) > 2
                        else record_head(seq, prev) + b"}")
                prev = hashlib.sha256(line).hexdigest().encode()
                out.append(line)
            chain.seq, chain.last = seq, prev
        for chain, chunk in lines.items():
            if not chunk:
                continue
            chunk.append(b"")
            try:
                _write_all(chain.fd, b"\n".join(chunk))
            except OSError:
                # the file may now end in part of this write: it is left as a crash leaves
                # one (unanchored), and the next records start a new file
                log.exception("audit file %s: write failed; %d records lost", chain.name,
                              len(chunk) - 1)
                self._chains.pop(chain.path.parent.name, None)
                self._dirty.discard(chain)
                os.close(chain.fd)
                continue
            self._dirty.add(chain)

    def _open(self, kind: str, day: str) -> _Chain:
        """A new file for ``kind`` and ``day``, locked for as long as this writer has it open,
        anchored (count 0) before its first record."""
        directory = self.root / kind
        directory.mkdir(parents=True, exist_ok=True)
        while True:
            path = directory / f"{day}_{self._host}_{os.getpid()}_{self._token}.jsonl"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:  # this process's earlier writer of the day: a new token
                self._token = f"{datetime.now(UTC):%H%M%S}-{secrets.token_hex(3)}"
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        name = f"{kind}/{path.name}"
        chain = _Chain(name, path, day, fd, 0, genesis(name))
        self._anchor(chain, closed=False)
        fsync_dir(directory)
        self._chains[kind] = chain
        return chain

    def _sync(self) -> None:
        """Group commit: fsync what was written, then anchor it."""
        for chain in self._dirty:
            os.fsync(chain.fd)
        self._dirty.clear()
        for chain in self._chains.values():
            if chain.anchored != chain.seq:
                self._anchor(chain, closed=False)

    def _close(self, chain: _Chain) -> None:
        try:
            if chain in self._dirty:
                os.fsync(chain.fd)
                self._dirty.discard(chain)
            self._anchor(chain, closed=True)
            fsync_dir(chain.path.parent)
        except OSError:
            log.exception("audit file %s: not closed cleanly", chain.name)
        finally:
            os.close(chain.fd)  # releases the lock: the writer is gone
            self._chains.pop(chain.path.parent.name, None)

    def _anchor(self, chain: _Chain, closed: bool) -> None:
        """Rewrite the chain's anchor atomically; the records it counts must be fsynced."""
        path = chain.path.with_suffix(ANCHOR_SUFFIX)
        tmp = path.with_name(f".{path.name}.tmp")
        data = anchor_bytes(self._key, chain.name, chain.seq, chain.last.decode(), closed,
                            _now())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        chain.anchored = chain.seq


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
