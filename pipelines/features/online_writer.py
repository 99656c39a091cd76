"""The stream's write path to the online store: Feast's Redis format, without Feast's overhead.

``FeatureStore.push`` costs milliseconds per call (DataFrame → Arrow → protos → two round
trips), far too slow for the stream. ``OnlineWriter`` appends the same writes to a redis-py
pipeline or a :class:`~kestrel.resp.RespTransaction` the caller owns, so feature rows can
share one MULTI/EXEC with the stream's offsets and state, and
``FeatureStore.get_online_features`` reads them like rows Feast wrote itself. The bytes stored
are Feast's (kestrel/feast_codec.py); this module decides which writes a row makes:

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

Two ways to queue the writes: onto a redis-py pipeline (``add(pipe, rows)``; dedup needs it,
for the script), or onto a RespTransaction — the hot path of the stream and of bulk loads,
``add_columns`` laying the commands out from numpy columns; the bytes stored are the same
either way. Everything that does not change per row (field names, key prefix, encoders, RESP
templates) is built once per view. Entity keys are not cached: building one costs less than a
dictionary lookup would save.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from feast import FeatureStore, FeatureView, RepoConfig
from feast.infra.online_stores.helpers import compute_versioned_name
from feast.infra.online_stores.redis import RedisOnlineStoreConfig
from redis.client import Pipeline
from redis.commands.core import Script

from kestrel.errors import ConfigError
from kestrel.feast_codec import (
    ENCODERS,
    RESP_ENCODERS,
    FeatureValue,
    feature_field,
    key_prefix,
    resp_column,
    resp_timestamp_rows,
    timestamp_bytes,
    timestamp_field,
    timestamp_parts,
    u32,
)
from kestrel.resp import (
    Ragged,
    RespTransaction,
    bulk,
    bulk_arg,
    byte_matrix,
    decimal_rows,
    join_rows,
    ragged,
)
from kestrel.settings import Settings
from pipelines.features.key_ttl import KeyTtlRefresh
from pipelines.features.store import load_repo, repo_config

Row = tuple[str, Mapping[str, FeatureValue], datetime | int]
"""(entity value, {feature: value}, event time as a datetime or as µs since the epoch, UTC).
A naive datetime is taken as UTC, as Feast does."""
Column = Sequence[FeatureValue] | np.ndarray
"""A feature's values for a block of rows: a list, or a numpy array (encoded in bulk)."""


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
        self.ts_field = timestamp_field(self.view_name)
        self._project = config.project.encode()
        self._key_prefix = key_prefix(self.join_key)
        self._fields: dict[str, tuple[bytes, Callable[[FeatureValue], bytes]]] = {}
        for feature in view.features:
            encoder = ENCODERS.get(feature.dtype)
            if encoder is None:
                raise ConfigError(f"{view.name}.{feature.name}: type {feature.dtype} is not "
                                  "supported by OnlineWriter (Int64, Float64)")
            self._fields[feature.name] = (feature_field(self.view_name, feature.name),
                                          encoder)
        self._ttl_arg = str(self.key_ttl_seconds).encode()
        # RESP templates for RespTransaction: "$4\r\n<field>\r\n" per feature
        self._resp_fields = {name: (bulk(f), RESP_ENCODERS[encoder]) for name, (f, encoder)
                             in self._fields.items()}
        self._resp_ts_field = bulk(self.ts_field)

    @classmethod
    def for_view(cls, store: FeatureStore, view_name: str, *, dedup: bool | None = None,
                 overwrite_equal: bool = False) -> ViewWriter:
        """A writer for a view as the store's registry defines it."""
        return cls(store.config, store.get_feature_view(view_name), dedup=dedup,
                   overwrite_equal=overwrite_equal)

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self._fields)

    def field(self, feature: str) -> bytes:
        """The hash field ``feature`` is stored under (KeyError for a feature the view does
        not have)."""
        return self._fields[feature][0]

    def key(self, entity_value: str) -> bytes:
        """The Redis key of an entity: serialized entity key + project."""
        value = entity_value.encode()
        return self._key_prefix + u32(len(value)) + value + self._project

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
            ts = timestamp_bytes(seconds, nanos)
            value = entity_value.encode()
            key = prefix + u32(len(value)) + value + project
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
            ts = timestamp_bytes(seconds, nanos)
            value = entity_value.encode()
            key = bulk(prefix + u32(len(value)) + value + project)
            parts = [b"*%d\r\n$4\r\nHSET\r\n" % (4 + 2 * len(features)), key, ts_field,
                     bulk(ts)]
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
                out.append(b"*3\r\n$6\r\nEXPIRE\r\n" + key + bulk_arg(ttl))
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
        byte matrix, and the rows are read out of it at once (join_rows): no Python object
        per row or per value. With a key TTL, each row's EXPIRE follows its HSET, or,
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
            pieces += [field, resp_column(values, encode)]
        queued = n
        if self.key_ttl_seconds and refresh is None:
            pieces += [b"*3\r\n$6\r\nEXPIRE\r\n", *key, bulk_arg(self.key_ttl_seconds)]
            queued += n
        tx.raw(join_rows(n, pieces), queued)
        if self.key_ttl_seconds and refresh is not None:
            due = [k for k, d in zip(keys, refresh.due(keys).tolist(), strict=True) if d]
            if due:
                tx.raw(join_rows(len(due), [b"*3\r\n$6\r\nEXPIRE\r\n",
                                             *self._resp_keys(due), bulk_arg(refresh.ttl)]),
                       len(due))
                queued += len(due)
        return queued

    def _resp_keys(self, keys: Sequence[str]) -> list[bytes | Ragged]:
        """The pieces of each key's RESP bulk string: "$<length>\\r\\n", the serialized
        entity key (prefix, u32 length, value) and the project, "\\r\\n"."""
        n = len(keys)
        try:  # identifiers are ASCII: numpy encodes them all at once
            value: Ragged = (byte_matrix(np.array(keys, dtype="S")),
                             np.fromiter(map(len, keys), np.int64, n))
        except UnicodeEncodeError:
            value = ragged([k.encode() for k in keys])
        lengths = value[1]
        fixed = len(self._key_prefix) + 4 + len(self._project)
        length = lengths.astype("<u4").view(np.uint8).reshape(n, 4)
        return [b"$", decimal_rows(fixed + lengths), b"\r\n" + self._key_prefix,
                (length, np.full(n, 4)), value, self._project + b"\r\n"]


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
