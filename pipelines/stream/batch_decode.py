"""A micro-batch of `transactions` records decoded and validated, into columns: the
stream's hot path.

Checking the contract record by record in Python costs more than everything else the stream
does with an event, so each record is decoded by msgspec straight into a typed struct
(:class:`Record`) — the contract's types, number ranges, string lengths, country / currency
/ channel sets and its exact field set are checked in C while parsing — and what msgspec
cannot check cheaply is checked per column, at C speed too: the identifiers' characters and
that none is PAN-like (``bytes.translate`` over the column joined:
kestrel.pan.ascii_pan_like), the MCCs' digits, and the event times
(``event_time.exact_times_us``: their form and date, with array arithmetic on their
characters; their bounds are the processor's, kestrel.events.TimeBounds). The struct's
constraints come from the contract (kestrel.contract); tests/kestrel/test_contract.py holds
the struct and the column checks to it.

The fast path only accepts what it is sure about: a record that fails any check goes through
:func:`pipelines.stream.records.decode`, the per-record path — so a valid record decodes to
the same values either way, and an invalid one reaches the DLQ with the same field errors.
Event times take the fast path only in the canonical form the stream re-emits
(``2018-04-01T00:00:09.118047Z``: UTC, ``Z``, no or six fraction digits, not ``.000000``),
which also gives the recent-transactions list its ``event_time`` string without formatting
it again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Annotated, Any, Literal, cast

import msgspec
import numpy as np

from kestrel.contract import (
    FIELDS,
    ID_ALPHABET,
    ID_MAX_LENGTH,
    IDENTIFIERS,
    MCC_LENGTH,
    SCHEMA_VERSION,
    Channel,
    SchemaVersion,
)
from kestrel.errors import EventValidationError
from kestrel.pan import ascii_pan_like
from pipelines.stream import columnar, records
from pipelines.stream.event_time import exact_times_us

# bytes.translate deletes an identifier's characters, so a column of valid identifiers
# joined by NUL translates to its NULs (kestrel.events.Identifier also strips whitespace: a
# padded one takes the per-record path)
_ID_CHARS = ID_ALPHABET.encode()
_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX_LENGTH)]  # chars: _valid


def _bounds(name: str) -> msgspec.Meta:
    bounds: dict[str, Any] = FIELDS[name].bounds()
    return msgspec.Meta(**bounds)


_MCC_LENGTH = msgspec.Meta(min_length=MCC_LENGTH, max_length=MCC_LENGTH)


def _one_of(name: str) -> Any:
    return Literal[tuple(sorted(FIELDS[name].allowed()))]


class Record(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A `transactions` record as far as msgspec checks the contract (kestrel.contract)
    while parsing, never looser (a JSON integer amount is a float here, as in pydantic)."""

    txn_id: _Id
    event_time: str  # its form and date: event_time.exact_times_us
    customer_id: _Id
    account_id: _Id
    card_id: _Id
    terminal_id: _Id
    mcc: Annotated[str, _MCC_LENGTH]  # its digits: _valid
    amount: Annotated[float, _bounds("amount")]
    currency: _one_of("currency")  # type: ignore[valid-type]
    country: _one_of("country")  # type: ignore[valid-type]
    lat: Annotated[float, _bounds("lat")]
    lon: Annotated[float, _bounds("lon")]
    channel: Channel
    device_id: _Id | None = None
    schema_version: SchemaVersion = SCHEMA_VERSION


_DECODER = msgspec.json.Decoder(Record)


@dataclass
class TxnColumns:
    """The batch's records by position: valid ones in the columns, the others in ``errors``.

    ``event_time`` is each valid record's time as the stream writes it (``records.iso``)."""

    n: int
    txn_id: list[str] = field(default_factory=list)
    time_us: list[int] = field(default_factory=list)
    event_time: list[str] = field(default_factory=list)
    customer_id: list[str] = field(default_factory=list)
    card_id: list[str] = field(default_factory=list)
    terminal_id: list[str] = field(default_factory=list)
    mcc: list[str] = field(default_factory=list)
    amount: list[float] = field(default_factory=list)
    country: list[str] = field(default_factory=list)
    lat: list[float] = field(default_factory=list)
    lon: list[float] = field(default_factory=list)
    currency: list[str] = field(default_factory=list)
    channel: list[str] = field(default_factory=list)
    errors: dict[int, EventValidationError] = field(default_factory=dict)
    slow: int = 0  # records that took the per-record path


