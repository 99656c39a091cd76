"""The audit files' chain format and its verifier (``kestrel audit verify``).

The writer is serving/audit.py; its docstring explains the design (why one file per writer,
why the anchor follows the fsync, what a crash leaves behind). This module holds what the
writer and the verifier must agree on, byte for byte, and the verifier itself:

- a file ``<root>/<kind>/<day>_<host>_<pid>_<token>.jsonl`` is one chain; its name relative
  to the root (``<kind>/<file>``, with ``/``) is what the genesis and the anchor's MAC bind;
- record ``n`` (from 1) is one line that starts ``{"seq":n,"prev":"<64 hex>"`` followed by
  the record's own fields; ``prev`` is the SHA-256 (hex) of the previous line's bytes without
  its newline, for record 1 the genesis ``SHA-256("kestrel-audit-genesis-v1|" + name)``;
- the anchor ``<kind>/<day>_<host>_<pid>_<token>.anchor`` is one JSON object ``{file, count,
  last, closed, at, mac}`` with ``mac = HMAC-SHA256(audit_key, "kestrel-audit-anchor-v1|"
  name|count|last|closed|at)``: "the first ``count`` records end in the record whose hash is
  ``last``" (``closed``: and the writer wrote nothing after them).

The verifier reads lines as bytes (the hash covers every byte of a record; it never needs to
parse or re-encode the JSON) and streams each file, so a day's file of any size verifies in
constant memory.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

import orjson

GENESIS_TAG = b"kestrel-audit-genesis-v1|"
ANCHOR_TAG = b"kestrel-audit-anchor-v1|"
DATA_SUFFIX = ".jsonl"
ANCHOR_SUFFIX = ".anchor"
FILE_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})_([A-Za-z0-9.-]+)_(\d+)_([A-Za-z0-9-]+)\.jsonl$")
RECORD_HEAD = re.compile(rb'^\{"seq":(\d+),"prev":"([0-9a-f]{64})"[,}]')
RESERVED = ("seq", "prev")  # the chain's fields: a record's own fields may not use them


def genesis(name: str) -> bytes:
    """What record 1 chains to: bound to the file's name, so a renamed or moved file (or a
    record copied from another file) does not verify."""
    return hashlib.sha256(GENESIS_TAG + name.encode()).hexdigest().encode()


def record_head(seq: int, prev: bytes) -> bytes:
    """The bytes a record's line starts with; the record's own JSON object follows without
    its ``{`` (``,"at":...}``), or ``}`` for an empty record."""
    return b'{"seq":%d,"prev":"%s"' % (seq, prev)


def anchor_mac(key: bytes, name: str, count: int, last: str, closed: bool, at: str) -> str:
    message = b"|".join((name.encode(), str(count).encode(), last.encode(),
                         b"1" if closed else b"0", at.encode()))
    return hmac.new(key, ANCHOR_TAG + message, hashlib.sha256).hexdigest()


def anchor_bytes(key: bytes | None, name: str, count: int, last: str, closed: bool,
                 at: str) -> bytes:
    """An anchor file's content; without a key its ``mac`` is null (the verifier fails it)."""
    mac = anchor_mac(key, name, count, last, closed, at) if key is not None else None
    return orjson.dumps({"file": name, "count": count, "last": last, "closed": closed,
                         "at": at, "mac": mac}) + b"\n"


@dataclass(frozen=True)
class Anchor:
    file: str
    count: int
    last: str
    closed: bool
    at: str
    mac: str | None


def read_anchor(path: Path) -> Anchor:
    """The anchor at ``path``; ValueError when it is not one (OSError when unreadable)."""
    doc = orjson.loads(path.read_bytes())
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    types = {"file": str, "count": int, "last": str, "closed": bool, "at": str}
    for field, kind in types.items():
        if not isinstance(doc.get(field), kind) or (kind is int and isinstance(
                doc[field], bool)):
            raise ValueError(f"field {field!r} missing or not a {kind.__name__}")
    mac = doc.get("mac")
    if mac is not None and not isinstance(mac, str):
        raise ValueError("field 'mac' is not a string")
    if doc["count"] < 0:
        raise ValueError("negative count")
    return Anchor(doc["file"], doc["count"], doc["last"], doc["closed"], doc["at"], mac)


