"""The stream's write path to the online store: Feast's Redis format, without Feast's overhead.

``FeatureStore.push`` costs ~5 ms per call (DataFrame → Arrow → protos → two round trips), far
too slow for the stream. ``OnlineWriter`` appends the same writes to a redis-py pipeline the
caller owns, so feature rows can share one MULTI/EXEC with the stream's offsets and state, and
``FeatureStore.get_online_features`` reads them like rows Feast wrote itself.

The format, as Feast 0.67's ``RedisOnlineStore.online_write_batch`` writes it:

* key: the entity key serialized with ``entity_key_serialization_version`` 3 (u32 LE count of
  join keys; per key u32 type STRING, u32 length, UTF-8 name; per value u32 type STRING, u32
  length, UTF-8 value) followed by the project name. All views of one entity share that hash.
* fields: ``mmh3_32("<view>:<feature>")`` as 4 little-endian bytes per feature, and
  ``"_ts:<view>"`` with the event time as a serialized ``google.protobuf.Timestamp``.
* values: serialized ``feast.types.Value`` (``int64_val`` / ``double_val``); a missing value
  (None or NaN) is the empty message, which Feast reads back as None.
* dedup (Feast's default, ``skip_dedup: false``): a row whose event time is not strictly newer
  than the stored ``_ts:<view>`` is dropped, so an older or equal timestamp never overwrites.
  Feast reads the old timestamps in one round trip and writes in a second; here one Lua script
  per row compares and writes atomically, which also holds inside the caller's MULTI/EXEC.
  With ``skip_dedup: true`` it is a plain HSET, last write wins. ``overwrite_equal=True`` is
  a Kestrel option between the two: a row with the same event time as the stored one wins
  (the stream can emit two rows for one entity at one microsecond; the offline log keeps both
  and Feast's join takes the later ``created``, so online should hold the later one too).
* ``key_ttl_seconds``, when configured, sets EXPIRE on the entity's key after each write (the
  stream's column writes: once per refresh interval, pipelines/features/key_ttl.py).

Everything that does not change per row (field names, key prefix, encoders) is built once per
view. Entity keys are not cached: building one costs less than a dictionary lookup would save.

Two ways to queue the writes: onto a redis-py pipeline (``add(pipe, rows)``), or onto a
:class:`RespTransaction` — the hot path of the stream and of bulk loads — which builds the
Redis wire protocol (RESP) itself from per-view templates and sends one MULTI … EXEC; the
bytes stored are the same either way.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import hiredis
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from feast import FeatureStore, FeatureView, RepoConfig
from feast.infra.online_stores.helpers import _mmh3, compute_versioned_name
from feast.infra.online_stores.redis import RedisOnlineStoreConfig
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.protos.feast.types.Value_pb2 import ValueType
from feast.types import Float64, Int64
from google.protobuf.timestamp_pb2 import Timestamp
from redis import Redis
from redis.client import Pipeline
from redis.commands.core import Script
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from kestrel.errors import ConfigError
from kestrel.settings import Settings
from pipelines.features.key_ttl import KeyTtlRefresh
from pipelines.features.store import load_repo, repo_config

FeatureValue = int | float | None
Row = tuple[str, Mapping[str, FeatureValue], datetime | int]
"""(entity value, {feature: value}, event time as a datetime or as µs since the epoch, UTC).
A naive datetime is taken as UTC, as Feast does."""
Column = Sequence[FeatureValue] | np.ndarray
"""A feature's values for a block of rows: a list, or a numpy array (encoded in bulk)."""

_U32 = struct.Struct("<I").pack
_DOUBLE = struct.Struct("<d").pack
_INT64_TAG = b"\x20"  # Value field 4 (int64_val), varint
_DOUBLE_TAG = b"\x29"  # Value field 5 (double_val), fixed64
_SMALL_INTS = tuple(_INT64_TAG + bytes([i]) for i in range(128))  # one-byte varints
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)