COLUMNS = ("txn_id", "customer_id", "card_id", "terminal_id", "mcc", "amount", "country",
           "lat", "lon", "currency", "channel")
"""The :class:`TxnColumns` columns copied from each record's fields (``time_us`` and
``event_time`` are read from its time)."""
_IDS = tuple(name for name in IDENTIFIERS if FIELDS[name].required)
_OPTIONAL_IDS = tuple(name for name in IDENTIFIERS if not FIELDS[name].required)


def parse(values: Sequence[bytes | None]) -> list[Record | None]:
    """Each record parsed and checked as far as msgspec does it (None: it is not; it takes
    the per-record path in decode_batch). The intake parses each record once, as it arrives,
    and reads the event times it orders by from what this returns."""
    decode = _DECODER.decode
    try:  # the common case, every record parses: no per-record bookkeeping
        return [decode(value or b"") for value in values]
    except msgspec.DecodeError:  # a ValidationError too
        pass
    parsed: list[Record | None] = []
    for value in values:
        try:
            parsed.append(decode(value or b""))
        except msgspec.DecodeError:
            parsed.append(None)
    return parsed


NOT_EXACT = np.iinfo(np.int64).min
"""In ``Parsed.exact_us``: no time in the stream's own form (never a time: those are from
year 1 on)."""


@dataclass
class Parsed:
    """Records parsed on arrival, aligned with them: each one's struct (None: it did not
    parse, or is of another topic) and its event time in µs when exactly in the stream's
    form (event_time.exact_times_us), else NOT_EXACT."""

    rows: list[Record | None]
    exact_us: np.ndarray

    @classmethod
    def of(cls, values: Sequence[bytes | None]) -> Parsed:
        rows = parse(values)
        exact = np.full(len(rows), NOT_EXACT, np.int64)
        done = [i for i, r in enumerate(rows) if r is not None]
        if done:
            us, ok = exact_times_us([r.event_time for r in rows if r is not None])
            exact[np.array(done)[ok]] = us[ok]
        return cls(rows, exact)

    @classmethod
    def none(cls, n: int) -> Parsed:
        return cls([None] * n, np.full(n, NOT_EXACT, np.int64))

    def __len__(self) -> int:
        return len(self.rows)

    def then(self, other: Parsed) -> Parsed:
        return Parsed(self.rows + other.rows, np.concatenate((self.exact_us, other.exact_us)))

    def split(self, holding: np.ndarray) -> tuple[Parsed, Parsed]:
        """Where ``holding`` is False, and where it is True."""
        taken, kept = columnar.split(self.rows, holding)
        return Parsed(taken, self.exact_us[~holding]), Parsed(kept, self.exact_us[holding])

    def select(self, keep: Sequence[bool]) -> Parsed:
        return Parsed([r for r, k in zip(self.rows, keep, strict=True) if k],
                      self.exact_us[np.asarray(keep, bool)])

    @classmethod
    def scatter(cls, n: int, at: np.ndarray, part: Parsed) -> Parsed:
        """``part`` placed at positions ``at`` of n records (the others: not parsed)."""
        out = cls.none(n)
        for i, r in zip(at.tolist(), part.rows, strict=True):
            out.rows[i] = r
        out.exact_us[at] = part.exact_us
        return out


