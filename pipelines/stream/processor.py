"""`kestrel stream`: the consumer-group app that turns transactions into live features.

Micro-batches (``KESTREL_STREAM_BATCH_RECORDS`` / ``KESTREL_STREAM_BATCH_MS``) of two topics:

- `transactions` (key customer_id): card and customer state are partition-local. Each event
  is validated (invalid → `transactions.dlq`), checked against the partition's stream time
  (older than the allowed lateness → `transactions.late`), deduplicated by txn_id, applied to
  its card and customer, checked against the alert rules, and forwarded to the repartition
  topic `transactions.by-terminal` (key terminal_id, partition named explicitly:
  ``terminal_partition``) — or, while this instance owns every partition of both topics,
  applied to the same terminal partition's state in the same batch (the round trip through
  Kafka would only bring it back here); leftovers in the topic are still consumed;
- `transactions.by-terminal`: terminal state, deduplicated by txn_id as well (a replay after a
  crash may forward an event twice).

State is held per partition and entity type as sorted arrays (entity_arrays.py). The
columnar path decodes a batch's records at once (pipelines/stream/batch_decode.py) and applies
each partition's events to each entity type at once; cards that may raise an alert go event by
event (checked out as EventLogs). The per-event path checks every entity it touches out and
applies record by record: the reference for cards and customers (parity's capture uses it;
tests compare the two). Terminal updates are applied at once on both paths.

Commit, per batch (offsets stored with the state they produced; no Kafka transactions):
1. the batch's offline-log rows are staged (fsynced, invisible);
2. the Kafka side effects (repartition, alerts, late, DLQ) are flushed (acknowledged);
3. one Redis MULTI/EXEC writes the coalesced online feature rows, the batch's changelog
   entries (the events it applied, per partition; now and then a snapshot instead, see
   pipelines/stream/changelog.py), the next offsets and stream times, the customers' recent
   transactions lists, and deletes the touched customers' insight cache entries — the commit
   point;
4. the staged offline rows are published.
On (re)start and on partition assignment, a partition's state is rebuilt from its snapshot and
changelog and its offsets come back from Redis, so a ``kill -9`` or a second instance joining
mid-stream leaves the online store and the offline log as a clean single run would. Side
effects of step 2 may repeat after a crash (at least once): the repartition is deduplicated
downstream, alerts carry a stable alert_id.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
import zlib
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol, cast

import numpy as np
import orjson
import pyarrow as pa
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from kestrel import heap
from kestrel.errors import EventValidationError, FieldError
from kestrel.events import PAN_LIKE_REASON, TimeBounds
from kestrel.kafka import consumer_config, topic_ids
from kestrel.pan import ascii_pan_like
from kestrel.redis_keys import insight_cache_key
from kestrel.settings import Settings
from kestrel.topics import (
    ALERTS,
    TRANSACTIONS,
    TRANSACTIONS_BY_TERMINAL,
    TRANSACTIONS_DLQ,
    TRANSACTIONS_LATE,
    partitions_for,
)
from kestrel.windows import ENTITIES, ENTITY_KEYS, Entity, stream_view_name
from pipelines.batching import consume_in_batches, stop_on_signals
from pipelines.dlq import dead_letter
from pipelines.features.online_writer import RespTransaction, resp_keys_command
from pipelines.ingest import EventProducer
from pipelines.stream import (
    batch_decode,
    changelog,
    columnar,
    partition_end,
    rebuild,
    recent,
    records,
)
from pipelines.stream.entity_arrays import EntityArrays
from pipelines.stream.event_time import UNREADABLE, event_time_keys, event_times_us
from pipelines.stream.metrics import StreamMetrics
from pipelines.stream.offline_log import ColumnBlock, OfflineLog
from pipelines.stream.rules import evaluate, rules
from pipelines.stream.state import TIME, VALUES, Event, EventLog, WindowSet

log = logging.getLogger("kestrel.stream")
GROUP_ID = "kestrel-stream"  # listed in kestrel.topics.CONSUMER_GROUPS
TERMINAL_REORDER_SLACK_US = 7 * 86_400 * 1_000_000
MAX_PARTITION_SKEW_US = 3600 * 1_000_000
PARTITION_SHARE_PER_BATCH = 1_000  # at least; more when the batch size allows
# A partition is paused once the buffer holds this many of its records (in batches' worth:
# times stream_batch_records). Pausing makes librdkafka drop what it prefetched for the
# partition and refetch it on resume; pausing each partition as soon as it delivered its
# share of a batch left the loop waiting on the last one's refetch: on a 300,000-event
# backlog, 90-170 polls per run came back empty, mostly with 6 or 7 of 8 partitions paused
# (~5 s of ~30). _select already keeps a batch to its shares and to event time, holding the rest.
PARTITION_HOLD_BATCHES = 1
# When a partition's prefetch queue is over queued.min.messages, librdkafka postpones that
# partition's next fetch by fetch.queue.backoff.ms (default 1,000 ms). One 256 KiB fetch is
# over 5,000 records, so with the default each partition went quiet for a second at a time;
# _select rightly holds the others back in event time until it delivers, and the loop sat
# idle with a full buffer: on a 300,000-event backlog 75-79 empty polls, ~3.8-4.0 s of a
# ~17 s run; at a steady 20,000 events/s, stalls that pushed freshness p50 to ~2.4 s.
FETCH_QUEUE_BACKOFF_MS = 10


_NO_INTS = np.zeros(0, np.int64)


def _intake_columns(buffer: Sequence[Message], newest_allowed_us: int, earliest_us: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, batch_decode.Parsed]:
    """Per record: its `transactions` partition (-1 for other topics), its event time in µs
    (0 for other topics, and for times before ``earliest_us`` or past ``newest_allowed_us``,
    which are dead-lettered as soon as they are taken), and the record parsed
    (batch_decode.Parsed; not parsed for other topics).

    Each record is parsed here, once, and its batch decodes from that (_commit_batch): the
    event time comes with it, where reading it from the raw JSON first (one regex search
    per record, then array arithmetic) cost ~1.1 µs per record besides the parse. A record
    that does not parse, or whose time is not in the stream's own form, has its time read
    from the raw JSON (pipelines/stream/event_time.py), as before."""
    n = len(buffer)
    parts = np.array([m.partition() or 0 for m in buffer], np.int64)
    other = np.array([m.topic() != TRANSACTIONS for m in buffer], bool)
    values = [m.value() or b"" for m in buffer]
    if other.any():
        parts[other] = -1
        at = np.flatnonzero(~other)
        parsed = batch_decode.Parsed.scatter(
            n, at, batch_decode.Parsed.of([values[i] for i in at.tolist()]))
    else:
        parsed = batch_decode.Parsed.of(values)
    exact = parsed.exact_us != batch_decode.NOT_EXACT
    times = np.where(exact, parsed.exact_us, UNREADABLE)
    rest = np.flatnonzero(~exact & ~other)
    if len(rest):
        times[rest] = event_times_us(event_time_keys([values[i] for i in rest.tolist()]),
                                     newest_allowed_us)
    times[(times < earliest_us) | (times > newest_allowed_us)] = UNREADABLE
    return parts, times, parsed


def _last_of_each(topics: list[str], parts: list[int]) -> dict[tuple[str, int], int]:
    """Per (topic, partition) of a batch: the position of its last record."""
    keys = np.array(parts, np.int64) * 2 + np.array([t != TRANSACTIONS for t in topics])
    _, from_end = np.unique(keys[::-1], return_index=True)
    return {(topics[i], parts[i]): i for i in (len(keys) - 1 - from_end).tolist()}


def _concat(blocks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Blocks of rows as columns (one per partition) as one block: the writers' cost per
    block (a few dozen array operations per column) is paid once per batch."""
    if len(blocks) == 1:
        return blocks[0]
    return {name: np.concatenate([block[name] for block in blocks]) for name in blocks[0]}


@dataclass
class _Updates:
    """Terminal updates as columns: by-terminal partition, txn_id, time µs, terminal_id."""

    part: np.ndarray
    txn: np.ndarray
    time: np.ndarray
    terminal: np.ndarray

    def select(self, mask: np.ndarray) -> _Updates:
        return _Updates(self.part[mask], self.txn[mask], self.time[mask], self.terminal[mask])

    def then(self, other: _Updates) -> _Updates:
        return _Updates(*(np.concatenate((a, b)) for a, b in zip(
            (self.part, self.txn, self.time, self.terminal),
            (other.part, other.txn, other.time, other.terminal), strict=True)))


