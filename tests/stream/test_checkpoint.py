"""The checkpoint (Checkpoint) and partition recovery (Partitions) against a real Redis: a
batch committed by one instance comes back — state, next offsets, stream times — when another
claims its partitions, and a commit for a partition another instance claimed since is
refused (fencing). The batch is applied by the array path; no broker: records are built with
confluent_kafka's Message constructor, a stand-in producer and consumer record what would go
to Kafka."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Message, TopicPartition

from kestrel.settings import Settings
from kestrel.topics import TRANSACTIONS, TRANSACTIONS_BY_TERMINAL
from kestrel.windows import ENTITIES
from pipelines.features.online_writer import OnlineWriter
from pipelines.stream import changelog, records
from pipelines.stream.apply_path import BatchOutput
from pipelines.stream.arrays.path import ArrayPath
from pipelines.stream.checkpoint import Checkpoint
from pipelines.stream.event_time import TimeLimits
from pipelines.stream.gate import Gate
from pipelines.stream.metrics import StreamMetrics, StreamStats
from pipelines.stream.offline_log import OfflineLog
from pipelines.stream.partitions import Partitions, offsets_key
from pipelines.stream.per_event import PerEventPath
from pipelines.stream.rules import rules
from pipelines.stream.state import WindowSet
from pipelines.stream.terminals import Terminals
from tests.conftest import make_settings
from tests.pipelines.events_factory import make_event

T0 = 1_522_540_800_000_000  # 2018-04-01T00:00:00Z
IDS = {TRANSACTIONS: "id-t", TRANSACTIONS_BY_TERMINAL: "id-bt"}


class _Kafka:
    """Stands in for the producer (records are kept) and the consumer (offsets told)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, bytes]] = []
        self.told: list[list[TopicPartition]] = []

    def produce(self, topic: str, key: Any, value: bytes, **_: Any) -> None:
        self.sent.append((topic, key, value))

    def flush(self) -> None:
        pass

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.told.append(offsets)


class _Instance:
    """One instance's partitions, array path and checkpoint (all partitions of both topics)."""

    def __init__(self, settings: Settings) -> None:
        self.stats = StreamStats()
        windows = {e: WindowSet(e) for e in ENTITIES}
        alert_rules = rules(3)
        client = redis.Redis.from_url(settings.redis_url)
        self.partitions = Partitions(settings, "g", client, windows, alert_rules, self.stats)
        self.partitions.counts.update({TRANSACTIONS: 2, TRANSACTIONS_BY_TERMINAL: 2})
        gate = Gate(settings, "g", self.partitions.stream_time,
                    self.partitions.tables["customer"], self.stats, TimeLimits(settings))
        terminals = Terminals(self.partitions, gate, {0, 1}, self.stats)
        terminals.owned |= {0, 1}
        self.path = ArrayPath(self.partitions, gate, terminals, PerEventPath(
            self.partitions, gate, terminals, windows, alert_rules, self.stats),
            alert_rules, self.stats)
        self.checkpoint = Checkpoint(settings, "g", client, OnlineWriter(settings, dedup=False),
                                     OfflineLog(settings.var_dir), self.partitions,
                                     StreamMetrics("g"), self.stats, keep_freshness=False)
        self.checkpoint.topic_ids = IDS

    def claim(self) -> list[TopicPartition]:
        parts = [TopicPartition(t, p) for t in IDS for p in range(2)]
        self.partitions.claim(parts, IDS)
        return parts

    def commit(self, batch: list[Message], kafka: _Kafka) -> None:
        out = BatchOutput()
        self.path.apply(batch, batch, out, cast(Any, kafka), datetime.now(UTC))
        offsets = {(TRANSACTIONS, p): max((m.offset() or 0) for m in batch
                                          if m.partition() == p) + 1 for p in range(2)}
        self.checkpoint.commit(out, offsets, {}, {"applied": len(batch)}, 0.0,
                               cast(Any, kafka), cast(Any, kafka))
        self.checkpoint.await_landed(cast(Any, kafka))


@pytest.fixture
def store(tmp_path: Path, redis_url: str) -> Iterator[Settings]:
    s = make_settings(tmp_path / "var", redis_url=redis_url.rsplit("/", 1)[0] + "/11")
    client = redis.Redis.from_url(s.redis_url)
    client.flushdb()
    yield s
    client.flushdb()


def _batch(n: int) -> list[Message]:
    rng = random.Random(n)
    out = []
    for i in range(n):
        event = make_event(i)
        event["event_time"] = records.iso(T0 + i * 30_000_000 + rng.randrange(1000))
        out.append(Message(topic=TRANSACTIONS, partition=i % 2, offset=i // 2,
                           key=event["customer_id"].encode(), value=orjson.dumps(event)))
    return out


def test_a_committed_batch_comes_back_when_another_instance_claims_it(
        store: Settings) -> None:
    first = _Instance(store)
    fresh = first.claim()
    assert {tp.offset for tp in fresh} == {OFFSET_BEGINNING}
    kafka = _Kafka()
    first.commit(_batch(300), kafka)
    assert first.stats.applied == 300 and first.stats.batches == 1
    assert kafka.told  # the group is told the offsets once the commit landed
    second = _Instance(store)
    parts = second.claim()
    assert {(tp.topic, tp.partition): tp.offset for tp in parts if tp.topic == TRANSACTIONS} \
        == {(TRANSACTIONS, 0): 150, (TRANSACTIONS, 1): 150}
    assert second.partitions.stream_time == first.partitions.stream_time
    for topic in IDS:
        for part in range(2):
            assert second.partitions.partition_state(topic, part) == \
                first.partitions.partition_state(topic, part)
    assert first.partitions.partition_state(TRANSACTIONS_BY_TERMINAL, 0)["terminal"]


def test_a_commit_for_a_partition_another_instance_claimed_is_refused(
        store: Settings) -> None:
    zombie = _Instance(store)
    zombie.claim()
    kafka = _Kafka()
    zombie.commit(_batch(100), kafka)
    before = redis.Redis.from_url(store.redis_url).hgetall(offsets_key("g"))
    _Instance(store).claim()  # a new owner, with its own token
    with pytest.raises(changelog.PartitionLost, match="Restart `kestrel stream`"):
        zombie.commit(_batch(200)[100:], kafka)
    assert redis.Redis.from_url(store.redis_url).hgetall(offsets_key("g")) == before
