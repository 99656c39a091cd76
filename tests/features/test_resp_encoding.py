"""The online writer's bulk encoders give the bytes of its per-value ones (which
test_feature_repo ties to what Feast itself stores)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from kestrel.windows import feature_names, stream_view_name
from pipelines.features.online_writer import (
    OnlineWriter,
    RespTransaction,
    _bulk,
    _timestamp_bytes,
    resp_double,
    resp_double_array,
    resp_int64,
    resp_int64_array,
    resp_timestamps,
    timestamp_parts,
)
from tests.conftest import make_settings

EDGE_INTS = [0, 1, 127, 128, 16_383, 16_384, 2**21 - 1, 2**21, 2**28, 2**35, 2**49, 2**56,
             2**63 - 1, 1_700_000_000_123_456, -1, -5, -(2**31), -(2**63)]


def test_int64_column_bytes_equal_the_per_value_encoder() -> None:
    rng = random.Random(7)
    values = EDGE_INTS + [rng.randint(-(2**63), 2**63 - 1) for _ in range(3000)] \
        + [rng.randint(0, 20_000) for _ in range(3000)]
    assert resp_int64_array(np.array(values, dtype=np.int64)) == [resp_int64(v)
                                                                  for v in values]
    assert resp_int64_array(np.zeros(0, dtype=np.int64)) == []


def test_double_column_bytes_equal_the_per_value_encoder() -> None:
    rng = random.Random(8)
    values = [0.0, -0.0, 1.5, 12.34, 1e300, -1e-300, 5e-324, float("inf"), float("-inf"),
              float("nan")] + [rng.uniform(-1e6, 1e6) for _ in range(3000)]
    assert resp_double_array(np.array(values)) == [resp_double(v) for v in values]
    assert resp_double_array(np.array([float("nan")] * 3)) == [b"$0\r\n\r\n"] * 3


def test_timestamps_bytes_equal_the_per_value_encoder() -> None:
    rng = random.Random(9)
    times = [1_700_000_000_000_000, 1_700_000_000_000_001, 1_522_540_809_118_047,
             1_522_540_809_000_000] + [rng.randint(300_000_000 * 10**6, 2**34 * 10**6)
                                       for _ in range(3000)]
    assert resp_timestamps(np.array(times)) == [
        _bulk(_timestamp_bytes(*timestamp_parts(t))) for t in times]


def test_add_columns_queues_the_same_bytes_from_arrays_and_lists(tmp_path: Path) -> None:
    """What the stream passes (numpy columns, as compute() returns them) against lists."""
    writer = OnlineWriter(make_settings(tmp_path / "var")).view(stream_view_name("card"))
    names = feature_names("card")
    rng = np.random.default_rng(3)
    n = 50
    arrays = {name: rng.uniform(-90, 90, n) if "sum" in name or name.endswith(("lat", "lon"))
              else rng.integers(0, 40_000, n) for name in names}
    arrays["card_last_event_time_us"] = rng.integers(1_500_000_000, 1_800_000_000, n) * 10**6
    keys = [f"card-{i}" for i in range(n)]
    times = rng.integers(1_500_000_000, 1_800_000_000, n) * 10**6 + 17
    from_arrays, from_lists = RespTransaction(), RespTransaction()
    writer.add_columns(from_arrays, keys, arrays, times)
    writer.add_columns(from_lists, keys, {k: v.tolist() for k, v in arrays.items()},
                       times.tolist())
    assert from_arrays._parts == from_lists._parts and from_arrays._parts
