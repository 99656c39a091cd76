"""The two apply paths behind one interface (ApplyPath): the array path (pipelines/stream/
arrays/) and the per-event reference (per_event.py) applied to the same batches leave the
same partition state, count the same outcomes, raise the same alerts and route the same
terminal updates. No broker or Redis: the collaborators are built directly, records with
confluent_kafka's Message constructor, and what goes to Kafka is recorded by a stand-in
for the producer."""

from __future__ import annotations

import random
import zlib
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
from confluent_kafka import Message

from kestrel.settings import Settings
from kestrel.topics import ALERTS, TRANSACTIONS
from kestrel.windows import ENTITIES
from pipelines.stream import records
from pipelines.stream.apply_path import ApplyPath, BatchOutput
from pipelines.stream.arrays.path import ArrayPath
from pipelines.stream.event_time import TimeLimits
from pipelines.stream.gate import Gate
from pipelines.stream.metrics import StreamStats
from pipelines.stream.partitions import Partitions
from pipelines.stream.per_event import PerEventPath
from pipelines.stream.rules import rules
from pipelines.stream.state import WindowSet
from pipelines.stream.terminals import Terminals
from tests.pipelines.events_factory import make_event
from tests.stream.sent import SentRecords

T0 = 1_522_540_800_000_000  # 2018-04-01T00:00:00Z
MINUTE_US = 60 * 1_000_000


def _engine(settings: Settings, path: str) -> tuple[ApplyPath, Partitions, StreamStats]:
    """The collaborators an apply path works with, owning partitions 0-2 of both topics."""
    stats = StreamStats()
    windows = {e: WindowSet(e) for e in ENTITIES}
    alert_rules = rules(2)
    limits = TimeLimits(settings)
    partitions = Partitions(settings, "g", redis.Redis.from_url(settings.redis_url), windows,
                            alert_rules, stats)
    partitions.counts.update({TRANSACTIONS: 3, "transactions.by-terminal": 3})
    gate = Gate(settings, "g", partitions.stream_time, partitions.tables["customer"], stats,
                limits)
    owned = {0, 1, 2}
    terminals = Terminals(partitions, gate, owned, stats)
    terminals.owned |= {0, 1, 2}
    reference = PerEventPath(partitions, gate, terminals, windows, alert_rules, stats)
    chosen: ApplyPath = reference if path == "per_event" else ArrayPath(
        partitions, gate, terminals, reference, alert_rules, stats)
    return chosen, partitions, stats


def _batches(seed: int) -> list[list[Message]]:
    """Batches of 3 partitions: few cards (so alerts fire), times wandering back and forth
    (some late), a few replayed events (duplicates) and invalid records."""
    rng = random.Random(seed)
    out: list[list[Message]] = []
    sent: list[dict[str, Any]] = []
    n = 0
    for _ in range(4):
        batch = []
        for _ in range(rng.randint(20, 150)):
            event: dict[str, Any] = make_event(n)
            event["card_id"] = f"card_{'k' * 26}{n % 7:06x}"
            event["event_time"] = records.iso(T0 + n * 20_000_000
                                              - rng.choice([0, 0, 0, 3, 15]) * MINUTE_US)
            if sent and rng.random() < 0.03:  # a replayed event: a duplicate
                event = dict(rng.choice(sent))
            sent.append(event)
            if rng.random() < 0.03:
                event["amount"] = -1
            part = zlib.crc32(event["customer_id"].encode()) % 3
            batch.append(Message(topic=TRANSACTIONS, partition=part, offset=n,
                                 key=event["customer_id"].encode(), value=orjson.dumps(event),
                                 timestamp=(1, 1_700_000_000_000 + n)))
            n += 1
        out.append(batch)
    return out


def _run(settings: Settings, path: str, seed: int) -> tuple[Any, ...]:
    apply, partitions, stats = _engine(settings, path)
    sent = SentRecords()
    now = datetime(2018, 4, 2, tzinfo=UTC)
    produced: list[int] = []
    for batch in _batches(seed):
        out = BatchOutput()
        apply.apply(batch, batch, out, sent, now)  # type: ignore[arg-type]
        produced += out.produced_at
        for topic, part in list(out.changes):
            partitions.expire(topic, part)
    state = {f"{topic}:{part}": partitions.partition_state(topic, part)
             for topic in (TRANSACTIONS, "transactions.by-terminal") for part in range(3)}
    counts = {name: getattr(stats, name) for name in (
        "applied", "duplicates", "late", "invalid", "alerts", "terminal_applied",
        "late_for_entity", "expired")}
    alerts = sorted(value for topic, _, value, _ in sent.records if topic == ALERTS)
    return state, counts, alerts, sorted(produced), dict(partitions.stream_time)


def test_the_array_path_leaves_what_the_per_event_path_leaves(settings: Settings) -> None:
    for seed in range(3):
        arrays = _run(settings, "arrays", seed)
        reference = _run(settings, "per_event", seed)
        state, counts, alerts, _, _ = reference
        assert counts["applied"] > 100 and counts["alerts"] > 0 and alerts
        assert counts["duplicates"] > 0 and counts["late"] > 0 and counts["invalid"] > 0
        assert counts["terminal_applied"] == counts["applied"]  # applied in-process
        assert arrays[1:] == reference[1:], seed
        assert orjson.dumps(arrays[0], option=orjson.OPT_SERIALIZE_NUMPY) == orjson.dumps(
            state, option=orjson.OPT_SERIALIZE_NUMPY), seed
