"""Rebuild the part of a restored state that a longer window needs, from the lake.

The stream keeps, per entity type and partition, the events within ``kept_us`` (the longest
window plus the slack) of the table's clock (arrays/entity_arrays.py) and snapshots only those. A
data scientist who declares a feature with a longer window than any before (7 days where
the horizon was 24 h) restarts the stream on a state that holds 24 h: without this module
the new feature would be silently too small until 7 days of stream time had passed.

So a snapshot records, per entity type, the span its state was kept for and its clock
(changelog.snapshot_document), and a restore whose table keeps more than was recorded
loads the events with time in ``(clock - new kept, clock - recorded kept]`` from the lake
(``<lake>/transactions/event_date=YYYY-MM-DD``, written by ``kestrel archive`` or ``kestrel
simulate --to lake``) and adds them to the state — to the state only: the offline rows of
that past come from ``kestrel backfill``. It runs before the changelog is replayed, so the
replay evicts and expires with the new span as a live run would have.

Which lake events belong to a partition: `transactions` is keyed by customer_id and
`transactions.by-terminal` by terminal_id, both partitioned by librdkafka's default
partitioner (CRC32 of the key modulo the partition count, as
StreamProcessor.terminal_partition computes it): cards and customers of a `transactions`
partition, terminals of a `transactions.by-terminal` one.

What is added per entity is only what is older than its oldest event held and not held by
txn_id: a snapshot that recorded nothing (written before the span was recorded) gets the
whole new span rebuilt without counting an event twice. The lake also holds events the stream
refused as late; in the rebuilt span they are added as if accepted (a late event is within
the lateness of its partition's stream time, so few are, and only in windows of the past).

When the lake lacks days of the span (no lake, a day not archived) the days after the newest
missing one are loaded, a warning names ``kestrel archive``, and the stream carries on: the
state then holds every event only back to that day (``complete_after``), which is what the
next snapshot records, so a later restart with the lake filled in tries again.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kestrel.errors import LakeError
from kestrel.features.event import Entity, Event
from kestrel.lake import list_partitions, read_table
from pipelines.stream import changelog
from pipelines.stream.arrays.entity_arrays import EntityArrays, SnapshotFieldsChanged
from pipelines.stream.state import EventLog

log = logging.getLogger("kestrel.stream")
DAY_US = 86_400 * 1_000_000
NO_TIME = np.iinfo(np.int64).min  # EntityArrays' clock before any event
_COLUMNS = ["txn_id", "event_time", "customer_id", "card_id", "terminal_id", "mcc", "amount",
            "country", "lat", "lon"]
_KEY_COLUMN: dict[Entity, str] = {"card": "card_id", "customer": "customer_id",
                                  "terminal": "terminal_id"}


@dataclass
class Rebuilt:
    """What a rebuild did for one entity type of one partition: the span asked for
    (``since_us``, ``until_us``], the events added, the days the lake lacked, and the time
    after which the state now holds every event (``since_us`` when nothing was missing)."""

    entity: Entity
    partition: int
    since_us: int
    until_us: int
    events: int
    missing_days: list[str]
    complete_after: int


def partition_of(keys: Iterable[str], count: int) -> dict[str, int]:
    """Each distinct key's partition under librdkafka's default partitioner
    (consistent_random: CRC32 of the key modulo the partition count)."""
    return {k: zlib.crc32(k.encode()) % count for k in set(keys)}


def kept_for(table: EntityArrays, complete_after: int | None) -> int:
    """The span to record in a snapshot: the table's ``kept_us``, or less while a rebuild
    left the state holding every event only after ``complete_after`` (a lake without those
    days) and the clock has not yet moved a whole span past it."""
    if complete_after is None or table.clock == NO_TIME:
        return table.kept_us
    return max(0, min(table.kept_us, table.clock - complete_after))


def rebuild(table: EntityArrays, partition: int, lake_dir: Path, partitions: int,
            kept_us: int | None, clock: int | None,
            logged: Collection[str] = ()) -> Rebuilt | None:
    """Add to a just loaded ``table`` the lake's events of its partition that its current
    span holds and the snapshot's (``kept_us``, ``clock``: changelog.recorded; None, None for
    a snapshot that recorded none) did not. None when nothing is missing. ``partitions``:
    the count of the topic whose partition this is."""
    if clock is not None and clock > table.clock:
        table.clock = clock  # an empty state has no event to take it from
    if table.clock == NO_TIME or (kept_us is not None and kept_us >= table.kept_us):
        return None
    since = table.clock - table.kept_us
    until = table.clock if kept_us is None else table.clock - kept_us
    days = _days(since, until)
    present = set(list_partitions(lake_dir, "transactions"))
    missing = [d for d in days if d not in present]
    complete_after = since
    if missing:  # only the days after the newest missing one join up with the state
        days = [d for d in days if d > missing[-1]]
        complete_after = max(since, min(until, _day_start(missing[-1]) + DAY_US - 1))
    events = 0
    if days:
        try:
            rows = read_table(lake_dir, "transactions", days=days, columns=_COLUMNS)
        except (LakeError, OSError):  # gone since it was listed
            missing, complete_after = sorted({*missing, *days}), until
        else:
            events = _add(table, _mine(rows, table.entity, partition, partitions, since,
                                       until), logged)
    return Rebuilt(table.entity, partition, since, until, events, missing, complete_after)


def _days(since: int, until: int) -> list[str]:
    """The event dates (UTC) of times in (since, until]."""
    if until <= since:
        return []
    first, last = _date(since + 1), _date(until)
    return [str(first + timedelta(days=i)) for i in range((last - first).days + 1)]


def _date(time_us: int) -> date:
    return datetime.fromtimestamp(time_us // 1_000_000, UTC).date()


def _day_start(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp()) * 1_000_000


def _mine(rows: pa.Table, entity: Entity, partition: int, partitions: int, since: int,
          until: int) -> pa.Table:
    """The rows of the partition's entities with event time in (since, until], by time."""
    t = rows.column("event_time").cast(pa.int64())
    rows = rows.append_column("t", t).filter(pc.and_(pc.greater(t, since),
                                                     pc.less_equal(t, until)))
    routed = "terminal_id" if entity == "terminal" else "customer_id"
    keys = rows.column(routed).to_pylist()
    part_of = partition_of(keys, partitions)
    return rows.filter(pa.array([part_of[k] == partition for k in keys], pa.bool_()))


