"""The gate: which of a batch's transactions the stream applies.

Each event is checked, for the whole batch, against its partition's stream time (older than
the allowed lateness → `transactions.late`), against the event times the stream takes now
(event_time.TimeLimits: outside them → `transactions.dlq`), and against the txn_ids already
held (this batch, or the partition's customer state: a duplicate is counted and dropped).
The accepted events move their partition's stream time. Invalid records go to the DLQ with
their reason (``dead_letter``), here and wherever else the stream refuses a record.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from confluent_kafka import Message

from kestrel.dlq import dead_letter
from kestrel.errors import EventValidationError
from kestrel.producer import EventProducer
from kestrel.settings import Settings
from kestrel.topics import TRANSACTIONS, TRANSACTIONS_DLQ, TRANSACTIONS_LATE
from pipelines.stream import batch_decode, records
from pipelines.stream.arrays.entity_arrays import EntityArrays
from pipelines.stream.event_time import TimeLimits
from pipelines.stream.metrics import StreamStats


class Gate:
    """Lateness, event-time bounds and duplicates of a batch's transactions, and the DLQ."""

    def __init__(self, settings: Settings, group_id: str, stream_time: dict[int, int],
                 customers: Mapping[int, EntityArrays], stats: StreamStats,
                 limits: TimeLimits) -> None:
        """``stream_time``: per `transactions` partition, the newest event time accepted
        (moved here); ``customers``: per partition, the customers' state (their txn_ids
        are the ones held)."""
        self.group_id = group_id
        self.lateness_us = settings.allowed_lateness_seconds * 1_000_000
        self.stream_time = stream_time
        self.customers = customers
        self.stats = stats
        self.limits = limits

    def dead_letter(self, m: Message, error: EventValidationError,
                    producer: EventProducer) -> None:
        self.stats.invalid += 1
        key, value = dead_letter(m.topic() or TRANSACTIONS, m.partition() or 0,
                                 m.offset() or 0, m.value(), error, self.group_id)
        producer.produce(TRANSACTIONS_DLQ, key, value)

    def accept(self, txns: list[Message], cols: batch_decode.TxnColumns,
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
        goes record by record (accept_in_order, the reference; tests compare the two)."""
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
            return self.accept_in_order(txns, cols, producer)
        parts = np.array([m.partition() or 0 for m in txns], np.int64)
        newest_allowed = self.limits.newest_allowed_us()
        refused = valid & ((times < self.limits.earliest_us) | (times > newest_allowed))
        candidates = valid & ~refused
        txn_ids = np.array(cols.txn_id, dtype=object)
        late = np.zeros(n, bool)
        moved: dict[int, int] = {}
        for part in np.unique(parts[candidates]).tolist():
            idx = np.flatnonzero(candidates & (parts == part))
            held = self.customers.get(part)
            if held is not None and held.ids and not held.ids.isdisjoint(
                    txn_ids[idx].tolist()):
                return self.accept_in_order(txns, cols, producer)
            t = times[idx]
            now = self.stream_time.get(part, 0)
            reach = np.maximum.accumulate(np.concatenate(([now], t)))
            late[idx] = t < reach[:-1] - self.lateness_us
            moved[part] = max(now, int(reach[-1]))
        for i in np.flatnonzero(refused).tolist():
            self.dead_letter(txns[i], self.limits.error(int(times[i])), producer)
        for i in np.flatnonzero(late).tolist():
            producer.produce(TRANSACTIONS_LATE, txns[i].key(), records.late_value(txns[i].value()))
        self.stats.late += int(late.sum())
        self.stream_time.update(moved)
        accepted = np.flatnonzero(candidates & ~late)
        return accepted.tolist(), parts[accepted].tolist()

    def accept_in_order(self, txns: list[Message], cols: batch_decode.TxnColumns,
                        producer: EventProducer) -> tuple[list[int], list[int]]:
        """accept, record by record."""
        lateness, stream_time = self.lateness_us, self.stream_time
        held = {part: table.ids for part, table in self.customers.items()}
        ids, times, custs = cols.txn_id, cols.time_us, cols.customer_id
        errors = cols.errors
        check_batch = len(set(ids)) < len(ids)  # the same txn_id twice in this batch
        seen: set[tuple[int, str, str]] = set()
        accepted: list[int] = []
        parts: list[int] = []
        late = 0
        newest_allowed, earliest = self.limits.newest_allowed_us(), self.limits.earliest_us
        for i, m in enumerate(txns):
            if i in errors:
                continue
            t = times[i]
            if t < earliest or t > newest_allowed:
                self.dead_letter(m, self.limits.error(t), producer)
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

    def admit(self, m: Message, time_us: int, part: int, producer: EventProducer) -> bool:
        """One event's time against the bounds and its partition's stream time (the
        per-event path; duplicates it checks against the customer it holds)."""
        if time_us < self.limits.earliest_us or time_us > self.limits.newest_allowed_us():
            self.dead_letter(m, self.limits.error(time_us), producer)
            return False
        if time_us < self.stream_time.get(part, 0) - self.lateness_us:
            self.stats.late += 1
            producer.produce(TRANSACTIONS_LATE, m.key(), records.late_value(m.value()))
            return False
        return True
