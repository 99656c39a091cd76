"""The stream's Redis side: changelog + snapshot state, recent-transactions lists, and the
hand-built RESP transaction (same stored bytes as redis-py's pipeline)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pandas as pd
import pytest
import redis
from redis.exceptions import ResponseError

from kestrel.pan import CardTokenizer
from kestrel.redis_keys import recent_key
from kestrel.resp import RespTransaction
from kestrel.settings import Settings
from kestrel.topics import TRANSACTIONS, TRANSACTIONS_BY_TERMINAL, partitions_for
from kestrel.windows import ENTITIES, feature_names, stream_view_name
from pipelines.features.online_writer import OnlineWriter
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.to_kafka import stream_to_kafka
from pipelines.stream import changelog, recent
from pipelines.stream.processor import StreamProcessor, offsets_key
from tests.conftest import TEST_SECRET
from tests.pipelines.events_factory import make_event
from tests.pipelines.test_archive import produce
from tests.stream.test_processor import offline_rows

pytestmark = pytest.mark.integration
_DBS = itertools.count(3)


@pytest.fixture
def fresh_settings(services: Settings) -> Iterator[Settings]:
    base = services.redis_url.rsplit("/", 1)[0]
    s = services.model_copy(update={"redis_url": f"{base}/{next(_DBS) % 13 or 1}",
                                    "stream_batch_ms": 100})
    redis.Redis.from_url(s.redis_url).flushdb()
    yield s


def _run(settings: Settings, group: str = "kestrel-stream") -> StreamProcessor:
    proc = StreamProcessor(settings, OnlineWriter(settings, dedup=False), group_id=group)
    worker = threading.Thread(target=proc.run, kwargs={"idle_seconds": 2.5})
    worker.start()
    worker.join(300)
    assert not worker.is_alive()
    return proc


def _restored(settings: Settings, group: str) -> dict[str, object]:
    proc = StreamProcessor(settings, OnlineWriter(settings, dedup=False), group_id=group)
    out: dict[str, object] = {}
    for topic in (TRANSACTIONS, TRANSACTIONS_BY_TERMINAL):
        for part in range(partitions_for(topic, settings)):
            proc.restore_partition(topic, part)
            out[f"{topic}:{part}"] = proc.partition_state(topic, part)
    return out


def test_snapshots_and_changelogs_rebuild_the_same_state(
    fresh_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = SimulationConfig(customers=200, terminals=400, days=2)
    sent = stream_to_kafka(config, fresh_settings, CardTokenizer(TEST_SECRET.encode()).token,
                           with_labels=False)
    base = fresh_settings.redis_url.rsplit("/", 1)[0]
    # one run that snapshots often (small batches, a tiny snapshot threshold) …
    monkeypatch.setattr(changelog, "SNAPSHOT_EVENTS", 25)
    often = fresh_settings.model_copy(update={"stream_batch_records": 200})
    proc = _run(often, group="often")
    assert proc.stats.applied == sent.transactions
    client = redis.Redis.from_url(often.redis_url)
    snaps = list(client.scan_iter(match=changelog.snapshot_key("often", "*", "*")))  # type: ignore[arg-type]
    assert snaps, "no snapshot was written"
    # … and one that never does, in another database: the rebuilt states agree exactly
    monkeypatch.setattr(changelog, "SNAPSHOT_EVENTS", 10**9)
    never = fresh_settings.model_copy(update={"redis_url": f"{base}/13"})
    redis.Redis.from_url(never.redis_url).flushdb()
    _run(never, group="never")
    assert not list(redis.Redis.from_url(never.redis_url).scan_iter(
        match=changelog.snapshot_key("never", "*", "*")))  # type: ignore[arg-type]
    often_state, never_state = _restored(often, "often"), _restored(never, "never")
    assert often_state == never_state
    assert sum(len(doc["card"]) for k, doc in often_state.items()  # type: ignore[index]
               if k.startswith(f"{TRANSACTIONS}:")) > 100


def test_recent_transactions_newest_first_trimmed(fresh_settings: Settings) -> None:
    customer = make_event(0)["customer_id"]
    events = [{**make_event(i), "customer_id": customer} for i in range(recent.KEEP + 5)]
    other = make_event(999)
    produce(fresh_settings, [*events, other, events[3]])  # a duplicate is not listed twice
    _run(fresh_settings)
    client = redis.Redis.from_url(fresh_settings.redis_url)
    listed = [orjson.loads(v) for v in client.lrange(recent_key(customer), 0, -1)]
    assert len(listed) == recent.KEEP
    assert [d["txn_id"] for d in listed] == [e["txn_id"] for e in reversed(events)][:recent.KEEP]
    newest, sent = listed[0], events[-1]
    assert set(newest) == {"txn_id", "event_time", "amount", "currency", "mcc", "country",
                           "terminal_id", "card_id", "channel"}
    for name in ("amount", "currency", "mcc", "country", "terminal_id", "card_id", "channel"):
        assert newest[name] == sent[name], name
    assert newest["event_time"].endswith("Z")
    assert datetime.fromisoformat(newest["event_time"]) == datetime.fromisoformat(
        sent["event_time"].replace("Z", "+00:00"))
    assert client.llen(recent_key(other["customer_id"])) == 1


def test_resp_transaction_stores_what_the_pipeline_stores(fresh_settings: Settings) -> None:
    """The RESP path against redis-py's pipeline path, which tests/features checks against
    Feast's own writer byte for byte."""
    base = fresh_settings.redis_url.rsplit("/", 1)[0]
    a = redis.Redis.from_url(fresh_settings.redis_url)
    b = redis.Redis.from_url(f"{base}/14")
    b.flushdb()
    writer = OnlineWriter(fresh_settings, dedup=False)
    t0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    tx, pipe = RespTransaction(), b.pipeline(transaction=True)
    for n, entity in enumerate(ENTITIES):
        names = feature_names(entity)
        rows = [(f"{entity}-{i}", {name: (i * 7 + j) * (1.5 if j % 2 else 1) if i != 2
                                   else None for j, name in enumerate(names)},
                 t0 + timedelta(microseconds=137 * i + n) if i % 2 else 1_700_000_000_000_000 + i)
                for i in range(6)]
        writer.write(tx, stream_view_name(entity), rows)
        writer.write(pipe, stream_view_name(entity), rows)
    tx.command("HSET", "plain", "f", 1.25, "g", 7)
    pipe.hset("plain", mapping={"f": 1.25, "g": 7})
    tx.execute(a)
    pipe.execute()
    keys = sorted(a.keys())
    assert keys == sorted(b.keys()) and len(keys) == 3 * 6 + 1
    for key in keys:
        assert a.hgetall(key) == b.hgetall(key), key