class Status(StrEnum):
    ok = "ok"  # chain and anchor verify (records after the anchor only while the writer runs)
    unanchored = "unanchored"  # well chained records after the anchor, the writer gone
    broken = "broken"  # tampering evident (or a file no writer of this format made)


@dataclass(frozen=True)
class FileReport:
    """The verdict on one audit file; ``record`` and ``line`` (from 1) name the first record
    that is broken or unanchored."""

    name: str
    status: Status
    records: int = 0  # complete lines read
    anchored: int = 0  # the anchor's count
    record: int | None = None
    line: int | None = None
    reason: str = ""

    def text(self) -> str:
        where = (f" at record {self.record} line {self.line}" if self.record is not None
                 else "")
        if self.status is Status.ok:
            return f"{self.name}: ok, {self.reason}"
        return f"{self.name}: {self.status.value}{where}: {self.reason}"


def _writer_running(f: BinaryIO) -> bool:
    """Whether the file's writer still has it open: it holds an exclusive flock from creating
    the file to closing it, and the kernel drops the lock when the process dies, however it
    dies. Otherwise the caller keeps a shared lock for as long as it reads."""
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return True
        raise
    return False


def verify_file(root: Path, name: str, key: bytes) -> FileReport:
    """Verify ``root / name`` (``<kind>/<file>.jsonl``) and its anchor."""
    path = root / name
    anchor_path = path.with_suffix(ANCHOR_SUFFIX)
    if not FILE_NAME.match(path.name):
        return FileReport(name, Status.broken, reason=(
            "not a chained audit file (its name is not <day>_<host>_<pid>_<token>.jsonl: "
            "written before the chain, or put here by someone else); it cannot be verified"))
    if not path.exists():
        try:
            count = f"; its anchor says {read_anchor(anchor_path).count} records"
        except (OSError, ValueError):
            count = ""
        return FileReport(name, Status.broken, reason=f"the data file is missing{count}")
    try:
        f = open(path, "rb")  # noqa: SIM115 (the with below closes it)
    except OSError as exc:
        return FileReport(name, Status.broken, reason=f"the data file cannot be read ({exc})")
    with f:
        running = _writer_running(f)  # before the anchor: then the anchor never runs ahead
        try:
            anchor: Anchor | None = read_anchor(anchor_path)
        except FileNotFoundError:
            anchor = None
        except (OSError, ValueError) as exc:
            return FileReport(name, Status.broken, reason=f"the anchor is unreadable ({exc})")
        return _walk(f, name, key, anchor, running)


