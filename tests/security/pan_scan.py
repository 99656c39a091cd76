"""The card-number scanner of test_no_pan_anywhere.py: the planted numbers in every form, and
the scan of each kind of store — Kafka records through a consumer, Redis keys and values,
Parquet through pyarrow, SQLite through queries, other files and HTTP answers as text — each
read **decoded** (as is, percent-decoded, ``\\uXXXX`` escapes decoded, every JWT's payload).

It looks for *the planted numbers* (canonical text — kestrel.pan.canonical — with spaces and
dashes deleted), not for any long digit run: legit stores hold epoch-microsecond integers and
binary values.
"""

from __future__ import annotations

import base64
import re
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_plus

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, TopicPartition
from redis import Redis

from kestrel.kafka import admin, consumer_config
from kestrel.pan import canonical, pan_like
from kestrel.settings import Settings

PAN = "4111111111111111"  # the one PAN, planted everywhere
AMEX = "378282246310005"  # a 15-digit card, grouped 4-6-5
LUHN_BAD = "4111111111111112"  # a mistyped card number is still a card number
PLANTED = (PAN, AMEX, LUHN_BAD)
IDS = ("card_id", "customer_id", "account_id", "device_id", "txn_id", "terminal_id")
CONTROL_TOPIC = "pan-scan-control"
CONTROL_DIR = "pan-scan-controls"


def forms(digits: str = PAN) -> dict[str, str]:
    """The card number written every way a client might."""
    groups = ([digits[:4], digits[4:10], digits[10:]] if len(digits) == 15
              else [digits[i:i + 4] for i in range(0, len(digits), 4)])
    return {
        "plain": digits,
        "dashes": "-".join(groups),
        "spaces": " ".join(groups),
        "en dash": "\u2013".join(groups),
        "no-break space": "\u00a0".join(groups),
        "arabic-indic": "".join(chr(0x660 + int(d)) for d in digits),
        "full-width": "".join(chr(0xFF10 + int(d)) for d in digits),
        "embedded": f"ref-{digits}-x",
    }


# --- the scanner ---------------------------------------------------------------------------

_SEPARATORS = str.maketrans("", "", " -")
_U_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.(eyJ[A-Za-z0-9_-]+)\.[A-Za-z0-9_-]*")


def _views(text: str) -> Iterator[str]:
    """The text, and the decodings a card number could hide behind."""
    yield text
    if "%" in text or "+" in text:
        yield unquote(text)
        yield unquote_plus(text)  # a query string: `+` is a space
    if "\\u" in text:
        yield _U_ESCAPE.sub(lambda m: chr(int(m[1], 16)), text)
    for m in _JWT.finditer(text):
        # base64url; a segment of 4k+1 characters cannot be decoded and is kept as is
        payload = m[1] + "=" * (-len(m[1]) % 4)
        decoded = base64.urlsafe_b64decode(payload) if len(m[1]) % 4 != 1 else b""
        yield decoded.decode("utf-8", errors="replace")


def planted_in(text: str) -> list[str]:
    """Which planted card numbers ``text`` holds, in any form or decoding."""
    found: list[str] = []
    for view in _views(text):
        if not pan_like(view):  # the planted numbers are PAN-like in every form
            continue
        flat = canonical(view).translate(_SEPARATORS)
        found += [p for p in PLANTED if p in flat and p not in found]
    return found


@dataclass(frozen=True)
class Finding:
    where: str
    pans: tuple[str, ...]
    excerpt: str

    def __str__(self) -> str:
        return f"{self.where}: {', '.join(self.pans)} in {self.excerpt!r}"


@dataclass
class Scan:
    findings: list[Finding] = field(default_factory=list)
    looked_at: dict[str, int] = field(default_factory=dict)  # store kind → items read

    def check(self, kind: str, where: str, data: bytes | str | None) -> None:
        self.looked_at[kind] = self.looked_at.get(kind, 0) + 1
        if data is None:
            return
        text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
        pans = planted_in(text)
        if pans:
            self.findings.append(Finding(where, tuple(pans), text[:300]))

    def check_lines(self, kind: str, where: str, text: str) -> None:
        """Text line by line, so a finding names its line."""
        self.looked_at[kind] = self.looked_at.get(kind, 0) + 1
        for n, line in enumerate(text.splitlines(), 1):
            pans = planted_in(line) if line else []
            if pans:
                self.findings.append(Finding(f"{where}:{n}", tuple(pans), line[:300]))

    def at(self, prefix: str) -> list[Finding]:
        return [f for f in self.findings if f.where.startswith(prefix)]