def decode_batch(values: list[bytes | None], parsed: Parsed | None = None) -> TxnColumns:
    """``parsed`` (optional): the intake's :class:`Parsed` of ``values``."""
    n = len(values)
    out = TxnColumns(n)
    if parsed is None or len(parsed) != n:
        parsed = Parsed.of(values)
    loose = [i for i, row in enumerate(parsed.rows) if row is None]  # the per-record path
    if loose:
        pos = [i for i, row in enumerate(parsed.rows) if row is not None]  # their positions
        rows = [row for row in parsed.rows if row is not None]
    else:
        pos, rows = list(range(n)), cast(list[Record], parsed.rows)
    cols = _columns(rows)
    ok = _valid(rows, cols)
    us = parsed.exact_us[pos] if loose else parsed.exact_us
    ok &= us != NOT_EXACT
    if not ok.all():
        keep = ok.tolist()
        loose.extend(i for i, k in zip(pos, keep, strict=True) if not k)
        pos = [i for i, k in zip(pos, keep, strict=True) if k]
        cols = {name: [v for v, k in zip(col, keep, strict=True) if k]
                for name, col in cols.items()}
        us = us[ok]
    cols["time_us"] = us.tolist()
    if not loose:  # the common case: every record valid, in order
        for name, col in cols.items():
            setattr(out, name, col)
        return out
    for name in cols:
        target = [None] * n
        for i, v in zip(pos, cols[name], strict=True):
            target[i] = v
        setattr(out, name, target)
    for i in sorted(loose):
        try:
            txn = records.decode(values[i])
        except EventValidationError as exc:
            out.errors[i] = exc
            continue
        out.slow += 1
        for name in COLUMNS:
            getattr(out, name)[i] = getattr(txn, name)
        out.time_us[i] = txn.time_us
        out.event_time[i] = records.iso(txn.time_us)
    return out


def _columns(rows: list[Record]) -> dict[str, list[Any]]:
    """COLUMNS and event_time as lists (spelled out: faster than getattr by name)."""
    return {"txn_id": [r.txn_id for r in rows], "customer_id": [r.customer_id for r in rows],
            "card_id": [r.card_id for r in rows], "terminal_id": [r.terminal_id for r in rows],
            "mcc": [r.mcc for r in rows], "amount": [r.amount for r in rows],
            "country": [r.country for r in rows], "lat": [r.lat for r in rows],
            "lon": [r.lon for r in rows], "currency": [r.currency for r in rows],
            "channel": [r.channel for r in rows], "event_time": [r.event_time for r in rows]}


def _valid(rows: list[Record], cols: dict[str, list[Any]]) -> np.ndarray:
    """Per row: its identifiers' characters and its MCC's digits pass records._quick's
    checks (their lengths were checked while parsing), and no identifier is PAN-like
    (kestrel.pan). Each column is checked at once, joined; only a column that fails is
    checked value by value, to find the rows."""
    ok = np.ones(len(rows), dtype=bool)
    for name in _IDS:
        _check_ids(cols[name] if name in cols else list(map(attrgetter(name), rows)), ok)
    for name in _OPTIONAL_IDS:
        values = list(map(attrgetter(name), rows))
        if any(values):
            _check_ids([v or "_" for v in values], ok)  # none (null) is valid
    _check(cols["mcc"], _digits, ok)
    return ok


def _check(column: list[str], valid: Callable[[str], bool], ok: np.ndarray) -> None:
    if not valid("".join(column)):
        ok &= np.fromiter(map(valid, column), bool, len(column))


def _check_ids(column: list[str], ok: np.ndarray) -> None:
    """Identifiers: their characters (_ids) and no PAN-like run (kestrel.pan), checked on
    the column joined by NUL — not an identifier character, so the column is valid when
    deleting those leaves exactly its NULs, and never part of a run, so a run found is in
    one value. The PAN check is one C pass (bytes.translate and a substring search)
    rather than a regex per value."""
    text = "\x00".join(column)
    if text.isascii():
        raw = text.encode()
        if raw.translate(None, _ID_CHARS) == b"\x00" * (len(column) - 1) \
                and not ascii_pan_like(raw):
            return
    ok &= np.fromiter(map(_id_ok, column), bool, len(column))


def _id_ok(text: str) -> bool:
    return _ids(text) and not ascii_pan_like(text.encode())  # ASCII: _ids checked it


def _ids(text: str) -> bool:
    return text.isascii() and not text.encode().translate(None, _ID_CHARS)


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()
