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

**A disk that is full or failing.** The queue is bounded (``max_queued`` records,
``KESTREL_AUDIT_QUEUE_RECORDS``): a record is accepted only while the writer can write and the
queue has room (``admits`` / ``record_many`` say whether it was; refused records are counted
in ``kestrel_audit_refused_total``). A write that fails (``OSError``: ENOSPC, EIO) is undone —
the file is cut back (``ftruncate``, which needs no space) to its last whole record, so its
chain stays intact and nothing half-written stays in it — and its records stay in memory;
the writer is then *failed* (``healthy`` is False: ``/v1/ready`` fails, ingest and labels
answer 503, decisions say ``audited: false``; each error counted in
``kestrel_audit_write_errors_total``) and tries again every ``RETRY_S``: a probe file
(``<root>/.probe-<pid>``, never read by the verifier) written, fsynced and removed, then the
records it holds, then the fsync and the anchors. When all of that succeeds the disk has room
again and the writer is healthy. A failed fsync is not retried on the same file (after a
failed fsync the kernel may have dropped the pages it could not write, and a later fsync
would report success): the file is left as a crash leaves one (its records after the anchor
unanchored) and the next records start a new file. Records held at shutdown while the disk
still fails are lost and counted (``kestrel_audit_lost_total``), as a crash loses its last
fsync interval.
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

from kestrel.errors import ServiceUnavailable
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
RETRY_S = 1.0  # while failed, the writer tries the disk again this often
PROBE_BYTES = 4096

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
    size: int = 0  # bytes of whole records in the file: where a failed write is cut back to


def _host() -> str:
    name = "".join(c if c.isalnum() or c in ".-" else "-" for c in socket.gethostname())
    return name[:64] or "host"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _count(metric: str, n: float = 1, *labels: str) -> None:
    """Count in serving.metrics, imported only when there is something to count: a process
    that only writes (tests, tools) does not load BentoML for it."""
    from serving import metrics

    counter = getattr(metrics, metric)
    (counter.labels(*labels) if labels else counter).inc(n)


class AuditUnavailable(ServiceUnavailable):
    """The audit log cannot take records (its disk is full or failing, or its queue is
    full): HTTP 503 with Retry-After."""