# KEYS[1] entity hash. ARGV: ts field, ts bytes, new seconds, new nanos, key ttl (0: none),
# equal time wins ('1') or loses ('0'), then field/value pairs. Writes only when the new time
# is after the stored one (strictly, as Feast's dedup does, unless equal wins); a stored time
# of 0 or none always loses. The stored value is a protobuf Timestamp: tag 0x08 varint
# seconds, tag 0x10 varint nanos (each left out when 0).
_DEDUP_LUA = b"""
local function varint(s, i)
  local value, scale = 0, 1
  while true do
    local b = string.byte(s, i)
    if b == nil then return nil, i end
    value = value + (b % 128) * scale
    i = i + 1
    if b < 128 then return value, i end
    scale = scale * 128
  end
end
local prev = redis.call('HGET', KEYS[1], ARGV[1])
if prev then
  local secs, nanos, i = 0, 0, 1
  while i <= #prev do
    local tag = string.byte(prev, i)
    local v
    v, i = varint(prev, i + 1)
    if v == nil then break end
    if tag == 8 then secs = v elseif tag == 16 then nanos = v end
  end
  local new_secs, new_nanos = tonumber(ARGV[3]), tonumber(ARGV[4])
  if (secs > 0 or nanos > 0) and (new_secs < secs or (new_secs == secs
      and (new_nanos < nanos or (new_nanos == nanos and ARGV[6] == '0')))) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], unpack(ARGV, 7))
if ARGV[5] ~= '0' then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
return 1
"""
_DEDUP_SCRIPT = Script(None, _DEDUP_LUA)  # type: ignore[arg-type]  # sha from bytes only


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


_ENCODERS: dict[Any, Callable[[FeatureValue], bytes]] = {Int64: encode_int64,
                                                          Float64: encode_double}
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


_RESP_ENCODERS: dict[Callable[[FeatureValue], bytes], Callable[[FeatureValue], bytes]] = {
    encode_int64: resp_int64, encode_double: resp_double}


def timestamp_parts(event_time: datetime | int) -> tuple[int, int]:
    """(seconds, nanos) exactly as ``Timestamp.FromDatetime(make_tzaware(t))`` sets them."""
    if isinstance(event_time, datetime):
        delta = event_time - (_EPOCH if event_time.tzinfo is not None else _EPOCH_NAIVE)
        seconds, nanos = delta.days * 86_400 + delta.seconds, delta.microseconds * 1000
    else:
        seconds, micros = divmod(int(event_time), 1_000_000)
        nanos = micros * 1000
    if seconds < 0:
        raise ValueError(f"event time before 1970 is not supported: {event_time!r}")
    return seconds, nanos


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _arg(value: bytes | str | int | float) -> bytes:
    if isinstance(value, bytes):
        return _bulk(value)
    if isinstance(value, str):
        return _bulk(value.encode())
    return _bulk(repr(value).encode() if isinstance(value, float) else b"%d" % value)


def resp_command(*args: bytes | str | int | float) -> bytes:
    """One command encoded as RESP (an array of bulk strings)."""
    return b"*%d\r\n" % len(args) + b"".join([
        b"$%d\r\n%s\r\n" % (len(a), a) if type(a) is bytes else _arg(a) for a in args])


def arrow_decimal(values: Any) -> pa.Array:
    """Integers (Arrow or numpy) as their decimal digits, an Arrow binary array."""
    return pc.cast(pc.cast(values, pa.string()), pa.binary())


def arrow_bulk(values: pa.Array) -> pa.Array:
    """Each binary value as a RESP bulk string, with Arrow's element-wise join."""
    return pc.binary_join_element_wise(b"$", arrow_decimal(pc.binary_length(values)), b"\r\n",
                                       values, b"\r\n", b"")


def arrow_bytes(values: pa.Array) -> bytes:
    """A binary array's values concatenated: its data buffer, between its first and last
    offsets."""
    offsets = np.frombuffer(values.buffers()[1], np.int32)[
        values.offset:values.offset + len(values) + 1]
    return values.buffers()[2][int(offsets[0]):int(offsets[-1])].to_pybytes() \
        if len(values) else b""


def arrow_keys(key: Callable[[str], str], ids: pa.Array) -> pa.Array:
    """``key(i)`` for every id of ``ids`` (strings), as binary, built with Arrow from the
    key function's template: ``key`` must put its argument once, anywhere."""
    marker = "\x00"
    parts = key(marker).split(marker)
    if len(parts) != 2:
        raise ValueError(f"{getattr(key, '__name__', key)!r} must use its argument once")
    return pc.binary_join_element_wise(parts[0].encode(), pc.cast(ids, pa.binary()),
                                       parts[1].encode(), b"")


