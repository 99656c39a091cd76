"""The per-event apply path: the reference for cards and customers.

Each `transactions` record is decoded and applied on its own, in order, to its card and
customer checked out of the partition's arrays as EventLogs (state.py; put back at the end of
the batch), with the reference implementation of every feature (WindowSet). The array path
(pipelines/stream/arrays/) must give the same rows, alerts and state: tests compare the two.
The array path also sends the cards that may raise an alert through ``apply_event`` here.
Terminal updates are applied at the end of the batch on both paths (terminals.py).

``capture`` (parity): filled with txn_id → the card and customer features the online store
held just before that transaction was applied.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import datetime
from typing import Any

import orjson
from confluent_kafka import Message

from kestrel.errors import EventValidationError
from kestrel.producer import EventProducer
from kestrel.topics import ALERTS, TRANSACTIONS
from kestrel.windows import ENTITY_KEYS, Entity
from pipelines.stream import batch_decode, recent, records
from pipelines.stream.apply_path import BatchOutput
from pipelines.stream.gate import Gate
from pipelines.stream.metrics import StreamStats
from pipelines.stream.partitions import Partitions
from pipelines.stream.rules import Rule, evaluate
from pipelines.stream.state import TIME, Event, EventLog, WindowSet
from pipelines.stream.terminals import Terminals


class PerEventPath:
    """Applies a batch record by record (an ApplyPath, apply_path.py)."""

    def __init__(self, partitions: Partitions, gate: Gate, terminals: Terminals,
                 windows: dict[Entity, WindowSet], rules: tuple[Rule, ...],
                 stats: StreamStats,
                 capture: dict[str, dict[str, Any]] | None = None) -> None:
        self.partitions = partitions
        self.gate = gate
        self.terminals = terminals
        self.windows = windows
        self.rules = rules
        self.stats = stats
        self.capture = capture
        self.stream_time = partitions.stream_time
        # bound once: called per event
        self._checkout = partitions.checkout
        self._place = partitions.place
        self._evict = partitions.evict

    def apply(self, batch: list[Message], txns: list[Message], out: BatchOutput,
              producer: EventProducer, now: datetime,
              parsed: batch_decode.Parsed | None = None) -> None:
        for m in batch:
            if m.topic() != TRANSACTIONS:
                continue
            part = m.partition() or 0
            try:
                txn = records.decode(m.value())
            except EventValidationError as exc:
                self.gate.dead_letter(m, exc, producer)
                continue
            if self.apply_txn(txn, part, m, producer, out, now):
                out.produced_at.append(m.timestamp()[1])
        self.partitions.put_back()
        self.terminals.apply(batch, out, producer)

    def apply_txn(self, txn: records.Txn, part: int, m: Message, producer: EventProducer,
                  out: BatchOutput, now: datetime) -> bool:
        """One transaction through the gate and onto its card and customer; False when the
        gate refused it or it is a duplicate."""
        if not self.gate.admit(m, txn.time_us, part, producer):
            return False
        stream_time = self.stream_time.get(part, 0)
        customer = self._checkout("customer", part, txn.customer_id)
        if txn.txn_id in customer.ids:
            self.stats.duplicates += 1
            return False
        self.stream_time[part] = max(stream_time, txn.time_us)
        event: Event = (txn.txn_id, txn.time_us, txn.amount, txn.country, txn.terminal_id,
                        txn.mcc, txn.lat, txn.lon)
        card = self._checkout("card", part, txn.card_id)
        pairs: tuple[tuple[Entity, str, EventLog], ...] = (
            ("card", txn.card_id, card), ("customer", txn.customer_id, customer))
        if self.capture is not None:
            served: dict[str, Any] = {}
            for entity, _, state in pairs:
                served.update(self.windows[entity].served_before(state, txn.time_us) or {})
            self.capture[txn.txn_id] = served
        for entity, key, state in pairs:
            self.apply_event(entity, key, state, event, out.rows, out.online)
        out.changes[(TRANSACTIONS, part)].add_row((txn.card_id, txn.customer_id, *event))
        out.recent_customers.append(txn.customer_id)
        out.recent_docs.append(recent.entry(
            txn_id=txn.txn_id, event_time=records.iso(txn.time_us), amount=txn.amount,
            currency=txn.currency, mcc=txn.mcc, country=txn.country,
            terminal_id=txn.terminal_id, card_id=txn.card_id, channel=txn.channel))
        for rule in self.rules:
            alert = evaluate(txn.card_id, txn.customer_id, card, rule, now)
            if alert is not None:
                self.stats.alerts += 1
                out.alerts_by_rule[rule.name] += 1
                producer.produce(ALERTS, txn.card_id, orjson.dumps(alert))
        out.forward_rows.append((txn.time_us, txn.terminal_id, txn.txn_id))
        self.stats.applied += 1
        return True

    def apply_event(self, entity: Entity, key: str, state: EventLog, event: Event,
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
