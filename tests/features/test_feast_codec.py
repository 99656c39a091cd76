"""Feast's value and timestamp codec, both directions: what kestrel/feast_codec.py encodes it
decodes back, Feast's own reader reads it the same, and what Feast encodes the codec decodes.

No Redis here (test_feature_repo.py writes through Redis and reads back through Feast)."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import hiredis
import numpy as np
import pytest
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
from feast.utils import make_tzaware
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from kestrel.feast_codec import (
    ValueDecoder,
    decode_timestamp,
    decode_value,
    encode_double,
    encode_int64,
    resp_double_array,
    resp_int64_array,
    resp_timestamps,
    timestamp_bytes,
    timestamp_parts,
)

INTS = [0, 1, 127, 128, 16_383, 16_384, 2**21, 2**35, 2**53, 2**63 - 1, -1, -5, -(2**31),
        -(2**63), 1_700_000_000_123_456]
DOUBLES = [0.0, -0.0, 1.5, -2.25, 12.34, 1e308, -1e-300, 5e-324, math.inf, -math.inf]


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _bulk_strings(payload: bytes, count: int) -> list[bytes]:
    """RESP bulk strings parsed back by hiredis (the reader redis-py and Redis agree with)."""
    reader = hiredis.Reader()
    reader.feed(payload)
    out = [reader.gets() for _ in range(count)]
    assert reader.gets() is False  # nothing left over
    return out


@pytest.mark.parametrize("value", [0, 1, 127, 128, 16_383, 16_384, 2**40, -5])
def test_decode_int64_matches_feast(value: int) -> None:
    raw = encode_int64(value)
    assert raw == ValueProto(int64_val=value).SerializeToString()
    assert decode_value(raw) == float(value)


def test_decode_double_and_missing() -> None:
    assert decode_value(encode_double(3.25)) == 3.25
    assert math.isnan(decode_value(b"")) and math.isnan(decode_value(None))
    assert decode_value(ValueProto(float_val=1.5).SerializeToString()) == 1.5


def test_values_round_trip_through_the_codec_and_through_feasts_reader() -> None:
    rng = random.Random(11)
    ints = INTS + [rng.randint(-(2**63), 2**63 - 1) for _ in range(500)]
    doubles = DOUBLES + [rng.uniform(-1e9, 1e9) for _ in range(500)]
    for v in ints:
        raw = encode_int64(v)
        assert decode_value(raw) == float(v)
        assert feast_value_type_to_python_type(ValueProto.FromString(raw)) == v
    for x in doubles:
        raw = encode_double(x)
        assert decode_value(raw) == x
        assert feast_value_type_to_python_type(ValueProto.FromString(raw)) == x
    for missing in (None, math.nan):  # the empty Value: NaN to the codec, None to Feast
        for raw in (encode_int64(missing), encode_double(missing)):
            assert math.isnan(decode_value(raw))
            assert feast_value_type_to_python_type(ValueProto.FromString(raw)) is None


def test_values_feast_encodes_are_decoded() -> None:
    for v in INTS:
        [proto] = python_values_to_proto_values([v], ValueType.INT64)
        assert decode_value(proto.SerializeToString()) == float(v)
    for x in [*DOUBLES, math.nan]:
        [proto] = python_values_to_proto_values([x], ValueType.DOUBLE)
        assert _same(decode_value(proto.SerializeToString()), x)


def test_array_encoders_decode_back_to_the_column() -> None:
    """The RESP framing of the array paths parses back to values that decode to the column."""
    rng = np.random.default_rng(12)
    ints = np.array(INTS + rng.integers(-(2**40), 2**40, 300).tolist(), dtype=np.int64)
    doubles = np.concatenate([DOUBLES, [math.nan], rng.uniform(-1e6, 1e6, 300)])
    got_ints = _bulk_strings(b"".join(resp_int64_array(ints)), len(ints))
    assert [decode_value(r) for r in got_ints] == [float(v) for v in ints.tolist()]
    got_doubles = _bulk_strings(b"".join(resp_double_array(doubles)), len(doubles))
    assert all(_same(decode_value(r), x)
               for r, x in zip(got_doubles, doubles.tolist(), strict=True))


@pytest.mark.parametrize("when", [
    datetime(2024, 6, 1, 23, 30, tzinfo=UTC),
    datetime(2024, 6, 1, 23, 30, 0, 123456, tzinfo=UTC),
    datetime(2024, 6, 1, 23, 30, 0, 1),  # naive: UTC, as Feast assumes
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(1970, 1, 1, 0, 0, 0, 5, tzinfo=UTC),
])
def test_timestamps_round_trip_and_are_feasts_bytes(when: datetime) -> None:
    ts = Timestamp()
    ts.FromDatetime(make_tzaware(when))
    parts = timestamp_parts(when)
    raw = timestamp_bytes(*parts)
    assert raw == ts.SerializeToString()
    assert decode_timestamp(raw) == parts == (ts.seconds, ts.nanos)


@pytest.mark.parametrize("array_path", [True, False])
def test_timestamp_columns_round_trip(array_path: bool) -> None:
    """Times of 1978 … 3058 take the array path, others the per-value one."""
    rng = random.Random(13)
    times = [1_522_540_809_000_000, 1_700_000_000_000_001] + [
        rng.randint(300_000_000 * 10**6, 2**34 * 10**6) for _ in range(500)]
    if not array_path:
        times += [0, 1, 999_999]
    raws = _bulk_strings(b"".join(resp_timestamps(np.array(times))), len(times))
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for t, raw in zip(times, raws, strict=True):
        seconds, nanos = decode_timestamp(raw)
        assert seconds * 1_000_000 + nanos // 1000 == t
        stamp = Timestamp.FromString(raw)  # what Feast reads the event time with
        assert stamp.ToDatetime(tzinfo=UTC) == epoch + timedelta(microseconds=t)


def test_the_decoder_memo_equals_decode_and_stays_bounded() -> None:
    decoder = ValueDecoder(max_entries=50)
    raws: list[bytes | None] = [encode_int64(v) for v in range(120)]
    raws += [encode_double(v / 7) for v in range(120)]
    raws += [b"", None, ValueProto(float_val=1.5).SerializeToString()]
    for _ in range(2):  # the second pass reads the memo
        for raw in raws:
            assert _same(decoder.decode(raw), decode_value(raw))
            assert len(decoder) <= 50
        many = decoder.decode_many(raws)  # the batch path: memo hits by map, misses decoded
        assert [str(v) for v in many] == [str(decode_value(r)) for r in raws]
        assert len(decoder) <= 50
    warm = ValueDecoder()
    first = [str(v) for v in warm.decode_many(raws)]
    assert [str(v) for v in warm.decode_many(raws)] == first  # all hits: the same values
    assert len(warm) == len(set(raws))
