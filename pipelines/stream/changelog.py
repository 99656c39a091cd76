"""Where the stream's state lives in Redis: per partition, a changelog and a snapshot.

Rewriting every touched entity's whole event list each batch made the commit cost grow with
the state, not with the batch. Instead (Kafka Streams' changelog + checkpoint), per input
partition:

- the **changelog** (a Redis list) gets one compact blob per batch: the events the batch
  applied, in the order they were applied — appended in the same MULTI/EXEC as the offsets,
  so the state a committed offset stands for is always in Redis;
- now and then (every :data:`SNAPSHOT_EVENTS` changelog events) the partition's whole state is
  written as a **snapshot**, and the changelog is emptied, in that same MULTI/EXEC.

On assignment the processor rebuilds a partition's state from its snapshot plus the changelog
replayed through the same code that applied the events live, so the state is exactly the one
the last commit left (eviction and alert marks included).

Keys are per consumer group (like the offsets): ``kestrel:stream:<group>:changelog:<topic>:<p>``
and ``kestrel:stream:<group>:snapshot:<topic>:<p>``.
"""

from __future__ import annotations

from typing import Any, cast

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


def encode_entries(entries: list[tuple[Any, ...]]) -> bytes:
    return orjson.dumps(entries)


def load(client: redis.Redis, group_id: str, topic: str,
         partition: int) -> tuple[dict[str, Any] | None, list[list[Any]]]:
    """(snapshot document or None, changelog entries in order) of one partition."""
    pipe = client.pipeline(transaction=True)
    pipe.get(snapshot_key(group_id, topic, partition))
    pipe.lrange(changelog_key(group_id, topic, partition), 0, -1)
    snap, blobs = cast(tuple[bytes | None, list[bytes]], tuple(pipe.execute()))
    entries: list[list[Any]] = []
    for blob in blobs:
        entries.extend(orjson.loads(blob))
    return (orjson.loads(snap) if snap else None), entries
