"""Decoding one `transactions` record: the stream's per-record path.

Valid records take a hand-written check of the contract (kestrel.contract, whose field set,
bounds, alphabet and allowed values it reads), because pydantic validation costs more than
everything else the stream does with an event; only a record that fails it goes through
pydantic (kestrel.events) — to get the field errors for the DLQ, or to accept it if the quick
check was stricter than the contract (e.g. an integer amount). A PAN-like identifier
(kestrel.pan) fails the quick check, so pydantic refuses it with its reason. Event times are
checked against kestrel.events.TimeBounds by the processor. tests/kestrel/test_contract.py
holds this check to the contract.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from kestrel.contract import (
    ALLOWED,
    FIELDS,
    ID_ALPHABET,
    ID_CLASS,
    ID_MAX_LENGTH,
    MCC_LENGTH,
    REQUIRED,
    SCHEMA_VERSION,
)
from kestrel.errors import EventValidationError, FieldError
from kestrel.events import SUPPORTED_SCHEMA_VERSIONS, decode_transaction
from kestrel.pan import ascii_pan_like

_ID = f"{ID_CLASS}{{1,{ID_MAX_LENGTH}}}"
_IDS = re.compile(f"(?:{_ID}\x00){{4}}{_ID}")  # the five required ids, joined by NUL
_ID_CHARS = frozenset(ID_ALPHABET)
_AMOUNT_GT, _AMOUNT_LE = FIELDS["amount"].bound("gt"), FIELDS["amount"].bound("le")
_LAT_GE, _LAT_LE = FIELDS["lat"].bound("ge"), FIELDS["lat"].bound("le")
_LON_GE, _LON_LE = FIELDS["lon"].bound("ge"), FIELDS["lon"].bound("le")
_COUNTRIES = FIELDS["country"].allowed()
_CURRENCIES = FIELDS["currency"].allowed()
_CHANNELS = FIELDS["channel"].allowed()


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
    return isinstance(v, str) and 0 < len(v) <= ID_MAX_LENGTH and _ID_CHARS.issuperset(v)


def _quick(obj: dict[str, object]) -> Txn | None:
    keys = obj.keys()
    if not (keys >= REQUIRED and keys <= ALLOWED):
        return None
    version = obj.get("schema_version", SCHEMA_VERSION)
    if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:
        return None
    amount, lat, lon = obj["amount"], obj["lat"], obj["lon"]
    if type(amount) is not float or not _AMOUNT_GT < amount <= _AMOUNT_LE:
        return None
    if type(lat) is not float or not _LAT_GE <= lat <= _LAT_LE \
            or type(lon) is not float or not _LON_GE <= lon <= _LON_LE:
        return None
    mcc, country, currency = obj["mcc"], obj["country"], obj["currency"]
    if not (isinstance(mcc, str) and len(mcc) == MCC_LENGTH and mcc.isascii()
            and mcc.isdigit()):
        return None
    channel = obj["channel"]  # a list or an object is unhashable: the set lookups need str
    if not (type(country) is str and type(currency) is str and type(channel) is str):
        return None
    if country not in _COUNTRIES or currency not in _CURRENCIES or channel not in _CHANNELS:
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
               currency, channel)


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
