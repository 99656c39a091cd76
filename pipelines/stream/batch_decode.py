"""A micro-batch of `transactions` records decoded and validated at once, into columns.

Decoding record by record (orjson, then the contract checks in Python) cost more than
everything else the stream does with an event. Here the batch's JSON values are joined with
newlines and parsed by pyarrow in one call against the contract's field types, and the checks
of :func:`pipelines.stream.records._quick` run column by column (regexes, set membership and
ranges in Arrow compute).

The fast path only accepts what it is sure about: a record that fails any check, or that
Arrow cannot parse (found by halving the failing range until single records are left), or
that contains a line break, goes through :func:`pipelines.stream.records.decode`, the
per-record path — so a valid record decodes to the same values either way, and an invalid
one reaches the DLQ with the same field errors. Event times take the fast path only in the
canonical form the stream re-emits (``2018-04-01T00:00:09.118047Z``: UTC, ``Z``, no or six
fraction digits, not ``.000000``), which also gives the recent-transactions list its
``event_time`` string without formatting it again.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from kestrel.errors import EventValidationError
from kestrel.events import MAX_AMOUNT
from kestrel.iso import COUNTRIES, CURRENCIES
from pipelines.stream import records

_STR = pa.string()
_SCHEMA = pa.schema([("schema_version", pa.int64()), ("txn_id", _STR), ("event_time", _STR),
                     ("customer_id", _STR), ("account_id", _STR), ("card_id", _STR),
                     ("terminal_id", _STR), ("mcc", _STR), ("amount", pa.float64()),
                     ("currency", _STR), ("country", _STR), ("lat", pa.float64()),
                     ("lon", pa.float64()), ("channel", _STR), ("device_id", _STR)])
_PARSE = pj.ParseOptions(explicit_schema=_SCHEMA, unexpected_field_behavior="error")
_READ = pj.ReadOptions(use_threads=False, block_size=1 << 24)
_ID = r"^[A-Za-z0-9_.:\-]{1,64}$"
_TIME = (r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]"
         r":[0-5][0-9](\.[0-9]{6})?Z$")
_COUNTRIES = pa.array(sorted(COUNTRIES), _STR)
_CURRENCIES = pa.array(sorted(CURRENCIES), _STR)
_CHANNELS = pa.array(["pos", "ecom", "atm"], _STR)
_SMALLEST = 8  # a failing range this small is decoded record by record
_S_TO_US = np.int64(1_000_000)


@dataclass
class TxnColumns:
    """The batch's records by position: valid ones in the columns, the others in ``errors``.

    ``event_time`` is each valid record's time as the stream writes it (``_iso``)."""

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


_COLUMNS = ("txn_id", "customer_id", "card_id", "terminal_id", "mcc", "amount", "country",
            "lat", "lon", "currency", "channel")


def decode_batch(values: list[bytes | None]) -> TxnColumns:
    n = len(values)
    out = TxnColumns(n)
    tables: list[pa.Table] = []
    positions: list[np.ndarray] = []
    joined = b"\n".join(values) if all(values) else b""  # type: ignore[arg-type]
    if joined and joined.count(b"\n") == n - 1 and b"\r" not in joined:
        loose: list[int] = []
        _parse(values, 0, n, tables, positions, loose, joined)
    else:  # a record with a line break (or none at all) would shift Arrow's rows
        loose = [i for i, v in enumerate(values) if not v or b"\n" in v or b"\r" in v]
        start = 0
        for i in [*loose, n]:
            if i > start:
                _parse(values, start, i, tables, positions, loose)
            start = i + 1
    if tables:
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        pos = np.concatenate(positions)
        # times are read only from rows of the contract's form (every cast then holds)
        table, pos = _keep(table, pos, np.asarray(_valid(table)), loose)
        us, dated = _times_us(table.column("event_time"))
        if not dated.all():
            us = us[dated]
            table, pos = _keep(table, pos, dated, loose)
    else:
        table, pos, us = _SCHEMA.empty_table(), np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not loose:  # the common case: every record valid, in order
        for name in _COLUMNS:
            setattr(out, name, table.column(name).to_pylist())
        out.time_us = us.tolist()
        out.event_time = table.column("event_time").to_pylist()
        return out
    for name in (*_COLUMNS, "time_us", "event_time"):
        setattr(out, name, [None] * n)
    index = pos.tolist()
    for name in (*_COLUMNS, "event_time"):
        target = getattr(out, name)
        for i, v in zip(index, table.column(name).to_pylist(), strict=True):
            target[i] = v
    for i, t in zip(index, us.tolist(), strict=True):
        out.time_us[i] = t
    for i in sorted(loose):
        try:
            txn = records.decode(values[i])
        except EventValidationError as exc:
            out.errors[i] = exc
            continue
        out.slow += 1
        for name in _COLUMNS:
            getattr(out, name)[i] = getattr(txn, name)
        out.time_us[i] = txn.time_us
        out.event_time[i] = records.iso(txn.time_us)
    return out


