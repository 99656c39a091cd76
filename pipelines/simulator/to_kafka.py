"""Stream simulated days through the ingestion producer (`kestrel simulate --to kafka`).

Events go out day by day in event-time order, paced at ``rate`` events/s (0: as fast as the
producer goes). Ground-truth labels follow with the label delay: after each day, the labels
that became known by its end are published, and the rest when the run ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as dtime

import pyarrow as pa
import pyarrow.compute as pc

from kestrel.events import encode_record
from kestrel.producer import EventProducer
from kestrel.settings import Settings
from kestrel.topics import LABELS, TRANSACTIONS
from kestrel.wire import transaction_json
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.generator import iter_days
from pipelines.simulator.labels import labels_for

PACE_SLICES_PER_SECOND = 50


@dataclass
class StreamSummary:
    days: int = 0
    transactions: int = 0
    frauds: int = 0
    labels: int = 0
    seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)

    @property
    def events_per_s(self) -> float:
        return self.transactions / self.seconds if self.seconds else 0.0


def transaction_records(table: pa.Table) -> Iterator[tuple[str, str]]:
    """(customer_id key, JSON value) for each row of a transactions table."""
    values = transaction_json(table).to_pylist()
    return zip(table.column("customer_id").to_pylist(), values, strict=True)


def label_records(table: pa.Table) -> Iterator[tuple[str, bytes]]:
    for row in table.to_pylist():
        yield row["txn_id"], encode_record(row)


class _Pacer:
    """Holds a producer to ``rate`` events/s by sleeping between small slices."""

    def __init__(self, rate: float):
        self.rate = rate
        self.sent = 0
        self.t0 = time.monotonic()

    def slices(self, n: int) -> Iterator[slice]:
        if self.rate <= 0:
            yield slice(0, n)
            return
        step = max(1, int(self.rate / PACE_SLICES_PER_SECOND))
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            yield slice(lo, hi)
            self.sent += hi - lo
            ahead = self.sent / self.rate - (time.monotonic() - self.t0)
            if ahead > 0:
                time.sleep(ahead)


def stream_to_kafka(
    config: SimulationConfig,
    settings: Settings,
    tokenize: Callable[[str], str],
    rate: float = 0.0,
    with_labels: bool = True,
    progress: Callable[[StreamSummary], None] | None = None,
    producer: EventProducer | None = None,
) -> StreamSummary:
    producer = producer or EventProducer(settings)
    summary = StreamSummary()
    pacer = _Pacer(rate)
    pending: list[pa.Table] = []
    for batch in iter_days(config, tokenize):
        tx = batch.transactions
        for part in pacer.slices(tx.num_rows):
            summary.transactions += producer.produce_many(
                TRANSACTIONS, transaction_records(tx.slice(part.start, part.stop - part.start)))
        summary.frauds += int(pc.sum(batch.truth.column("is_fraud")).as_py() or 0)
        summary.days += 1
        if with_labels:
            pending.append(labels_for(batch, config.label_delay_days))
            day_end = datetime.combine(batch.day + timedelta(days=1), dtime(), UTC)
            due, pending = _split_due(pending, day_end)
            if due is not None:
                summary.labels += producer.produce_many(LABELS, label_records(due))
        summary.seconds = time.monotonic() - summary.started
        if progress:
            progress(summary)
    if with_labels and pending:
        rest = pa.concat_tables(pending)
        summary.labels += producer.produce_many(LABELS, label_records(rest))
    producer.flush(timeout=120)
    summary.seconds = time.monotonic() - summary.started
    return summary


def _split_due(pending: list[pa.Table], before: datetime) -> tuple[pa.Table | None, list[pa.Table]]:
    table = pa.concat_tables(pending)
    mask = pc.less(table.column("labelled_at"), pa.scalar(before, type=pa.timestamp("us", "UTC")))
    due = table.filter(mask)
    rest = table.filter(pc.invert(mask))
    return (due if due.num_rows else None), ([rest] if rest.num_rows else [])
