"""The checkpoint: what one batch's commit holds and the steps that land it.

Offsets are stored with the state they produced (no Kafka transactions). Per batch:
1. the batch's offline-log rows are staged (fsynced, invisible), in the background while
   the rest is encoded;
2. the Kafka side effects (repartition, alerts, late, DLQ) are flushed (acknowledged);
3. one Redis MULTI/EXEC writes the coalesced online feature rows, the batch's changelog
   entries (the events it applied, per partition; now and then a snapshot instead, see
   changelog.py), the next offsets and stream times, the customers' recent transactions
   lists, and deletes the touched customers' insight cache entries — the commit point,
   fenced: it only goes through while every partition of the batch names this instance
   as its owner;
4. the staged offline rows are published.
Steps 1 (its wait), 3 and 4 run on a commit thread while the next batch is read and applied;
at most one commit is in flight, and the next waits for it (commits stay in order). Side
effects of step 2 may repeat after a crash (at least once): the repartition is deduplicated
downstream, alerts carry a stable alert_id.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from functools import partial
from typing import Any, Protocol

import numpy as np
import orjson
import pyarrow as pa
import redis
from confluent_kafka import Consumer, TopicPartition

from kestrel.producer import EventProducer
from kestrel.redis_keys import insight_cache_key
from kestrel.resp import RespTransaction, resp_keys_command
from kestrel.settings import Settings
from kestrel.windows import stream_view_name
from pipelines.stream import changelog, recent
from pipelines.stream.apply_path import BatchOutput
from pipelines.stream.metrics import StreamMetrics, StreamStats
from pipelines.stream.offline_log import OfflineLog
from pipelines.stream.partitions import Partitions, offsets_key


class OnlineSink(Protocol):
    """Adds online feature writes for one view to a (transactional) Redis pipeline."""

    def write(self, pipe: RespTransaction, view: str,
              rows: list[tuple[str, dict[str, Any], datetime | int]]) -> None:
        """rows: (entity value, features, event time as a datetime or µs since the epoch)"""

    def write_columns(self, pipe: RespTransaction, view: str, keys: list[str],
                      columns: dict[str, np.ndarray], times_us: np.ndarray) -> None:
        """The same writes from columns: keys[i] gets columns[f][i], stamped times_us[i]."""


def concat(blocks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Blocks of rows as columns (one per partition) as one block: the writers' cost per
    block (a few dozen array operations per column) is paid once per batch."""
    if len(blocks) == 1:
        return blocks[0]
    return {name: np.concatenate([block[name] for block in blocks]) for name in blocks[0]}


