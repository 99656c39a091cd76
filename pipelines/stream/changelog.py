"""Where the stream's state lives in Redis: per partition, a changelog and a snapshot.

Rewriting every touched entity's whole event list each batch made the commit cost grow with
the state, not with the batch. Instead (Kafka Streams' changelog + checkpoint), per input
partition:

- the **changelog** (a Redis list) gets one compact blob per batch: the events the batch
  applied, in the order they were applied, as columns (:class:`Entries`; blobs of rows, as
  written before, are read too) — appended in the same MULTI/EXEC as the offsets,
  so the state a committed offset stands for is always in Redis;
- now and then (every :data:`SNAPSHOT_EVENTS` changelog events) the partition's whole state is
  written as a **snapshot**, and the changelog is emptied, in that same MULTI/EXEC.

On assignment the processor rebuilds a partition's state from its snapshot plus the changelog
replayed through the same code that applied the events live, batch by batch (entities whose
windows are over are expired after each, as live: EntityArrays.expire), so the state is
exactly the one the last commit left (eviction and alert marks included).

A snapshot document is ``{entity type: {entity key: its events and marks}}`` plus, under
:data:`KEPT`, per entity type the span the state was kept for and its clock
(:func:`snapshot_document`): a restore under a spec with a longer window rebuilds the span
the snapshot lacks from the lake (pipelines/stream/rebuild.py). Snapshots written before
held no :data:`KEPT`; :func:`recorded` reads that as "unknown" (see there).

Keys are per consumer group (like the offsets): ``kestrel:stream:<group>:changelog:<topic>:<p>``
and ``kestrel:stream:<group>:snapshot:<topic>:<p>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import orjson
import redis

from kestrel.errors import KestrelError

SNAPSHOT_EVENTS = 100_000
"""Events in a partition's changelog after which its state is snapshotted instead."""


class PartitionLost(KestrelError):
    """Another instance owns a partition this one was about to commit for (a zombie after a
    rebalance it missed). Nothing of the batch was committed; restart the processor (it
    rejoins the group and resumes from what Redis holds)."""


def owner_key(group_id: str, topic: str, partition: int) -> str:
    """The instance that owns a partition: set on assignment, checked (WATCH) at commit."""
    return f"kestrel:stream:{group_id}:owner:{topic}:{partition}"


def changelog_key(group_id: str, topic: str, partition: int) -> str:
    return f"kestrel:stream:{group_id}:changelog:{topic}:{partition}"


def snapshot_key(group_id: str, topic: str, partition: int) -> str:
    return f"kestrel:stream:{group_id}:snapshot:{topic}:{partition}"


def group_prefix(group_id: str) -> str:
    """Every key of the group's own bookkeeping (offsets, changelogs, snapshots, metrics)."""
    return f"kestrel:stream:{group_id}:"


Column = Sequence[Any] | np.ndarray

KEPT = "kept"
"""The snapshot document's key for what each entity type's state was kept for: ``{entity
type: [kept_us, clock µs, [event fields held]]}`` (entity types are card, customer,
terminal: no clash)."""


def snapshot_document(state: dict[str, dict[str, Any]],
                      kept: dict[str, tuple[int, int, tuple[int, ...]]]) -> dict[str, Any]:
    """A partition's snapshot: ``state`` (entity type → EntityArrays.snapshot()) and, per
    entity type, (the span µs behind its clock the state holds every event of, the clock,
    the event fields its events hold — EntityArrays.fields, in the order of their values).
    The span is recorded so that a restore knows what it lacks when the spec's horizon
    has grown since (the events are all that is stored: the span cannot be read off them,
    an entity idle for a while holds none of its recent past); the clock, because an empty
    state has none to take it from."""
    return {**state, KEPT: {kind: [int(k), int(c), [int(f) for f in fields]]
                            for kind, (k, c, fields) in kept.items()}}


def recorded(snap: dict[str, Any] | None, kind: str) -> tuple[int | None, int | None]:
    """(kept_us, clock) a snapshot recorded for an entity type; (None, None) when it holds
    none — a snapshot written before they were recorded: what horizon it was kept for
    cannot be known, so a restore treats the whole current span as possibly missing
    (rebuild.py rebuilds it, adding only what the state does not already hold)."""
    entry = ((snap or {}).get(KEPT) or {}).get(kind)
    if not entry:
        return None, None
    return int(entry[0]), int(entry[1])


def recorded_fields(snap: dict[str, Any] | None, kind: str) -> tuple[int, ...] | None:
    """The event fields a snapshot's events of an entity type hold, in order; None when it
    recorded none (written before they were recorded)."""
    entry = ((snap or {}).get(KEPT) or {}).get(kind)
    return tuple(int(f) for f in entry[2]) if entry and len(entry) > 2 else None


class Entries:
    """One partition's changelog entries of a batch, kept and encoded as columns (one per
    field of an entry): cheaper to build than one tuple per event, and numpy columns are
    encoded by orjson directly (object columns as lists)."""

    def __init__(self) -> None:
        self._blocks: list[Sequence[Column]] = []
        self._rows: list[tuple[Any, ...]] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add_row(self, row: tuple[Any, ...]) -> None:
        self._rows.append(row)
        self._count += 1

    def add_columns(self, columns: Sequence[Column]) -> None:
        """Entries as columns of equal length (lists or numpy arrays)."""
        self._close_rows()
        self._blocks.append(columns)
        self._count += len(columns[0])

    def _close_rows(self) -> None:
        if self._rows:
            self._blocks.append([list(c) for c in zip(*self._rows, strict=True)])
            self._rows = []

    def encode(self) -> bytes:
        self._close_rows()
        columns = [_joined([block[i] for block in self._blocks])
                   for i in range(len(self._blocks[0]))]
        return orjson.dumps({"columns": columns}, option=orjson.OPT_SERIALIZE_NUMPY)


def _joined(parts: list[Column]) -> Column:
    column = parts[0] if len(parts) == 1 else np.concatenate(
        [np.asarray(p, dtype=object) if not isinstance(p, np.ndarray) else p for p in parts])
    if isinstance(column, np.ndarray) and column.dtype == object:
        return column.tolist()
    return column


def load_batches(client: redis.Redis, group_id: str, topic: str, partition: int
                 ) -> tuple[dict[str, Any] | None, list[list[Sequence[Any]]]]:
    """(snapshot document or None, changelog entries in order, one list per batch) of one
    partition. A restore replays batch by batch: the live run expired entities after each
    batch (EntityArrays.expire), and the replay must expire at the same points to end in
    the same state."""
    pipe = client.pipeline(transaction=True)
    pipe.get(snapshot_key(group_id, topic, partition))
    pipe.lrange(changelog_key(group_id, topic, partition), 0, -1)
    snap, blobs = cast(tuple[bytes | None, list[bytes]], tuple(pipe.execute()))
    batches: list[list[Sequence[Any]]] = []
    for blob in blobs:
        doc = orjson.loads(blob)
        batches.append(list(zip(*doc["columns"], strict=True)) if isinstance(doc, dict)
                       else doc)
    return (orjson.loads(snap) if snap else None), batches


def load(client: redis.Redis, group_id: str, topic: str,
         partition: int) -> tuple[dict[str, Any] | None, list[Sequence[Any]]]:
    """(snapshot document or None, changelog entries in order) of one partition."""
    snap, batches = load_batches(client, group_id, topic, partition)
    return snap, [entry for batch in batches for entry in batch]
