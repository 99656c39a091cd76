"""Terminal repartitioning (Terminals): the partition of a terminal, updates forwarded
through `transactions.by-terminal` or applied in-process, each once, and malformed records of
that topic dead-lettered. No broker or Redis: collaborators built directly, records with
confluent_kafka's Message constructor, a stand-in producer records what is sent."""

from __future__ import annotations

import zlib
from typing import Any, cast

import numpy as np
import orjson
import redis
from confluent_kafka import Message

from kestrel.settings import Settings
from kestrel.topics import TRANSACTIONS, TRANSACTIONS_BY_TERMINAL, TRANSACTIONS_DLQ
from kestrel.windows import ENTITIES
from pipelines.stream.apply_path import BatchOutput
from pipelines.stream.event_time import TimeLimits
from pipelines.stream.gate import Gate
from pipelines.stream.metrics import StreamStats
from pipelines.stream.partitions import Partitions
from pipelines.stream.rules import rules
from pipelines.stream.state import WindowSet
from pipelines.stream.terminals import Terminals
from tests.stream.sent import SentRecords

T0 = 1_522_540_800_000_000  # 2018-04-01T00:00:00Z


def _terminals(settings: Settings, own_all: bool) -> tuple[Terminals, Partitions, StreamStats]:
    stats = StreamStats()
    partitions = Partitions(settings, "g", redis.Redis.from_url(settings.redis_url),
                            {e: WindowSet(e) for e in ENTITIES}, rules(3), stats)
    partitions.counts.update({TRANSACTIONS: 2, TRANSACTIONS_BY_TERMINAL: 4})
    gate = Gate(settings, "g", partitions.stream_time, partitions.tables["customer"], stats,
                TimeLimits(settings))
    terminals = Terminals(partitions, gate, {0, 1} if own_all else {0}, stats)
    terminals.owned |= {0, 1, 2, 3}
    return terminals, partitions, stats


def _updates(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n updates of 5 terminals, newest first (routing sorts them by time)."""
    return (np.array([T0 + (n - i) * 1_000_000 for i in range(n)], np.int64),
            np.array([f"T{i % 5:05d}" for i in range(n)], dtype=object),
            np.array([f"tx-{i}" for i in range(n)], dtype=object))


def test_a_terminal_goes_to_the_partition_librdkafka_would_pick(settings: Settings) -> None:
    terminals, _, _ = _terminals(settings, own_all=True)
    for terminal_id in ("T00001", "T00042", "terminal-ü"):
        assert terminals.partition_of(terminal_id) == zlib.crc32(terminal_id.encode()) % 4


def test_owning_every_partition_applies_the_updates_in_process_each_once(
        settings: Settings) -> None:
    """The batch's own updates and the same updates come back through the topic (a replay
    after a crash): each is applied once, to the partition it names; nothing is sent."""
    terminals, partitions, stats = _terminals(settings, own_all=True)
    assert terminals.local()
    times, ids, txns = _updates(20)
    out = BatchOutput()
    out.forward.append((times, ids, txns))
    again = [Message(topic=TRANSACTIONS_BY_TERMINAL, partition=terminals.partition_of(t),
                     offset=i, value=orjson.dumps([x, int(at), t]))
             for i, (at, t, x) in enumerate(zip(times, ids, txns, strict=True))]
    sent = SentRecords()
    terminals.apply(again, out, cast(Any, sent))
    assert sent.records == [] and stats.terminal_applied == 20
    for t in set(ids.tolist()):
        table = partitions.tables["terminal"][terminals.partition_of(t)]
        assert {x for x, i in zip(txns, ids, strict=True) if i == t} <= table.ids
    assert sum(len(e) for e in out.changes.values()) == 20
    assert sum(len(keys) for keys, _, _ in out.online_blocks["terminal"]) == 5


def test_otherwise_the_updates_are_forwarded_in_event_time_order(settings: Settings) -> None:
    terminals, partitions, stats = _terminals(settings, own_all=False)
    assert not terminals.local()
    times, ids, txns = _updates(10)
    out = BatchOutput()
    out.forward.append((times, ids, txns))
    sent = SentRecords()
    terminals.apply([], out, cast(Any, sent))
    assert stats.terminal_applied == 0 and not partitions.tables["terminal"]
    assert [orjson.loads(v)[1] for _, _, v, _ in sent.records] == sorted(times.tolist())
    assert all(topic == TRANSACTIONS_BY_TERMINAL and part == terminals.partition_of(key)
               for topic, key, _, part in sent.records)


def test_a_malformed_forwarded_record_is_dead_lettered(settings: Settings) -> None:
    terminals, _, stats = _terminals(settings, own_all=True)
    values = [b"not json", orjson.dumps(["tx-1", "soon", "T00001"]),
              orjson.dumps(["tx-2", 4_102_444_800_000_000, "T00001"]),  # 2100
              orjson.dumps(["4111111111111111", T0, "T00001"]),  # a PAN as the txn_id
              orjson.dumps(["tx-ok", T0, "T00001"])]
    batch = [Message(topic=TRANSACTIONS_BY_TERMINAL, partition=0, offset=i, value=v)
             for i, v in enumerate(values)]
    sent = SentRecords()
    kept = terminals.forwarded(batch, cast(Any, sent))
    assert kept == [(0, "tx-ok", T0, "T00001")]
    assert stats.invalid == 4 and [r[0] for r in sent.records] == [TRANSACTIONS_DLQ] * 4