def _add(table: EntityArrays, rows: pa.Table, logged: Collection[str] = ()) -> int:
    """Add the rows to their entities: per entity only what is older than its oldest
    event held and not held already (txn_id), nor in the changelog about to be replayed
    (``logged``); returns how many were added."""
    oldest: dict[str, int] = {}
    if len(table.code):
        first = np.flatnonzero(np.r_[True, table.code[1:] != table.code[:-1]])
        oldest = {table.keys[c]: t for c, t in zip(table.code[first].tolist(),
                                                   table.time[first].tolist(), strict=True)}
    col = {name: rows.column(name) for name in rows.column_names}
    filled = [col["txn_id"].to_pylist(), col["t"].to_pylist(),
              pc.fill_null(col["amount"], 0.0).to_pylist(),
              pc.fill_null(col["country"], "").to_pylist(),
              pc.fill_null(col["terminal_id"], "").to_pylist(),
              pc.fill_null(col["mcc"], "").to_pylist(),
              pc.fill_null(col["lat"], 0.0).to_pylist(),
              pc.fill_null(col["lon"], 0.0).to_pylist()]
    by_key: dict[str, list[Event]] = {}
    keys = col[_KEY_COLUMN[table.entity]].to_pylist()
    seen: set[str] = set()
    for key, event in zip(keys, zip(*filled, strict=True), strict=True):
        if key is None or event[0] in seen or event[0] in logged \
                or event[1] >= oldest.get(key, event[1] + 1):
            continue
        seen.add(event[0])
        by_key.setdefault(key, []).append(event)
    logs: dict[str, EventLog] = {}
    added = 0
    for key, events in by_key.items():
        held = table.checkout(key)
        new = [e for e in events if e[0] not in held.ids]
        added += len(new)
        logs[key] = EventLog(new + held.events, held.marks)
    table.put(logs)
    return added


def restore(table: EntityArrays, partition: int, snap: dict[str, Any] | None,
            lake_dir: Path, partitions: int, logged: Collection[str] = ()) -> Rebuilt | None:
    """Load a snapshot's state into the empty ``table`` and rebuild what the current span
    needs and the snapshot's did not hold (``rebuild``), saying so in the log — one line of
    what was rebuilt, or a warning naming the lake when days were missing. When the declared
    features now read an event field the snapshot's events lack (a card's first feature of
    the mcc), its events cannot be loaded: the whole span is rebuilt from the lake instead
    (the alert marks start afresh), leaving out the changelog's events (``logged``: they are
    replayed next). No snapshot: the changelog replayed holds every event the partition
    ever applied, nothing is missing."""
    if snap is None:
        return None
    kept_us, clock = changelog.recorded(snap, table.entity)
    try:
        table.load(snap.get(table.entity) or {}, changelog.recorded_fields(snap, table.entity))
    except SnapshotFieldsChanged as exc:
        log.warning("%s: rebuilding partition %s's %s state from the lake", exc, partition,
                    table.entity, extra={"entity": table.entity, "partition": partition})
        table.load({})
        kept_us = None
    done = rebuild(table, partition, lake_dir, partitions, kept_us, clock, logged)
    if done is None:
        return None
    span = f"({_iso(done.since_us)}, {_iso(done.until_us)}]"
    where = f"{table.entity} state of partition {partition}"
    log.info("rebuilt %s from the lake: %s events of %s (the span now kept, %s h, exceeds "
             "the %s the snapshot held)", where, done.events, span,
             round(table.kept_us / 3_600_000_000, 1),
             "unknown span" if kept_us is None else f"{kept_us / 3_600_000_000:.1f} h",
             extra={"entity": table.entity, "partition": partition, "span": span,
                    "events": done.events})
    if done.missing_days:
        log.warning("the lake (%s) lacks transactions of %s: the %s holds every event only "
                    "after %s, so features of windows reaching further back are too small "
                    "until the stream time passes it; run `kestrel archive` (or `kestrel "
                    "simulate --to lake`) to fill the lake and restart the stream to rebuild",
                    lake_dir, ", ".join(done.missing_days), where, _iso(done.complete_after),
                    extra={"entity": table.entity, "partition": partition,
                           "missing_days": done.missing_days})
    return done


def _iso(time_us: int) -> str:
    return datetime.fromtimestamp(time_us / 1_000_000, UTC).isoformat()
