"""Feast's Redis online-store format, both directions: what the writers store and serving reads.

Kestrel writes and reads Feast's Redis layout itself (Feast's own calls build DataFrames,
Arrow tables and protos per call, too slow for the stream and for a decision), so that
``FeatureStore.get_online_features`` reads what Kestrel wrote like rows Feast wrote itself.
The format, as Feast 0.67's ``RedisOnlineStore`` writes it:

* key: the entity key serialized with ``entity_key_serialization_version`` 3 (u32 LE count of
  join keys; per key u32 type STRING, u32 length, UTF-8 name; per value u32 type STRING, u32
  length, UTF-8 value) followed by the project name. All views of one entity share that hash
  (:func:`key_prefix`, then ``u32(len(value)) + value + project``).
* fields: ``mmh3_32("<view>:<feature>")`` as 4 little-endian bytes per feature
  (:func:`feature_field`), and ``"_ts:<view>"`` with the event time as a serialized
  ``google.protobuf.Timestamp`` (:func:`timestamp_parts`, :func:`timestamp_bytes`).
* values: serialized ``feast.types.Value`` (``int64_val`` / ``double_val``); a missing value
  (None or NaN) is the empty message, which Feast reads back as None (:func:`encode_int64`,
  :func:`encode_double`; back with :func:`decode_value` and :class:`ValueDecoder`).

Each encoder has a RESP twin giving the same bytes as a bulk string (``resp_*``) and an array
twin encoding a numpy column at once (``resp_*_rows``): the online writer lays commands out
from them without a Python object per value.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from feast.infra.online_stores.helpers import _mmh3
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.protos.feast.types.Value_pb2 import ValueType
from feast.types import Float64, Int64
from google.protobuf.timestamp_pb2 import Timestamp

from kestrel.resp import Ragged, bulk, ragged, rows_as_bytes

FeatureValue = int | float | None

u32 = struct.Struct("<I").pack
"""A u32, little-endian: the entity key's counts, types and lengths."""
_DOUBLE = struct.Struct("<d").pack
_UNPACK_DOUBLE = struct.Struct("<d").unpack_from
_INT64_TAG = b"\x20"  # Value field 4 (int64_val), varint
_DOUBLE_TAG = b"\x29"  # Value field 5 (double_val), fixed64
_SMALL_INTS = tuple(_INT64_TAG + bytes([i]) for i in range(128))  # one-byte varints
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)


# --- keys and fields --------------------------------------------------------------------------


def key_prefix(join_key: str) -> bytes:
    """The serialized entity key up to its value's length: one STRING join key, then the
    value's type. A key is ``prefix + u32(len(value)) + value + project``."""
    name = join_key.encode()
    return u32(1) + u32(ValueType.STRING) + u32(len(name)) + name + u32(ValueType.STRING)


def feature_field(view: str, feature: str) -> bytes:
    """The hash field of a view's feature."""
    return _mmh3(f"{view}:{feature}")


def timestamp_field(view: str) -> bytes:
    """The hash field of a view's event time."""
    return f"_ts:{view}".encode()


# --- values -----------------------------------------------------------------------------------


def encode_int64(value: FeatureValue) -> bytes:
    """``Value(int64_val=int(value))`` serialized; b"" (the empty Value) when missing."""
    if value is None or value != value:  # NaN is the only value unequal to itself
        return b""
    number = int(value)
    if 0 <= number < 128:
        return _SMALL_INTS[number]
    if 0 < number < 16_384:  # a two-byte varint, the common case for counts
        return bytes((0x20, (number & 0x7F) | 0x80, number >> 7))
    return ValueProto(int64_val=number).SerializeToString()


def encode_double(value: FeatureValue) -> bytes:
    """``Value(double_val=float(value))`` serialized; b"" when missing."""
    if value is None or value != value:
        return b""
    return _DOUBLE_TAG + _DOUBLE(float(value))


ENCODERS: dict[Any, Callable[[FeatureValue], bytes]] = {Int64: encode_int64,
                                                         Float64: encode_double}
"""The value encoder of each Feast type Kestrel stores."""

_RESP_EMPTY = b"$0\r\n\r\n"
_RESP_SMALL_INTS = tuple(b"$%d\r\n%s\r\n" % (len(v), v)
                         for v in (encode_int64(i) for i in range(16_384)))
_RESP_DOUBLE_HEAD = b"$9\r\n" + _DOUBLE_TAG


def resp_int64(value: FeatureValue) -> bytes:
    """encode_int64 as a RESP bulk string."""
    if value is None or value != value:
        return _RESP_EMPTY
    number = int(value)
    if 0 <= number < 16_384:
        return _RESP_SMALL_INTS[number]
    encoded = encode_int64(number)
    return b"$%d\r\n%s\r\n" % (len(encoded), encoded)


def resp_double(value: FeatureValue) -> bytes:
    """encode_double as a RESP bulk string."""
    if value is None or value != value:
        return _RESP_EMPTY
    return _RESP_DOUBLE_HEAD + _DOUBLE(float(value)) + b"\r\n"


