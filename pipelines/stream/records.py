"""Fast decoding of `transactions` records for the stream's hot path.

Pydantic validation costs more than everything else the stream does with an event, so valid
records take a hand-written check of the same contract (kestrel.events.TransactionEvent), and
only a record that fails it goes through pydantic — to get the field errors for the DLQ, or
to accept it if the quick check was stricter than the contract (e.g. an integer amount). A
PAN-like identifier (kestrel.pan) fails the quick check, so pydantic refuses it with its
reason. Event times are checked against kestrel.events.TimeBounds by the processor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from kestrel.errors import EventValidationError, FieldError
from kestrel.events import MAX_AMOUNT, decode_transaction
from kestrel.iso import COUNTRIES, CURRENCIES
from kestrel.pan import ascii_pan_like

_REQUIRED = frozenset({"txn_id", "event_time", "customer_id", "account_id", "card_id",
                       "terminal_id", "mcc", "amount", "currency", "country", "lat", "lon",
                       "channel"})
_ALLOWED = _REQUIRED | {"schema_version", "device_id"}
_CHANNELS = frozenset({"pos", "ecom", "atm"})
_IDS = re.compile(r"(?:[A-Za-z0-9_.:\-]{1,64}\x00){4}[A-Za-z0-9_.:\-]{1,64}")
ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-"
"""An identifier's characters (kestrel.events.Identifier's pattern)."""
_ID_CHARS = frozenset(ID_ALPHABET)


@dataclass(slots=True, frozen=True)
class Txn:
    """The fields the stream uses, with the time as µs since the epoch (UTC)."""

    txn_id: str
    time_us: int
    customer_id: str
    card_id: str
    terminal_id: str
    mcc: str
    amount: float
    country: str
    lat: float
    lon: float
    currency: str = ""
    channel: str = ""


def is_identifier(v: object) -> bool:
    """``v`` has an identifier's type, length and characters (PAN-like or not)."""
    return isinstance(v, str) and 0 < len(v) <= 64 and _ID_CHARS.issuperset(v)


def _quick(obj: dict[str, object]) -> Txn | None:
    keys = obj.keys()
    if not (keys >= _REQUIRED and keys <= _ALLOWED):
        return None
    if obj.get("schema_version", 1) != 1:
        return None
    amount, lat, lon = obj["amount"], obj["lat"], obj["lon"]
    if type(amount) is not float or not 0 < amount <= MAX_AMOUNT:
        return None
    if type(lat) is not float or not -90 <= lat <= 90 or type(lon) is not float \
            or not -180 <= lon <= 180:
        return None
    mcc, country, currency = obj["mcc"], obj["country"], obj["currency"]
    if not (isinstance(mcc, str) and len(mcc) == 4 and mcc.isascii() and mcc.isdigit()):
        return None
    if country not in COUNTRIES or currency not in CURRENCIES or obj["channel"] not in _CHANNELS:
        return None
    try:  # the five ids in one regex match (NUL is not an id character)
        ids = "\x00".join((obj["txn_id"], obj["customer_id"], obj["account_id"],  # type: ignore[arg-type]
                            obj["card_id"], obj["terminal_id"]))
    except TypeError:
        return None
    if _IDS.fullmatch(ids) is None:
        return None
    device = obj.get("device_id")
    if device is not None:
        if not is_identifier(device):
            return None
        ids += "\x00" + device  # type: ignore[operator]
    if ascii_pan_like(ids.encode()):  # ASCII (checked above); NUL breaks a run
        return None
    when = obj["event_time"]
    if not isinstance(when, str):
        return None
    try:
        t = datetime.fromisoformat(when)
    except ValueError:
        return None
    if t.tzinfo is None:
        return None
    time_us = micros(t)
    if not _FIRST_US <= time_us <= _LAST_US:  # 0001-01-01T00:00+01:00 is in year 0 in UTC:
        return None  # pydantic refuses it (kestrel.events._to_utc); iso() could not write it
    return Txn(obj["txn_id"], time_us, obj["customer_id"],  # type: ignore[arg-type]
               obj["card_id"],  # type: ignore[arg-type]
               obj["terminal_id"], mcc, amount, country, lat, lon,  # type: ignore[arg-type]
               currency, obj["channel"])


def micros(t: datetime) -> int:
    delta = t - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")
_FIRST_US = micros(datetime.min.replace(tzinfo=UTC))  # the UTC times a datetime holds
_LAST_US = micros(datetime.max.replace(tzinfo=UTC))


def iso(time_us: int) -> str:
    """µs since the epoch as the stream writes times: ISO 8601, UTC, ending in ``Z``."""
    return (_EPOCH + timedelta(microseconds=time_us)).isoformat().replace("+00:00", "Z")


def decode(raw: bytes | None) -> Txn:
    """A valid transaction, or EventValidationError (UnsupportedSchemaVersion included)."""
    try:
        obj = orjson.loads(raw or b"")
    except orjson.JSONDecodeError as exc:
        raise EventValidationError([FieldError("$", f"not valid JSON ({exc.msg})")]) from None
    if isinstance(obj, dict):
        fast = _quick(obj)
        if fast is not None:
            return fast
    ev = decode_transaction(raw or b"")  # raises with every field error
    return Txn(ev.txn_id, micros(ev.event_time), ev.customer_id, ev.card_id, ev.terminal_id,
               ev.mcc, ev.amount, ev.country, ev.lat, ev.lon, ev.currency, ev.channel)


def late_value(raw: bytes | None) -> bytes:
    """A late record as `transactions.late` carries it: re-encoded from its parse, not its raw
    bytes, which may hold a card number in a duplicated key that the decoders (last key wins)
    never read. Late records are few; the parse is cheap there."""
    return orjson.dumps(orjson.loads(raw or b"null"))