def resp_keys_command(command: bytes, key: Callable[[str], str], ids: pa.Array) -> bytes:
    """One ``command`` (DEL, say) whose arguments are ``key(i)`` for every id of ``ids``
    (arrow_keys), as RESP."""
    return (b"*%d\r\n" % (len(ids) + 1) + _bulk(command)
            + arrow_bytes(arrow_bulk(arrow_keys(key, ids))))


def read_replies(conn: Any, count: int, received: bytes | bytearray = b"") -> list[Any]:
    """``count`` replies read straight from a redis-py connection's socket into one hiredis
    reader (redis-py's ``read_response`` costs several µs per reply; a stream commit queues
    tens of thousands of commands). Error replies come back as ``ResponseError`` values, not
    raised. The caller sent the commands and nothing else is pending on the connection (every
    earlier reply was read), so redis-py's own parser buffer stays empty; on any exception
    the caller must drop the connection."""
    reader = hiredis.Reader(replyError=ResponseError)
    sock = conn._sock
    if sock is None:
        raise RedisConnectionError("Redis connection closed before its replies were read")
    buf = bytearray(1 << 16)
    replies: list[Any] = []
    if received:  # read from the socket already (read_transaction)
        reader.feed(received)  # type: ignore[arg-type]
        while len(replies) < count and (reply := reader.gets()) is not False:
            replies.append(reply)
    while len(replies) < count:
        n = sock.recv_into(buf)
        if not n:
            raise RedisConnectionError("Redis closed the connection before all replies came")
        reader.feed(buf, 0, n)  # type: ignore[arg-type]  # hiredis reads any buffer
        while (reply := reader.gets()) is not False:
            replies.append(reply)
    return replies


_QUEUED = b"+QUEUED\r\n"


def read_transaction(conn: Any, commands: int) -> tuple[list[ResponseError], Any]:
    """The replies to MULTI, ``commands`` queued commands and EXEC: (the errors among the
    queued ones, EXEC's reply). While the bytes are exactly ``+OK`` and one ``+QUEUED`` per
    command they are only compared, not parsed (one hiredis call per reply held the GIL for
    ~20 ms per stream commit, against the thread applying the next batch); from the first
    byte that differs (a command refused) every reply is parsed (read_replies)."""
    expected = b"+OK\r\n" + _QUEUED * commands
    sock = conn._sock
    if sock is None:
        raise RedisConnectionError("Redis connection closed before its replies were read")
    got = bytearray()
    while len(got) < len(expected):
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise RedisConnectionError("Redis closed the connection before all replies came")
        start = len(got)
        got += chunk
        end = min(len(got), len(expected))
        if got[start:end] != expected[start:end]:
            *queued, result = read_replies(conn, commands + 2, got)
            return [r for r in queued if isinstance(r, ResponseError)], result
    reader = hiredis.Reader(replyError=ResponseError)
    reader.feed(got, len(expected), len(got) - len(expected))  # type: ignore[arg-type]
    buf = bytearray(1 << 16)
    while (result := reader.gets()) is False:
        n = sock.recv_into(buf)
        if not n:
            raise RedisConnectionError("Redis closed the connection before all replies came")
        reader.feed(buf, 0, n)  # type: ignore[arg-type]
    return [], result


