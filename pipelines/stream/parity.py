"""`kestrel parity --days N`: does training see exactly what scoring saw?

Replays N simulated days through the real stream processor (on a private broker and Redis,
so the project's own stores are untouched), then, for every transaction, compares

- *served*: the stream-view features the online store held just before the transaction —
  captured live for card and customer (partition-local, applied in order); for terminals,
  whose updates arrive through the repartition topic from every partition, the row the online
  store holds once every partition has delivered (late arrivals re-emit later rows);
- *offline*: what the offline builder returns for the same transaction: Feast's
  point-in-time join over the offline feature log, asked at ``T − 1 µs`` so the row written by
  T itself cannot leak into T's own vector.

Per feature it reports how many transactions differ and the largest absolute difference;
the expected figure is zero.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from kestrel.pan import CardTokenizer
from kestrel.services import private_services
from kestrel.settings import Settings
from kestrel.topics import TRANSACTIONS_BY_TERMINAL, partitions_for
from kestrel.windows import ENTITIES, feature_names
from pipelines.features.historical import stream_features_before
from pipelines.features.online_writer import OnlineWriter
from pipelines.features.store import apply
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.generator import iter_days
from pipelines.simulator.to_kafka import stream_to_kafka
from pipelines.stream.offline_log import OfflineLog
from pipelines.stream.processor import StreamProcessor
from pipelines.stream.state import EventLog, WindowSet

TOLERANCE = 1e-9


@dataclass
class FeatureParity:
    compared: int = 0
    mismatches: int = 0
    max_abs_diff: float = 0.0
    examples: list[str] = field(default_factory=list)


@dataclass
class ParityReport:
    days: int
    transactions: int
    features: dict[str, FeatureParity]
    not_comparable: int = 0

    @property
    def mismatches(self) -> int:
        return sum(f.mismatches for f in self.features.values())


def _differs(a: Any, b: Any) -> tuple[bool, float]:
    a_missing = a is None or (isinstance(a, float) and pd.isna(a))
    b_missing = b is None or (isinstance(b, float) and pd.isna(b))
    if a_missing or b_missing:
        return a_missing != b_missing, 0.0
    diff = abs(float(a) - float(b))
    return diff > TOLERANCE, diff


def compare(served: dict[str, dict[str, Any]], offline: pd.DataFrame,
            names: list[str]) -> dict[str, FeatureParity]:
    report = {n: FeatureParity() for n in names}
    rows = offline.set_index("txn_id")
    for txn_id, vector in served.items():
        row = rows.loc[txn_id]
        for n in names:
            if n not in vector:
                continue
            fp = report[n]
            fp.compared += 1
            bad, diff = _differs(vector[n], row[n])
            fp.max_abs_diff = max(fp.max_abs_diff, diff)
            if bad:
                fp.mismatches += 1
                if len(fp.examples) < 3:
                    fp.examples.append(f"{txn_id}: served {vector[n]!r}, offline {row[n]!r}")
    return report


def run_parity(settings: Settings, days: int, customers: int = 1000, terminals: int = 2000,
               seed: int = 42, progress: Any = print) -> ParityReport:
    config = SimulationConfig(customers=customers, terminals=terminals, days=days, seed=seed)
    tokenize = CardTokenizer(b"parity-replay-key-0123456789abcdef").token
    with private_services(settings, with_redis=True) as own:
        own = own.model_copy(update={"stream_metrics_port": 0})
        progress(f"replaying {days} days ({customers:,} customers) through a private broker …")
        sent = stream_to_kafka(config, own, tokenize, with_labels=False)
        served: dict[str, dict[str, Any]] = {}
        processor = StreamProcessor(own, OnlineWriter(own, dedup=False), capture=served)
        worker = threading.Thread(target=processor.run, kwargs={"idle_seconds": 2.0})
        worker.start()
        worker.join()
        progress(f"stream applied {processor.stats.applied:,} of {sent.transactions:,} events")
        events = pa.concat_tables([b.transactions for b in iter_days(config, tokenize)])
        frame = events.select(["txn_id", "card_id", "customer_id", "terminal_id",
                               "event_time"]).to_pandas()
        not_comparable = _terminal_served(own, processor, frame, served)
        log = OfflineLog(own.var_dir)
        for entity in ENTITIES:
            log.compact(entity)
        apply(own, echo=lambda _: None)
        progress("building the same vectors offline (Feast point-in-time join) …")
        offline = stream_features_before(own, frame.rename(
            columns={"event_time": "event_timestamp"}))
    names = [n for e in ENTITIES for n in feature_names(e)]
    return ParityReport(days, sent.transactions, compare(served, offline, names),
                        not_comparable)


def _terminal_served(settings: Settings, processor: StreamProcessor, frame: pd.DataFrame,
                     served: dict[str, dict[str, Any]]) -> int:
    """Terminal rows as the online store holds them once every partition delivered (the
    committed terminal state, rebuilt from Redis); returns how many transactions could not be
    compared (the state no longer holds the history, on long replays)."""
    states: dict[str, EventLog] = {}
    for part in range(partitions_for(TRANSACTIONS_BY_TERMINAL, settings)):
        processor.restore_partition(TRANSACTIONS_BY_TERMINAL, part)
        states.update(processor.tables["terminal"][part].logs())
    ws: WindowSet = processor.windows["terminal"]
    missing = 0
    for txn_id, terminal_id, when in zip(frame.txn_id, frame.terminal_id, frame.event_time,
                                         strict=True):
        state = states.get(terminal_id)
        row = ws.served_before(state, int(when.value // 1000)) if state else None
        if row is None or txn_id not in served:
            missing += 1
            continue
        served[txn_id].update(row)
    return missing