RESP_ENCODERS: dict[Callable[[FeatureValue], bytes], Callable[[FeatureValue], bytes]] = {
    encode_int64: resp_int64, encode_double: resp_double}
"""The RESP twin of each value encoder."""


def resp_column(values: Sequence[FeatureValue] | np.ndarray,
                encode: Callable[[FeatureValue], bytes]) -> Ragged:
    """A column of values as RESP bulk strings (encode is resp_int64 or resp_double); a
    numpy column of the encoder's kind is encoded with array operations."""
    if isinstance(values, np.ndarray):
        if encode is resp_double and values.dtype.kind == "f":
            return resp_double_rows(values)
        if encode is resp_int64 and values.dtype.kind in "iu":
            return resp_int64_rows(values)
        values = values.tolist()
    if encode is resp_double:
        head, pack = _RESP_DOUBLE_HEAD, _DOUBLE
        return ragged([head + pack(v) + b"\r\n" if v is not None and v == v else _RESP_EMPTY
                       for v in values])
    small = _RESP_SMALL_INTS
    return ragged([small[v] if type(v) is int and 0 <= v < 16_384 else encode(v)
                   for v in values])


def resp_int64_array(values: np.ndarray) -> list[bytes]:
    """resp_int64 of every value of an integer array, as bytes."""
    return rows_as_bytes(resp_int64_rows(values))