class RespTransaction:
    """Commands encoded as RESP by hand and sent as one MULTI … EXEC on one connection.

    redis-py's pipeline costs several µs per command in Python (argument packing, reply
    bookkeeping); the stream queues tens of thousands of commands per batch, most of them
    HSETs whose shape is known in advance. Replies are read back in order; any error (a
    command refused while queued, or at EXEC) raises ``ResponseError`` and, as with MULTI,
    nothing of the transaction is applied in the first case.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.commands = 0

    def __len__(self) -> int:
        return self.commands

    def command(self, *args: bytes | str | int | float) -> None:
        self._parts.append(resp_command(*args))
        self.commands += 1

    def raw(self, payload: bytes, commands: int) -> None:
        """Append commands already encoded as RESP."""
        self._parts.append(payload)
        self.commands += commands

    def execute(self, client: Redis, guard: Mapping[str, bytes] | None = None
                ) -> list[Any] | None:
        """Send MULTI, the commands and EXEC; returns EXEC's replies.

        ``guard`` (optional fencing): keys that must hold these values. They are WATCHed and
        read first; when one differs, or changes before EXEC, nothing is written and None is
        returned."""
        if not self.commands:
            return []
        pool = client.connection_pool
        conn = pool.get_connection()
        try:
            if guard:
                keys = list(guard)
                conn.send_packed_command([b"*%d\r\n$5\r\nWATCH\r\n" % (len(keys) + 1)
                                          + b"".join(_arg(k) for k in keys)
                                          + b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1)
                                          + b"".join(_arg(k) for k in keys)])
                conn.read_response()
                held = conn.read_response()
                if list(held) != [guard[k] for k in keys]:
                    conn.send_packed_command([b"*1\r\n$7\r\nUNWATCH\r\n"])
                    conn.read_response()
                    return None
            conn.send_packed_command([b"".join([b"*1\r\n$5\r\nMULTI\r\n", *self._parts,
                                                b"*1\r\n$4\r\nEXEC\r\n"])])
            # +OK for MULTI, +QUEUED (or an error) per command, then EXEC's reply: a list,
            # None when a WATCHed key changed, or an error such as EXECABORT
            queued, result = read_transaction(conn, self.commands)
            errors = [str(r) for r in queued]
            if isinstance(result, ResponseError):
                raise ResponseError(f"{result}; first queued error: {errors[:1]}")
            if result is None:
                if guard:
                    return None  # a watched key changed: nothing was written
                raise ResponseError("EXEC returned nothing (the transaction was discarded)")
            failed = [r for r in result if isinstance(r, ResponseError)]
            if failed:
                raise ResponseError(f"{len(failed)} command(s) failed in EXEC: {failed[0]}")
            return list(result)
        except BaseException:
            conn.disconnect()  # unread replies would poison the next user of the connection
            raise
        finally:
            pool.release(conn)


class ViewWriter:
    """Queues Feast-compatible writes of one view's rows onto a caller's Redis pipeline."""

    def __init__(self, config: RepoConfig, view: FeatureView, *, dedup: bool | None = None,
                 overwrite_equal: bool = False):
        online = config.online_store
        if not isinstance(online, RedisOnlineStoreConfig):
            raise ConfigError(f"online store is {type(online).__name__}, not Redis")
        if config.entity_key_serialization_version != 3:
            raise ConfigError("OnlineWriter encodes entity keys with version 3 only; set "
                              "entity_key_serialization_version: 3 in feature_store.yaml")
        if len(view.join_keys) != 1:
            raise ConfigError(f"{view.name}: OnlineWriter handles single-key views only")
        self.view_name = compute_versioned_name(
            view, config.registry.enable_online_feature_view_versioning)
        self.join_key = view.join_keys[0]
        self.dedup = not online.skip_dedup if dedup is None else dedup
        self.overwrite_equal = overwrite_equal
        self._equal_arg = b"1" if overwrite_equal else b"0"
        self.key_ttl_seconds = int(online.key_ttl_seconds or 0)
        self.ts_field = f"_ts:{self.view_name}".encode()
        self._project = config.project.encode()
        name = self.join_key.encode()
        self._key_prefix = (_U32(1) + _U32(ValueType.STRING) + _U32(len(name)) + name
                            + _U32(ValueType.STRING))
        self._fields: dict[str, tuple[bytes, Callable[[FeatureValue], bytes]]] = {}
        for feature in view.features:
            encoder = _ENCODERS.get(feature.dtype)
            if encoder is None:
                raise ConfigError(f"{view.name}.{feature.name}: type {feature.dtype} is not "
                                  "supported by OnlineWriter (Int64, Float64)")
            self._fields[feature.name] = (_mmh3(f"{self.view_name}:{feature.name}"), encoder)
        self._ttl_arg = str(self.key_ttl_seconds).encode()
        # RESP templates for RespTransaction: "$4\r\n<field>\r\n" per feature
        self._resp_fields = {name: (_bulk(f), _RESP_ENCODERS[encoder]) for name, (f, encoder)
                             in self._fields.items()}
        self._resp_ts_field = _bulk(self.ts_field)

    @classmethod
    def for_view(cls, store: FeatureStore, view_name: str, *, dedup: bool | None = None,
                 overwrite_equal: bool = False) -> ViewWriter:
        """A writer for a view as the store's registry defines it."""
        return cls(store.config, store.get_feature_view(view_name), dedup=dedup,
                   overwrite_equal=overwrite_equal)

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self._fields)

    def key(self, entity_value: str) -> bytes:
        """The Redis key of an entity: serialized entity key + project."""
        value = entity_value.encode()
        return self._key_prefix + _U32(len(value)) + value + self._project

    def add(self, pipe: Pipeline | RespTransaction, rows: Iterable[Row]) -> int:
        """Queue the writes for ``rows`` on ``pipe``; the caller executes it.

        Each row writes only the features it names (like Feast, a feature left out keeps its
        stored value); a name the view does not have raises KeyError. Returns the number of
        commands queued. With dedup each row is one EVALSHA whose reply is 1 (written) or 0
        (dropped: not newer than the stored row); without, one HSET (plus EXPIRE with a key
        TTL).
        """
        if isinstance(pipe, RespTransaction) and not self.dedup:
            return self._add_resp(pipe, rows)
        fields, ts_field, ttl = self._fields, self.ts_field, self.key_ttl_seconds
        prefix, project, dedup = self._key_prefix, self._project, self.dedup
        command: Callable[..., Any] = (pipe.command if isinstance(pipe, RespTransaction)
                                       else pipe.execute_command)
        if dedup and isinstance(pipe, RespTransaction):
            raise ConfigError("dedup writes need a redis-py pipeline (the script must be "
                              "loaded); use dedup=False with RespTransaction")
        if dedup and isinstance(pipe, Pipeline):
            # What Script.__call__ does for a pipeline: EXEC first loads missing scripts.
            pipe.scripts.add(_DEDUP_SCRIPT)
        queued = 0
        for entity_value, features, event_time in rows:
            seconds, nanos = timestamp_parts(event_time)
            ts = Timestamp(seconds=seconds, nanos=nanos).SerializeToString()
            value = entity_value.encode()
            key = prefix + _U32(len(value)) + value + project
            args: list[Any] = (
                ["EVALSHA", _DEDUP_SCRIPT.sha, 1, key, ts_field, ts, seconds, nanos,
                 self._ttl_arg, self._equal_arg] if dedup else ["HSET", key, ts_field, ts])
            for name, feature_value in features.items():
                try:
                    field, encode = fields[name]
                except KeyError:
                    raise KeyError(f"{self.view_name} has no feature {name!r}; nothing of "
                                   "this row was queued") from None
                args.append(field)
                args.append(encode(feature_value))
            command(*args)
            queued += 1
            if ttl and not dedup:
                command("EXPIRE", key, ttl)
                queued += 1
        return queued


    def _add_resp(self, tx: RespTransaction, rows: Iterable[Row]) -> int:
        """HSET (plus EXPIRE with a key TTL) per row, encoded from the view's templates."""
        fields, ts_field, ttl = self._resp_fields, self._resp_ts_field, self.key_ttl_seconds
        prefix, project = self._key_prefix, self._project
        out: list[bytes] = []
        queued = 0
        for entity_value, features, event_time in rows:
            seconds, nanos = timestamp_parts(event_time)
            ts = _timestamp_bytes(seconds, nanos)
            value = entity_value.encode()
            key = _bulk(prefix + _U32(len(value)) + value + project)
            parts = [b"*%d\r\n$4\r\nHSET\r\n" % (4 + 2 * len(features)), key, ts_field,
                     _bulk(ts)]
            for name, feature_value in features.items():
                try:
                    field, encode = fields[name]
                except KeyError:
                    raise KeyError(f"{self.view_name} has no feature {name!r}; nothing of "
                                   "this row was queued") from None
                parts.append(field)
                parts.append(encode(feature_value))
            out.append(b"".join(parts))
            queued += 1
            if ttl:
                out.append(b"*3\r\n$6\r\nEXPIRE\r\n" + key + _arg(ttl))
                queued += 1
        tx.raw(b"".join(out), queued)
        return queued


    def add_columns(self, tx: RespTransaction, keys: Sequence[str],
                    columns: Mapping[str, Column], times_us: Sequence[int] | np.ndarray,
                    refresh: KeyTtlRefresh | None = None) -> int:
        """Queue one HSET per entity from columns (bulk loads): ``keys[i]`` gets
        ``columns[f][i]`` for every feature ``f`` and the event time ``times_us[i]`` (µs since
        the epoch, UTC). The bytes stored are those of :meth:`add`. Every piece of a row —
        the constant ones (command heads, field names) and the encoded ones (keys, event
        times, values: numpy columns with array operations) — is laid out as a column of one
        byte matrix, and the rows are read out of it at once (_join_rows): no Python object
        per row or per value (joining each row's pieces in Python cost ~1.5 µs per row of
        a card's eleven features). With a key TTL, each row's EXPIRE follows its HSET, or,
        given ``refresh``, only the keys it says are due get one (with its TTL), after the
        HSETs. Returns the number of commands queued."""
        unknown = [name for name in columns if name not in self._resp_fields]
        if unknown:
            raise KeyError(f"{self.view_name} has no feature(s) {unknown}; nothing was queued")
        n = len(keys)
        if len(times_us) != n or any(len(c) != n for c in columns.values()):
            raise ValueError(f"{self.view_name}: keys, times and every column must have the "
                             f"same length ({n})")
        key = self._resp_keys(keys)
        pieces: list[bytes | Ragged] = [b"*%d\r\n$4\r\nHSET\r\n" % (4 + 2 * len(columns)),
                                        *key, self._resp_ts_field, resp_timestamp_rows(times_us)]
        for name, values in columns.items():
            field, encode = self._resp_fields[name]
            pieces += [field, _resp_column(values, encode)]
        queued = n
        if self.key_ttl_seconds and refresh is None:
            pieces += [b"*3\r\n$6\r\nEXPIRE\r\n", *key, _arg(self.key_ttl_seconds)]
            queued += n
        tx.raw(_join_rows(n, pieces), queued)
        if self.key_ttl_seconds and refresh is not None:
            due = [k for k, d in zip(keys, refresh.due(keys).tolist(), strict=True) if d]
            if due:
                tx.raw(_join_rows(len(due), [b"*3\r\n$6\r\nEXPIRE\r\n",
                                             *self._resp_keys(due), _arg(refresh.ttl)]),
                       len(due))
                queued += len(due)
        return queued

    def _resp_keys(self, keys: Sequence[str]) -> list[bytes | Ragged]:
        """The pieces of each key's RESP bulk string: "$<length>\\r\\n", the serialized
        entity key (prefix, u32 length, value) and the project, "\\r\\n"."""
        n = len(keys)
        try:  # identifiers are ASCII: numpy encodes them all at once
            value: Ragged = (_byte_matrix(np.array(keys, dtype="S")),
                             np.fromiter(map(len, keys), np.int64, n))
        except UnicodeEncodeError:
            value = ragged([k.encode() for k in keys])
        lengths = value[1]
        fixed = len(self._key_prefix) + 4 + len(self._project)
        u32 = lengths.astype("<u4").view(np.uint8).reshape(n, 4)
        return [b"$", decimal_rows(fixed + lengths), b"\r\n" + self._key_prefix,
                (u32, np.full(n, 4)), value, self._project + b"\r\n"]