class OnlineSink(Protocol):
    """Adds online feature writes for one view to a (transactional) Redis pipeline."""

    def write(self, pipe: RespTransaction, view: str,
              rows: list[tuple[str, dict[str, Any], datetime | int]]) -> None:
        """rows: (entity value, features, event time as a datetime or µs since the epoch)"""

    def write_columns(self, pipe: RespTransaction, view: str, keys: list[str],
                      columns: dict[str, np.ndarray], times_us: np.ndarray) -> None:
        """The same writes from columns: keys[i] gets columns[f][i], stamped times_us[i]."""


@dataclass
class StreamStats:
    applied: int = 0
    duplicates: int = 0
    late: int = 0
    invalid: int = 0
    alerts: int = 0
    terminal_applied: int = 0
    late_for_entity: int = 0
    expired: int = 0  # entities dropped from the state (EntityArrays.expire)
    rebuilt: int = 0  # events a restore loaded from the lake for a longer span (rebuild.py)
    batches: int = 0
    started: float = field(default_factory=time.monotonic)
    first_record_at: float | None = None
    last_commit_at: float | None = None
    freshness_ms: list[float] = field(default_factory=list)
    stage_ms: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


def offsets_key(group_id: str) -> str:
    return f"kestrel:stream:{group_id}:offsets"