def _walk(lines: Iterable[bytes], name: str, key: bytes, anchor: Anchor | None,
          running: bool) -> FileReport:
    expected = genesis(name)
    count = anchor.count if anchor is not None else 0
    at_anchor = expected if count == 0 else b""  # the hash of record ``count``
    n = 0
    torn = False
    chain_break: FileReport | None = None
    for raw in lines:
        if not raw.endswith(b"\n"):
            torn = True  # the last line, without its newline: a write cut short
            break
        n += 1
        line = raw[:-1]
        chain_break = _check(name, line, n, expected, count)
        if chain_break is not None:
            break
        expected = hashlib.sha256(line).hexdigest().encode()
        if n == count:
            at_anchor = expected
    if chain_break is not None and (anchor is None or (chain_break.record or 0) <= count):
        return chain_break  # otherwise the anchor's own checks name an earlier record
    if anchor is None:
        if n == 0 and not torn:
            return FileReport(name, Status.ok, reason=(
                "empty and not yet anchored (a writer anchors a file right after creating "
                "it, before its first record)"))
        return FileReport(name, Status.broken, n, 0, 1, 1, (
            "the anchor file is missing; a writer anchors a file before its first record, so "
            "it was removed"))
    if anchor.mac is None:
        return FileReport(name, Status.broken, n, count, max(count, 1), max(count, 1),
                          "the anchor is not signed (its writer had no audit_key)")
    mac = anchor_mac(key, name, anchor.count, anchor.last, anchor.closed, anchor.at)
    if not hmac.compare_digest(mac, anchor.mac):
        return FileReport(name, Status.broken, n, count, max(count, 1), max(count, 1), (
            "the anchor's MAC does not verify (a wrong audit_key, or the anchor was "
            "rewritten without the key)"))
    if n < count:
        return FileReport(name, Status.broken, n, count, n + 1, n + 1, (
            f"the file ends after record {n} but the anchor says {count}: records "
            f"{n + 1}-{count} were cut off"))
    if anchor.last.encode() != at_anchor:
        return FileReport(name, Status.broken, n, count, max(count, 1), max(count, 1), (
            f"its hash is not the anchor's (record {count} was edited, or the chain rewritten "
            "up to it)"))
    if chain_break is not None:
        return chain_break  # after the anchor: no writer breaks its own chain
    after = n - count
    partial = " and a partial line" if torn else ""
    if after == 0 and not torn:
        how = ("closed" if anchor.closed else "writer running" if running else
               "the writer ended without closing it (it was killed, or crashed, after its "
               "last anchor)")
        return FileReport(name, Status.ok, n, count,
                          reason=f"{n} records anchored at {anchor.at}, {how}")
    if anchor.closed:
        return FileReport(name, Status.broken, n, count, count + 1, count + 1, (
            f"{after} records{partial} after the closing anchor ({count} records at "
            f"{anchor.at}): appended after the writer closed the file, without the key"))
    if running:
        return FileReport(name, Status.ok, n, count, reason=(
            f"{count} records anchored at {anchor.at}, writer running: {after} more{partial} "
            "not yet anchored (the next fsync anchors them)"))
    return FileReport(name, Status.unanchored, n, count, count + 1, count + 1, (
        f"{after} well-chained records{partial} after the last anchor ({count} records at "
        f"{anchor.at}) and the writer is gone without closing the file: the tail of a crash "
        "(a writer anchors after each fsync, so a crash leaves at most its last fsync "
        "interval unanchored), or records appended without the key. They cannot be "
        "verified" + ("; the torn last line is what a crash mid-write leaves" if torn else "")))


def _check(name: str, line: bytes, n: int, expected: bytes, count: int) -> FileReport | None:
    """Whether line ``n`` is record ``n`` and chains to ``expected``; the report if not."""
    head = RECORD_HEAD.match(line)
    if head is None:
        return FileReport(name, Status.broken, n, count, n, n,
                          "not a chained record (no seq/prev at its start)")
    seq = int(head[1])
    if seq != n:
        return FileReport(name, Status.broken, n, count, n, n, (
            f"seq is {seq} where {n} was expected (records removed, inserted or reordered "
            "here)"))
    if head[2] != expected:
        if n == 1:
            return FileReport(name, Status.broken, n, count, 1, 1, (
                "its prev is not this file's genesis (record 1 was edited, or the file "
                "renamed or moved)"))
        return FileReport(name, Status.broken, n, count, n - 1, n - 1, (
            f"its hash is not the prev of record {n} (record {n - 1} was edited, or record "
            f"{n}'s prev)"))
    return None


def audit_files(root: Path, day: str | None = None,
                kinds: Iterable[str] | None = None) -> list[str]:
    """Every audit file's name under ``root`` (``<kind>/<file>.jsonl``, including those only
    an anchor is left of), optionally only one day's or some kinds'."""
    if not root.is_dir():
        return []
    wanted = set(kinds) if kinds is not None else None
    names: set[str] = set()
    for kind_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if wanted is not None and kind_dir.name not in wanted:
            continue
        for p in kind_dir.iterdir():
            if p.name.startswith(".") or p.suffix not in (DATA_SUFFIX, ANCHOR_SUFFIX):
                continue  # a writer's temporary anchor (left by a crash) is never read
            if day is not None and not (p.name.startswith(day + "_")
                                        or p.name == day + DATA_SUFFIX):
                continue
            names.add(f"{kind_dir.name}/{p.stem}{DATA_SUFFIX}")
    return sorted(names)


def verify(root: Path, key: bytes, day: str | None = None,
           kinds: Iterable[str] | None = None) -> list[FileReport]:
    """One report per audit file under ``root`` (see ``audit_files``)."""
    return [verify_file(root, name, key) for name in audit_files(root, day, kinds)]


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a created or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
