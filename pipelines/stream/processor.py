"""`kestrel stream`: the consumer-group app that turns transactions into live features.

It consumes two topics in micro-batches (``KESTREL_STREAM_BATCH_RECORDS`` /
``KESTREL_STREAM_BATCH_MS``):

- `transactions` (key customer_id): card and customer state are partition-local. Each event
  is validated (invalid → `transactions.dlq`), checked against the partition's stream time
  (older than the allowed lateness → `transactions.late`), deduplicated by txn_id, applied to
  its card and customer, checked against the alert rules, and forwarded to the repartition
  topic `transactions.by-terminal` (key terminal_id) — or, while this instance owns every
  partition of both topics, applied to the same terminal partition's state in the same batch;
- `transactions.by-terminal`: terminal state, deduplicated by txn_id as well (a replay after a
  crash may forward an event twice).

``StreamProcessor`` is the run loop; each concern is a collaborator with its own module
(docs/stream-engine.md follows a batch through them):

- intake.py — ``Intake``: which buffered records go into the next batch, which partitions
  are paused;
- gate.py — ``Gate``: lateness, event-time bounds, duplicates, the DLQ;
- partitions.py — ``Partitions``: per-partition state, offsets, stream times, recovery on
  assignment, the fencing token;
- arrays/ (``ArrayPath``, what runs) or per_event.py (``PerEventPath``, the reference) —
  apply a batch to the state (one ApplyPath interface, apply_path.py);
- terminals.py — ``Terminals``: terminal updates routed through the repartition topic or
  applied in-process;
- checkpoint.py — ``Checkpoint``: the commit that stores a batch's rows, state changes and
  offsets together, and lands it on a commit thread.

A ``kill -9`` or a second instance joining mid-stream leaves the online store and the offline
log as a clean single run would: offsets are stored with the state they produced, and a
partition's state is rebuilt from its snapshot and changelog on assignment.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import redis
from confluent_kafka import Consumer, Message, TopicPartition

from kestrel import heap
from kestrel.consumer_app import BatchConfig, BatchHooks, ConsumerApp
from kestrel.kafka import consumer_config, topic_ids
from kestrel.producer import EventProducer
from kestrel.settings import Settings
from kestrel.topics import TRANSACTIONS, TRANSACTIONS_BY_TERMINAL
from kestrel.windows import ENTITIES, Entity
from pipelines.stream import batch_decode
from pipelines.stream.apply_path import ApplyPath, BatchOutput
from pipelines.stream.arrays.path import ArrayPath
from pipelines.stream.checkpoint import Checkpoint, OnlineSink
from pipelines.stream.event_time import TimeLimits
from pipelines.stream.gate import Gate
from pipelines.stream.intake import FETCH_CONFIG, MAX_PARTITION_SKEW_US, Intake
from pipelines.stream.metrics import StreamMetrics, StreamStats
from pipelines.stream.offline_log import OfflineLog
from pipelines.stream.partitions import Partitions, offsets_key
from pipelines.stream.per_event import PerEventPath
from pipelines.stream.rules import rules
from pipelines.stream.state import WindowSet
from pipelines.stream.terminals import Terminals

__all__ = ["APPLY_PATHS", "GROUP_ID", "MAX_PARTITION_SKEW_US", "OnlineSink", "StreamProcessor",
           "StreamStats", "offsets_key"]

log = logging.getLogger("kestrel.stream")
GROUP_ID = "kestrel-stream"  # listed in kestrel.topics.CONSUMER_GROUPS
ApplyPathName = Literal["arrays", "per_event"]
APPLY_PATHS: tuple[ApplyPathName, ...] = ("arrays", "per_event")


def _last_of_each(topics: list[str], parts: list[int]) -> dict[tuple[str, int], int]:
    """Per (topic, partition) of a batch: the position of its last record."""
    keys = np.array(parts, np.int64) * 2 + np.array([t != TRANSACTIONS for t in topics])
    _, from_end = np.unique(keys[::-1], return_index=True)
    return {(topics[i], parts[i]): i for i in (len(keys) - 1 - from_end).tolist()}


class StreamProcessor:
    def __init__(self, settings: Settings, online: OnlineSink, group_id: str = GROUP_ID,
                 keep_freshness: bool = False, metrics_port: int | None = None,
                 capture: dict[str, dict[str, Any]] | None = None,
                 apply_path: ApplyPathName = "arrays"):
        """``apply_path``: "arrays" (what `kestrel stream` runs) or "per_event" (the
        reference, which tests compare it with). ``capture`` (per-event path only): filled
        with txn_id → the card and customer features the online store held just before that
        transaction was applied."""
        if apply_path not in APPLY_PATHS:
            raise ValueError(f"apply_path must be one of {APPLY_PATHS}, not {apply_path!r}")
        if capture is not None and apply_path != "per_event":
            raise ValueError("capture needs the per-event path: pass apply_path='per_event'")
        self.settings = settings
        self.group_id = group_id
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.stats = StreamStats()
        self.metrics = StreamMetrics(group_id, metrics_port)
        windows = {e: WindowSet(e) for e in ENTITIES}
        alert_rules = rules(settings.alert_velocity_count)
        limits = TimeLimits(settings)
        self.partitions = Partitions(settings, group_id, self.redis, windows, alert_rules,
                                     self.stats)
        self.intake = Intake(settings, self.partitions.stream_time, limits)
        self.gate = Gate(settings, group_id, self.partitions.stream_time,
                         self.partitions.tables["customer"], self.stats, limits)
        self.terminals = Terminals(self.partitions, self.gate, self.intake.owned, self.stats)
        reference = PerEventPath(self.partitions, self.gate, self.terminals, windows,
                                 alert_rules, self.stats, capture)
        self.apply_path = apply_path
        self.path: ApplyPath = reference if apply_path == "per_event" else ArrayPath(
            self.partitions, self.gate, self.terminals, reference, alert_rules, self.stats)
        self.offline = OfflineLog(settings.var_dir)
        self.checkpoint = Checkpoint(settings, group_id, self.redis, online, self.offline,
                                     self.partitions, self.metrics, self.stats, keep_freshness)
        self.app = ConsumerApp(BatchConfig(max_records=settings.stream_batch_records,
                                           max_wait_s=settings.stream_batch_ms / 1000,
                                           poll_s=0.05))

    # --- what others use ----------------------------------------------------------------
    @property
    def token(self) -> bytes:
        """This instance's fencing token (its partitions' owner key holds it)."""
        return self.partitions.token

    def restore_partition(self, topic: str, part: int) -> None:
        self.partitions.restore_partition(topic, part)

    def state_size(self) -> dict[Entity, tuple[int, int]]:
        return self.partitions.state_size()

    def partition_state(self, topic: str, part: int) -> dict[str, dict[str, Any]]:
        return self.partitions.partition_state(topic, part)

    def terminal_partition(self, terminal_id: str) -> int:
        return self.terminals.partition_of(terminal_id)

    # --- the run loop -------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        self.app.request_stop()

    def run(self, idle_seconds: float | None = None) -> StreamStats:
        ids = self.checkpoint.topic_ids = topic_ids(
            self.settings, [TRANSACTIONS, TRANSACTIONS_BY_TERMINAL])
        stored = self.partitions.load_offsets(ids)
        self.offline.recover(stored.get("batch"))
        consumer = Consumer(consumer_config(self.settings, self.group_id, **FETCH_CONFIG))
        self.partitions.counts.update({
            t: len(md.partitions) for t, md in consumer.list_topics(timeout=10).topics.items()
            if t in (TRANSACTIONS, TRANSACTIONS_BY_TERMINAL)})
        producer = EventProducer(self.settings)
        self.app.stop_on_signals()
        heap.settle(heap.STREAM_YOUNG_OBJECTS)  # see kestrel/heap.py for what it saved
        buffer = self.app.buffer
        consumer.subscribe([TRANSACTIONS, TRANSACTIONS_BY_TERMINAL], on_assign=self._on_assign,
                           on_revoke=self._on_revoke(buffer, producer))

        def first_record(now: float) -> None:
            if self.stats.first_record_at is None:
                self.stats.first_record_at = now

        def commit(batch: list[Message]) -> None:
            with heap.paused():  # what a batch allocates mostly dies with it
                take, hold = self.intake.select(batch, stopping=self.app.stopped())
                self._process(take, consumer, producer, self.intake.taken_parsed)
            batch[:] = hold  # held back: the start of the next batch
            self.intake.pace(consumer)

        self.app.hooks = BatchHooks(
            first_record=first_record, eof=self.intake.on_eof,
            records=lambda msgs: self.intake.count(msgs, consumer), full=self.intake.batch_full)
        try:
            self.app.run(consumer, commit, idle_seconds)
            self.checkpoint.await_landed(consumer)
        finally:
            if self.checkpoint.in_flight:  # the loop failed: the commit in flight still
                with contextlib.suppress(Exception):  # lands (or not) before closing
                    self.checkpoint.await_landed(consumer)
            consumer.close()
        return self.stats

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.partitions.claim(partitions, self.checkpoint.topic_ids)
        consumer.assign(partitions)
        self.intake.assign([tp.partition for tp in partitions if tp.topic == TRANSACTIONS])
        self.terminals.owned |= {tp.partition for tp in partitions
                                 if tp.topic == TRANSACTIONS_BY_TERMINAL}
        self.app.assigned()  # idleness counts from here
        log.info("assigned", extra={"partitions": [f"{tp.topic}:{tp.partition}@{tp.offset}"
                                                   for tp in partitions]})

    def _on_revoke(self, buffer: list[Message], producer: EventProducer
                   ) -> Callable[[Consumer, list[TopicPartition]], None]:
        def on_revoke(consumer: Consumer, parts: list[TopicPartition]) -> None:
            self._process(buffer, consumer, producer)
            self.checkpoint.await_landed(consumer)  # before another instance takes over
            for tp in parts:
                self.partitions.drop(tp.topic, tp.partition)
                if tp.topic == TRANSACTIONS:
                    self.intake.revoke(tp.partition)
                else:
                    self.terminals.owned.discard(tp.partition)
        return on_revoke

    # --- one batch ----------------------------------------------------------------------
    def _process(self, buffer: list[Message], consumer: Consumer, producer: EventProducer,
                 parsed: batch_decode.Parsed | None = None) -> None:
        """Apply and commit ``buffer`` (emptied). ``parsed``: its records as the intake
        parsed them (aligned with it; None: not parsed yet, as on revoke)."""
        if not buffer:
            return
        batch, buffer[:] = list(buffer), []
        if parsed is not None and len(parsed) != len(batch):
            parsed = None
        started = time.perf_counter()
        before = self.stats.counts()
        topics = [m.topic() or "" for m in batch]
        last = _last_of_each(topics, [m.partition() or 0 for m in batch])
        next_offsets = {key: (batch[i].offset() or 0) + 1 for key, i in last.items()}
        newest = {str(part): batch[i].timestamp()[1] for (topic, part), i in last.items()
                  if topic == TRANSACTIONS}
        self.intake.committed([int(part) for part in newest])
        txns = batch if len(last) == len(newest) else [
            m for m, topic in zip(batch, topics, strict=True) if topic == TRANSACTIONS]
        if parsed is not None and txns is not batch:
            parsed = parsed.select([topic == TRANSACTIONS for topic in topics])
        out = BatchOutput()
        self.path.apply(batch, txns, out, producer, datetime.now(UTC), parsed)
        for topic, part in list(out.changes):  # the partitions this batch changed
            self.partitions.expire(topic, part)
        self.metrics.observe_state(self.partitions.state_size())
        after = self.stats.counts()
        self.checkpoint.commit(out, next_offsets, newest,
                               {k: after[k] - before[k] for k in after}, started,
                               consumer, producer)
