"""Terminal repartitioning: terminal state is keyed by terminal_id, transactions arrive keyed
by customer, so each applied transaction becomes a terminal update routed to its
`transactions.by-terminal` partition (``partition_of``: librdkafka's default partitioner,
computed here so the in-process path and the topic agree by construction).

The updates of a batch are forwarded through the topic, or — while this instance owns every
partition of both topics (``local``) — applied to the same terminal partition's state in the
same batch: the round trip through Kafka would only bring them back here. Updates that came
through the topic (any producer may write there: malformed ones go to the DLQ) are applied
with them, each once.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import orjson
from confluent_kafka import Message

from kestrel.errors import EventValidationError, FieldError
from kestrel.events import PAN_LIKE_REASON
from kestrel.pan import ascii_pan_like
from kestrel.producer import EventProducer
from kestrel.topics import TRANSACTIONS, TRANSACTIONS_BY_TERMINAL
from pipelines.stream import columnar, records
from pipelines.stream.apply_path import BatchOutput
from pipelines.stream.gate import Gate
from pipelines.stream.metrics import StreamStats
from pipelines.stream.partitions import Partitions


@dataclass
class Updates:
    """Terminal updates as columns: by-terminal partition, txn_id, time µs, terminal_id."""

    part: np.ndarray
    txn: np.ndarray
    time: np.ndarray
    terminal: np.ndarray

    def select(self, mask: np.ndarray) -> Updates:
        return Updates(self.part[mask], self.txn[mask], self.time[mask], self.terminal[mask])

    def then(self, other: Updates) -> Updates:
        return Updates(*(np.concatenate((a, b)) for a, b in zip(
            (self.part, self.txn, self.time, self.terminal),
            (other.part, other.txn, other.time, other.terminal), strict=True)))


class Terminals:
    """Routes a batch's terminal updates and applies the ones this instance owns."""

    def __init__(self, partitions: Partitions, gate: Gate, owned_transactions: set[int],
                 stats: StreamStats) -> None:
        """``owned_transactions``: the `transactions` partitions this instance owns (the
        intake's set, read here)."""
        self.partitions = partitions
        self.gate = gate
        self.owned_transactions = owned_transactions
        self.owned: set[int] = set()  # `transactions.by-terminal` partitions owned
        self.stats = stats
        self._part: dict[str, int] = {}  # terminal_id → by-terminal partition

    def partition_of(self, terminal_id: str) -> int:
        """The `transactions.by-terminal` partition of a terminal: librdkafka's default
        (consistent_random: CRC32 of the key), computed here so that the in-process path
        and the topic agree by construction (forwarded records name it explicitly)."""
        part = self._part.get(terminal_id)
        if part is None:
            count = self.partitions.partition_count(TRANSACTIONS_BY_TERMINAL)
            part = self._part[terminal_id] = zlib.crc32(terminal_id.encode()) % count
        return part

    def local(self) -> bool:
        """This instance owns every partition of both topics: the repartition round trip
        through Kafka would bring every terminal update back to this process, so it is
        applied in-process instead (same partition, same state, same order of application
        within the batch as a consumer of the topic would see)."""
        counts = self.partitions.counts
        return bool(counts) and len(self.owned_transactions) == counts.get(
            TRANSACTIONS, -1) and len(self.owned) == counts.get(TRANSACTIONS_BY_TERMINAL, -1)

    def route(self, out: BatchOutput, producer: EventProducer) -> Updates | None:
        """The batch's terminal updates, in event-time order (the batch mixes partitions
        that may be apart in event time; terminal state tolerates reordering only within
        its slack; updates of equal time keep their order, which changes no row: a
        terminal's features are counts): forwarded to `transactions.by-terminal`, or
        returned to be applied in this batch when local."""
        blocks, out.forward = out.forward, []
        if out.forward_rows:
            times, terminals, txns = zip(*out.forward_rows, strict=True)
            blocks.append((np.array(times, np.int64), np.array(terminals, dtype=object),
                           np.array(txns, dtype=object)))
            out.forward_rows = []
        if not blocks:
            return None
        time_us = np.concatenate([b[0] for b in blocks])
        order = np.argsort(time_us, kind="stable")
        time_us = time_us[order]
        terminal = np.concatenate([b[1] for b in blocks])[order]
        txn = np.concatenate([b[2] for b in blocks])[order]
        encoded = columnar.strings(terminal).dictionary_encode()
        known, part_of = self._part, self.partition_of
        parts = np.array([known[t] if t in known else part_of(t)
                          for t in encoded.dictionary.to_pylist()], np.int64)[
            encoded.indices.to_numpy()]
        if self.local():
            return Updates(parts, txn, time_us, terminal)
        for part, t, terminal_id, txn_id in zip(parts.tolist(), time_us.tolist(),
                                                terminal.tolist(), txn.tolist(), strict=True):
            producer.produce(TRANSACTIONS_BY_TERMINAL, terminal_id,
                             orjson.dumps([txn_id, t, terminal_id]), partition=part)
        return None

    def forwarded(self, batch: list[Message], producer: EventProducer
                  ) -> list[tuple[int, str, int, str]]:
        """The batch's records of `transactions.by-terminal` as (partition, txn_id, time
        µs, terminal_id). The stream writes them (route), but any producer can: a record
        that is not ``[txn_id, time, terminal_id]`` with identifiers that are not PAN-like
        and a time within TimeBounds goes to the DLQ. The ids are checked for PAN-like runs
        at once, joined (kestrel.pan.ascii_pan_like)."""
        out: list[tuple[int, str, int, str]] = []
        taken: list[Message] = []
        others = [m for m in batch if m.topic() != TRANSACTIONS]
        if not others:
            return out
        limits, dead_letter = self.gate.limits, self.gate.dead_letter
        earliest, newest = limits.earliest_us, limits.newest_allowed_us()
        for m in others:
            try:
                doc = orjson.loads(m.value() or b"")
            except orjson.JSONDecodeError:
                doc = None
            if not (type(doc) is list and len(doc) == 3 and type(doc[1]) is int
                    and records.is_identifier(doc[0]) and records.is_identifier(doc[2])):
                dead_letter(m, EventValidationError([FieldError(
                    "$", "must be [txn_id, event time in µs, terminal_id], as the stream "
                    "forwards a transaction")]), producer)
            elif not earliest <= doc[1] <= newest:
                dead_letter(m, limits.error(doc[1]), producer)
            else:
                out.append((m.partition() or 0, doc[0], doc[1], doc[2]))
                taken.append(m)
        if out and ascii_pan_like("\x00".join(  # identifiers: ASCII
                [f"{u[1]}\x00{u[3]}" for u in out]).encode()):
            kept = []
            for u, m in zip(out, taken, strict=True):
                if ascii_pan_like(f"{u[1]}\x00{u[3]}".encode()):
                    dead_letter(m, EventValidationError([FieldError(
                        "$", f"an identifier {PAN_LIKE_REASON}")]), producer)
                else:
                    kept.append(u)
            out = kept
        return out

    def apply(self, batch: list[Message], out: BatchOutput, producer: EventProducer) -> None:
        """The batch's terminal updates — the ones that came through
        `transactions.by-terminal`, then this batch's own (route) — applied per partition at
        once (arrays/entity_arrays.py), each once: one the partition already holds (forwarded
        again in a replay after a crash), or one already taken in this batch, is skipped.
        Rows go out as columns, changelog entries as (txn_id, time µs, terminal_id)."""
        forwarded = self.forwarded(batch, producer)  # through the topic
        updates = self.route(out, producer)
        if forwarded:
            parts, txns, times, terminals = zip(*forwarded, strict=True)
            through = Updates(np.array(parts, np.int64), np.array(txns, dtype=object),
                              np.array(times, np.int64), np.array(terminals, dtype=object))
            updates = through if updates is None else through.then(updates)
        if updates is None:
            return
        # none can repeat when nothing came through the topic and this batch's own txn_ids
        # are distinct (the gate dropped duplicates, but not across partitions)
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
            table = self.partitions.table("terminal", part)
            if table.ids and not table.ids.isdisjoint(ids := mine.txn.tolist()):
                mine = mine.select(np.array([t not in table.ids for t in ids], bool))
            applied = table.apply(mine.terminal, mine.txn, mine.time)
            placed = int(applied.accepted.sum())
            self.stats.terminal_applied += placed
            self.stats.late_for_entity += len(mine.time) - placed
            if placed:
                if placed < len(mine.time):
                    mine = mine.select(applied.accepted)
                out.changes[(TRANSACTIONS_BY_TERMINAL, part)].add_columns(
                    [mine.txn, mine.time, mine.terminal])
            if applied.rows is not None and applied.latest is not None:
                out.columns["terminal"].append(applied.rows)
                out.online_blocks["terminal"].append(applied.latest)