def test_resp_transaction_is_all_or_nothing(fresh_settings: Settings) -> None:
    client = redis.Redis.from_url(fresh_settings.redis_url)
    client.set("a-string", b"x")
    tx = RespTransaction()
    tx.command("SET", "written-first", b"1")
    tx.command("NOSUCHCOMMAND", "x")  # refused while queued: EXEC discards everything
    with pytest.raises(ResponseError):
        tx.execute(client)
    assert not client.exists("written-first")
    tx = RespTransaction()
    tx.command("HSET", "a-string", "f", "v")  # fails at EXEC (wrong type)
    with pytest.raises(ResponseError):
        tx.execute(client)
    assert client.ping()  # the connection is usable again


def test_resp_transaction_replies_over_many_reads(fresh_settings: Settings) -> None:
    """Tens of thousands of commands: the replies arrive over many socket reads, whether
    every command was queued (EXEC's reply read after the +QUEUED run) or one in the middle
    was refused (the replies from there on parsed one by one); the connection stays usable."""
    client = redis.Redis.from_url(fresh_settings.redis_url)
    tx = RespTransaction()
    for i in range(30_000):
        tx.command("SET", f"many-{i}", b"v" * (i % 50))
    replies = tx.execute(client)
    assert replies is not None and len(replies) == 30_000 and client.dbsize() >= 30_000
    tx = RespTransaction()
    for i in range(20_000):
        tx.command("SET", f"never-{i}", b"v")
    tx.command("NOSUCHCOMMAND", "x")
    for i in range(10):
        tx.command("SET", f"never-after-{i}", b"v")
    with pytest.raises(ResponseError, match=r"NOSUCHCOMMAND|unknown command"):
        tx.execute(client)
    assert not client.exists("never-0") and not client.exists("never-after-9")
    assert client.get("many-7") == b"v" * 7