class AuditLog:
    """The audit writer of one process; ``key`` is the ``audit_key`` secret that signs the
    anchors; at most ``max_queued`` records wait for the disk (a batch larger than that is
    taken when nothing waits)."""

    def __init__(self, root: Path, fsync_ms: float, key: bytes, max_queued: int = 100_000):
        self.root = root
        self.fsync_s = fsync_ms / 1000
        self.max_queued = max_queued
        self._key = key
        self._token = f"{datetime.now(UTC):%H%M%S}-{secrets.token_hex(3)}"
        self._host = _host()
        self._queue: queue.SimpleQueue[_Entry | threading.Event | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._queued = 0  # records accepted and not yet written (in the queue or held)
        self._held: list[_Entry] = []  # taken from the queue, not yet written (writer only)
        self._chains: dict[str, _Chain] = {}  # by kind, all of one day
        self._dirty: set[_Chain] = set()  # written since their last fsync
        self.failed_since: float | None = None  # time.time() of the first failed write
        self.error: str | None = None  # the last error while failed
        self.lost = 0  # accepted records never written (held at shutdown while failed)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        """The writer runs and its last attempt to write succeeded."""
        return self.failed_since is None and self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        """What readiness shows of the writer."""
        failed = self.failed_since
        return {"healthy": self.healthy, "writer_alive": self._thread.is_alive(),
                "queued": self._queued, "max_queued": self.max_queued, "error": self.error,
                "failed_for_s": round(time.time() - failed, 1) if failed is not None else None}

    def check(self, what: str) -> None:
        """Raise AuditUnavailable (503) unless the log can take records now."""
        if not self.healthy:
            raise AuditUnavailable(
                f"{what}: the audit log cannot write ({self.error or 'its writer stopped'}); "
                "retry shortly")
        if self._queued >= self.max_queued:
            raise AuditUnavailable(f"{what}: the audit log's queue is full "
                                   f"({self.max_queued} records); retry shortly")

    def admits(self, kind: str, n: int) -> bool:
        """Whether ``n`` records of ``kind`` would be taken now: the writer can write and the
        queue has room (a batch larger than the bound when nothing waits). False is counted
        as refused. ``record_many(..., admitted=True)`` then queues them without asking
        again (a decision says ``audited`` before its record is built; the bound is soft by
        the batches admitted at the same moment)."""
        if self.healthy and (self._queued == 0 or self._queued + n <= self.max_queued):
            return True
        _count("AUDIT_REFUSED", n, kind)
        return False

    def record(self, kind: str, doc: dict[str, Any]) -> bool:
        return self.record_many(kind, [doc])

    def record_many(self, kind: str, docs: list[dict[str, Any]],
                    admitted: bool = False) -> bool:
        """Queue several records at once (a batch of decisions: one queue entry); False when
        they were refused (see ``admits``), True when queued."""
        if not admitted and not self.admits(kind, len(docs)):
            return False
        with self._lock:
            self._queued += len(docs)
        self._queue.put((kind, docs))
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every record queued so far is written, fsynced and anchored (tests,
        shutdown); False when they are not (the disk is failing, or the wait timed out)."""
        if not self._thread.is_alive():
            return False
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout) and self.healthy and not self._held

    def close(self) -> None:
        """Write what is queued, anchor and close every file (``closed: true``)."""
        self._queue.put(_STOP)
        self._thread.join(10)

    # --- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        last_sync = time.monotonic()
        next_try = 0.0  # while failed: when to try the disk again
        stop = False
        while not stop:
            now = time.monotonic()
            failed = self.failed_since is not None
            timeout = (max(0.0, next_try - now) if failed
                       else max(0.0, last_sync + self.fsync_s - now) if self._dirty else None)
            batch: list[_Entry | threading.Event | None] = []
            try:
                batch.append(self._queue.get(timeout=timeout))
                if self.fsync_s and not failed:
                    time.sleep(WRITE_BATCH_S)  # let a few more arrive: one wake-up, one write
            except queue.Empty:
                pass  # the fsync deadline (or the next try) came first
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            waiting: list[threading.Event] = []
            for item in batch:
                if item is _STOP:
                    stop = True
                elif isinstance(item, threading.Event):
                    waiting.append(item)
                else:
                    self._held.append(item)
            if failed and not stop and time.monotonic() < next_try:
                for done in waiting:  # a flush while failed does not wait for the disk
                    done.set()
                continue
            try:
                if failed:
                    self._probe()
                if self._held:
                    self._write()
                if (stop or waiting or failed or not self.fsync_s
                        or time.monotonic() - last_sync >= self.fsync_s):
                    self._sync()
                    last_sync = time.monotonic()
            except OSError as exc:  # a full or failing disk: hold the records, try again
                self._failed(exc)
                next_try = time.monotonic() + RETRY_S
            except Exception:  # not the disk's fault: retrying cannot help
                n = self._release(self._held)
                self._held = []
                self.lost += n
                _count("AUDIT_LOST", n)
                log.exception("audit writer failed; %d records lost", n)
            else:
                if self.failed_since is not None:
                    log.warning("audit log writes again (failed for %.1f s)",
                                time.time() - self.failed_since)
                    self.failed_since, self.error = None, None
            for done in waiting:
                done.set()
        if self._held:  # shutdown while the disk fails: what is held is lost, and said
            n = self._release(self._held)
            self.lost += n
            _count("AUDIT_LOST", n)
            log.error("audit log closed while it cannot write: %d records lost (%s)", n,
                      self.error)
        for chain in list(self._chains.values()):
            self._close(chain)

    def _failed(self, exc: OSError) -> None:
        _count("AUDIT_WRITE_ERRORS")
        self.error = f"{type(exc).__name__}: {exc}"
        if self.failed_since is None:
            self.failed_since = time.time()
            log.error("audit log cannot write (%s); %d records held, new records refused "
                      "until it can", self.error, sum(len(d) for _, d in self._held))

    def _release(self, entries: list[_Entry]) -> int:
        """Give back the queue room of ``entries`` (written or lost); their record count."""
        n = sum(len(docs) for _, docs in entries)
        with self._lock:
            self._queued -= n
        return n

    def _probe(self) -> None:
        """Whether the disk takes a write again: a hidden file at the root (the verifier
        reads only the kinds' directories) written, fsynced and removed."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f".probe-{os.getpid()}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
            path.unlink(missing_ok=True)

    def _write(self) -> None:
        """Chain the held entries' records and append them to their kind's file of the day,
        kind by kind; a kind written is released. A failed write is cut back out of its file
        (its records stay held) and the error raised."""
        day = datetime.now(UTC).strftime("%Y-%m-%d")  # one writer pass: one day
        for chain in [c for c in self._chains.values() if c.day != day]:
            self._close(chain)  # the day is over: anchor it as closed
        kinds: dict[str, list[_Entry]] = {}
        for entry in self._held:
            kinds.setdefault(entry[0], []).append(entry)
        for kind, entries in kinds.items():
            chain = self._chains.get(kind) or self._open(kind, day)
            seq, prev = chain.seq, chain.last
            out: list[bytes] = []
            for _, docs in entries:
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
            if out:
                out.append(b"")
                data = b"\n".join(out)
                try:
                    _write_all(chain.fd, data)
                except OSError:
                    self._cut_back(chain)
                    raise
                chain.seq, chain.last, chain.size = seq, prev, chain.size + len(data)
                self._dirty.add(chain)
            self._release(entries)
            self._held = [e for e in self._held if e[0] != kind]

    def _cut_back(self, chain: _Chain) -> None:
        """Undo a failed write: the file back to its last whole record (ftruncate frees
        space, it needs none), so the chain on disk is what the writer's state says."""
        try:
            os.ftruncate(chain.fd, chain.size)
        except OSError:  # cannot even cut it: leave the file as a crash leaves one
            log.exception("audit file %s: a failed write could not be cut back; the next "
                          "records start a new file", chain.name)
            self._abandon(chain)

    def _abandon(self, chain: _Chain) -> None:
        """Stop writing ``chain``'s file, unclosed: what follows its anchor stays unanchored
        (the verifier says so once the lock is gone); the kind's next records start a new
        file."""
        self._chains.pop(chain.path.parent.name, None)
        self._dirty.discard(chain)
        os.close(chain.fd)

    def _open(self, kind: str, day: str) -> _Chain:
        """A new file for ``kind`` and ``day``, locked for as long as this writer has it open,
        anchored (count 0) before its first record; nothing is left of it when that fails."""
        directory = self.root / kind
        directory.mkdir(parents=True, exist_ok=True)
        while True:
            path = directory / f"{day}_{self._host}_{os.getpid()}_{self._token}.jsonl"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:  # this process's earlier writer of the day: a new token
                self._token = f"{datetime.now(UTC):%H%M%S}-{secrets.token_hex(3)}"
        name = f"{kind}/{path.name}"
        chain = _Chain(name, path, day, fd, 0, genesis(name))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._anchor(chain, closed=False)
            fsync_dir(directory)
        except OSError:  # no anchor, no file: an empty file without one would be a stray
            os.close(fd)
            path.with_suffix(ANCHOR_SUFFIX).unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            raise
        self._chains[kind] = chain
        return chain

    def _sync(self) -> None:
        """Group commit: fsync what was written, then anchor it. A file whose fsync fails is
        abandoned (see the module's docstring) and the error raised."""
        for chain in list(self._dirty):
            try:
                os.fsync(chain.fd)
            except OSError:
                log.exception("audit file %s: fsync failed; the file is left unanchored "
                              "after record %d", chain.name, chain.anchored)
                self._abandon(chain)
                raise
            self._dirty.discard(chain)
        for chain in list(self._chains.values()):
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
            self._dirty.discard(chain)

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
        except OSError:
            tmp.unlink(missing_ok=True)  # the anchor on disk stays the last good one
            raise
        finally:
            os.close(fd)
        os.replace(tmp, path)
        chain.anchored = chain.seq


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