def scan_kafka(scan: Scan, settings: Settings) -> dict[str, list[Any]]:
    """Every record (key, value, headers) of every topic on the broker, through a consumer,
    read up to each partition's high watermark. Returns the records by topic."""
    topics = admin(settings).list_topics(timeout=10).topics
    consumer = Consumer(consumer_config(settings, f"pan-scan-{uuid.uuid4().hex}"))
    assign, end = [], {}
    for name, meta in topics.items():
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)
            if high > low:
                assign.append(TopicPartition(name, p, low))
                end[(name, p)] = high
    records: dict[str, list[Any]] = {name: [] for name in topics}
    consumer.assign(assign)
    deadline = time.monotonic() + 60
    while end and time.monotonic() < deadline:
        for m in consumer.consume(1000, 0.5):
            topic, part, off = m.topic(), m.partition(), m.offset()
            if m.error() is not None or topic is None or part is None or off is None:
                continue
            records[topic].append(m)
            where = f"kafka:{topic}[{part}]@{off}"
            scan.check("kafka", where + " key", m.key())
            scan.check("kafka", where + " value", m.value())
            headers: list[Any] = list(m.headers() or [])
            for name, value in headers:
                scan.check("kafka", f"{where} header {name}", f"{name}={value!r}")
            if off + 1 >= end.get((topic, part), 0):
                end.pop((topic, part), None)
    consumer.close()
    assert not end, f"could not read every record of {sorted(end)}"
    return records


def db_url(url: str, db: int) -> str:
    """The URL of database ``db`` (from_url's ``db=`` argument loses to the URL's path)."""
    return f"{url.rsplit('/', 1)[0]}/{db}"


def scan_redis(scan: Scan, url: str) -> None:
    """Every key and value of every database of the (private) Redis server."""
    base: Any = Redis.from_url(url)
    dbs = [int(name[2:]) for name in base.info("keyspace")]
    base.close()
    for db in dbs:
        client: Any = Redis.from_url(db_url(url, db))  # sync: its typing says maybe-awaitable
        for key in client.scan_iter(count=1000):
            where = f"redis:db{db}:{key.decode('utf-8', errors='replace')}"
            scan.check("redis", where + " (key)", key)
            kind = client.type(key).decode()
            if kind == "string":
                scan.check("redis", where, client.get(key))
            elif kind == "hash":
                for f, v in client.hgetall(key).items():
                    scan.check("redis", f"{where} field", f)
                    scan.check("redis", f"{where}[{f.decode(errors='replace')}]", v)
            elif kind == "list":
                for i, v in enumerate(client.lrange(key, 0, -1)):
                    scan.check("redis", f"{where}[{i}]", v)
            elif kind == "set":
                for v in client.smembers(key):
                    scan.check("redis", f"{where} member", v)
            elif kind == "zset":
                for v, s in client.zrange(key, 0, -1, withscores=True):
                    scan.check("redis", f"{where} member", v + b" " + repr(s).encode())
            elif kind == "stream":
                for entry_id, fields in client.xrange(key):
                    for f, v in fields.items():
                        scan.check("redis", f"{where}@{entry_id.decode()}", f + b"=" + v)
            else:
                pytest.fail(f"no scan for Redis type {kind} ({where})")
        client.close()


def _parquet(scan: Scan, path: Path, where: str) -> None:
    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    scan.check("parquet", where + " schema", " ".join(schema.names))
    for k, v in (schema.metadata or {}).items():
        scan.check("parquet", where + " metadata", k + b"=" + v)
    table = parquet.read()
    for name in table.column_names:
        column = table.column(name)
        try:
            values = pc.cast(column, pa.string()).to_pylist()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # nested: lists, structs
            values = [None if v is None else str(v) for v in column.to_pylist()]
        for i, v in enumerate(values):
            if v is not None:
                scan.check("parquet", f"{where} column {name} row {i}", v)


def _sqlite(scan: Scan, path: Path, where: str) -> None:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'").fetchall()
        for name, sql in tables:
            scan.check("sql", f"{where} schema {name}", f"{name} {sql}")
            for i, row in enumerate(db.execute(f'SELECT * FROM "{name}"')):
                scan.check("sql", f"{where} table {name} row {i}",
                           "\x00".join("" if v is None else
                                       v.decode("utf-8", errors="replace")
                                       if isinstance(v, bytes) else str(v) for v in row))
    finally:
        db.close()


def scan_files(scan: Scan, root: Path) -> None:
    """Every file under the var dir: Parquet through pyarrow, SQLite through queries, the
    rest (JSON lines, logs, anything else) as text, line by line."""
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        where = f"file:{path.relative_to(root)}"
        head = path.read_bytes()[:16]
        if head.startswith(b"PAR1"):
            _parquet(scan, path, where)
        elif head == b"SQLite format 3\x00":
            _sqlite(scan, path, where)
        else:  # also covers the raw bytes of SQLite journals and any binary file
            scan.check_lines("text", where, path.read_bytes().decode("utf-8", errors="replace"))


@dataclass
class Exchange:
    label: str
    response: httpx.Response


def scan_http(scan: Scan, exchanges: Iterable[Exchange]) -> None:
    for ex in exchanges:
        r = ex.response
        where = f"http:{ex.label} -> {r.status_code}"
        for name, value in r.headers.multi_items():
            scan.check("http", f"{where} header {name}", f"{name}: {value}")
        scan.check("http", where + " body", r.content)