def _parse(values: list[bytes | None], lo: int, hi: int, tables: list[pa.Table],
           positions: list[np.ndarray], loose: list[int], joined: bytes = b"") -> None:
    """Parse values[lo:hi] (``joined``: already joined); a range Arrow refuses is halved
    until it is small."""
    try:
        table = pj.read_json(io.BytesIO(joined or b"\n".join(values[lo:hi])),  # type: ignore[arg-type]
                             read_options=_READ, parse_options=_PARSE)
        if table.num_rows != hi - lo:  # e.g. two objects in one record
            raise pa.ArrowInvalid("row count")
    except pa.ArrowInvalid:
        if hi - lo <= _SMALLEST:
            loose.extend(range(lo, hi))
            return
        mid = (lo + hi) // 2
        _parse(values, lo, mid, tables, positions, loose)
        _parse(values, mid, hi, tables, positions, loose)
        return
    tables.append(table)
    positions.append(np.arange(lo, hi, dtype=np.int64))


def _valid(t: pa.Table) -> pa.ChunkedArray:
    """Rows that pass every check of records._quick (nulls fail: the per-record path decides
    whether a missing field is allowed)."""
    def col(name: str) -> pa.ChunkedArray:
        return t.column(name)

    checks = [pc.equal(col("schema_version"), 1)]
    for name in ("txn_id", "customer_id", "account_id", "card_id", "terminal_id"):
        checks.append(pc.match_substring_regex(col(name), _ID))
    device = col("device_id")
    checks.append(pc.or_kleene(pc.is_null(device), pc.match_substring_regex(device, _ID)))
    checks.append(pc.match_substring_regex(col("mcc"), r"^[0-9]{4}$"))
    amount, lat, lon = col("amount"), col("lat"), col("lon")
    checks += [pc.greater(amount, 0.0), pc.less_equal(amount, MAX_AMOUNT),
               pc.greater_equal(lat, -90.0), pc.less_equal(lat, 90.0),
               pc.greater_equal(lon, -180.0), pc.less_equal(lon, 180.0)]
    checks += [pc.is_in(col("country"), _COUNTRIES), pc.is_in(col("currency"), _CURRENCIES),
               pc.is_in(col("channel"), _CHANNELS)]
    when = col("event_time")
    checks.append(pc.match_substring_regex(when, _TIME))
    checks.append(pc.invert(pc.ends_with(when, ".000000Z")))
    ok = checks[0]
    for c in checks[1:]:
        ok = pc.and_kleene(ok, c)
    return pc.fill_null(ok, False)


def _keep(table: pa.Table, pos: np.ndarray, ok: np.ndarray, loose: list[int]
          ) -> tuple[pa.Table, np.ndarray]:
    """The rows marked ``ok`` and their positions; the others' positions go to ``loose``."""
    if ok.all():
        return table, pos
    loose.extend(pos[~ok].tolist())
    return table.filter(pa.array(ok)), pos[ok]


def _times_us(when: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """µs since the epoch of times that passed _valid, and which of them are real dates:
    Arrow's strptime rolls 2018-02-30 over to 2018-03-02 instead of failing, so the day
    parsed must be the day written. (Read before _valid, a fraction that was not six digits
    made the int cast raise for the whole batch.)"""
    seconds = pc.strptime(pc.utf8_slice_codeunits(when, 0, 19), format="%Y-%m-%dT%H:%M:%S",
                          unit="s", error_is_null=True)
    written = pc.cast(pc.utf8_slice_codeunits(when, 8, 10), pa.int64())
    dated = pc.fill_null(pc.equal(pc.day(seconds), written), False)
    frac = pc.utf8_slice_codeunits(when, 20, 26)
    micros = pc.cast(pc.if_else(pc.equal(pc.utf8_length(when), 27), frac, "0"), pa.int64())
    us = pc.add(pc.multiply(pc.cast(seconds, pa.int64()), _S_TO_US), micros)
    return np.asarray(pc.fill_null(us, 0)), np.asarray(dated)