class StreamProcessor:
    def __init__(self, settings: Settings, online: OnlineSink, group_id: str = GROUP_ID,
                 keep_freshness: bool = False, metrics_port: int | None = None,
                 capture: dict[str, dict[str, Any]] | None = None):
        """``capture`` (parity): filled with txn_id → the card and customer features the
        online store held just before that transaction was applied."""
        self.settings = settings
        self.group_id = group_id
        self.online = online
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.offline = OfflineLog(settings.var_dir)
        self.windows = {e: WindowSet(e) for e in ENTITIES}
        self.rules = rules(settings.alert_velocity_count)
        self.lateness_us = settings.allowed_lateness_seconds * 1_000_000
        # the event times accepted (kestrel.events.TimeBounds, as everywhere), never before
        # 1970: the online store's timestamps cannot hold such a time
        self.bounds = TimeBounds.from_settings(settings)
        self._earliest_us = max(0, records.micros(self.bounds.earliest))
        self._ahead_us = int(self.bounds.ahead.total_seconds() * 1_000_000)
        # terminal updates arrive in processing order from every source partition; a
        # partition that is behind (a replay, a slow instance) delivers older events late
        self.terminal_slack_us = TERMINAL_REORDER_SLACK_US
        # entity → partition → its state as arrays (entity_arrays.py; partition-local so a
        # revoke can drop it), and the entities checked out of them as EventLogs for work
        # event by event (the per-event path, a changelog replay) until _put_back
        self.tables: dict[Entity, dict[int, EntityArrays]] = {e: {} for e in ENTITIES}
        self._out: dict[tuple[Entity, int], dict[str, EventLog]] = defaultdict(dict)
        self.stream_time: dict[int, int] = {}
        self.next_offsets: dict[tuple[str, int], int] = {}
        self.stats = StreamStats()
        self.keep_freshness = keep_freshness
        self.capture = capture
        # batch-at-once window computation (entity_arrays.py); the per-event path stays
        # for parity's capture (and, per entity, for alert candidates)
        self.columnar = capture is None
        self.metrics = StreamMetrics(group_id, metrics_port)
        self._alerts_by_rule: dict[str, int] = defaultdict(int)
        # this batch's terminal updates: (times µs, terminal_ids, txn_ids) blocks, and rows
        # of the same from the per-event path
        self._forward: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._forward_rows: list[tuple[int, str, str]] = []
        # online rows of in-order entities, as columns: (keys, {feature: values}, times µs)
        self._online_blocks: dict[Entity, list[tuple[list[str], dict[str, np.ndarray],
                                                     np.ndarray]]] = defaultdict(list)
        # the events this batch applied, per (topic, partition): its changelog entries
        self._changes: dict[tuple[str, int], changelog.Entries] = defaultdict(changelog.Entries)
        self._since_snapshot: dict[tuple[str, int], int] = {}
        # per (entity, partition) restored: the time after which its state holds every
        # event (rebuild.py; a lake that lacked days leaves it above clock - kept_us)
        self._complete_after: dict[tuple[Entity, int], int | None] = {}
        # the customers' recent-transactions entries of this batch (recent.py), in order
        self._recent_customers: list[str] = []
        self._recent_docs: list[pa.Array] = []
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offline-log")
        # a batch's commit (offline staging wait, the fenced Redis transaction, publishing
        # the offline files, metrics) lands here while the next batch is read and applied;
        # at most one is in flight (_await_commit), with the offsets to report once it landed
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        self._in_flight: tuple[Future[None], dict[tuple[str, int], int]] | None = None
        # fencing: on assignment this instance writes its token as the partition's owner;
        # a commit only goes through while every partition of the batch still names it
        self.token = uuid.uuid4().hex.encode()
        # event-time pacing of the `transactions` partitions this instance owns
        self._owned: set[int] = set()
        self._owned_terminal: set[int] = set()  # `transactions.by-terminal` partitions
        self._partitions: dict[str, int] = {}  # partition count of each input topic
        self._terminal_part: dict[str, int] = {}  # terminal_id → by-terminal partition
        self._paused: set[int] = set()
        # at their end (partition_end.py): from an end-of-partition report until a record
        # at or past the offset it named (_end_offset) arrives
        self._at_end: set[int] = set()
        self._end_offset: dict[int, int] = {}
        # reported their end since a batch with their records last committed: what the
        # consumer had of them is in the buffer (_batch_full; a live partition reports its
        # end between arrivals, often with records past it in the same poll)
        self._caught_up: set[int] = set()
        self._buffered: dict[int, int] = {}  # per partition: its records in the buffer
        # the records _select held back, with their partitions, event times and parse (each
        # record is parsed once, on arrival)
        self._held: tuple[list[Message], np.ndarray, np.ndarray, batch_decode.Parsed] = (
            [], _NO_INTS, _NO_INTS, batch_decode.Parsed.none(0))
        # the records of the batch _select last took, parsed at intake (aligned with it)
        self._taken_parsed: batch_decode.Parsed | None = None
        # _select took nothing (every record waits for a partition behind) and nothing that
        # could change that has happened since: a record, an end of partition, a pause
        self._waiting = False
        self._topic_ids: dict[str, str] = {}
        self._stop = False
        self._assigned = False
        self._assigned_at = 0.0

    # --- lifecycle ----------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        self._stop = True

    def run(self, idle_seconds: float | None = None) -> StreamStats:
        self._topic_ids = topic_ids(self.settings, [TRANSACTIONS, TRANSACTIONS_BY_TERMINAL])
        stored = self._load_offsets()
        self.offline.recover(stored.get("batch"))
        # 64 KiB fetches capped consumption at ~13–19k records/s here (256 KiB: > 100k/s).
        # On a backlog the partitions still arrive unevenly, and _select lets none run more
        # than MAX_PARTITION_SKEW_US ahead of the slowest: with 256 KiB (~600 records) per
        # partition fetch, a partition behind delivered a batch's share over several fetches
        # while the others waited (batches of a few hundred records, empty selections);
        # 1 MiB: 41-49k events/s against 36-38k on a 300,000-event backlog, 18-19 batches
        # against 23-24 (4 MiB: 40-41k). Large prefetches let one partition deliver far more
        # than its share before pause() takes effect; _select holds such records back for a
        # later batch, so a batch still follows the records' timestamps across partitions.
        # The local broker (Tansu 0.6) fills a fetch response from the first partition of
        # the request up to the request's overall limit, so partitions arrive one at a time
        # in runs of 10,000-30,000 records; how the per-partition setting acts here (through
        # librdkafka) was not traced, and the 1 MiB figures above were taken on noisy runs.
        consumer = Consumer(consumer_config(self.settings, self.group_id,
                                            **{"max.partition.fetch.bytes": 1_048_576,
                                               "queued.min.messages": 5_000,
                                               "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
                                               "enable.partition.eof": True}))
        self._partitions = {t: len(md.partitions) for t, md in consumer.list_topics(
            timeout=10).topics.items() if t in (TRANSACTIONS, TRANSACTIONS_BY_TERMINAL)}
        producer = EventProducer(self.settings)
        stop_on_signals(self.request_stop)
        heap.settle(heap.STREAM_YOUNG_OBJECTS)  # see kestrel/heap.py for what it saved
        buffer: list[Message] = []

        def on_revoke(c: Consumer, parts: list[TopicPartition]) -> None:
            self._waiting = False  # the partitions that cap the others change
            self._commit_batch(buffer, c, producer)
            self._await_commit(c)  # landed before the partitions go to another instance
            for tp in parts:
                self._since_snapshot.pop((tp.topic, tp.partition), None)
                if tp.topic == TRANSACTIONS:
                    self.tables["card"].pop(tp.partition, None)
                    self.tables["customer"].pop(tp.partition, None)
                    self.stream_time.pop(tp.partition, None)
                    self._owned.discard(tp.partition)
                    self._paused.discard(tp.partition)
                    self._at_end.discard(tp.partition)
                    self._caught_up.discard(tp.partition)
                else:
                    self.tables["terminal"].pop(tp.partition, None)
                    self._owned_terminal.discard(tp.partition)

        consumer.subscribe([TRANSACTIONS, TRANSACTIONS_BY_TERMINAL], on_assign=self._on_assign,
                           on_revoke=on_revoke)
        def first_record(now: float) -> None:
            if self.stats.first_record_at is None:
                self.stats.first_record_at = now

        try:
            def commit(batch: list[Message]) -> None:
                with heap.paused():  # what a batch allocates mostly dies with it
                    take, hold = self._select(batch)
                    self._commit_batch(take, consumer, producer, self._taken_parsed)
                batch[:] = hold  # held back: the start of the next batch
                self._pace(consumer)

            consume_in_batches(
                consumer, buffer, commit,
                max_records=self.settings.stream_batch_records,
                max_wait_s=self.settings.stream_batch_ms / 1000, poll_s=0.05,
                stopped=lambda: self._stop, idle_seconds=idle_seconds,
                assigned_at=lambda: self._assigned_at if self._assigned else None,
                on_first_record=first_record, on_eof=self._on_eof, full=self._batch_full,
                on_records=lambda msgs: self._count(msgs, consumer))
            self._await_commit(consumer)
        finally:
            if self._in_flight is not None:  # the loop failed: the commit in flight still
                with contextlib.suppress(Exception):  # lands (or not) before closing
                    self._await_commit(consumer)
            consumer.close()
        return self.stats

    def _batch_full(self) -> bool:
        """Every owned `transactions` partition is paused (ahead, or holding its limit), at
        its end, or caught up (reported its end since its records last committed): waiting
        for the batch's time limit would only add latency. Under live traffic a partition is
        rarely at its end when a poll finishes (records past the end it reported arrive in
        the same poll), so "at its end" alone would leave nearly every batch to the time
        limit."""
        caught_up = self._at_end | self._caught_up
        return bool(self._owned) and all(p in self._paused or p in caught_up
                                         for p in self._owned)

    def _share(self) -> int:
        return max(PARTITION_SHARE_PER_BATCH,
                   self.settings.stream_batch_records // max(1, len(self._owned)))

    def _hold_limit(self) -> int:
        """Buffered records of one partition past which it is paused (memory bound)."""
        return max(self._share(), PARTITION_HOLD_BATCHES * self.settings.stream_batch_records)

    def _select(self, buffer: list[Message]) -> tuple[list[Message], list[Message]]:
        """Split the buffered records into this batch and the ones held back for the next.

        Kafka Streams' stream-time synchronization across partitions, on the records' event
        time: past its share of the batch (_share), a partition's `transactions` records are
        taken only up to the newest event time every partition with buffered records has
        reached (a partition at its end does not hold the others back; nor, for this
        cutoff, does one with nothing buffered: waiting for it, Kafka Streams'
        max.task.idle.ms, measured slower here as pause()/resume() make fetches restart),
        and at most ``stream_batch_records`` of them, oldest first. Whatever the share, no
        record passes the skew ceiling (_skew_ceiling: the slowest partition's reach, its
        stream time included when nothing of it is buffered, plus MAX_PARTITION_SKEW_US);
        when every record waits on it, nothing is taken until that partition delivers. A
        partition whose prefetch delivered far more than its share (records keep coming
        after pause()) thus cannot carry a batch ahead of the others in event time (terminal
        state is fed by all of them); such records wait in the buffer for the next batch.

        Event times are those of the records as parsed on arrival (_intake_columns: one that
        cannot be read counts as 0 and is never held); this only orders the intake, every
        check still happens on the decoded event. The parsed records taken are left in
        ``_taken_parsed`` for the batch's decoder. Within a partition the records taken are
        always a prefix, so offsets and per-partition order are those of the log. When
        stopping, and on revoke, everything buffered is taken. The buffer often holds several
        batches (a partition is paused only past _hold_limit), so the decision is made on
        arrays, and the records held back keep their columns for the next call.
        """
        limit = self.settings.stream_batch_records
        held, held_parts, held_times, held_parsed = self._held
        self._taken_parsed = batch_decode.Parsed.none(0)
        if self._waiting and not self._stop and len(buffer) == len(held) and held \
                and buffer[0] is held[0] and buffer[-1] is held[-1]:
            return [], buffer  # the same answer as last time, without scanning again
        self._waiting = False
        self._held = ([], _NO_INTS, _NO_INTS, batch_decode.Parsed.none(0))
        reuse = len(held) if held and len(buffer) >= len(held) and buffer[0] is held[0] \
            and buffer[len(held) - 1] is held[-1] else 0  # held last time: they lead
        parts, times, parsed = _intake_columns(buffer[reuse:], self._newest_allowed_us(),
                                               self._earliest_us)
        if reuse:
            parts, times = np.concatenate((held_parts, parts)), np.concatenate((held_times, times))
            parsed = held_parsed.then(parsed)
        self._taken_parsed = parsed  # unless some are held back (below)
        txn = parts >= 0
        if self._stop or not txn.any():
            return buffer, []
        members = {p: np.flatnonzero(parts == p)
                   for p in np.flatnonzero(np.bincount(parts[txn])).tolist()}
        newest = {p: int(times[idx].max()) for p, idx in members.items()}
        bounds = [t for p, t in newest.items() if p not in self._at_end]
        cutoff = min(bounds) if bounds else max(newest.values())
        ceiling = self._skew_ceiling(newest)
        txns = int(txn.sum())
        quota = txns  # records at exactly the cutoff that may still be taken
        if txns > limit:
            eligible = times[txn & (times <= cutoff)]
            if len(eligible) > limit:  # the limit-th oldest (a partial sort)
                cutoff = int(np.partition(eligible, limit - 1)[limit - 1])
                quota = limit - int(np.count_nonzero(eligible < cutoff))
        share = self._share()
        rank = np.zeros(len(parts), np.int64)  # position among its partition's records
        for idx in members.values():
            rank[idx] = np.arange(len(idx))
        too_far = txn & (times > ceiling) if ceiling is not None else np.zeros_like(txn)
        fails = too_far | (txn & (rank >= share) & (times > cutoff))
        first_held: dict[int, int] = {}  # per partition: its first record held (the prefix rule)
        for p, idx in members.items():
            failing = idx[fails[idx]]
            first_held[p] = int(failing[0]) if len(failing) else len(parts)
        # a record at exactly the cutoff past its partition's share is taken while the quota
        # lasts, in buffer order; any record taken at the cutoff uses up the quota
        for i in np.flatnonzero(txn & (times == cutoff)).tolist():
            p = int(parts[i])
            if first_held[p] <= i:
                continue
            if rank[i] >= share and quota <= 0:
                first_held[p] = i
                continue
            quota -= 1
        holding = np.zeros(len(parts), dtype=bool)
        for p, idx in members.items():
            holding[idx[idx >= first_held[p]]] = True
        if not holding.any():
            return buffer, []
        take, hold = columnar.split(buffer, holding)
        if not take and not too_far.any():  # never stall on records out of order in a
            return buffer, []  # partition
        self._taken_parsed, held_parsed = parsed.split(holding)
        self._held = (hold, parts[holding], times[holding], held_parsed)
        self._waiting = not take
        return take, hold

    def _skew_ceiling(self, newest: dict[int, int]) -> int | None:
        """The event time (µs) no record may pass in this batch, whatever its share: what
        the slowest live owned partition has reached (its newest buffered record, or its
        stream time when nothing of it is buffered) plus MAX_PARTITION_SKEW_US. A partition
        _pace paused with nothing buffered counts only while _pace would resume it (it then
        delivers); one further ahead does not, as the others must move for it to resume.

        Without it a partition with many buffered records and no competitor in the buffer
        (the others paused, or refetching after a resume) went through in one batch: at
        start-up on a backlog, partitions ran ~190 h apart, and terminal updates from the
        ones behind came later than TERMINAL_REORDER_SLACK_US and were dropped. None when
        no live partition has a reach."""
        reached: list[int] = []
        resume_below = self._resume_below()
        for part in self._owned - self._at_end:
            at = newest.get(part, UNREADABLE)
            if at == UNREADABLE:  # nothing (readable) of it buffered
                t = self.stream_time.get(part, 0)
                if part not in self._paused or t <= resume_below:
                    reached.append(t)
                continue
            reached.append(at)
        if not reached:
            return None
        return min(reached) + MAX_PARTITION_SKEW_US

    def _resume_below(self) -> int:
        """_pace resumes a paused partition whose stream time is at most this: the slowest
        live owned partition's stream time plus half of MAX_PARTITION_SKEW_US."""
        live = self._owned - self._at_end
        slowest = min((self.stream_time.get(p, 0) for p in live), default=0)
        return slowest + MAX_PARTITION_SKEW_US // 2

    def _count(self, msgs: list[Message], consumer: Consumer) -> None:
        """Stop fetching a partition once the buffer holds _hold_limit of its records (what
        goes into a batch is _select's business, in shares and event time); _pace resumes
        it. ``msgs``: the records one poll added to the buffer."""
        self._waiting = False
        owned, paused, buffered = self._owned, self._paused, self._buffered
        hold_limit = self._hold_limit()
        counts = Counter([m.partition() or 0 for m in msgs if m.topic() == TRANSACTIONS])
        back = self._at_end.intersection(counts)
        if back:  # new data, or only records from before the end they reported?
            self._at_end -= partition_end.delivered_past_end(msgs, back, self._end_offset)
        for part, count in counts.items():
            if part not in owned:
                continue
            n = buffered[part] = buffered.get(part, 0) + count
            if n >= hold_limit and part not in paused:
                consumer.pause([TopicPartition(TRANSACTIONS, part)])
                paused.add(part)

    def _on_eof(self, m: Message) -> None:
        """A partition at its end holds no other back until a record past that end arrives
        (_count); committing the records it delivered before does not change that."""
        self._waiting = False
        if m.topic() == TRANSACTIONS:
            part = m.partition() or 0
            self._at_end.add(part)
            self._caught_up.add(part)
            self._end_offset[part] = m.offset() or 0  # the next offset to be written

    def _pace(self, consumer: Consumer) -> None:
        """Keep the owned `transactions` partitions within MAX_PARTITION_SKEW_US of each
        other in event time (Kafka Streams does the same by picking the lowest timestamp).

        A catch-up or a replay would otherwise let one partition run days ahead of another;
        terminal state, fed by all of them through the repartition topic, would then see
        events too far out of order. A partition that has reached its end does not hold the
        others back; one that has not delivered yet does (it soon delivers or ends). Records
        held back for the next batch count towards its hold limit (a partition that already
        holds that many stays paused): their partitions are those _select keeps with them.
        """
        held_parts = self._held[1]
        counts = np.bincount(held_parts[held_parts >= 0])
        self._buffered = {p: int(counts[p]) for p in np.flatnonzero(counts).tolist()}
        full = {p for p, n in self._buffered.items() if n >= self._hold_limit()}
        live = [p for p in self._owned if p not in self._at_end]
        ahead: set[int] = set()
        if len(live) < 2:
            to_resume = set(self._paused)
        else:
            times = {p: self.stream_time.get(p, 0) for p in self._owned}
            slowest = min(times[p] for p in live)
            ahead = {p for p in live if times[p] > slowest + MAX_PARTITION_SKEW_US}
            resume_below = self._resume_below()
            to_resume = {p for p in self._paused if times[p] <= resume_below} - ahead
        to_resume -= full
        to_pause = ((ahead | full) & self._owned) - self._paused
        if to_pause:
            consumer.pause([TopicPartition(TRANSACTIONS, p) for p in to_pause])
            self._paused |= to_pause
            self._waiting = False  # a paused partition no longer caps the others
        if to_resume:
            consumer.resume([TopicPartition(TRANSACTIONS, p) for p in to_resume])
            self._paused -= set(to_resume)

    def _load_offsets(self) -> dict[str, Any]:
        raw = cast(dict[bytes, bytes], self.redis.hgetall(offsets_key(self.group_id)))
        doc = {k.decode(): v.decode() for k, v in raw.items()}
        self.next_offsets = {}
        # a topic whose stored id differs was recreated; no stored id is a first start
        stale = {t for t, i in self._topic_ids.items() if doc.get(f"id:{t}") not in (None, i)}
        for topic in sorted(stale):
            log.warning("topic %s was recreated (broker restart?); reading it from the start; "
                        "txn_ids in the state keep replayed events from counting twice", topic)
        for k, v in doc.items():
            if k.startswith("o:"):
                topic, _, part = k[2:].rpartition(":")
                if topic not in stale:
                    self.next_offsets[(topic, int(part))] = int(v)
            elif k.startswith("t:"):
                self.stream_time[int(k[2:])] = int(v)
        return doc

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._waiting = False
        self._load_offsets()  # another instance may have moved them while we were away
        for tp in partitions:
            tp.offset = self.next_offsets.get((tp.topic, tp.partition), OFFSET_BEGINNING)
        if partitions:
            self.redis.mset({changelog.owner_key(self.group_id, tp.topic, tp.partition):
                             self.token for tp in partitions})
        for tp in partitions:
            self.restore_partition(tp.topic, tp.partition)
        consumer.assign(partitions)
        self._owned |= {tp.partition for tp in partitions if tp.topic == TRANSACTIONS}
        self._owned_terminal |= {tp.partition for tp in partitions
                                 if tp.topic == TRANSACTIONS_BY_TERMINAL}
        self._assigned = True
        self._assigned_at = time.monotonic()  # idleness counts from here
        log.info("assigned", extra={"partitions": [f"{tp.topic}:{tp.partition}@{tp.offset}"
                                                   for tp in partitions]})

    # --- state --------------------------------------------------------------------------
    def restore_partition(self, topic: str, part: int) -> None:
        """Rebuild a partition's state from its snapshot and changelog (pipelines/stream/
        changelog.py), replaying the changelog through the code that applied it live."""
        snap, batches = changelog.load_batches(self.redis, self.group_id, topic, part)
        kinds: tuple[Entity, ...] = ("card", "customer") if topic == TRANSACTIONS \
            else ("terminal",)
        count = self._partitions.get(topic) or partitions_for(topic, self.settings)
        rebuilt = 0
        logged = {e[2] if topic == TRANSACTIONS else e[0] for b in batches for e in b}
        for kind in kinds:  # the span a longer window needs and the snapshot lacks: the lake
            table = self.tables[kind][part] = self._new_table(kind)
            done = rebuild.restore(table, part, snap, self.settings.lake_dir, count, logged)
            self._complete_after[(kind, part)] = done.complete_after if done else None
            rebuilt += done.events if done else 0
        self.stats.rebuilt += rebuilt
        epoch = datetime.fromtimestamp(0, UTC)
        for entries in batches:  # expired after each, as the live run did (_expire)
            if topic == TRANSACTIONS:
                for card_id, customer_id, *rest in entries:
                    event = cast(Event, tuple(rest))
                    card = self._log("card", part, card_id)
                    customer = self._log("customer", part, customer_id)
                    if self._place(card, event) is not None:
                        self._evict("card", card)
                    if self._place(customer, event) is not None:
                        self._evict("customer", customer)
                    for rule in self.rules:  # the alert marks, as the live run left them
                        evaluate(card_id, customer_id, card, rule, epoch)
                self._put_back()
            elif entries:
                self.tables["terminal"][part].apply(
                    [terminal_id for _, _, terminal_id in entries],
                    [txn_id for txn_id, _, _ in entries],
                    np.array([time_us for _, time_us, _ in entries], np.int64))
            self._expire(topic, part)
        entries_count = sum(len(entries) for entries in batches)
        # rebuilt: the next batch snapshots it, so a restart need not read the lake again
        self._since_snapshot[(topic, part)] = changelog.SNAPSHOT_EVENTS if rebuilt \
            else entries_count
        if entries_count or snap:
            log.info("state restored", extra={"partition": f"{topic}:{part}",
                                              "changelog_events": entries_count})

    def _kept(self, topic: str, part: int) -> dict[str, tuple[int, int, tuple[int, ...]]]:
        """Per entity type of a partition: (the span its state holds every event of, its
        clock, its event fields), for its snapshot (changelog.snapshot_document,
        rebuild.kept_for)."""
        kinds: tuple[Entity, ...] = ("card", "customer") if topic == TRANSACTIONS \
            else ("terminal",)
        return {kind: (rebuild.kept_for(table, self._complete_after.get((kind, part))),
                       table.clock, table.fields)
                for kind in kinds if (table := self.tables[kind].get(part)) is not None}

    def _place(self, state: EventLog, event: Event) -> int | None:
        """Insert an event into a card's or customer's state; the event's index, or None
        when it is too late to be placed (its history is gone)."""
        if state.times and event[TIME] < state.times[-1] - self.lateness_us:
            return None
        return state.add(event)

    def _new_table(self, entity: Entity) -> EntityArrays:
        return EntityArrays(self.windows[entity], self._kept_us(entity), self._slack_us(entity),
                            keep_ids=entity != "card")  # duplicates: customers, terminals

    def _table(self, entity: Entity, part: int) -> EntityArrays:
        table = self.tables[entity].get(part)
        if table is None:
            table = self.tables[entity][part] = self._new_table(entity)
        return table

    def _log(self, entity: Entity, part: int, key: str) -> EventLog:
        """An entity's state as an EventLog, checked out of its partition's arrays for
        work event by event (the per-event path, a changelog replay) until _put_back."""
        out = self._out[(entity, part)]
        state = out.get(key)
        if state is None:
            state = out[key] = self._table(entity, part).checkout(key)
        return state

    def _put_back(self) -> None:
        """Hand every checked-out EventLog back to its arrays."""
        for (entity, part), logs in self._out.items():
            self._table(entity, part).put(logs)
        self._out.clear()

    def _slack_us(self, entity: Entity) -> int:
        """How far before its entity's latest event an event may still be placed: the
        lateness (for terminals, the reorder slack)."""
        return self.terminal_slack_us if entity == "terminal" else self.lateness_us

    def _kept_us(self, entity: Entity) -> int:
        """How far behind an entity's latest event its state keeps events: the longest
        window plus the slack."""
        return self.windows[entity].horizon_us + self._slack_us(entity)

    def _evict(self, entity: Entity, state: EventLog) -> None:
        state.evict_before(state.times[-1] - self._kept_us(entity))

    def _expire(self, topic: str, part: int) -> None:
        """Drop the partition's entities whose windows and slack are over (EntityArrays.
        expire): after each batch that changed the partition (its changelog entries), and
        after each changelog batch a restore replays, so live and restored state agree."""
        kinds: tuple[Entity, ...] = ("card", "customer") if topic == TRANSACTIONS \
            else ("terminal",)
        for kind in kinds:
            table = self.tables[kind].get(part)
            if table is not None:
                self.stats.expired += table.expire()

    def state_size(self) -> dict[Entity, tuple[int, int]]:
        """Per entity type: (entities, events) held over every partition (a metric)."""
        return {e: (sum(t.entities for t in self.tables[e].values()),
                    sum(len(t) for t in self.tables[e].values())) for e in ENTITIES}

    def partition_state(self, topic: str, part: int) -> dict[str, dict[str, Any]]:
        """A partition's state as a document (what a snapshot holds)."""
        kinds: tuple[Entity, ...] = ("card", "customer") if topic == TRANSACTIONS \
            else ("terminal",)
        return {kind: self.tables[kind][part].snapshot() if part in self.tables[kind] else {}
                for kind in kinds}

    # --- one batch ----------------------------------------------------------------------
    def _commit_batch(self, buffer: list[Message], consumer: Consumer,
                      producer: EventProducer, parsed: batch_decode.Parsed | None = None
                      ) -> None:
        """Apply and commit ``buffer`` (emptied). ``parsed``: its records as the intake
        parsed them (aligned with it; None: not parsed yet, as on revoke)."""
        if not buffer:
            return
        batch, buffer[:] = list(buffer), []
        if parsed is not None and len(parsed) != len(batch):
            parsed = None
        started = time.perf_counter()
        before = self._counts()
        rows: dict[Entity, list[dict[str, Any]]] = defaultdict(list)
        columns: dict[Entity, list[ColumnBlock]] = defaultdict(list)
        online: dict[Entity, dict[str, tuple[dict[str, Any], int]]] = defaultdict(dict)
        topics = [m.topic() or "" for m in batch]
        last = _last_of_each(topics, [m.partition() or 0 for m in batch])
        next_offsets = {key: (batch[i].offset() or 0) + 1 for key, i in last.items()}
        newest = {str(part): batch[i].timestamp()[1] for (topic, part), i in last.items()
                  if topic == TRANSACTIONS}
        self._caught_up.difference_update(int(part) for part in newest)
        txns = batch if len(last) == len(newest) else [
            m for m, topic in zip(batch, topics, strict=True) if topic == TRANSACTIONS]
        if parsed is not None and txns is not batch:
            parsed = parsed.select([topic == TRANSACTIONS for topic in topics])
        now = datetime.now(UTC)
        if self.columnar:
            produced_at = self._apply_columnar(batch, txns, rows, columns, online, producer,
                                               now, parsed)
        else:
            produced_at = self._apply_per_event(batch, rows, columns, online, producer, now)
        for topic, part in list(self._changes):  # the partitions this batch changed
            self._expire(topic, part)
        self.metrics.observe_state(self.state_size())
        batch_id = f"{time.time_ns() // 1_000_000:013d}-{uuid.uuid4().hex[:6]}"
        timing = self.stats.stage_ms
        t0 = time.perf_counter()
        # the offline rows are written and fsynced in the background while the commit is
        # encoded and the Kafka side effects are flushed; the commit waits for both
        staging = self._io.submit(self.offline.stage, batch_id, rows,
                                  {entity: [_concat(blocks)] for entity, blocks in columns.items()})
        # fenced: every partition the batch read, and every partition whose state it changed
        # (terminal partitions updated in-process are not read from)
        fenced = set(next_offsets) | set(self._changes)
        written = sum(len(v) for v in online.values()) + sum(
            len(keys) for blocks in self._online_blocks.values() for keys, _, _ in blocks)
        tx = self._build_commit(batch_id, online, next_offsets)
        t1 = time.perf_counter()
        producer.flush()  # side effects are out before the commit point
        t2 = time.perf_counter()
        after = self._counts()
        outcomes = {k: after[k] - before[k] for k in after}
        alerts, self._alerts_by_rule = dict(self._alerts_by_rule), defaultdict(int)
        timing["apply"] += (t0 - started) * 1000
        timing["commit_encode"] += (t1 - t0) * 1000
        timing["kafka_flush"] += (t2 - t1) * 1000
        self._await_commit(consumer)  # the batch before lands first: commits stay in order
        landing = self._committer.submit(self._land, batch_id, staging, tx, fenced,
                                         produced_at, outcomes, alerts, written, newest)
        self._in_flight = (landing, next_offsets)

    def _land(self, batch_id: str, staging: Future[None], tx: RespTransaction,
              fenced: set[tuple[str, int]], produced_at: list[int], outcomes: dict[str, int],
              alerts: dict[str, int], written: int, newest: dict[str, int]) -> None:
        """Make a batch durable and visible (the commit thread, while the next batch is
        applied): its offline rows staged, then the fenced Redis transaction that holds its
        feature rows, state changes and offsets, then its offline files published."""
        timing = self.stats.stage_ms
        t2 = time.perf_counter()
        staging.result()  # durable before the commit point
        t3 = time.perf_counter()
        guard = {changelog.owner_key(self.group_id, t, p): self.token for t, p in fenced}
        if tx.execute(self.redis, guard=guard) is None:  # the commit point, fenced
            self._io.submit(self.offline.discard, batch_id).result()
            lost = sorted(f"{t}:{p}" for t, p in fenced)
            raise changelog.PartitionLost(
                f"another instance of group {self.group_id!r} owns one of {lost}; this "
                "batch was not committed. Restart `kestrel stream` to rejoin the group.")
        t4 = time.perf_counter()
        self.offline.publish(batch_id)
        t5 = time.perf_counter()
        timing["offline_stage_wait"] += (t3 - t2) * 1000
        timing["redis_commit"] += (t4 - t3) * 1000
        timing["offline_publish"] += (t5 - t4) * 1000
        self.stats.last_commit_at = time.monotonic()
        done_ms = time.time() * 1000
        freshness_ms = [done_ms - t for t in produced_at if t > 0]
        if self.keep_freshness:
            self.stats.freshness_ms.extend(freshness_ms)
        self.stats.batches += 1
        self.metrics.observe_batch(outcomes, alerts, written,
                                   [f / 1000 for f in freshness_ms], newest)
        with contextlib.suppress(redis.RedisError):  # a summary for `kestrel status`
            self.metrics.publish(self.redis)

    def _await_commit(self, consumer: Consumer) -> None:
        """Wait for the batch in flight to land, raising what its commit raised, then tell
        the group its offsets (advisory, for `kestrel status`: the offsets that count are
        in Redis with the state)."""
        if self._in_flight is None:
            return
        landing, next_offsets = self._in_flight
        self._in_flight = None
        landing.result()
        with contextlib.suppress(Exception):
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o
                                     in next_offsets.items()], asynchronous=True)

    def _apply_per_event(self, batch: list[Message],
                         rows: dict[Entity, list[dict[str, Any]]],
                         columns: dict[Entity, list[ColumnBlock]],
                         online: dict[Entity, dict[str, tuple[dict[str, Any], int]]],
                         producer: EventProducer, now: datetime) -> list[int]:
        """The reference path for cards and customers (parity's capture, and what the
        columnar path is tested against): each record decoded and applied on its own, in
        order, to its card and customer checked out as EventLogs (put back at the end).
        Terminal updates are applied at the end of the batch, as in the columnar path
        (terminal state is its own; tests/stream/test_entity_arrays.py holds its reference)."""
        produced_at: list[int] = []
        for m in batch:
            if m.topic() != TRANSACTIONS:
                continue
            part = m.partition() or 0
            try:
                txn = records.decode(m.value())
            except EventValidationError as exc:
                self._dead_letter(m, exc, producer)
                continue
            if self._apply_txn(txn, part, m, producer, rows, online, now):
                produced_at.append(m.timestamp()[1])
        self._put_back()
        self._apply_terminals(batch, producer, columns)
        return produced_at

    def _dead_letter(self, m: Message, error: EventValidationError,
                     producer: EventProducer) -> None:
        self.stats.invalid += 1
        key, value = dead_letter(m.topic() or TRANSACTIONS, m.partition() or 0,
                                 m.offset() or 0, m.value(), error, self.group_id)
        producer.produce(TRANSACTIONS_DLQ, key, value)

    def terminal_partition(self, terminal_id: str) -> int:
        """The `transactions.by-terminal` partition of a terminal: librdkafka's default
        (consistent_random: CRC32 of the key), computed here so that the in-process path
        and the topic agree by construction (forwarded records name it explicitly)."""
        part = self._terminal_part.get(terminal_id)
        if part is None:
            count = self._partitions.get(TRANSACTIONS_BY_TERMINAL) or partitions_for(
                TRANSACTIONS_BY_TERMINAL, self.settings)
            part = self._terminal_part[terminal_id] = zlib.crc32(terminal_id.encode()) % count
        return part

    def _local_terminals(self) -> bool:
        """This instance owns every partition of both topics: the repartition round trip
        through Kafka would bring every terminal update back to this process, so it is
        applied in-process instead (same partition, same state, same order of application
        within the batch as a consumer of the topic would see)."""
        return bool(self._partitions) and len(self._owned) == self._partitions.get(
            TRANSACTIONS, -1) and len(self._owned_terminal) == self._partitions.get(
            TRANSACTIONS_BY_TERMINAL, -1)

    def _route_terminal(self, producer: EventProducer) -> _Updates | None:
        """The batch's terminal updates, in event-time order (the batch mixes partitions
        that may be apart in event time; terminal state tolerates reordering only within
        TERMINAL_REORDER_SLACK_US; updates of equal time keep their order, which changes
        no row: a terminal's features are counts): forwarded to
        `transactions.by-terminal`, or returned to be applied in this batch when
        _local_terminals."""
        blocks, self._forward = self._forward, []
        if self._forward_rows:
            times, terminals, txns = zip(*self._forward_rows, strict=True)
            blocks.append((np.array(times, np.int64), np.array(terminals, dtype=object),
                           np.array(txns, dtype=object)))
            self._forward_rows = []
        if not blocks:
            return None
        time_us = np.concatenate([b[0] for b in blocks])
        order = np.argsort(time_us, kind="stable")
        time_us = time_us[order]
        terminal = np.concatenate([b[1] for b in blocks])[order]
        txn = np.concatenate([b[2] for b in blocks])[order]
        encoded = columnar.strings(terminal).dictionary_encode()
        known, part_of = self._terminal_part, self.terminal_partition
        parts = np.array([known[t] if t in known else part_of(t)
                          for t in encoded.dictionary.to_pylist()], np.int64)[
            encoded.indices.to_numpy()]
        if self._local_terminals():
            return _Updates(parts, txn, time_us, terminal)
        for part, t, terminal_id, txn_id in zip(parts.tolist(), time_us.tolist(),
                                                terminal.tolist(), txn.tolist(), strict=True):
            producer.produce(TRANSACTIONS_BY_TERMINAL, terminal_id,
                             orjson.dumps([txn_id, t, terminal_id]), partition=part)
        return None

    def _apply_columnar(self, batch: list[Message], txns: list[Message],
                        rows: dict[Entity, list[dict[str, Any]]],
                        columns: dict[Entity, list[ColumnBlock]],
                        online: dict[Entity, dict[str, tuple[dict[str, Any], int]]],
                        producer: EventProducer, now: datetime,
                        parsed: batch_decode.Parsed | None = None) -> list[int]:
        """The batch decoded at once (batch_decode; from ``parsed``, the intake's parse of
        ``txns``, when given), the sequential checks per partition (_accept), then per
        partition each entity type's events at once (_apply_entities)."""
        cols = batch_decode.decode_batch([m.value() for m in txns], parsed)
        for i, exc in cols.errors.items():
            self._dead_letter(txns[i], exc, producer)
        accepted, parts = self._accept(txns, cols, producer)
        self.stats.applied += len(accepted)
        if not accepted:
            self._apply_terminals(batch, producer, columns)
            return []

        def pick(column: list[Any], dtype: Any = object) -> np.ndarray:
            values = column if len(accepted) == cols.n else [column[i] for i in accepted]
            return np.array(values, dtype)

        txn, card, customer = pick(cols.txn_id), pick(cols.card_id), pick(cols.customer_id)
        time_us, terminal = pick(cols.time_us, np.int64), pick(cols.terminal_id)
        values = dict(zip(VALUES, (  # by Event field
            pick(cols.amount, np.float64), pick(cols.country), terminal, pick(cols.mcc),
            pick(cols.lat, np.float64), pick(cols.lon, np.float64)), strict=True))
        self._recent_customers += customer.tolist()
        self._recent_docs.append(recent.entries(cols, accepted))
        produced_at = [txns[i].timestamp()[1] for i in accepted]
        self._forward.append((time_us, terminal, txn))
        part_of = np.array(parts, np.int64)
        for part in np.unique(part_of).tolist():
            sel = np.flatnonzero(part_of == part)
            event = {f: column[sel] for f, column in values.items()}
            ids, times = txn[sel], time_us[sel]
            cards, customers = card[sel], customer[sel]
            self._changes[(TRANSACTIONS, part)].add_columns(
                [cards, customers, ids, times, *[event[f] for f in VALUES]])
            pairs: tuple[tuple[Entity, np.ndarray], ...] = (("card", cards),
                                                             ("customer", customers))
            for entity, keys in pairs:
                self._apply_entities(entity, part, keys, ids, times, event, customers, rows,
                                     columns, online, producer, now)
        self._apply_terminals(batch, producer, columns)
        return produced_at

    def _apply_entities(self, entity: Entity, part: int, keys: np.ndarray, ids: np.ndarray,
                        times: np.ndarray, event: dict[int, np.ndarray],
                        customers: np.ndarray,
                        rows: dict[Entity, list[dict[str, Any]]],
                        columns: dict[Entity, list[ColumnBlock]],
                        online: dict[Entity, dict[str, tuple[dict[str, Any], int]]],
                        producer: EventProducer, now: datetime) -> None:
        """One partition's events of a batch applied to one entity type's arrays at once;
        the cards that may raise an alert (a window of a rule holds its count) are handed
        back and go event by event here (``_apply``, rules.evaluate), then back in."""
        table = self._table(entity, part)
        rules = [(r.window_us, r.min_count) for r in self.rules] if entity == "card" else []
        applied = table.apply(keys, ids, times, {f: event[f] for f in table.fields}, rules)
        self.stats.late_for_entity += len(times) - int(applied.accepted.sum())
        if applied.rows is not None and applied.latest is not None:
            columns[entity].append(applied.rows)
            self._online_blocks[entity].append(applied.latest)
        if not applied.slow:
            return
        fields = [ids.tolist(), times.tolist(), *[event[f].tolist() for f in VALUES]]
        owners = customers.tolist()
        for key, (state, positions) in applied.slow.items():
            for i in positions:
                self._apply(entity, key, state, cast(Event, tuple(f[i] for f in fields)), rows,
                            online)
                for rule in self.rules:
                    alert = evaluate(key, owners[i], state, rule, now)
                    if alert is not None:
                        self.stats.alerts += 1
                        self._alerts_by_rule[rule.name] += 1
                        producer.produce(ALERTS, key, orjson.dumps(alert))
        table.put({key: state for key, (state, _) in applied.slow.items()})

    def _forwarded(self, batch: list[Message], producer: EventProducer
                   ) -> list[tuple[int, str, int, str]]:
        """The batch's records of `transactions.by-terminal` as (partition, txn_id, time
        µs, terminal_id). The stream writes them (_route_terminal), but any producer can:
        a record that is not ``[txn_id, time, terminal_id]`` with identifiers that are not
        PAN-like and a time within TimeBounds goes to the DLQ. The ids are checked for
        PAN-like runs at once, joined (kestrel.pan.ascii_pan_like)."""
        out: list[tuple[int, str, int, str]] = []
        taken: list[Message] = []
        others = [m for m in batch if m.topic() != TRANSACTIONS]
        if not others:
            return out
        earliest, newest = self._earliest_us, self._newest_allowed_us()
        for m in others:
            try:
                doc = orjson.loads(m.value() or b"")
            except orjson.JSONDecodeError:
                doc = None
            if not (type(doc) is list and len(doc) == 3 and type(doc[1]) is int
                    and records.is_identifier(doc[0]) and records.is_identifier(doc[2])):
                self._dead_letter(m, EventValidationError([FieldError(
                    "$", "must be [txn_id, event time in µs, terminal_id], as the stream "
                    "forwards a transaction")]), producer)
            elif not earliest <= doc[1] <= newest:
                self._dead_letter(m, self._time_error(doc[1]), producer)
            else:
                out.append((m.partition() or 0, doc[0], doc[1], doc[2]))
                taken.append(m)
        if out and ascii_pan_like("\x00".join(  # identifiers: ASCII
                [f"{u[1]}\x00{u[3]}" for u in out]).encode()):
            kept = []
            for u, m in zip(out, taken, strict=True):
                if ascii_pan_like(f"{u[1]}\x00{u[3]}".encode()):
                    self._dead_letter(m, EventValidationError([FieldError(
                        "$", f"an identifier {PAN_LIKE_REASON}")]), producer)
                else:
                    kept.append(u)
            out = kept
        return out

    def _apply_terminals(self, batch: list[Message], producer: EventProducer,
                         columns: dict[Entity, list[ColumnBlock]]) -> None:
        """The batch's terminal updates — the ones that came through
        `transactions.by-terminal`, then this batch's own (_route_terminal) — applied per
        partition at once (entity_arrays.py), each once: one the partition already holds
        (forwarded again in a replay after a crash), or one already taken in this batch, is
        skipped. Rows go out as columns, changelog entries as (txn_id, time µs,
        terminal_id)."""
        forwarded = self._forwarded(batch, producer)  # through the topic
        updates = self._route_terminal(producer)
        if forwarded:
            parts, txns, times, terminals = zip(*forwarded, strict=True)
            through = _Updates(np.array(parts, np.int64), np.array(txns, dtype=object),
                               np.array(times, np.int64), np.array(terminals, dtype=object))
            updates = through if updates is None else through.then(updates)
        if updates is None:
            return
        # none can repeat when nothing came through the topic and this batch's own txn_ids
        # are distinct (_accept dropped duplicates, but not across partitions)
        txn_ids = updates.txn.tolist()
        if forwarded or len(set(txn_ids)) < len(txn_ids):
            seen: set[tuple[int, str]] = set()
            first = np.ones(len(txn_ids), bool)
            for i, key in enumerate(zip(updates.part.tolist(), txn_ids, strict=True)):
                if key in seen:
                    first[i] = False
                seen.add(key)
            updates = updates.select(first)
        for part in np.unique(updates.part).tolist():
            mine = updates.select(updates.part == part)
            table = self._table("terminal", part)
            if table.ids and not table.ids.isdisjoint(ids := mine.txn.tolist()):
                mine = mine.select(np.array([t not in table.ids for t in ids], bool))
            applied = table.apply(mine.terminal, mine.txn, mine.time)
            placed = int(applied.accepted.sum())
            self.stats.terminal_applied += placed
            self.stats.late_for_entity += len(mine.time) - placed
            if placed:
                if placed < len(mine.time):
                    mine = mine.select(applied.accepted)
                self._changes[(TRANSACTIONS_BY_TERMINAL, part)].add_columns(
                    [mine.txn, mine.time, mine.terminal])
            if applied.rows is not None and applied.latest is not None:
                columns["terminal"].append(applied.rows)
                self._online_blocks["terminal"].append(applied.latest)

    def _accept(self, txns: list[Message], cols: batch_decode.TxnColumns,
                producer: EventProducer) -> tuple[list[int], list[int]]:
        """The sequential part of applying transactions, for the whole batch: lateness
        against the partition's stream time, then duplicates (this batch, or the
        partition's customer state); returns the positions of the accepted ones, which move
        the stream time, and their partitions.

        Without duplicates (the common case: every txn_id of the batch distinct and none
        held) this is array arithmetic per partition — a record is late when it is older
        than the running maximum of the times before it (the partition's stream time
        included) minus the lateness; a late record never raises that maximum, so it may
        count in it. A duplicate may (it does not move the stream time), so a batch with one
        goes record by record (_accept_in_order, the reference; tests compare the two)."""
        n = cols.n
        errors = cols.errors
        valid = np.ones(n, bool)
        if errors:
            valid[list(errors)] = False
        times = np.array([0 if t is None else t for t in cols.time_us] if errors
                         else cols.time_us, np.int64)
        ids = cols.txn_id if not errors else [t for t, v in zip(
            cols.txn_id, valid.tolist(), strict=True) if v]
        if len(set(ids)) < len(ids):
            return self._accept_in_order(txns, cols, producer)
        parts = np.array([m.partition() or 0 for m in txns], np.int64)
        newest_allowed = self._newest_allowed_us()
        refused = valid & ((times < self._earliest_us) | (times > newest_allowed))
        candidates = valid & ~refused
        txn_ids = np.array(cols.txn_id, dtype=object)
        late = np.zeros(n, bool)
        moved: dict[int, int] = {}
        for part in np.unique(parts[candidates]).tolist():
            idx = np.flatnonzero(candidates & (parts == part))
            held = self.tables["customer"].get(part)
            if held is not None and held.ids and not held.ids.isdisjoint(
                    txn_ids[idx].tolist()):
                return self._accept_in_order(txns, cols, producer)
            t = times[idx]
            now = self.stream_time.get(part, 0)
            reach = np.maximum.accumulate(np.concatenate(([now], t)))
            late[idx] = t < reach[:-1] - self.lateness_us
            moved[part] = max(now, int(reach[-1]))
        for i in np.flatnonzero(refused).tolist():
            self._dead_letter(txns[i], self._time_error(int(times[i])), producer)
        for i in np.flatnonzero(late).tolist():
            producer.produce(TRANSACTIONS_LATE, txns[i].key(), records.late_value(txns[i].value()))
        self.stats.late += int(late.sum())
        self.stream_time.update(moved)
        accepted = np.flatnonzero(candidates & ~late)
        return accepted.tolist(), parts[accepted].tolist()

    def _accept_in_order(self, txns: list[Message], cols: batch_decode.TxnColumns,
                         producer: EventProducer) -> tuple[list[int], list[int]]:
        """_accept record by record."""
        lateness, stream_time = self.lateness_us, self.stream_time
        held = {part: table.ids for part, table in self.tables["customer"].items()}
        ids, times, custs = cols.txn_id, cols.time_us, cols.customer_id
        errors = cols.errors
        check_batch = len(set(ids)) < len(ids)  # the same txn_id twice in this batch
        seen: set[tuple[int, str, str]] = set()
        accepted: list[int] = []
        parts: list[int] = []
        late = 0
        newest_allowed, earliest = self._newest_allowed_us(), self._earliest_us
        for i, m in enumerate(txns):
            if i in errors:
                continue
            t = times[i]
            if t < earliest or t > newest_allowed:
                self._dead_letter(m, self._time_error(t), producer)
                continue
            part = m.partition() or 0
            now = stream_time.get(part, 0)
            if t < now - lateness:
                late += 1
                producer.produce(TRANSACTIONS_LATE, m.key(), records.late_value(m.value()))
                continue
            txn_id, customer = ids[i], custs[i]
            if check_batch:
                mark = (part, customer, txn_id)
                if mark in seen:
                    self.stats.duplicates += 1
                    continue
            ids_held = held.get(part)
            if ids_held is not None and txn_id in ids_held:
                self.stats.duplicates += 1
                continue
            if check_batch:
                seen.add(mark)
            if t > now:
                stream_time[part] = t
            accepted.append(i)
            parts.append(part)
        self.stats.late += late
        return accepted, parts

    def _newest_allowed_us(self) -> int:
        """The latest event time accepted now (TimeBounds: the processor's clock plus
        ``event_time_ahead``, by default the allowed lateness). A later one (a producer with
        a wrong clock) would move its partition's stream time so far ahead that on-time
        events after it would count as late."""
        return time.time_ns() // 1000 + self._ahead_us

    def _time_error(self, time_us: int) -> EventValidationError:
        """Why an event time the stream cannot take is refused: outside TimeBounds (before
        ``event_time_earliest``; dated past _newest_allowed_us: check the producer's clock),
        or before 1970 (the online store's timestamps cannot hold it; a partition with no
        stream time yet would accept it, and its commit would fail on every restart)."""
        try:
            when = records.iso(time_us)
        except OverflowError:  # 0001-01-01T00:00+01:00 is in year 0 in UTC
            return EventValidationError([FieldError(
                "event_time", "is out of the range of representable UTC times")])
        reason = self.bounds.reason(datetime.fromisoformat(when))
        if reason is None:
            reason = ("is before 1970-01-01, which the online store cannot hold"
                      if time_us < self._earliest_us else
                      "is dated in the future (check the producer's clock)")
        return EventValidationError([FieldError("event_time", f"{when} {reason}")])

    def _counts(self) -> dict[str, int]:
        s = self.stats
        return {"applied": s.applied, "duplicate": s.duplicates, "late": s.late,
                "invalid": s.invalid}

    def _apply_txn(self, txn: records.Txn, part: int, m: Message, producer: EventProducer,
                   rows: dict[Entity, list[dict[str, Any]]],
                   online: dict[Entity, dict[str, tuple[dict[str, Any], int]]],
                   now: datetime) -> bool:
        if txn.time_us < self._earliest_us or txn.time_us > self._newest_allowed_us():
            self._dead_letter(m, self._time_error(txn.time_us), producer)
            return False
        stream_time = self.stream_time.get(part, 0)
        if txn.time_us < stream_time - self.lateness_us:
            self.stats.late += 1
            producer.produce(TRANSACTIONS_LATE, m.key(), records.late_value(m.value()))
            return False
        customer = self._log("customer", part, txn.customer_id)
        if txn.txn_id in customer.ids:
            self.stats.duplicates += 1
            return False
        self.stream_time[part] = max(stream_time, txn.time_us)
        event: Event = (txn.txn_id, txn.time_us, txn.amount, txn.country, txn.terminal_id,
                        txn.mcc, txn.lat, txn.lon)
        card = self._log("card", part, txn.card_id)
        pairs: tuple[tuple[Entity, str, EventLog], ...] = (
            ("card", txn.card_id, card), ("customer", txn.customer_id, customer))
        if self.capture is not None:
            served: dict[str, Any] = {}
            for entity, _, state in pairs:
                served.update(self.windows[entity].served_before(state, txn.time_us) or {})
            self.capture[txn.txn_id] = served
        for entity, key, state in pairs:
            self._apply(entity, key, state, event, rows, online)
        self._changes[(TRANSACTIONS, part)].add_row((txn.card_id, txn.customer_id, *event))
        self._recent_customers.append(txn.customer_id)
        self._recent_docs.append(recent.entry(
            txn_id=txn.txn_id, event_time=records.iso(txn.time_us), amount=txn.amount,
            currency=txn.currency, mcc=txn.mcc, country=txn.country,
            terminal_id=txn.terminal_id, card_id=txn.card_id, channel=txn.channel))
        for rule in self.rules:
            alert = evaluate(txn.card_id, txn.customer_id, card, rule, now)
            if alert is not None:
                self.stats.alerts += 1
                self._alerts_by_rule[rule.name] += 1
                producer.produce(ALERTS, txn.card_id, orjson.dumps(alert))
        self._forward_rows.append((txn.time_us, txn.terminal_id, txn.txn_id))
        self.stats.applied += 1
        return True

    def _apply(self, entity: Entity, key: str, state: EventLog, event: Event,
               rows: dict[Entity, list[dict[str, Any]]],
               online: dict[Entity, dict[str, tuple[dict[str, Any], int]]]) -> bool:
        """Insert an event into an entity's state and emit the rows it changes.

        In order, that is one row, as of the new event. Out of order (a late event, or a
        terminal update forwarded from a partition that is behind), the rows of every later
        event whose windows now include it are emitted again; the offline log keeps every
        version and Feast's point-in-time join takes the newest (``created``), so the final
        rows do not depend on the order in which events arrived.
        """
        ws = self.windows[entity]
        i = self._place(state, event)
        if i is None:
            self.stats.late_for_entity += 1
            return False  # its windows' history is gone; it cannot be placed any more
        t = event[TIME]
        stop = bisect_right(state.times, t + ws.horizon_us)
        key_name = ENTITY_KEYS[entity]
        for j in range(i, stop):
            feats = ws.features(state, j)
            row = dict(feats)
            row[key_name] = key
            row["event_timestamp"] = state.times[j]  # µs; Arrow stores it as a timestamp
            rows[entity].append(row)
        if stop < len(state.events):  # the loop ended before the latest event
            feats = ws.features(state)
        t_last = state.times[-1]
        online[entity][key] = (feats, t_last)
        self._evict(entity, state)
        return True

    def _build_commit(self, batch_id: str,
                      online: dict[Entity, dict[str, tuple[dict[str, Any], int]]],
                      next_offsets: dict[tuple[str, int], int]
                      ) -> RespTransaction:
        tx = RespTransaction()
        for entity, blocks in self._online_blocks.items():  # one block per partition: one
            keys = [key for block_keys, _, _ in blocks for key in block_keys]  # call per view
            values = _concat([block_values for _, block_values, _ in blocks])
            times = np.concatenate([block_times for _, _, block_times in blocks])
            self.online.write_columns(tx, stream_view_name(entity), keys, values, times)
        self._online_blocks.clear()
        for entity, by_key in online.items():
            self.online.write(tx, stream_view_name(entity), [
                (key, feats, t)
                for key, (feats, t) in by_key.items()])
        for (topic, part), entries in self._changes.items():
            since = self._since_snapshot.get((topic, part), 0) + len(entries)
            if since >= changelog.SNAPSHOT_EVENTS:
                tx.command("SET", changelog.snapshot_key(self.group_id, topic, part),
                           orjson.dumps(changelog.snapshot_document(
                               self.partition_state(topic, part), self._kept(topic, part))))
                tx.command("DEL", changelog.changelog_key(self.group_id, topic, part))
                since = 0
            else:
                tx.command("RPUSH", changelog.changelog_key(self.group_id, topic, part),
                           entries.encode())
            self._since_snapshot[(topic, part)] = since
        self._changes.clear()
        customers: pa.Array | None = None
        if self._recent_docs:
            payload, commands, customers = recent.push_commands(
                self._recent_customers, pa.concat_arrays(self._recent_docs))
            tx.raw(payload, commands)
        self._recent_customers, self._recent_docs = [], []
        mapping: dict[str, str | int] = {"batch": batch_id}
        for topic, topic_id in self._topic_ids.items():
            mapping[f"id:{topic}"] = topic_id
        for (topic, part), off in next_offsets.items():
            mapping[f"o:{topic}:{part}"] = off
        for part, t in self.stream_time.items():
            mapping[f"t:{part}"] = t
        tx.command("HSET", offsets_key(self.group_id),
                   *[x for kv in mapping.items() for x in kv])
        schema = self.settings.insight_schema_version
        if customers is not None and len(customers):
            tx.raw(resp_keys_command(b"DEL", partial(insight_cache_key, schema=schema),
                                     customers), 1)
        return tx
