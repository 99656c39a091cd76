"""Partition state and recovery: each owned partition's entity state, offsets and stream
time, how they come back on (re)start and assignment, and the fencing token.

State is held per partition and entity type as sorted arrays (arrays/entity_arrays.py; partition-
local so a revoke can drop it). Work event by event (the per-event path, alert candidates,
a changelog replay) checks an entity out as an EventLog (state.py) and puts it back.

On (re)start and on assignment a partition's offsets and stream time come back from the
offsets hash in Redis (``offsets_key``), and its state is rebuilt from its snapshot and
changelog (changelog.py), replayed through the same code that applied it live, plus the span
a longer window needs from the lake (rebuild.py). Fencing: on assignment this instance writes
its token as the partition's owner; a commit only goes through while every partition of the
batch still names it (checkpoint.py).
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import redis
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from kestrel.settings import Settings
from kestrel.topics import TRANSACTIONS, partitions_for
from kestrel.windows import ENTITIES, Entity
from pipelines.stream import changelog, rebuild
from pipelines.stream.arrays.entity_arrays import EntityArrays
from pipelines.stream.metrics import StreamStats
from pipelines.stream.rules import Rule, evaluate
from pipelines.stream.state import TIME, Event, EventLog, WindowSet

log = logging.getLogger("kestrel.stream")
TERMINAL_REORDER_SLACK_US = 7 * 86_400 * 1_000_000


def offsets_key(group_id: str) -> str:
    return f"kestrel:stream:{group_id}:offsets"


def entity_types(topic: str) -> tuple[Entity, ...]:
    """The entity types whose state a partition of ``topic`` holds."""
    return ("card", "customer") if topic == TRANSACTIONS else ("terminal",)


class Partitions:
    """Every owned partition's state, next offsets and stream time."""

    def __init__(self, settings: Settings, group_id: str, client: redis.Redis,
                 windows: dict[Entity, WindowSet], rules: tuple[Rule, ...],
                 stats: StreamStats) -> None:
        self.settings = settings
        self.group_id = group_id
        self.redis = client
        self.windows = windows
        self.rules = rules
        self.stats = stats
        self.lateness_us = settings.allowed_lateness_seconds * 1_000_000
        # terminal updates arrive in processing order from every source partition; a
        # partition that is behind (a replay, a slow instance) delivers older events late
        self.terminal_slack_us = TERMINAL_REORDER_SLACK_US
        # entity → partition → its state as arrays, and the entities checked out of them as
        # EventLogs for work event by event until put_back
        self.tables: dict[Entity, dict[int, EntityArrays]] = {e: {} for e in ENTITIES}
        self._out: dict[tuple[Entity, int], dict[str, EventLog]] = defaultdict(dict)
        self.stream_time: dict[int, int] = {}  # per `transactions` partition
        self.next_offsets: dict[tuple[str, int], int] = {}
        # per (topic, partition): changelog events since its last snapshot
        self.since_snapshot: dict[tuple[str, int], int] = {}
        # per (entity, partition) restored: the time after which its state holds every
        # event (rebuild.py; a lake that lacked days leaves it above clock - kept_us)
        self._complete_after: dict[tuple[Entity, int], int | None] = {}
        self.counts: dict[str, int] = {}  # partition count of each input topic (from the broker)
        self.token = uuid.uuid4().hex.encode()

    def partition_count(self, topic: str) -> int:
        return self.counts.get(topic) or partitions_for(topic, self.settings)

    # --- offsets and assignment -------------------------------------------------------------
    def load_offsets(self, topic_ids: dict[str, str]) -> dict[str, Any]:
        """Read the offsets hash: next offsets (``next_offsets``, but none of a topic whose
        stored id differs from ``topic_ids``: it was recreated) and stream times; returns
        the hash as a document."""
        raw = cast(dict[bytes, bytes], self.redis.hgetall(offsets_key(self.group_id)))
        doc = {k.decode(): v.decode() for k, v in raw.items()}
        self.next_offsets = {}
        # a topic whose stored id differs was recreated; no stored id is a first start
        stale = {t for t, i in topic_ids.items() if doc.get(f"id:{t}") not in (None, i)}
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

    def claim(self, partitions: list[TopicPartition], topic_ids: dict[str, str]) -> None:
        """Take assigned partitions over: their offsets (set on ``partitions``, from the
        offsets hash: another instance may have moved them), this instance's token as their
        owner, and their state restored."""
        self.load_offsets(topic_ids)
        for tp in partitions:
            tp.offset = self.next_offsets.get((tp.topic, tp.partition), OFFSET_BEGINNING)
        if partitions:
            self.redis.mset({changelog.owner_key(self.group_id, tp.topic, tp.partition):
                             self.token for tp in partitions})
        for tp in partitions:
            self.restore_partition(tp.topic, tp.partition)

    def drop(self, topic: str, part: int) -> None:
        """Forget a revoked partition's state (its commit has landed)."""
        self.since_snapshot.pop((topic, part), None)
        for kind in entity_types(topic):
            self.tables[kind].pop(part, None)
        if topic == TRANSACTIONS:
            self.stream_time.pop(part, None)

    # --- recovery -------------------------------------------------------------------------------
    def restore_partition(self, topic: str, part: int) -> None:
        """Rebuild a partition's state from its snapshot and changelog (pipelines/stream/
        changelog.py), replaying the changelog through the code that applied it live."""
        snap, batches = changelog.load_batches(self.redis, self.group_id, topic, part)
        count = self.partition_count(topic)
        rebuilt = 0
        logged = {e[2] if topic == TRANSACTIONS else e[0] for b in batches for e in b}
        for kind in entity_types(topic):  # the span a longer window needs: the lake
            table = self.tables[kind][part] = self.new_table(kind)
            done = rebuild.restore(table, part, snap, self.settings.lake_dir, count, logged)
            self._complete_after[(kind, part)] = done.complete_after if done else None
            rebuilt += done.events if done else 0
        self.stats.rebuilt += rebuilt
        epoch = datetime.fromtimestamp(0, UTC)
        for entries in batches:  # expired after each, as the live run did (expire)
            if topic == TRANSACTIONS:
                for card_id, customer_id, *rest in entries:
                    event = cast(Event, tuple(rest))
                    card = self.checkout("card", part, card_id)
                    customer = self.checkout("customer", part, customer_id)
                    if self.place(card, event) is not None:
                        self.evict("card", card)
                    if self.place(customer, event) is not None:
                        self.evict("customer", customer)
                    for rule in self.rules:  # the alert marks, as the live run left them
                        evaluate(card_id, customer_id, card, rule, epoch)
                self.put_back()
            elif entries:
                self.tables["terminal"][part].apply(
                    [terminal_id for _, _, terminal_id in entries],
                    [txn_id for txn_id, _, _ in entries],
                    np.array([time_us for _, time_us, _ in entries], np.int64))
            self.expire(topic, part)
        entries_count = sum(len(entries) for entries in batches)
        # rebuilt: the next batch snapshots it, so a restart need not read the lake again
        self.since_snapshot[(topic, part)] = changelog.SNAPSHOT_EVENTS if rebuilt \
            else entries_count
        if entries_count or snap:
            log.info("state restored", extra={"partition": f"{topic}:{part}",
                                              "changelog_events": entries_count})

    def kept(self, topic: str, part: int) -> dict[str, tuple[int, int, tuple[int, ...]]]:
        """Per entity type of a partition: (the span its state holds every event of, its
        clock, its event fields), for its snapshot (changelog.snapshot_document,
        rebuild.kept_for)."""
        return {kind: (rebuild.kept_for(table, self._complete_after.get((kind, part))),
                       table.clock, table.fields)
                for kind in entity_types(topic)
                if (table := self.tables[kind].get(part)) is not None}

    # --- the state ------------------------------------------------------------------------------
    def new_table(self, entity: Entity) -> EntityArrays:
        return EntityArrays(self.windows[entity], self.kept_us(entity), self.slack_us(entity),
                            keep_ids=entity != "card")  # duplicates: customers, terminals

    def table(self, entity: Entity, part: int) -> EntityArrays:
        table = self.tables[entity].get(part)
        if table is None:
            table = self.tables[entity][part] = self.new_table(entity)
        return table

    def checkout(self, entity: Entity, part: int, key: str) -> EventLog:
        """An entity's state as an EventLog, checked out of its partition's arrays for
        work event by event (the per-event path, a changelog replay) until put_back."""
        out = self._out[(entity, part)]
        state = out.get(key)
        if state is None:
            state = out[key] = self.table(entity, part).checkout(key)
        return state

    def put_back(self) -> None:
        """Hand every checked-out EventLog back to its arrays."""
        for (entity, part), logs in self._out.items():
            self.table(entity, part).put(logs)
        self._out.clear()

    def place(self, state: EventLog, event: Event) -> int | None:
        """Insert an event into a card's or customer's state; the event's index, or None
        when it is too late to be placed (its history is gone)."""
        if state.times and event[TIME] < state.times[-1] - self.lateness_us:
            return None
        return state.add(event)

    def slack_us(self, entity: Entity) -> int:
        """How far before its entity's latest event an event may still be placed: the
        lateness (for terminals, the reorder slack)."""
        return self.terminal_slack_us if entity == "terminal" else self.lateness_us

    def kept_us(self, entity: Entity) -> int:
        """How far behind an entity's latest event its state keeps events: the longest
        window plus the slack."""
        return self.windows[entity].horizon_us + self.slack_us(entity)

    def evict(self, entity: Entity, state: EventLog) -> None:
        state.evict_before(state.times[-1] - self.kept_us(entity))

    def expire(self, topic: str, part: int) -> None:
        """Drop the partition's entities whose windows and slack are over (EntityArrays.
        expire): after each batch that changed the partition (its changelog entries), and
        after each changelog batch a restore replays, so live and restored state agree."""
        for kind in entity_types(topic):
            table = self.tables[kind].get(part)
            if table is not None:
                self.stats.expired += table.expire()

    def state_size(self) -> dict[Entity, tuple[int, int]]:
        """Per entity type: (entities, events) held over every partition (a metric)."""
        return {e: (sum(t.entities for t in self.tables[e].values()),
                    sum(len(t) for t in self.tables[e].values())) for e in ENTITIES}

    def partition_state(self, topic: str, part: int) -> dict[str, dict[str, Any]]:
        """A partition's state as a document (what a snapshot holds)."""
        return {kind: self.tables[kind][part].snapshot() if part in self.tables[kind] else {}
                for kind in entity_types(topic)}
