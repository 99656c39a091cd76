"""The array path: what `kestrel stream` runs.

A batch's `transactions` records are decoded at once (batch_decode; from the intake's parse),
checked at once (the gate), then per partition each entity type's events are applied to its
arrays at once (EntityArrays.apply). Cards that may raise an alert (a window of a rule holds
its count) are handed back as EventLogs and go event by event through the reference
(PerEventPath.apply_event, rules.evaluate), then back in. Terminal updates are applied at the
end of the batch (terminals.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import numpy as np
import orjson
from confluent_kafka import Message

from kestrel.producer import EventProducer
from kestrel.topics import ALERTS, TRANSACTIONS
from kestrel.windows import Entity
from pipelines.stream import batch_decode, recent
from pipelines.stream.apply_path import BatchOutput
from pipelines.stream.gate import Gate
from pipelines.stream.metrics import StreamStats
from pipelines.stream.partitions import Partitions
from pipelines.stream.per_event import PerEventPath
from pipelines.stream.rules import Rule, evaluate
from pipelines.stream.state import VALUES, Event
from pipelines.stream.terminals import Terminals


class ArrayPath:
    """Applies a batch per partition and entity type at once (an ApplyPath)."""

    def __init__(self, partitions: Partitions, gate: Gate, terminals: Terminals,
                 reference: PerEventPath, rules: tuple[Rule, ...], stats: StreamStats) -> None:
        """``reference``: the per-event path, for the cards that may raise an alert."""
        self.partitions = partitions
        self.gate = gate
        self.terminals = terminals
        self.rules = rules
        self.stats = stats
        self._apply_event = reference.apply_event  # bound once: called per event

    def apply(self, batch: list[Message], txns: list[Message], out: BatchOutput,
              producer: EventProducer, now: datetime,
              parsed: batch_decode.Parsed | None = None) -> None:
        """The batch decoded at once (batch_decode; from ``parsed``, the intake's parse of
        ``txns``, when given), the sequential checks per partition (Gate.accept), then per
        partition each entity type's events at once (apply_entities)."""
        cols = batch_decode.decode_batch([m.value() for m in txns], parsed)
        for i, exc in cols.errors.items():
            self.gate.dead_letter(txns[i], exc, producer)
        accepted, parts = self.gate.accept(txns, cols, producer)
        self.stats.applied += len(accepted)
        if not accepted:
            self.terminals.apply(batch, out, producer)
            return

        def pick(column: list[Any], dtype: Any = object) -> np.ndarray:
            values = column if len(accepted) == cols.n else [column[i] for i in accepted]
            return np.array(values, dtype)

        txn, card, customer = pick(cols.txn_id), pick(cols.card_id), pick(cols.customer_id)
        time_us, terminal = pick(cols.time_us, np.int64), pick(cols.terminal_id)
        values = dict(zip(VALUES, (  # by Event field
            pick(cols.amount, np.float64), pick(cols.country), terminal, pick(cols.mcc),
            pick(cols.lat, np.float64), pick(cols.lon, np.float64)), strict=True))
        out.recent_customers += customer.tolist()
        out.recent_docs.append(recent.entries(cols, accepted))
        out.produced_at = [txns[i].timestamp()[1] for i in accepted]
        out.forward.append((time_us, terminal, txn))
        part_of = np.array(parts, np.int64)
        for part in np.unique(part_of).tolist():
            sel = np.flatnonzero(part_of == part)
            event = {f: column[sel] for f, column in values.items()}
            ids, times = txn[sel], time_us[sel]
            cards, customers = card[sel], customer[sel]
            out.changes[(TRANSACTIONS, part)].add_columns(
                [cards, customers, ids, times, *[event[f] for f in VALUES]])
            pairs: tuple[tuple[Entity, np.ndarray], ...] = (("card", cards),
                                                             ("customer", customers))
            for entity, keys in pairs:
                self.apply_entities(entity, part, keys, ids, times, event, customers, out,
                                    producer, now)
        self.terminals.apply(batch, out, producer)

    def apply_entities(self, entity: Entity, part: int, keys: np.ndarray, ids: np.ndarray,
                       times: np.ndarray, event: dict[int, np.ndarray], customers: np.ndarray,
                       out: BatchOutput, producer: EventProducer, now: datetime) -> None:
        """One partition's events of a batch applied to one entity type's arrays at once;
        the cards that may raise an alert (a window of a rule holds its count) are handed
        back and go event by event here (the reference's apply_event, rules.evaluate), then
        back in."""
        table = self.partitions.table(entity, part)
        rules = [(r.window_us, r.min_count) for r in self.rules] if entity == "card" else []
        applied = table.apply(keys, ids, times, {f: event[f] for f in table.fields}, rules)
        self.stats.late_for_entity += len(times) - int(applied.accepted.sum())
        if applied.rows is not None and applied.latest is not None:
            out.columns[entity].append(applied.rows)
            out.online_blocks[entity].append(applied.latest)
        if not applied.slow:
            return
        fields = [ids.tolist(), times.tolist(), *[event[f].tolist() for f in VALUES]]
        owners = customers.tolist()
        rows, online = out.rows, out.online
        for key, (state, positions) in applied.slow.items():
            for i in positions:
                self._apply_event(entity, key, state, cast(Event, tuple(f[i] for f in fields)),
                                  rows, online)
                for rule in self.rules:
                    alert = evaluate(key, owners[i], state, rule, now)
                    if alert is not None:
                        self.stats.alerts += 1
                        out.alerts_by_rule[rule.name] += 1
                        producer.produce(ALERTS, key, orjson.dumps(alert))
        table.put({key: state for key, (state, _) in applied.slow.items()})
