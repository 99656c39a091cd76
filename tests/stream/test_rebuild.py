"""A longer window than the restored state was kept for: its span is rebuilt from the lake
(pipelines/stream/rebuild.py), with a real broker and Redis; and a late duplicate of an
expired entity's event is not applied twice."""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pytest
import redis

import kestrel.features
from kestrel.features import FEATURES, Feature
from kestrel.pan import CardTokenizer
from kestrel.producer import EventProducer
from kestrel.settings import Settings
from kestrel.topics import TRANSACTIONS, TRANSACTIONS_BY_TERMINAL, TRANSACTIONS_LATE
from kestrel.windows import stream_view_name
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.generator import iter_days
from pipelines.simulator.to_kafka import transaction_records
from pipelines.simulator.to_lake import write_to_lake
from pipelines.stream import changelog
from pipelines.stream.offline_log import log_dir, open_log
from pipelines.stream.processor import StreamProcessor
from tests.conftest import TEST_SECRET
from tests.pipelines.events_factory import make_event
from tests.pipelines.test_archive import produce, read_topic
from tests.stream.feature_reference import compare, expected_rows, prepare
from tests.stream.test_processor import offline_rows, run_stream, stream_settings

__all__ = ["stream_settings"]  # the fixture, imported for these tests

pytestmark = pytest.mark.integration
H48 = timedelta(hours=48)
LONGER = (Feature("card", "count", window=H48), Feature("card", "sum", "amount", window=H48),
          Feature("customer", "count", window=H48),
          Feature("customer", "distinct", "mcc", window=H48),
          Feature("terminal", "count", window=H48))
NEW_NAMES = {e: [f.name for f in LONGER if f.entity == e]
             for e in ("card", "customer", "terminal")}
DAY_US = 86_400 * 1_000_000


class _Sink:
    """An online sink that takes any feature (the Feast repo knows only the declared ones;
    these tests read the offline log)."""

    def write(self, pipe: Any, view: str, rows: Any) -> None:
        pass

    def write_columns(self, pipe: Any, view: str, keys: Any, columns: Any,
                      times_us: Any) -> None:
        pass


def _run(settings: Settings) -> StreamProcessor:
    proc = StreamProcessor(settings, _Sink())
    worker = threading.Thread(target=proc.run, kwargs={"idle_seconds": 2.5})
    worker.start()
    worker.join(300)
    assert not worker.is_alive(), "stream did not stop"
    return proc


def _days(config: SimulationConfig) -> list[pa.Table]:
    tokenize = CardTokenizer(TEST_SECRET.encode()).token
    return [b.transactions for b in iter_days(config, tokenize)]


def _send(settings: Settings, tables: list[pa.Table]) -> int:
    producer = EventProducer(settings)
    sent = sum(producer.produce_many(TRANSACTIONS, transaction_records(t)) for t in tables)
    producer.flush(timeout=120)
    return sent