Ragged = tuple[np.ndarray, np.ndarray]
"""Byte strings as rows of a uint8 matrix, each left-aligned, and each one's length."""


def ragged(items: Sequence[bytes]) -> Ragged:
    """Byte strings as a Ragged matrix."""
    lengths = np.fromiter(map(len, items), np.int64, len(items))
    width = max(1, int(lengths.max()) if len(items) else 1)
    return _byte_matrix(np.array(items, dtype=f"S{width}")), lengths


def _byte_matrix(strings: np.ndarray) -> np.ndarray:
    """A numpy bytes array (dtype S<w>) as its (n, w) uint8 matrix."""
    width = max(1, strings.dtype.itemsize)
    return np.ascontiguousarray(strings, dtype=f"S{width}").view(np.uint8).reshape(
        len(strings), width)


def decimal_rows(values: np.ndarray) -> Ragged:
    """Non-negative integers as their decimal digits."""
    v = np.asarray(values, dtype=np.int64)
    digits = np.ones(len(v), np.int64)
    top = int(v.max()) if len(v) else 0
    k = 1
    while 10 ** k <= top:
        digits += v >= 10 ** k
        k += 1
    out = np.zeros((len(v), k), np.uint8)
    for j in range(k):  # the j-th digit from the left: 10^(digits-1-j)
        place = digits - 1 - j
        out[:, j] = np.where(place >= 0, ord("0") + (v // 10 ** np.maximum(place, 0)) % 10, 0)
    return out, digits


def _join_rows(n: int, pieces: Sequence[bytes | Ragged]) -> bytes:
    """Row i's pieces, each constant (bytes) or row i of a Ragged matrix, concatenated, for
    every row in turn: the pieces side by side in one matrix (the constant ones copied in as
    one template row), read out in row-major order without the rows' padding."""
    widths = [len(p) if isinstance(p, bytes) else p[0].shape[1] for p in pieces]
    template = np.zeros(sum(widths), np.uint8)
    encoded: list[tuple[int, int, Ragged]] = []
    at = 0
    for piece, width in zip(pieces, widths, strict=True):
        if isinstance(piece, bytes):
            template[at:at + width] = np.frombuffer(piece, np.uint8)
        else:
            encoded.append((at, width, piece))
        at += width
    out = np.empty((n, len(template)), np.uint8)
    out[:] = template
    keep: np.ndarray | None = None
    for at, width, (matrix, lengths) in encoded:
        out[:, at:at + width] = matrix
        if n and int(lengths.min()) < width:  # padding to leave out
            if keep is None:
                keep = np.ones(out.shape, bool)
            keep[:, at:at + width] = np.arange(width) < lengths[:, None]
    return (out if keep is None else out[keep]).tobytes()


def _resp_column(values: Column, encode: Callable[[FeatureValue], bytes]) -> Ragged:
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


def _rows_as_bytes(rows: Ragged) -> list[bytes]:
    """The rows of a Ragged matrix as bytes: every row is written left-aligned and ends in
    "\\r\\n", so only padding is a trailing zero byte (numpy's fixed-width bytes drop exactly
    those, in C)."""
    out = rows[0]
    return out.view(f"S{out.shape[1]}").ravel().tolist()


def resp_int64_array(values: np.ndarray) -> list[bytes]:
    """resp_int64 of every value of an integer array, as bytes."""
    return _rows_as_bytes(resp_int64_rows(values))


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
    return _rows_as_bytes(resp_double_rows(values))


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
    """RESP bulk strings of ``_timestamp_bytes(*timestamp_parts(t))`` for µs times."""
    return _rows_as_bytes(resp_timestamp_rows(times_us))


def resp_timestamp_rows(times_us: Sequence[int] | np.ndarray) -> Ragged:
    """RESP bulk strings of ``_timestamp_bytes(*timestamp_parts(t))`` for µs times, built
    with numpy (a few hundred ns per row instead of a few µs); times outside 1978 … 3058
    take the per-value path."""
    t = np.asarray(times_us, dtype=np.int64)
    seconds, micros = np.divmod(t, 1_000_000)
    if len(t) == 0 or seconds.min() < _SECONDS_5_BYTES[0] \
            or seconds.max() >= _SECONDS_5_BYTES[1]:
        return ragged([_bulk(_timestamp_bytes(*timestamp_parts(int(v)))) for v in times_us])
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


def _timestamp_bytes(seconds: int, nanos: int) -> bytes:
    """``Timestamp(seconds=…, nanos=…).SerializeToString()`` (fields 1 and 2, varints,
    each left out when 0)."""
    return ((b"\x08" + _varint(seconds) if seconds else b"")
            + (b"\x10" + _varint(nanos) if nanos else b""))


class OnlineWriter:
    """Every view of the repo, by name: the stream processor's online sink.

    Built from the repo's definitions and Settings alone (no registry read, no network), so the
    stream can start before ``kestrel features apply``; readers still need the apply.
    """

    def __init__(self, settings: Settings, *, dedup: bool | None = None,
                 overwrite_equal: bool = False):
        config = repo_config(settings)
        self.views = {view.name: ViewWriter(config, view, dedup=dedup,
                                            overwrite_equal=overwrite_equal)
                      for view in load_repo(settings).feature_views}
        # the stream's writes set each key's retention TTL once per interval (key_ttl.py)
        self._refresh = {name: KeyTtlRefresh(w.key_ttl_seconds)
                         for name, w in self.views.items() if w.key_ttl_seconds}

    def view(self, name: str) -> ViewWriter:
        try:
            return self.views[name]
        except KeyError:
            raise ConfigError(f"no feature view {name!r} in feature_repo; "
                              f"there are {sorted(self.views)}") from None

    def write(self, pipe: Pipeline | RespTransaction, view: str, rows: Iterable[Row]) -> None:
        """Queue ``rows`` of ``view`` on ``pipe`` (see ViewWriter.add)."""
        self.view(view).add(pipe, rows)

    def write_columns(self, tx: RespTransaction, view: str, keys: Sequence[str],
                      columns: Mapping[str, Column],
                      times_us: Sequence[int] | np.ndarray) -> None:
        """Queue one row per key from columns (see ViewWriter.add_columns; the key TTL is
        refreshed once per interval: key_ttl.py)."""
        self.view(view).add_columns(tx, keys, columns, times_us, self._refresh.get(view))