def resp_int64_rows(values: np.ndarray) -> Ragged:
    """resp_int64 of every value of an integer array (a negative one as protobuf writes
    it: ten varint bytes of its two's complement), with array operations."""
    u = np.ascontiguousarray(values, dtype=np.int64).view(np.uint64)
    n = len(u)
    size = np.ones(n, dtype=np.int64)  # varint bytes: 7 bits each
    for k in range(1, 10):
        size += u >= np.uint64(1 << (7 * k))
    body = 1 + size  # the tag, then the varint
    two = body >= 10
    head = np.where(two, 5, 4)  # "$N\r\n" or "$NN\r\n"
    rows = np.arange(n)
    out = np.zeros((n, 5 + 11 + 2), dtype=np.uint8)
    out[:, 0] = ord("$")
    out[:, 1] = np.where(two, ord("1"), ord("0") + body)
    out[two, 2] = ord("0") + body[two] - 10
    out[rows, head - 2] = ord("\r")
    out[rows, head - 1] = ord("\n")
    out[rows, head] = _INT64_TAG[0]
    for k in range(10):
        write = size > k
        byte = ((u >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        byte |= np.where(size > k + 1, 0x80, 0).astype(np.uint8)  # more bytes follow
        out[rows[write], head[write] + 1 + k] = byte[write]
    end = head + body
    out[rows, end] = ord("\r")
    out[rows, end + 1] = ord("\n")
    return out, end + 2


def resp_double_array(values: np.ndarray) -> list[bytes]:
    """resp_double of every value of a float array, as bytes."""
    return rows_as_bytes(resp_double_rows(values))


def resp_double_rows(values: np.ndarray) -> Ragged:
    """resp_double of every value of a float array (NaN: the empty Value), with array
    operations."""
    v = np.ascontiguousarray(values, dtype="<f8")
    out = np.zeros((len(v), 15), dtype=np.uint8)
    out[:, :5] = np.frombuffer(_RESP_DOUBLE_HEAD, dtype=np.uint8)
    out[:, 5:13] = v.view(np.uint8).reshape(-1, 8)
    out[:, 13:15] = (ord("\r"), ord("\n"))
    missing = np.isnan(v)
    lengths = np.full(len(v), 15)
    if missing.any():
        out[missing] = 0
        out[missing, :6] = np.frombuffer(_RESP_EMPTY, dtype=np.uint8)
        lengths[missing] = len(_RESP_EMPTY)
    return out, lengths


def decode_value(raw: bytes | None) -> float:
    """A serialized ``feast.Value`` as a float (NaN when missing or empty)."""
    if not raw:
        return math.nan
    tag = raw[0]
    if tag == 0x29 and len(raw) == 9:  # double_val
        return float(_UNPACK_DOUBLE(raw, 1)[0])
    if tag == 0x20:  # int64_val, varint (non-negative fast path)
        value, shift = 0, 0
        for byte in raw[1:]:
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if shift <= 63:
            return float(value)
    proto = ValueProto.FromString(raw)
    kind = proto.WhichOneof("val")
    return math.nan if kind is None else float(getattr(proto, kind))


class ValueDecoder:
    """``decode_value`` through a bounded memo: stored values repeat (counts, cents, flags),
    and a dict lookup costs a tenth of a decode. The memo is emptied when it is full."""

    def __init__(self, max_entries: int = 100_000):
        self.max_entries = max_entries
        self._memo: dict[bytes | None, float] = {}

    def __len__(self) -> int:
        """Values held in the memo (never more than ``max_entries``)."""
        return len(self._memo)

    def decode(self, raw: bytes | None) -> float:
        value = self._memo.get(raw)
        if value is None:
            value = decode_value(raw)
            if len(self._memo) >= self.max_entries:
                self._memo.clear()
            self._memo[raw] = value
        return value

    def decode_many(self, raws: list[bytes | None]) -> list[float]:
        """``decode`` of every value of one reply, with the memo's hits looked up by ``map``
        (no Python call per value: a batch decodes hundreds of thousands)."""
        hits = list(map(self._memo.get, raws))
        if None not in hits:
            return hits  # type: ignore[return-value]  # no None: every value was in the memo
        decode = self.decode
        return [decode(r) if v is None else v for r, v in zip(raws, hits, strict=True)]


# --- event times ------------------------------------------------------------------------------


def timestamp_parts(event_time: datetime | int) -> tuple[int, int]:
    """(seconds, nanos) exactly as ``Timestamp.FromDatetime(make_tzaware(t))`` sets them, for
    a datetime (naive: UTC, as Feast takes it) or µs since the epoch."""
    if isinstance(event_time, datetime):
        delta = event_time - (_EPOCH if event_time.tzinfo is not None else _EPOCH_NAIVE)
        seconds, nanos = delta.days * 86_400 + delta.seconds, delta.microseconds * 1000
    else:
        seconds, micros = divmod(int(event_time), 1_000_000)
        nanos = micros * 1000
    if seconds < 0:
        raise ValueError(f"event time before 1970 is not supported: {event_time!r}")
    return seconds, nanos


def timestamp_bytes(seconds: int, nanos: int) -> bytes:
    """``Timestamp(seconds=…, nanos=…).SerializeToString()`` (fields 1 and 2, varints,
    each left out when 0)."""
    return ((b"\x08" + _varint(seconds) if seconds else b"")
            + (b"\x10" + _varint(nanos) if nanos else b""))


def decode_timestamp(raw: bytes) -> tuple[int, int]:
    """A stored event time (a serialized ``Timestamp``) as (seconds, nanos)."""
    ts = Timestamp.FromString(raw)
    return ts.seconds, ts.nanos


def _varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int (timestamps: 4–5 bytes)."""
    if n < 0x80:
        return bytes((n,))
    if n < 1 << 28:
        if n < 1 << 14:
            return bytes(((n & 0x7F) | 0x80, n >> 7))
        if n < 1 << 21:
            return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, n >> 14))
        return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, ((n >> 14) & 0x7F) | 0x80,
                      n >> 21))
    if n < 1 << 35:
        return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, ((n >> 14) & 0x7F) | 0x80,
                      ((n >> 21) & 0x7F) | 0x80, n >> 28))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SECONDS_5_BYTES = (1 << 28, 1 << 35)  # the seconds of 1978 … 3058: a 5-byte varint


def resp_timestamps(times_us: Sequence[int] | np.ndarray) -> list[bytes]:
    """RESP bulk strings of ``timestamp_bytes(*timestamp_parts(t))`` for µs times."""
    return rows_as_bytes(resp_timestamp_rows(times_us))


def resp_timestamp_rows(times_us: Sequence[int] | np.ndarray) -> Ragged:
    """RESP bulk strings of ``timestamp_bytes(*timestamp_parts(t))`` for µs times, built
    with numpy; times outside 1978 … 3058 take the per-value path."""
    t = np.asarray(times_us, dtype=np.int64)
    seconds, micros = np.divmod(t, 1_000_000)
    if len(t) == 0 or seconds.min() < _SECONDS_5_BYTES[0] \
            or seconds.max() >= _SECONDS_5_BYTES[1]:
        return ragged([bulk(timestamp_bytes(*timestamp_parts(int(v)))) for v in times_us])
    nanos = micros * 1000  # < 2**30: a 2- to 5-byte varint (1,000 at least), or left out
    n_len = np.where(nanos == 0, 0, 1 + np.select(
        [nanos < 1 << 14, nanos < 1 << 21, nanos < 1 << 28], [2, 3, 4], 5))
    body = 6 + n_len  # tag + 5 bytes of seconds, then tag + nanos
    width = 20  # "$NN\r\n" + body (≤ 12) + "\r\n" (≤ 19 bytes), left-aligned
    out = np.zeros((len(t), width), dtype=np.uint8)
    head = np.where(body >= 10, 5, 4)  # "$6\r\n" … "$12\r\n"
    rows = np.arange(len(t))
    two = body >= 10
    out[:, 0] = ord("$")
    out[:, 1] = np.where(two, ord("1"), ord("0") + body)
    out[two, 2] = ord("0") + body[two] - 10
    out[rows, head - 2] = ord("\r")
    out[rows, head - 1] = ord("\n")
    out[rows, head] = 0x08
    for k in range(5):
        b = (seconds >> (7 * k)) & 0x7F
        out[rows, head + 1 + k] = b | 0x80 if k < 4 else seconds >> 28
    has = n_len > 0
    out[rows[has], head[has] + 6] = 0x10
    for k in range(5):
        b = (nanos >> (7 * k)) & 0x7F
        more = (n_len - 1) > k + 1  # another varint byte follows this one
        write = has & ((n_len - 1) > k)
        out[rows[write], head[write] + 7 + k] = (b | np.where(more, 0x80, 0))[write]
    end = head + body
    out[rows, end] = ord("\r")
    out[rows, end + 1] = ord("\n")
    return out, end + 2
