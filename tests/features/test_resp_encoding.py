"""The codec's and the online writer's bulk encoders give the bytes of their per-value ones
(which test_feature_repo ties to what Feast itself stores), and what the codec encodes it
decodes back, as Feast's own reader does."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from kestrel.feast_codec import (
    resp_double,
    resp_double_array,
    resp_int64,
    resp_int64_array,
    resp_timestamps,
    timestamp_bytes,
    timestamp_parts,
)
from kestrel.resp import RespTransaction, bulk, decimal_rows, resp_command, resp_keys_command
from kestrel.windows import feature_names, stream_view_name
from pipelines.features.online_writer import OnlineWriter
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
        bulk(timestamp_bytes(*timestamp_parts(t))) for t in times]


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
    assert from_arrays.payload() == from_lists.payload() and from_arrays.payload()


@pytest.mark.parametrize("ttl", [0, 3600])
def test_add_columns_queues_the_bytes_of_add_row_by_row(tmp_path: Path, ttl: int) -> None:
    """The bulk path (rows read out of one byte matrix) against the per-row path, on keys of
    varied lengths (non-ASCII ones too), missing values, integers of every varint length and
    times with and without a fraction; with a key TTL of its own and the default one, the
    feature retention (EXPIRE per row)."""
    settings = make_settings(tmp_path / "var", **(
        {"feast_online_key_ttl_seconds": ttl} if ttl else {}))
    for entity in ("card", "customer", "terminal"):
        writer = OnlineWriter(settings, dedup=False).view(stream_view_name(entity))
        names = feature_names(entity)
        rng = random.Random(len(entity) + ttl)
        n = 400
        keys = [rng.choice(["c", f"card_{rng.getrandbits(128):032x}", f"kü-{i}",
                            "x" * rng.randint(1, 80)]) for i in range(n)]
        columns: dict[str, list[int | float | None]] = {}
        for name in names:
            ints = rng.choice([*EDGE_INTS, 0, 3, 200])
            columns[name] = [None if rng.random() < 0.05 else
                             (rng.choice([ints, rng.randint(0, 20_000)]) if "count" in name
                              or name.endswith("_us") or "distinct" in name
                              else rng.choice([float("nan"), rng.uniform(-1e6, 1e6)]))
                             for _ in range(n)]
        times = [rng.choice([1_522_540_809_000_000, 1_522_540_809_118_047,
                             rng.randint(300_000_000 * 10**6, 2**34 * 10**6)])
                 for _ in range(n)]
        by_columns, per_row = RespTransaction(), RespTransaction()
        queued = writer.add_columns(by_columns, keys, columns, times)
        writer.add(per_row, [(k, {name: columns[name][i] for name in names}, times[i])
                             for i, k in enumerate(keys)])
        assert by_columns.payload() == per_row.payload(), entity
        # EXPIRE per row: a key TTL of its own, or the default, the feature retention
        assert queued == by_columns.commands == per_row.commands == n * 2
        # numpy columns (the stream's): NaN for a missing double, 0 for a missing integer
        arrays = {name: np.array([float("nan") if v is None else v for v in values])
                  if any(isinstance(v, float) for v in values)
                  else np.array([0 if v is None else v for v in values], dtype=np.int64)
                  for name, values in columns.items()}
        from_arrays, reference = RespTransaction(), RespTransaction()
        writer.add_columns(from_arrays, keys, arrays, np.array(times))
        writer.add(reference, [(k, {name: arrays[name][i].item() for name in names}, times[i])
                               for i, k in enumerate(keys)])
        assert from_arrays.payload() == reference.payload(), entity
    empty = RespTransaction()
    assert writer.add_columns(empty, [], {name: [] for name in names}, []) == 0


def test_decimal_rows_are_the_digits_of_each_number() -> None:
    values = np.array([0, 7, 9, 10, 99, 100, 12_345, 10**17, 2**62], dtype=np.int64)
    matrix, lengths = decimal_rows(values)
    assert [bytes(row[:length]) for row, length in zip(matrix, lengths, strict=True)] == [
        b"%d" % v for v in values.tolist()]


def test_a_command_over_keys_built_with_arrow_is_resp_command() -> None:
    ids = ["c1", "kü", "x" * 300, ""]
    got = resp_keys_command(b"DEL", lambda i: f"insight:user:{i}:v3", pa.array(ids))
    assert got == resp_command("DEL", *[f"insight:user:{i}:v3" for i in ids])
    assert resp_keys_command(b"DEL", str, pa.array([], pa.string())) == resp_command("DEL")
    with pytest.raises(ValueError, match="once"):
        resp_keys_command(b"DEL", lambda i: f"{i}{i}", pa.array(ids))
