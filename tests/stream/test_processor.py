"""The stream processor against a real broker and the tests' own Redis."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from kestrel.features import FEATURES
from kestrel.pan import CardTokenizer
from kestrel.producer import EventProducer
from kestrel.redis_keys import insight_cache_key
from kestrel.services import free_port
from kestrel.settings import Settings
from kestrel.topics import (
    ALERTS,
    TRANSACTIONS,
    TRANSACTIONS_BY_TERMINAL,
    TRANSACTIONS_DLQ,
    TRANSACTIONS_LATE,
    partitions_for,
)
from kestrel.windows import stream_view_name
from pipelines.features.online_writer import OnlineWriter
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.generator import iter_days
from pipelines.simulator.to_kafka import stream_to_kafka, transaction_records
from pipelines.stream.changelog import group_prefix
from pipelines.stream.metrics import read_summaries
from pipelines.stream.offline_log import log_dir
from pipelines.stream.processor import GROUP_ID, StreamProcessor, offsets_key
from tests.conftest import TEST_SECRET, env_for
from tests.pipelines.events_factory import encode, make_event
from tests.pipelines.test_archive import produce, read_topic

pytestmark = pytest.mark.integration
_DBS = itertools.count(1)


@pytest.fixture
def stream_settings(services: Settings) -> Iterator[Settings]:
    """The test's broker plus a Redis database of its own (db 1, 2, … of the tests' server)."""
    base = services.redis_url.rsplit("/", 1)[0]
    db = next(_DBS) % 13 or 1  # 1 … 12; 14 and 15 are the clean runs
    s = services.model_copy(update={"redis_url": f"{base}/{db}", "stream_batch_ms": 100})
    redis.Redis.from_url(s.redis_url).flushdb()  # our own server, our own db
    yield s


def run_stream(settings: Settings, idle: float = 2.5) -> StreamProcessor:
    proc = StreamProcessor(settings, OnlineWriter(settings, dedup=False))
    worker = threading.Thread(target=proc.run, kwargs={"idle_seconds": idle})
    worker.start()
    worker.join(300)
    assert not worker.is_alive(), "stream did not stop"
    return proc


def offline_rows(settings: Settings, entity: str, latest: bool = True) -> pd.DataFrame:
    """The offline log of a view; by default only the newest version of each row (what
    Feast's point-in-time join reads)."""
    folder = log_dir(settings.var_dir) / stream_view_name(entity)  # type: ignore[arg-type]
    rows = ds.dataset(folder, format="parquet").to_table().to_pandas()
    if not latest:
        return rows
    key = rows.columns[0]
    return (rows.sort_values("created").groupby([key, "event_timestamp"]).tail(1)
            .reset_index(drop=True))


def simulated(config: SimulationConfig) -> pd.DataFrame:
    tokenize = CardTokenizer(TEST_SECRET.encode()).token
    return pa.concat_tables([b.transactions for b in iter_days(config, tokenize)]).to_pandas()


def test_online_store_holds_each_entitys_latest_row(stream_settings: Settings) -> None:
    from pipelines.features.store import apply, feature_store

    apply(stream_settings, echo=lambda _: None)
    config = SimulationConfig(customers=100, terminals=200, days=1)
    stream_to_kafka(config, stream_settings, CardTokenizer(TEST_SECRET.encode()).token,
                    with_labels=False)
    run_stream(stream_settings)
    rows = offline_rows(stream_settings, "card")
    latest = rows.sort_values(["event_timestamp", "created"]).groupby("card_id").tail(1)
    store = feature_store(stream_settings)
    cards = latest.card_id.tolist()[:20]
    names = [w.name for w in FEATURES if w.entity == "card"]
    got = store.get_online_features(
        features=[f"{stream_view_name('card')}:{n}" for n in names],
        entity_rows=[{"card_id": c} for c in cards]).to_dict()
    for i, card in enumerate(cards):
        want = latest[latest.card_id == card].iloc[0]
        for n in names:
            assert got[n][i] == pytest.approx(want[n]), (card, n)


def test_invalid_late_and_duplicate_events(stream_settings: Settings) -> None:
    events = [make_event(i) for i in range(50)]  # day 0, seconds 0 … 343
    stream_time_event = {**make_event(1000), "event_time": "2018-04-01T12:00:00Z",
                         "customer_id": events[0]["customer_id"]}
    late = {**make_event(1001), "event_time": "2018-04-01T11:40:00Z",
            "customer_id": events[0]["customer_id"]}
    produce(stream_settings, [*events, events[3], stream_time_event, late],
            [b"{not json", encode({**make_event(2000), "amount": 0})])
    proc = run_stream(stream_settings)
    s = proc.stats
    assert (s.applied, s.duplicates, s.invalid) == (51, 1, 2)
    # the late event shares the partition of the one at 12:00 (same customer): 20 min > 10 min
    assert s.late == 1
    assert len(read_topic(stream_settings, TRANSACTIONS_LATE, 1)) == 1
    dlq = [orjson.loads(m.value()) for m in read_topic(stream_settings, TRANSACTIONS_DLQ, 2)]
    assert {e["path"] for d in dlq for e in d["errors"]} >= {"$", "amount"}


def test_an_event_dated_in_the_future_is_dead_lettered_and_stalls_nothing(
        stream_settings: Settings) -> None:
    """A producer with a wrong clock: accepted, an event dated in 2099 would move its
    partition's stream time to 2099 and send every later on-time event of the partition to
    `transactions.late` (and the intake would hold the partition behind it). Dated more than
    the allowed lateness after the processor's clock, it goes to the DLQ instead."""
    customer = make_event(0)["customer_id"]  # one partition
    before = [{**make_event(i), "customer_id": customer} for i in range(5)]
    future = {**make_event(100), "customer_id": customer, "event_time": "2099-01-01T00:00:00Z"}
    after = [{**make_event(i), "customer_id": customer} for i in range(5, 10)]
    produce(stream_settings, [*before, future, *after])
    proc = run_stream(stream_settings)
    s = proc.stats
    assert (s.applied, s.late, s.invalid) == (10, 0, 1)
    (dlq,) = [orjson.loads(m.value()) for m in read_topic(stream_settings, TRANSACTIONS_DLQ, 1)]
    assert [e["path"] for e in dlq["errors"]] == ["event_time"]
    assert "future" in dlq["reason"] and "2099-01-01" in dlq["payload"]


def test_an_event_dated_before_1970_is_dead_lettered_not_a_poison_pill(
        stream_settings: Settings) -> None:
    """A partition with no stream time yet accepts anything down to minus the lateness: an
    event dated 1969-12-31T23:59 got in, and the online store's timestamp encoding refused
    it at commit, so the processor crashed on it again after every restart."""
    customer = make_event(0)["customer_id"]  # one partition, nothing before it
    old = {**make_event(100), "customer_id": customer, "event_time": "1969-12-31T23:59:00Z"}
    after = [{**make_event(i), "customer_id": customer} for i in range(5)]
    produce(stream_settings, [old, *after])
    proc = run_stream(stream_settings)
    s = proc.stats
    assert (s.applied, s.late, s.invalid) == (5, 0, 1)
    (dlq,) = [orjson.loads(m.value()) for m in read_topic(stream_settings, TRANSACTIONS_DLQ, 1)]
    assert [e["path"] for e in dlq["errors"]] == ["event_time"]
    assert "KESTREL_EVENT_TIME_EARLIEST" in dlq["reason"]  # TimeBounds: 2000-01-01 by default


def test_operators_see_the_stream_in_prometheus_and_in_kestrel_status(
        stream_settings: Settings, tmp_path: Path) -> None:
    """Issue item 8, against a real `kestrel stream` process: while it runs, /metrics on
    KESTREL_STREAM_METRICS_PORT counts events by outcome, fills the freshness histogram and
    sets a lag per partition, and `kestrel status` lists the instance with the same totals.
    (A process of its own: in this test process BentoML may have set
    PROMETHEUS_MULTIPROC_DIR, under which prometheus_client shares counters between the
    processors the tests create.)"""
    port = free_port()
    env = env_for(stream_settings) | {"KESTREL_STREAM_METRICS_PORT": str(port)}
    events = [make_event(i) for i in range(30)]
    produce(stream_settings, [*events, events[2]], [b"{not json"])
    log = open(tmp_path / "stream.log", "wb")  # noqa: SIM115
    p = subprocess.Popen([sys.executable, "-m", "cli", "stream", "--idle-seconds", "10"],
                         env=env, stdout=log, stderr=log)
    try:
        client = redis.Redis.from_url(stream_settings.redis_url)
        deadline = time.monotonic() + 120
        summaries: list[dict] = []  # type: ignore[type-arg]
        while time.monotonic() < deadline and p.poll() is None:
            summaries = read_summaries(client, GROUP_ID)
            if summaries and summaries[0]["totals"].get("applied") == 30:
                break
            time.sleep(0.1)
        assert p.poll() is None, (tmp_path / "stream.log").read_text()[-3000:]
        (summary,) = summaries
        assert summary["totals"] == {"applied": 30, "duplicate": 1, "invalid": 1}
        assert summary["metrics_port"] == port and summary["freshness_p99_ms"] is not None
        samples = [s for family in text_string_to_metric_families(
            httpx.get(f"http://127.0.0.1:{port}/metrics").text) for s in family.samples]
        by_outcome = {s.labels["outcome"]: s.value for s in samples
                      if s.name == "kestrel_stream_events_total"}
        assert by_outcome == {"applied": 30, "duplicate": 1, "invalid": 1}
        assert [s.value for s in samples
                if s.name == "kestrel_stream_freshness_seconds_count"] == [30]
        lags = {s.labels["partition"]: s.value for s in samples
                if s.name == "kestrel_stream_lag_seconds"}
        assert lags.keys() == summary["lag_seconds"].keys() and min(lags.values()) >= 0
        status = subprocess.run([sys.executable, "-m", "cli", "status"],
                                env=env | {"COLUMNS": "250"},  # rich: no cut cells
                                capture_output=True, text=True, timeout=120)
        assert summary["instance"] in status.stdout and f"127.0.0.1:{port}" in status.stdout
    finally:
        p.wait(120)
        log.close()


def test_card_testing_bursts_raise_alerts_once(stream_settings: Settings) -> None:
    config = SimulationConfig(customers=300, terminals=600, days=3, scenarios=frozenset({4}))
    sent = stream_to_kafka(config, stream_settings, CardTokenizer(TEST_SECRET.encode()).token,
                           with_labels=False)
    proc = run_stream(stream_settings)
    alerts = [orjson.loads(m.value()) for m in read_topic(stream_settings, ALERTS, 1)]
    multi = [a for a in alerts if a["rule"] == "multi_country"]
    assert multi and sent.frauds >= 5 * len(multi)
    assert len({a["alert_id"] for a in alerts}) == len(alerts) == proc.stats.alerts
    for a in multi:
        assert len(a["evidence_txn_ids"]) >= 5 and len(a["countries"]) >= 3


def test_applied_transactions_invalidate_the_insight_cache(stream_settings: Settings) -> None:
    client = redis.Redis.from_url(stream_settings.redis_url)
    schema = stream_settings.insight_schema_version
    event = make_event(1)
    client.set(insight_cache_key(event["customer_id"], schema), b"{}")
    client.set(insight_cache_key("C99999", schema), b"{}")
    produce(stream_settings, [event])
    run_stream(stream_settings, idle=1.5)
    assert not client.exists(insight_cache_key(event["customer_id"], schema))
    assert client.exists(insight_cache_key("C99999", schema))


def _snapshot(settings: Settings, group: str) -> tuple[dict, dict]:  # type: ignore[type-arg]
    """Everything the stream computed: Redis (minus the group's own bookkeeping: offsets,
    changelogs, snapshots, metrics — compared below as the state they rebuild) and the
    offline log (newest row versions)."""
    client = redis.Redis.from_url(settings.redis_url)
    store: dict[bytes, object] = {}
    for key in client.scan_iter(count=1000):
        if key.startswith(group_prefix(group).encode()):
            continue  # bookkeeping of the run itself, not what it computed
        kind = client.type(key)
        store[key] = (client.hgetall(key) if kind == b"hash" else
                      client.lrange(key, 0, -1) if kind == b"list" else client.get(key))
    # the state every partition's snapshot + changelog rebuild (what a restart would resume)
    proc = StreamProcessor(settings, OnlineWriter(settings, dedup=False), group_id=group)
    for topic in (TRANSACTIONS, TRANSACTIONS_BY_TERMINAL):
        for part in range(partitions_for(topic, settings)):
            proc.restore_partition(topic, part)
            store[f"state:{topic}:{part}".encode()] = proc.partition_state(topic, part)
    logs = {}
    for entity in ("card", "customer", "terminal"):
        rows = offline_rows(settings, entity).drop(columns=["created"])  # newest versions
        key = rows.columns[0]
        logs[entity] = rows.sort_values([key, "event_timestamp"]).reset_index(drop=True)
    return store, logs


def clean_run(settings: Settings, tmp_path: Path, db: int) -> Settings:
    """One uninterrupted run over the same topic: its own group, Redis db and var dir."""
    base = settings.redis_url.rsplit("/", 1)[0]
    clean = settings.model_copy(update={"redis_url": f"{base}/{db}",
                                        "var_dir": tmp_path / "clean-var"})
    redis.Redis.from_url(clean.redis_url).flushdb()
    proc = StreamProcessor(clean, OnlineWriter(clean, dedup=False), group_id="clean")
    worker = threading.Thread(target=proc.run, kwargs={"idle_seconds": 2.5})
    worker.start()
    worker.join(300)
    return clean


@pytest.mark.slow
def test_kill_9_and_restart_end_identical_to_a_clean_run(
    stream_settings: Settings, tmp_path: Path
) -> None:
    config = SimulationConfig(customers=1000, terminals=2000, days=3)
    stream_to_kafka(config, stream_settings, CardTokenizer(TEST_SECRET.encode()).token,
                    with_labels=False)
    clean = clean_run(stream_settings, tmp_path, db=15)
    # the crashing run
    env = env_for(stream_settings) | {"KESTREL_STREAM_BATCH_RECORDS": "500"}
    client = redis.Redis.from_url(stream_settings.redis_url)
    for kill_after in (2_000, 5_000):
        err = open(tmp_path / f"stream-{kill_after}.log", "wb")  # noqa: SIM115
        p = subprocess.Popen([sys.executable, "-m", "cli", "stream"], env=env,
                             stdout=err, stderr=err)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            done = sum(int(v) for k, v in client.hgetall(offsets_key("kestrel-stream")).items()
                       if k.startswith(f"o:{TRANSACTIONS}:".encode()))
            if done >= kill_after:
                break
            time.sleep(0.005)
        assert p.poll() is None, (tmp_path / f"stream-{kill_after}.log").read_text()[-3000:]
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        err.close()
    final = subprocess.run([sys.executable, "-m", "cli", "stream", "--idle-seconds",
                            "3"], env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    crashed_store, crashed_logs = _snapshot(stream_settings, "kestrel-stream")
    clean_store, clean_logs = _snapshot(clean, "clean")
    assert crashed_store.keys() == clean_store.keys()
    assert crashed_store == clean_store
    for entity in crashed_logs:
        pd.testing.assert_frame_equal(crashed_logs[entity], clean_logs[entity])


@pytest.mark.slow
def test_a_second_instance_mid_stream_takes_partitions_and_changes_nothing(
    stream_settings: Settings, tmp_path: Path
) -> None:
    config = SimulationConfig(customers=2000, terminals=4000, days=4)
    days = [b.transactions for b in iter_days(config, CardTokenizer(TEST_SECRET.encode()).token)]
    producer = EventProducer(stream_settings)
    producer.produce_many(TRANSACTIONS, transaction_records(pa.concat_tables(days[:2])))
    producer.flush()
    env = env_for(stream_settings) | {"KESTREL_STREAM_BATCH_RECORDS": "500"}
    cmd = [sys.executable, "-m", "cli", "stream", "--idle-seconds", "6"]
    logs = [tmp_path / f"instance-{i}.log" for i in (1, 2)]
    outs = [open(f, "w") for f in logs]  # noqa: SIM115
    first = subprocess.Popen(cmd, env=env, stdout=outs[0], stderr=outs[0], text=True)
    second = subprocess.Popen(cmd, env=env, stdout=outs[1], stderr=outs[1], text=True)
    deadline = time.monotonic() + 120  # the group rebalances once the second has joined
    while time.monotonic() < deadline:
        if all('"msg":"assigned"' in f.read_text() for f in logs):
            break
        time.sleep(0.2)
    else:
        pytest.fail("the second instance was never assigned partitions")
    producer.produce_many(TRANSACTIONS, transaction_records(pa.concat_tables(days[2:])))
    producer.flush()  # the second half arrives while both instances share the partitions
    first.wait(600)
    second.wait(600)
    for f in outs:
        f.close()
    out1, out2 = (f.read_text() for f in logs)
    assert first.returncode == 0, out1[-3000:]
    assert second.returncode == 0, out2[-3000:]
    applied = [int(o.split("stream done: ")[1].split(" ")[0].replace(",", "")) for o in (out1,
                                                                                        out2)]
    assert min(applied) > 0 and sum(applied) == sum(t.num_rows for t in days)
    clean = clean_run(stream_settings, tmp_path, db=14)
    scaled_store, scaled_logs = _snapshot(stream_settings, "kestrel-stream")
    clean_store, clean_logs = _snapshot(clean, "clean")
    assert scaled_store == clean_store
    for entity in scaled_logs:
        pd.testing.assert_frame_equal(scaled_logs[entity], clean_logs[entity])


def test_broker_restart_replays_are_not_counted_twice(stream_settings: Settings) -> None:
    from kestrel.services import BROKER, free_port, start_broker, stop

    events = [make_event(i) for i in range(300)]
    produce(stream_settings, events)
    first = run_stream(stream_settings, idle=2.0)
    assert first.stats.applied == 300
    stop(stream_settings, BROKER)  # memory storage: the topics come back empty, offsets at 0
    again = stream_settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    start_broker(again)
    try:
        produce(again, events[:100] + [make_event(i) for i in range(300, 350)])
        second = run_stream(again, idle=2.0)
    finally:
        stop(again, BROKER)
    assert second.stats.applied == 50
    assert second.stats.duplicates + second.stats.late == 100


def test_a_partition_at_its_end_does_not_hold_the_others_records_forever(
        stream_settings: Settings) -> None:
    """Live traffic that stops: partitions 0 and 1 deliver (their ends of partition arrive
    before the batch holding their records commits, as one poll often brings both), then
    only partition 1 gets events, three hours later in event time. Partition 0 has nothing
    buffered and nothing more to deliver, so it must not cap partition 1 at its stream time
    plus MAX_PARTITION_SKEW_US: that batch's commit used to strike partition 0 off the
    partitions at their end, partition 1's records were held forever and a stream with
    idle_seconds never stopped (seen at the end of parity's paced replays)."""
    settings = stream_settings.model_copy(update={"stream_batch_ms": 1_000})
    producer = EventProducer(settings)

    def send(part: int, first: int, hours: int) -> None:
        for i in range(first, first + 3):
            event = {**make_event(i), "customer_id": f"P{part}",
                     "event_time": f"2018-04-01T{hours:02d}:00:{i:02d}Z"}
            producer.produce(TRANSACTIONS, event["customer_id"], encode(event), partition=part)
        producer.flush()

    send(0, 0, hours=0)
    send(1, 10, hours=0)
    proc = StreamProcessor(settings, OnlineWriter(settings, dedup=False))
    worker = threading.Thread(target=proc.run, kwargs={"idle_seconds": 2.5})
    worker.start()
    deadline = time.monotonic() + 60
    while proc.stats.applied < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.stats.applied == 6
    send(1, 20, hours=3)
    worker.join(30)
    stopped, applied = not worker.is_alive(), proc.stats.applied
    if not stopped:
        proc.request_stop()  # takes whatever is still held
        worker.join(60)
    assert stopped, f"stream did not stop: {applied} of 9 applied"
    assert proc.stats.applied == 9
