"""The local spool: a bounded, append-only on-disk log of records the broker did not take.

When the broker stalls or goes away, the HTTP service writes its scored transactions and
decisions here instead of losing them, and republishes them in order once the broker answers
again (serving/publisher.py). The log knows nothing of Kafka: a record is a topic, a key and
a value.

On disk, one directory per log: segment files ``<sequence number of their first
record>.seg`` (rolled at ``segment_bytes``) and a ``cursor`` file naming the first record not
yet acknowledged (segment, byte offset, sequence number), replaced atomically. A frame is
``<u32 body length><u32 crc32 of the body>`` and a body ``<u8 topic length><u32 key length,
0xFFFFFFFF for no key><topic><key><value>``.

Durability: an append is one ``write`` per segment, with no user-space buffer, so what an
append returned survives the process being killed (it is in the page cache); the owner calls
:meth:`Spool.sync` (fsync) at most every ``SYNC_SECONDS``, so a power loss costs at most that
much, and :meth:`close` syncs. The cursor is not fsynced: a cursor lost in a crash
republishes records again (at least once, never lost). A torn or corrupt frame (a crash in
the middle of a write, a bad block) is cut off when the log is opened: the segment is
truncated there, the bytes cut are logged and counted (``corrupt_bytes``), every record
before it is kept.

Bound: the logs of one owner share a :class:`Quota` of bytes on disk; :meth:`Spool.append`
refuses the records past it and says how many it took (the caller counts the rest as lost
and says so). Acknowledged segments are deleted; a log emptied deletes its segments.

Not thread-safe: the owner serialises its calls (serving/publisher.py holds one lock).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

log = logging.getLogger("kestrel.serving.spool")

Record = tuple[str, bytes | None, bytes]  # topic, key, value
_FRAME = struct.Struct("<II")  # body length, crc32 of the body
_BODY = struct.Struct("<BI")  # topic length, key length (0xFFFFFFFF: no key)
_NO_KEY = 0xFFFFFFFF
_MAX_BODY = 256 * 1024 * 1024  # a length past this is corruption, not a record
SEGMENT_BYTES = 16 * 1024 * 1024
SYNC_SECONDS = 1.0


@dataclass
class Quota:
    """Bytes on disk, shared by the logs of one owner."""

    max_bytes: int
    used: int = 0

    def room(self) -> bool:
        return self.used < self.max_bytes


@dataclass
class _Segment:
    first_seq: int
    path: Path
    size: int = 0  # bytes of whole frames (what was written and checked)
    records: int = 0


@dataclass
class Batch:
    """Records read from the cursor on, and where the cursor goes once they are
    acknowledged."""

    records: list[Record] = field(default_factory=list)
    nbytes: int = 0
    end: tuple[int, int, int] = (0, 0, 0)  # segment, offset in it, sequence number

    def __len__(self) -> int:
        return len(self.records)


def frame(topic: str, key: bytes | str | None, value: bytes | str) -> bytes:
    t = topic.encode()
    k = key.encode() if isinstance(key, str) else key
    v = value.encode() if isinstance(value, str) else value
    body = _BODY.pack(len(t), _NO_KEY if k is None else len(k)) + t + (k or b"") + v
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def _parse(body: bytes) -> Record | None:
    if len(body) < _BODY.size:
        return None
    tlen, klen = _BODY.unpack_from(body, 0)
    p = _BODY.size + tlen
    key = None if klen == _NO_KEY else body[p:p + klen]
    end = p + (0 if key is None else klen)
    if end > len(body):
        return None
    return body[_BODY.size:p].decode(errors="replace"), key, body[end:]


def _frame_at(data: bytes, at: int) -> tuple[Record, int] | None:
    """The record framed at ``at`` and the offset after it; None when torn or corrupt."""
    if at + _FRAME.size > len(data):
        return None
    size, crc = _FRAME.unpack_from(data, at)
    end = at + _FRAME.size + size
    if size > _MAX_BODY or end > len(data):
        return None
    body = data[at + _FRAME.size:end]
    if zlib.crc32(body) != crc:
        return None
    record = _parse(body)
    return None if record is None else (record, end)


class Spool:
    """One append-only log in ``path``: append at the end; read and acknowledge from the
    cursor, in order. The first segment kept is always the cursor's."""

    def __init__(self, path: Path, quota: Quota | int, segment_bytes: int = SEGMENT_BYTES):
        self.path = path
        self.quota = quota if isinstance(quota, Quota) else Quota(quota)
        self.segment_bytes = segment_bytes
        self.records = 0  # appended, not yet acknowledged
        self.pending_bytes = 0
        self.corrupt_bytes = 0
        self.dirty = False
        self._segments: list[_Segment] = []
        self._seq = 0  # the cursor: sequence number of the first record not acknowledged
        self._off = 0  # and its offset in the first segment
        self._fd: int | None = None  # the last segment, open for appending
        path.mkdir(parents=True, exist_ok=True)
        self._open()

    # --- opening --------------------------------------------------------------------------

    def _open(self) -> None:
        (self.path / "cursor.tmp").unlink(missing_ok=True)
        c_seg, c_off, c_seq = self._read_cursor()
        for p in sorted(self.path.glob("*.seg")):
            try:
                first = int(p.stem)
            except ValueError:
                continue
            if first < c_seg:  # wholly acknowledged; the deletion did not happen
                p.unlink()
            else:
                self._segments.append(_Segment(first, p))
        if not self._segments or self._segments[0].first_seq != c_seg:
            c_off, c_seq = 0, self._segments[0].first_seq if self._segments else c_seq
        acked_end = 0  # offset after the last acknowledged frame of the first segment
        for i, seg in enumerate(self._segments):
            data = seg.path.read_bytes()
            at = 0
            while at < len(data):
                got = _frame_at(data, at)
                if got is None:
                    self.corrupt_bytes += len(data) - at
                    log.error("spool %s: %d bytes cut off at offset %d (a torn or corrupt "
                              "frame); the %d records before it are kept", seg.path,
                              len(data) - at, at, seg.records)
                    os.truncate(seg.path, at)
                    break
                seg.records += 1
                if i == 0 and at < c_off:
                    c_seq, acked_end = seg.first_seq + seg.records, got[1]
                else:
                    self.records += 1
                    self.pending_bytes += got[1] - at
                at = got[1]
            seg.size = at
        self._seq, self._off = c_seq, acked_end
        self.quota.used += sum(s.size for s in self._segments)
        if self.records == 0:
            self._reset(self._next_seq())

    def _read_cursor(self) -> tuple[int, int, int]:
        try:
            doc = orjson.loads((self.path / "cursor").read_bytes())
            return int(doc["segment"]), int(doc["offset"]), int(doc["seq"])
        except FileNotFoundError:
            return 0, 0, 0
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.error("spool %s: unreadable cursor; republishing from the oldest segment "
                      "(records may be published twice)", self.path)
            return 0, 0, 0

    def _write_cursor(self) -> None:
        seg = self._segments[0].first_seq if self._segments else self._seq
        tmp = self.path / "cursor.tmp"
        tmp.write_bytes(orjson.dumps({"segment": seg, "offset": self._off, "seq": self._seq}))
        os.replace(tmp, self.path / "cursor")

    def _next_seq(self) -> int:
        if self._segments:
            last = self._segments[-1]
            return last.first_seq + last.records
        return self._seq

    def _reset(self, seq: int) -> None:
        """Everything acknowledged: delete the segments, number on from ``seq``."""
        self._close_fd()
        for seg in self._segments:
            self.quota.used -= seg.size
            seg.path.unlink(missing_ok=True)
        self._segments = []
        self._seq, self._off = seq, 0
        self.records = self.pending_bytes = 0
        self._write_cursor()

    # --- appending ------------------------------------------------------------------------

    def append(self, records: Iterable[tuple[str, bytes | str | None, bytes | str]],
               force: bool = False) -> int:
        """Append records in order; returns how many were written: records past the quota
        are refused, unless ``force`` (the caller promised them a place, so the quota is
        exceeded by that call's records)."""
        return self.append_frames([frame(*r) for r in records], force)

    def append_frames(self, frames: Iterable[bytes], force: bool = False) -> int:
        """:meth:`append` of records already framed (:func:`frame`), so that a caller can
        frame them before it takes its lock."""
        written = 0
        chunk: list[bytes] = []
        size = 0
        tail = self._segments[-1].size if self._segments else None
        for f in frames:
            if not force and self.quota.used + size + len(f) > self.quota.max_bytes:
                break
            if tail is None or (tail + size and tail + size + len(f) > self.segment_bytes):
                if chunk:
                    self._write(chunk, size)
                    chunk, size = [], 0
                self._roll()
                tail = 0
            chunk.append(f)
            size += len(f)
            written += 1
        if chunk:
            self._write(chunk, size)
        return written

    def _roll(self) -> None:
        self._close_fd()
        seq = self._next_seq()
        self._segments.append(_Segment(seq, self.path / f"{seq:020d}.seg"))

    def _write(self, chunk: list[bytes], size: int) -> None:
        seg = self._segments[-1]
        if self._fd is None:
            self._fd = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        view = memoryview(b"".join(chunk))
        while view:
            view = view[os.write(self._fd, view):]
        seg.size += size
        seg.records += len(chunk)
        self.records += len(chunk)
        self.pending_bytes += size
        self.quota.used += size
        self.dirty = True

    def sync(self) -> None:
        """fsync the segment being written."""
        if self._fd is not None and self.dirty:
            os.fsync(self._fd)
        self.dirty = False

    def _close_fd(self) -> None:
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self._close_fd()

    # --- reading and acknowledging --------------------------------------------------------

    def read(self, max_records: int, max_bytes: int) -> Batch:
        """Up to ``max_records`` records (and ``max_bytes``, but at least one record) from
        the cursor on, in order; the cursor moves when :meth:`ack` is given the batch."""
        first = self._segments[0].first_seq if self._segments else self._seq
        out = Batch(end=(first, self._off, self._seq))
        seq = self._seq
        for i, seg in enumerate(self._segments):
            at = self._off if i == 0 else 0
            if at >= seg.size:
                continue
            with open(seg.path, "rb") as f:
                f.seek(at)
                while at < seg.size and len(out) < max_records and (
                        not out.records or out.nbytes < max_bytes):
                    size, crc = _FRAME.unpack(f.read(_FRAME.size))
                    body = f.read(size)
                    record = _parse(body) if zlib.crc32(body) == crc else None
                    if record is None:  # checked when opened or written by this process
                        raise OSError(f"spool {seg.path}: frame at {at} changed on disk")
                    out.records.append(record)
                    out.nbytes += _FRAME.size + size
                    at += _FRAME.size + size
                    seq += 1
            out.end = (seg.first_seq, at, seq)
            if len(out) >= max_records or out.nbytes >= max_bytes:
                break
        return out

    def ack(self, batch: Batch) -> None:
        """The batch's records were published: move the cursor past them and delete the
        segments left behind (all of them when nothing is left)."""
        if not batch.records:
            return
        first, off, seq = batch.end
        self.records -= len(batch)
        self.pending_bytes -= batch.nbytes
        self._seq = seq
        if self.records == 0:
            self._reset(seq)
            return
        while self._segments[0].first_seq < first:
            self._drop_first()
        self._off = off
        if self._off >= self._segments[0].size and len(self._segments) > 1:
            self._drop_first()
            self._off = 0
        self._write_cursor()

    def _drop_first(self) -> None:
        done = self._segments.pop(0)
        self.quota.used -= done.size
        done.path.unlink(missing_ok=True)
