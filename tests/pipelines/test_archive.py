"""produce → archive → read back, against a real broker (one fresh broker per test)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer

from kestrel.kafka import consumer_config
from kestrel.lake import list_files, read_table
from kestrel.lake_commit import CommitLog
from kestrel.producer import EventProducer
from kestrel.services import BROKER, free_port, start_broker, stop
from kestrel.settings import Settings
from kestrel.topics import TRANSACTIONS, TRANSACTIONS_DLQ
from pipelines.archive import Archiver
from tests.conftest import env_for
from tests.pipelines.events_factory import encode, make_event

pytestmark = pytest.mark.integration


def produce(settings: Settings, events: list[dict], extra: list[bytes] = ()) -> None:  # type: ignore[assignment]
    producer = EventProducer(settings)
    producer.produce_many(TRANSACTIONS, ((e["customer_id"], encode(e)) for e in events))
    for raw in extra:
        producer.produce(TRANSACTIONS, b"bad", raw)
    producer.flush()


def archive_until_idle(settings: Settings, idle: float = 2.0) -> Archiver:
    archiver = Archiver(settings)
    worker = threading.Thread(target=archiver.run, kwargs={"idle_seconds": idle})
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "archiver did not stop"
    return archiver


def lake_ids(settings: Settings) -> list[str]:
    return read_table(settings.lake_dir, "transactions", columns=["txn_id"]).column(0).to_pylist()


def read_topic(settings: Settings, topic: str, expected: int, timeout: float = 30) -> list:
    """Every record of a topic: at least ``expected``, then until the topic goes quiet."""
    consumer = Consumer(consumer_config(settings, f"test-reader-{time.time_ns()}"))
    consumer.subscribe([topic])
    out: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [m for m in consumer.consume(1000, 0.5) if m.error() is None]
        out += got
        if len(out) >= expected and not got:
            break
    consumer.close()
    return out


def test_produce_archive_read_back_equals_what_was_sent(services: Settings) -> None:
    events = [make_event(i, day=i % 3) for i in range(6000)]
    produce(services, events)
    archiver = archive_until_idle(services)
    table = read_table(services.lake_dir, "transactions")
    assert table.num_rows == len(events)
    got = {r["txn_id"]: r for r in table.to_pylist()}
    for e in events[::97]:
        row = got[e["txn_id"]]
        assert row["amount"] == e["amount"]
        assert row["card_id"] == e["card_id"]
        assert row["event_time"].isoformat().replace("+00:00", "Z") == e["event_time"]
        assert row["event_date"] == e["event_time"][:10]
    assert sorted({r["event_date"] for r in got.values()}) == [
        "2018-04-01", "2018-04-02", "2018-04-03"]
    assert archiver.stats.written == 6000 and archiver.stats.invalid == 0
    # offsets are stored with the data and (advisory) in Kafka
    assert sum(CommitLog(services.lake_dir, TRANSACTIONS).checkpoint().offsets.values()) == 6000


def test_invalid_records_go_to_the_dlq_with_reasons_and_never_stop_it(
    services: Settings,
) -> None:
    good = [make_event(i) for i in range(300)]
    pan_event = {**make_event(99_999), "card_number": "4111 1111 1111 1111"}
    bad = [b"not json", encode({**make_event(10_001), "amount": -5}),
           encode({**make_event(10_002), "schema_version": 2}), encode(pan_event), b""]
    produce(services, good, bad)
    archiver = archive_until_idle(services)
    assert sorted(lake_ids(services)) == sorted(e["txn_id"] for e in good)
    assert archiver.stats.invalid == len(bad)
    dlq = read_topic(services, TRANSACTIONS_DLQ, len(bad))
    assert len(dlq) == len(bad)
    docs = [orjson.loads(m.value()) for m in dlq]
    paths = {e["path"] for d in docs for e in d["errors"]}
    assert {"$", "amount", "schema_version", "card_number"} <= paths
    for m in dlq:
        assert b"4111" not in m.value()
    assert all(d["source"]["topic"] == TRANSACTIONS for d in docs)


def test_duplicate_txn_ids_are_archived_once(services: Settings) -> None:
    events = [make_event(i) for i in range(500)]
    produce(services, events + events[:100])  # a client retry, in the same run
    archive_until_idle(services)
    produce(services, events[200:300] + [make_event(i) for i in range(500, 520)])  # later
    archive_until_idle(services)
    ids = lake_ids(services)
    assert len(ids) == len(set(ids)) == 520


def test_kill_9_and_restart_lose_and_duplicate_nothing(services: Settings) -> None:
    events = [make_event(i, day=i % 4) for i in range(60_000)]
    produce(services, events)
    env = env_for(services) | {"KESTREL_ARCHIVE_BATCH_RECORDS": "2500"}
    checkpoint = CommitLog(services.lake_dir, TRANSACTIONS)
    kills = 0
    for kill_after in (7_500, 25_000, 40_000):
        proc = subprocess.Popen([sys.executable, "-m", "cli", "archive"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = sum(checkpoint.checkpoint().offsets.values())
            if done >= kill_after or proc.poll() is not None:
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        assert sum(checkpoint.checkpoint().offsets.values()) < len(events), "killed too late"
    final = subprocess.run([sys.executable, "-m", "cli", "archive", "--idle-seconds", "3"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    ids = lake_ids(services)
    assert kills == 3
    assert len(ids) == len(set(ids)), "duplicates after crash"
    assert set(ids) == {e["txn_id"] for e in events}, "events lost after crash"
    assert not any(p.name.startswith(".") for p in Path(services.lake_dir).rglob("*.tmp"))


def test_broker_restart_with_replayed_events_adds_only_new_ones(
    services: Settings, tmp_path: Path
) -> None:
    first = [make_event(i) for i in range(1000)]
    produce(services, first)
    archive_until_idle(services)
    stop(services, BROKER)
    # a new broker (memory storage: empty topics, offsets from zero) fed a replay + new events
    again = services.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    start_broker(again)
    try:
        produce(again, first[:500] + [make_event(i) for i in range(1000, 1200)])
        archive_until_idle(again)
    finally:
        stop(again, BROKER)
    ids = lake_ids(services)
    assert len(ids) == len(set(ids)) == 1200


def test_lake_files_are_parquet_with_the_contract_schema(services: Settings) -> None:
    produce(services, [make_event(i) for i in range(50)])
    archive_until_idle(services, idle=1.5)
    files = list_files(services.lake_dir, "transactions")
    assert files
    schema = pq.read_schema(files[0])
    assert schema.field("event_time").type.tz == "UTC"
    assert "card_number" not in schema.names


def test_simulate_to_lake_skips_events_the_archiver_already_wrote(services: Settings) -> None:
    from kestrel.pan import CardTokenizer
    from pipelines.simulator.config import SimulationConfig
    from pipelines.simulator.to_kafka import stream_to_kafka
    from pipelines.simulator.to_lake import write_to_lake
    from tests.conftest import TEST_SECRET

    tokenize = CardTokenizer(TEST_SECRET.encode()).token
    streamed = SimulationConfig(customers=300, terminals=600, days=2)
    sent = stream_to_kafka(streamed, services, tokenize, with_labels=False)
    archive_until_idle(services)
    longer = SimulationConfig(customers=300, terminals=600, days=3)  # same population
    summary = write_to_lake(longer, services.lake_dir, tokenize)
    assert summary.already_in_lake == sent.transactions
    ids = lake_ids(services)
    assert len(ids) == len(set(ids)) == summary.transactions