def test_columnar_batches_equal_the_per_event_path(fresh_settings: Settings) -> None:
    """The batch-at-once window computation against the event-by-event one, on simulated
    days (card-testing bursts included, so alert candidates take the per-event path inside a
    columnar run) plus out-of-order and same-instant events."""
    config = SimulationConfig(customers=300, terminals=600, days=2, scenarios=frozenset({4}))
    stream_to_kafka(config, fresh_settings, CardTokenizer(TEST_SECRET.encode()).token,
                    with_labels=False)
    extra = [make_event(i, day=1) for i in range(40)]
    extra += [{**make_event(40, day=1), "customer_id": extra[5]["customer_id"],
               "card_id": extra[5]["card_id"], "event_time": extra[3]["event_time"]},
              {**make_event(41, day=1), "card_id": extra[6]["card_id"],
               "customer_id": extra[6]["customer_id"], "event_time": extra[6]["event_time"]}]
    produce(fresh_settings, extra)
    base = fresh_settings.redis_url.rsplit("/", 1)[0]
    results = []
    for columnar, db in ((True, 13), (False, 14)):
        s = fresh_settings.model_copy(update={
            "redis_url": f"{base}/{db}", "var_dir": fresh_settings.var_dir / f"c{columnar}",
            "stream_batch_records": 700})
        redis.Redis.from_url(s.redis_url).flushdb()
        proc = StreamProcessor(s, OnlineWriter(s, dedup=False), group_id="g",
                               apply_path="arrays" if columnar else "per_event")
        worker = threading.Thread(target=proc.run, kwargs={"idle_seconds": 2.5})
        worker.start()
        worker.join(300)
        client = redis.Redis.from_url(s.redis_url)
        online = {k: client.hgetall(k) for k in client.scan_iter(count=1000)
                  if client.type(k) == b"hash" and not k.startswith(b"kestrel:")}
        logs = {e: offline_rows(s, e).drop(columns=["created"]).sort_values(
            [offline_rows(s, e).columns[0], "event_timestamp"]).reset_index(drop=True)
            for e in ENTITIES}
        results.append((proc.stats.applied, proc.stats.alerts, online, logs,
                        _restored(s, "g")))
    (a_n, a_alerts, a_online, a_logs, a_state), (b_n, b_alerts, b_online, b_logs,
                                                 b_state) = results
    assert a_n == b_n > 1000 and a_alerts == b_alerts > 0
    assert a_online == b_online
    for e in ENTITIES:
        pd.testing.assert_frame_equal(a_logs[e], b_logs[e])
    assert a_state == b_state


def test_a_zombie_cannot_commit_for_a_partition_it_lost(fresh_settings: Settings) -> None:
    """Fencing: once another instance has claimed the partitions (its owner token), this
    one's next commit writes nothing and it stops with PartitionLost."""
    events = [make_event(i) for i in range(200)]
    produce(fresh_settings, events[:100])
    proc = StreamProcessor(fresh_settings, OnlineWriter(fresh_settings, dedup=False),
                           group_id="z")
    errors: list[Exception] = []

    def run() -> None:
        try:
            proc.run(idle_seconds=6)
        except changelog.PartitionLost as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    client = redis.Redis.from_url(fresh_settings.redis_url)
    deadline = time.monotonic() + 120
    while proc.stats.applied < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.stats.applied == 100
    owners = list(client.scan_iter(match=changelog.owner_key("z", "*", "*")))  # type: ignore[arg-type]
    assert owners and all(client.get(k) == proc.token for k in owners)
    for key in owners:  # a new owner took every partition over
        client.set(key, b"another-instance")
    before = client.hgetall(offsets_key("z"))
    produce(fresh_settings, events[100:])
    worker.join(120)
    assert not worker.is_alive()
    assert errors and "Restart" in str(errors[0])
    assert client.hgetall(offsets_key("z")) == before  # nothing of the batch was committed


def test_changelog_entries_as_columns_read_back_as_rows(fresh_settings: Settings) -> None:
    """A batch's entries go to the changelog as columns (numpy and lists, from the array
    path; rows, from the per-event path, in the order added); blobs of rows, as written
    before, are read too: load gives every entry as a row, in order, values intact."""
    client = redis.Redis.from_url(fresh_settings.redis_url)
    key = changelog.changelog_key("g", "transactions", 0)
    rows = [("card_a", "C1", "t1", 10, 1.5, "FR", "T1", "5411", 48.1, 2.2),
            ("card_b", "C2", "t2", 11, 0.1 + 0.2, "DE", "T2", "5812", -33.9, 151.2)]
    entries = changelog.Entries()
    entries.add_row(rows[0])
    columns = [np.array(["card_c", "card_d"], dtype=object), ["C3", "C4"],
               np.array(["t3", "t4"], dtype=object), np.array([12, 13], np.int64),
               np.array([2.675, 1e-7]), ["ES", "PT"], ["T3", "T4"], ["0742", "5411"],
               np.array([40.4, 38.7]), np.array([-3.7, -9.1])]
    entries.add_columns(columns)
    entries.add_row(rows[1])
    assert len(entries) == 4
    client.rpush(key, orjson.dumps([list(r) for r in rows]), entries.encode())
    _, loaded = changelog.load(client, "g", "transactions", 0)
    expected = [rows[0], rows[1], rows[0], *zip(*[list(c) for c in columns], strict=True),
                rows[1]]
    assert [tuple(e) for e in loaded] == [tuple(e) for e in expected]
    assert all(type(e[3]) is int and type(e[4]) is float for e in loaded)