@pytest.fixture
def often(stream_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Small batches and a tiny snapshot threshold: the restart starts from a snapshot."""
    monkeypatch.setattr(changelog, "SNAPSHOT_EVENTS", 20)
    return stream_settings.model_copy(update={"stream_batch_records": 500})


@pytest.fixture
def warnings() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("kestrel.stream")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def _longer_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a data scientist does in kestrel/features/definitions.py: 48 h windows, where
    the longest was 24 h."""
    monkeypatch.setattr(kestrel.features, "FEATURES", (*FEATURES, *LONGER))


def _snapshots(settings: Settings) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(settings.redis_url)
    keys = client.scan_iter(match=changelog.snapshot_key("kestrel-stream", "*", "*"))  # type: ignore[arg-type]
    return [orjson.loads(client.get(k)) for k in keys]  # type: ignore[arg-type]


def _partition(key: str, settings: Settings) -> int:
    return zlib.crc32(key.encode()) % settings.transactions_partitions


def test_a_longer_window_is_rebuilt_from_the_lake(
        often: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    config = SimulationConfig(customers=120, terminals=240, days=3)
    days = _days(config)
    sent = _send(often, days[:2])
    first = run_stream(often)
    assert first.stats.applied == sent
    assert _snapshots(often), "no snapshot was written: the restart would replay everything"
    write_to_lake(config, often.lake_dir, CardTokenizer(TEST_SECRET.encode()).token)
    _longer_spec(monkeypatch)

    # the restored state holds the longer span: every event of its partition within it
    restored = StreamProcessor(often, _Sink())
    for topic in (TRANSACTIONS, TRANSACTIONS_BY_TERMINAL):
        for part in range(often.transactions_partitions):
            restored.restore_partition(topic, part)
    assert restored.stats.rebuilt > 0
    events = pa.concat_tables(days[:2]).to_pandas()
    events["t"] = events["event_time"].dt.as_unit("us").astype("int64")
    routed = {"card": "customer_id", "customer": "customer_id", "terminal": "terminal_id"}
    for entity, tables in restored.partitions.tables.items():
        held_older = 0
        for part, table in tables.items():
            kept = table.kept_us
            assert kept >= 48 * 3600 * 1_000_000
            mine = events[[_partition(k, often) == part for k in events[routed[entity]]]]
            want = mine[(mine.t > table.clock - kept) & (mine.t <= table.clock)]
            assert set(table.txn.tolist()) == set(want.txn_id), (entity, part)
            held_older += int((want.t <= table.clock - 25 * 3600 * 1_000_000).sum())
        assert held_older, f"no {entity} event older than the old horizon was rebuilt"

    # after the restart, the 48 h features equal an independent computation over all events
    day3 = _send(often, days[2:])
    second = _run(often)
    assert second.stats.applied == day3
    assert second.stats.rebuilt > 0
    snaps = _snapshots(often)
    assert all(kept >= 48 * 3600 * 1_000_000 for s in snaps
               for kept, *_ in s[changelog.KEPT].values())
    reference = prepare(pa.concat_tables(days).to_pandas())
    start = pd.Timestamp(config.start, tz="UTC").value // 1000 + 2 * DAY_US  # the 3rd day
    for entity, names in NEW_NAMES.items():
        key = f"{entity}_id"
        rows = open_log(log_dir(often.var_dir) / stream_view_name(entity),  # type: ignore[arg-type]
                        columns=names).to_table().to_pandas()
        rows = rows.sort_values("created").groupby([key, "event_timestamp"]).tail(1)
        rows["time_us"] = rows["event_timestamp"].dt.as_unit("us").astype("int64")
        actual = rows[rows.time_us >= start]
        expected = expected_rows(reference, entity, [f for f in LONGER if f.entity == entity])
        expected = expected[expected.time_us >= start]
        assert len(actual) > 100
        assert compare(expected, actual, entity, names, tolerance=1e-6) == {}, entity


def test_a_feature_reading_a_new_event_field_rebuilds_from_the_lake(
        often: Settings, monkeypatch: pytest.MonkeyPatch,
        warnings: list[logging.LogRecord]) -> None:
    """A card's first feature of the mcc: the snapshot's card events hold no mcc, so they
    cannot be loaded; the card state is rebuilt from the lake and the feature is right."""
    config = SimulationConfig(customers=120, terminals=240, days=3)
    days = _days(config)
    _send(often, days[:2])
    run_stream(often)
    write_to_lake(config, often.lake_dir, CardTokenizer(TEST_SECRET.encode()).token)
    mcc = Feature("card", "distinct", "mcc", window=timedelta(hours=24))
    monkeypatch.setattr(kestrel.features, "FEATURES", (*FEATURES, mcc))
    day3 = _send(often, days[2:])
    proc = _run(often)
    assert proc.stats.applied == day3 and proc.stats.rebuilt > 0
    assert any("lacks event fields" in r.getMessage() for r in warnings)
    reference = prepare(pa.concat_tables(days).to_pandas())
    start = pd.Timestamp(config.start, tz="UTC").value // 1000 + 2 * DAY_US
    rows = open_log(log_dir(often.var_dir) / stream_view_name("card"),
                    columns=[mcc.name]).to_table().to_pandas()
    rows = rows.sort_values("created").groupby(["card_id", "event_timestamp"]).tail(1)
    rows["time_us"] = rows["event_timestamp"].dt.as_unit("us").astype("int64")
    actual = rows[rows.time_us >= start]
    expected = expected_rows(reference, "card", [mcc])
    assert len(actual) > 100
    assert compare(expected[expected.time_us >= start], actual, "card", [mcc.name],
                   tolerance=0) == {}


def test_without_the_lake_a_warning_and_the_stream_runs_on(
        often: Settings, monkeypatch: pytest.MonkeyPatch,
        warnings: list[logging.LogRecord]) -> None:
    config = SimulationConfig(customers=60, terminals=120, days=2)
    days = _days(config)
    sent = _send(often, days[:1])
    assert run_stream(often).stats.applied == sent
    _longer_spec(monkeypatch)
    later = _send(often, days[1:])
    proc = _run(often)
    assert proc.stats.applied == later  # it did not stop
    assert proc.stats.rebuilt == 0
    said = [r.getMessage() for r in warnings]
    assert any("kestrel archive" in m and "lacks" in m for m in said), said
    # the next snapshots record that the state does not yet hold the 48 h: a restart with
    # the lake filled in tries again
    kept = [k for s in _snapshots(often) for k, *_ in s[changelog.KEPT].values()]
    assert kept and min(kept) < 48 * 3600 * 1_000_000


def test_a_late_duplicate_of_an_expired_entity_is_not_applied_twice(
        stream_settings: Settings) -> None:
    """An entity idle longer than the horizon plus the lateness is expired from the state
    (its txn_ids with it); a duplicate of one of its events arriving then is late for the
    partition's stream time and goes to `transactions.late`, not into the state again."""
    s = stream_settings
    idle = {**make_event(1), "customer_id": "C-IDLE", "card_id": "card-idle"}
    part = _partition("C-IDLE", s)
    other = next(f"C{i:05d}" for i in range(10_000) if _partition(f"C{i:05d}", s) == part)
    later = [{**make_event(100 + i, day=i // 3), "customer_id": other, "card_id": "card-other",
              "event_time": f"2018-04-0{2 + i // 3}T0{i % 3 * 3}:00:00Z"} for i in range(6)]
    produce(s, [idle, *later])  # the other customer's events reach 2018-04-03 06:00
    first = run_stream(s)
    assert first.stats.applied == 7
    assert first.stats.expired >= 2  # the idle customer and its card
    restarted = StreamProcessor(s, _Sink())
    restarted.restore_partition(TRANSACTIONS, part)
    assert "C-IDLE" not in restarted.partitions.tables["customer"][part].index
    assert "card-idle" not in restarted.partitions.tables["card"][part].index

    produce(s, [idle])  # the duplicate, after the entity expired
    second = run_stream(s)
    assert (second.stats.applied, second.stats.late, second.stats.duplicates) == (0, 1, 0)
    late = read_topic(s, TRANSACTIONS_LATE, expected=1)
    assert [orjson.loads(m.value())["txn_id"] for m in late] == [idle["txn_id"]]
    rows = offline_rows(s, "customer")
    assert len(rows[rows.customer_id == "C-IDLE"]) == 1
    assert rows[rows.customer_id == other].event_timestamp.is_unique