class Checkpoint:
    """Builds each batch's commit and lands it on the commit thread."""

    def __init__(self, settings: Settings, group_id: str, client: redis.Redis,
                 online: OnlineSink, offline: OfflineLog, partitions: Partitions,
                 metrics: StreamMetrics, stats: StreamStats, keep_freshness: bool) -> None:
        self.group_id = group_id
        self.insight_schema = settings.insight_schema_version
        self.redis = client
        self.online = online
        self.offline = offline
        self.partitions = partitions
        self.metrics = metrics
        self.stats = stats
        self.keep_freshness = keep_freshness
        self.topic_ids: dict[str, str] = {}  # recorded with the offsets (load_offsets)
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offline-log")
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        # the commit in flight, with the offsets to report once it landed
        self._in_flight: tuple[Future[None], dict[tuple[str, int], int]] | None = None

    @property
    def in_flight(self) -> bool:
        return self._in_flight is not None

    def commit(self, out: BatchOutput, next_offsets: dict[tuple[str, int], int],
               newest: dict[str, int], outcomes: dict[str, int], started: float,
               consumer: Consumer, producer: EventProducer) -> None:
        """Commit a batch applied into ``out`` (``started``: when applying it began, by
        time.perf_counter): steps 1 and 2 here, then 3 and 4 on the commit thread once the
        batch before has landed. ``newest``: per `transactions` partition, the produce
        time of its last record (for the lag metric); ``outcomes``: events by outcome."""
        batch_id = f"{time.time_ns() // 1_000_000:013d}-{uuid.uuid4().hex[:6]}"
        timing = self.stats.stage_ms
        t0 = time.perf_counter()
        # the offline rows are written and fsynced in the background while the commit is
        # encoded and the Kafka side effects are flushed; the commit waits for both
        staging = self._io.submit(self.offline.stage, batch_id, out.rows,
                                  {entity: [concat(blocks)]
                                   for entity, blocks in out.columns.items()})
        # fenced: every partition the batch read, and every partition whose state it changed
        # (terminal partitions updated in-process are not read from)
        fenced = set(next_offsets) | set(out.changes)
        written = out.written()
        tx = self.build(batch_id, out, next_offsets)
        t1 = time.perf_counter()
        producer.flush()  # side effects are out before the commit point
        t2 = time.perf_counter()
        timing["apply"] += (t0 - started) * 1000
        timing["commit_encode"] += (t1 - t0) * 1000
        timing["kafka_flush"] += (t2 - t1) * 1000
        self.await_landed(consumer)  # the batch before lands first: commits stay in order
        landing = self._committer.submit(self.land, batch_id, staging, tx, fenced,
                                         out.produced_at, outcomes, dict(out.alerts_by_rule),
                                         written, newest)
        self._in_flight = (landing, next_offsets)

    def build(self, batch_id: str, out: BatchOutput,
              next_offsets: dict[tuple[str, int], int]) -> RespTransaction:
        """The commit's Redis transaction (step 3)."""
        tx = RespTransaction()
        for entity, blocks in out.online_blocks.items():  # one block per partition: one
            keys = [key for block_keys, _, _ in blocks for key in block_keys]  # call per view
            values = concat([block_values for _, block_values, _ in blocks])
            times = np.concatenate([block_times for _, _, block_times in blocks])
            self.online.write_columns(tx, stream_view_name(entity), keys, values, times)
        for entity, by_key in out.online.items():
            self.online.write(tx, stream_view_name(entity), [
                (key, feats, t)
                for key, (feats, t) in by_key.items()])
        since_snapshot = self.partitions.since_snapshot
        for (topic, part), entries in out.changes.items():
            since = since_snapshot.get((topic, part), 0) + len(entries)
            if since >= changelog.SNAPSHOT_EVENTS:
                tx.command("SET", changelog.snapshot_key(self.group_id, topic, part),
                           orjson.dumps(changelog.snapshot_document(
                               self.partitions.partition_state(topic, part),
                               self.partitions.kept(topic, part))))
                tx.command("DEL", changelog.changelog_key(self.group_id, topic, part))
                since = 0
            else:
                tx.command("RPUSH", changelog.changelog_key(self.group_id, topic, part),
                           entries.encode())
            since_snapshot[(topic, part)] = since
        customers: pa.Array | None = None
        if out.recent_docs:
            payload, commands, customers = recent.push_commands(
                out.recent_customers, pa.concat_arrays(out.recent_docs))
            tx.raw(payload, commands)
        mapping: dict[str, str | int] = {"batch": batch_id}
        for topic, topic_id in self.topic_ids.items():
            mapping[f"id:{topic}"] = topic_id
        for (topic, part), off in next_offsets.items():
            mapping[f"o:{topic}:{part}"] = off
        for part, t in self.partitions.stream_time.items():
            mapping[f"t:{part}"] = t
        tx.command("HSET", offsets_key(self.group_id),
                   *[x for kv in mapping.items() for x in kv])
        if customers is not None and len(customers):
            tx.raw(resp_keys_command(
                b"DEL", partial(insight_cache_key, schema=self.insight_schema), customers), 1)
        return tx

    def land(self, batch_id: str, staging: Future[None], tx: RespTransaction,
             fenced: set[tuple[str, int]], produced_at: list[int], outcomes: dict[str, int],
             alerts: dict[str, int], written: int, newest: dict[str, int]) -> None:
        """Make a batch durable and visible (the commit thread, while the next batch is
        applied): its offline rows staged, then the fenced Redis transaction that holds its
        feature rows, state changes and offsets, then its offline files published."""
        timing = self.stats.stage_ms
        t2 = time.perf_counter()
        staging.result()  # durable before the commit point
        t3 = time.perf_counter()
        token = self.partitions.token
        guard = {changelog.owner_key(self.group_id, t, p): token for t, p in fenced}
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

    def await_landed(self, consumer: Consumer) -> None:
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
