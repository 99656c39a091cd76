"""What applying one batch produces (BatchOutput), and the interface both apply paths
implement (ApplyPath): the array path (pipelines/stream/arrays/, what `kestrel stream` runs)
and the per-event reference path (per_event.py, which tests and parity compare it with).

An apply path takes a batch's records past the gate, applies them to the partitions' state
and fills a BatchOutput; the checkpoint (checkpoint.py) turns that into one commit.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
from confluent_kafka import Message

from kestrel.producer import EventProducer
from kestrel.windows import Entity
from pipelines.stream import batch_decode, changelog
from pipelines.stream.offline_log import ColumnBlock

# online rows of in-order entities, as columns: (keys, {feature: values}, times µs)
OnlineBlock = tuple[list[str], dict[str, np.ndarray], np.ndarray]


@dataclass
class BatchOutput:
    """Everything one batch produced, for its commit."""

    # offline-log rows: one dict per row (event by event), and blocks of columns (arrays)
    rows: dict[Entity, list[dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(list))
    columns: dict[Entity, list[ColumnBlock]] = field(
        default_factory=lambda: defaultdict(list))
    # online rows: per entity key (features, time µs), event by event; and column blocks
    online: dict[Entity, dict[str, tuple[dict[str, Any], int]]] = field(
        default_factory=lambda: defaultdict(dict))
    online_blocks: dict[Entity, list[OnlineBlock]] = field(
        default_factory=lambda: defaultdict(list))
    # the events applied, per (topic, partition): the batch's changelog entries
    changes: dict[tuple[str, int], changelog.Entries] = field(
        default_factory=lambda: defaultdict(changelog.Entries))
    # the customers' recent-transactions entries (recent.py), in order
    recent_customers: list[str] = field(default_factory=list)
    recent_docs: list[pa.Array] = field(default_factory=list)
    # terminal updates to route (terminals.py): (times µs, terminal_ids, txn_ids) blocks, and
    # rows of the same from the per-event path
    forward: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    forward_rows: list[tuple[int, str, str]] = field(default_factory=list)
    alerts_by_rule: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    produced_at: list[int] = field(default_factory=list)  # ms, of each event applied

    def written(self) -> int:
        """Online rows the batch writes."""
        return sum(len(v) for v in self.online.values()) + sum(
            len(keys) for blocks in self.online_blocks.values() for keys, _, _ in blocks)


class ApplyPath(Protocol):
    """Applies a batch's records to the partitions' state."""

    def apply(self, batch: list[Message], txns: list[Message], out: BatchOutput,
              producer: EventProducer, now: datetime,
              parsed: batch_decode.Parsed | None = None) -> None:
        """Apply ``batch`` (``txns``: its `transactions` records; ``parsed``: the intake's
        parse of them, when given) into ``out``; side effects (alerts, late, DLQ,
        repartition) go to ``producer``."""
