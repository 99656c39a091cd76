"""`kestrel parity --days N`: does training see exactly what the online store was given?

Replays N simulated days through the real stream processor, run as `kestrel stream` runs it
(the array path, pipelines/stream/arrays/; on a private broker and Redis, so the project's own
stores are untouched), with an online sink that writes to Redis through the production
OnlineWriter and records every row it is handed (:class:`RecordingSink`). The events are
produced at a steady rate while the stream runs (``run_parity``'s ``rate``), so that most
(entity, event) rows reach the online store, as with live traffic. Then, feature by
feature, four comparisons:

- *offline*: every row written to the online store — per (view, entity key, event time t)
  the last version written — against what training reads for that entity at t: Feast's
  point-in-time join over the compacted offline feature log, through
  ``stream_features_before`` (the training-set builder's function) asked for
  ``t + 1 µs`` — it asks the join at ``T − 1 µs``, so at t, and the join includes the row
  stamped t (its newest ``created`` version);
- *redis*: the final contents of the online store, read back through Feast's
  ``get_online_features``, against the last row written for each entity key;
- *engine*: every row written online against the stream's other engine, the per-event
  WindowSet (pipelines/stream/state.py), recomputed from the replayed events;
- *spark* (``report.spark``, pipelines/stream/parity_spark.py): every online row and every
  offline-log row against the Spark backfill of the same events (less those the stream
  sent to ``transactions.late`` or the DLQ), within 1e-6 — Spark adds in another order.

The first shows the offline log holds every value the online store served, at the time it
was served (what the point-in-time contract of kestrel/windows.py needs); the second that
the rows reached Redis as written. Both compare the array path with itself — online and
offline rows are written from the same computed values — so a wrong value shows in
neither; the third compares the two engines, and goes red when the array path alone is
wrong (an off-by-one in a distinct count did); the fourth compares the stream with the
engine that training sets built from history are made with (the backfill), and goes red when
either side alone is wrong. Per feature it reports how many values were compared, how many
differ (a missing value only equals a missing value; numbers within 1e-9, 1e-6 against
Spark) and the largest absolute difference; the expected figure is zero. docs/parity.md
describes a run.

Not compared here: whether the values are *right* (tests/stream/test_feature_reference.py
checks every feature against a pandas reference written from the definitions); and rows the
online store served before a late event corrected them offline (a late event re-emits the
offline rows of its entity's later events; the online store only gets the newest) — the
simulated replay has no late events, and such a row would show as a mismatch.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa

from kestrel.pan import CardTokenizer
from kestrel.resp import RespTransaction
from kestrel.services import private_services
from kestrel.settings import Settings
from kestrel.windows import ENTITIES, ENTITY_KEYS, Entity, feature_names, stream_view_name
from pipelines.features.historical import stream_features_before
from pipelines.features.online_writer import OnlineWriter
from pipelines.features.store import apply, feature_store
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.generator import iter_days
from pipelines.simulator.to_kafka import stream_to_kafka
from pipelines.stream.offline_log import OfflineLog
from pipelines.stream.processor import StreamProcessor
from pipelines.stream.state import Event, EventLog, WindowSet

if TYPE_CHECKING:
    from pipelines.stream.parity_spark import SparkParity

TOLERANCE = 1e-9
PARITY_EVENTS_PER_SECOND = 100.0
QUIET_SECONDS = 5.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NO_ENTITY = "\x00parity-none"  # a key no view holds: the other entities of a lookup row


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
    online_rows: int = 0  # distinct (view, key, event time) rows written to the online store
    redis_keys: int = 0  # entity keys read back from Redis
    # the stream against the Spark backfill (parity_spark.py); None: run without Spark
    spark: SparkParity | None = None
    rows: ParityRows | None = None  # what was compared, with ``keep_rows`` (tests)

    @property
    def mismatches(self) -> int:
        return (sum(f.mismatches for f in self.features.values())
                + (self.spark.mismatches if self.spark is not None else 0))


@dataclass
class ParityRows:
    """What a parity run compared, kept for tests that check it against an independent
    reference (tests/stream/test_mutations.py): the replayed events in order of arrival,
    and per entity the stream's offline log (newest version per (key, time)) and the
    backfill's rows (empty without Spark), each with ``time_us``."""

    events: pd.DataFrame
    stream: dict[Entity, pd.DataFrame]
    backfill: dict[Entity, pd.DataFrame]


def _micros(t: datetime | int) -> int:
    if isinstance(t, datetime):
        aware = t if t.tzinfo is not None else t.replace(tzinfo=UTC)  # naive is UTC
        return (aware - _EPOCH) // timedelta(microseconds=1)
    return int(t)


class RecordingSink:
    """An OnlineSink (pipelines/stream/checkpoint.py) that delegates every write to an
    OnlineWriter and records the rows: per (view, key, event time µs) the last version
    written (``rows``), and per (view, key) the last row written, time and features
    (``last``: with ``dedup=False`` what Redis ends up holding). Recorded when queued on the
    commit's transaction: a replay that loses a commit (fencing) would record rows Redis
    never got, and show as mismatches."""

    def __init__(self, writer: OnlineWriter) -> None:
        self.writer = writer
        self.rows: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.last: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self.writes = 0

    def _record(self, view: str, key: str, features: dict[str, Any], time_us: int) -> None:
        self.rows[(view, key, time_us)] = features
        self.last[(view, key)] = (time_us, features)
        self.writes += 1

    def write(self, pipe: RespTransaction, view: str,
              rows: Iterable[tuple[str, Mapping[str, Any], datetime | int]]) -> None:
        rows = list(rows)
        self.writer.write(pipe, view, rows)
        for key, features, t in rows:
            self._record(view, key, dict(features), _micros(t))

    def write_columns(self, pipe: RespTransaction, view: str, keys: Sequence[str],
                      columns: Mapping[str, Any], times_us: Sequence[int] | np.ndarray) -> None:
        self.writer.write_columns(pipe, view, keys, columns, times_us)
        values = {name: np.asarray(col).tolist() for name, col in columns.items()}
        for i, (key, t) in enumerate(zip(keys, np.asarray(times_us).tolist(), strict=True)):
            self._record(view, key, {name: col[i] for name, col in values.items()}, int(t))


def _differs(a: Any, b: Any, tolerance: float = TOLERANCE) -> tuple[bool, float]:
    a_missing = a is None or (isinstance(a, float) and pd.isna(a))
    b_missing = b is None or (isinstance(b, float) and pd.isna(b))
    if a_missing or b_missing:
        return a_missing != b_missing, 0.0
    diff = abs(float(a) - float(b))
    return diff > tolerance, diff


def tally(fp: FeatureParity, written: Any, read: Any, where: str,
          tolerance: float = TOLERANCE, missing_row: bool = False) -> None:
    """Count one comparison of a written value with the value read elsewhere; with
    ``missing_row`` the other side has no row at all, a mismatch whatever was written."""
    fp.compared += 1
    bad, diff = _differs(written, read, tolerance)
    bad = bad or missing_row
    fp.max_abs_diff = max(fp.max_abs_diff, diff)
    if bad:
        fp.mismatches += 1
        if len(fp.examples) < 3:
            fp.examples.append(f"{where}: written {written!r}, read {read!r}")


def _entity_of_view() -> dict[str, Entity]:
    return {stream_view_name(e): e for e in ENTITIES}


def compare_offline(settings: Settings, sink: RecordingSink,
                    report: dict[str, FeatureParity]) -> None:
    """Every row written online against the offline point-in-time row at its time."""
    entity_of = _entity_of_view()
    lookups: list[dict[str, Any]] = []
    for i, (view, key, t) in enumerate(sink.rows):
        entity = entity_of[view]
        row: dict[str, Any] = {k: _NO_ENTITY for k in ENTITY_KEYS.values()}
        row[ENTITY_KEYS[entity]] = key
        row["txn_id"] = str(i)  # stream_features_before merges its joins on txn_id
        # it joins at T - 1 µs; the row stamped t is read at t
        row["event_timestamp"] = pd.Timestamp(t + 1, unit="us", tz="UTC")
        lookups.append(row)
    if not lookups:
        return
    offline = stream_features_before(settings, pd.DataFrame(lookups)).set_index("txn_id")
    for i, ((view, key, t), written) in enumerate(sink.rows.items()):
        read = offline.loc[str(i)]
        for name in feature_names(entity_of[view]):
            if name in written:
                tally(report[name], written[name], read[name], f"offline {key} @ {t}")


def compare_redis(settings: Settings, sink: RecordingSink,
                  report: dict[str, FeatureParity]) -> int:
    """The online store's final rows (through Feast) against the last row written per key;
    returns how many keys were read."""
    store = feature_store(settings)
    entity_of = _entity_of_view()
    keys_read = 0
    for view, entity in entity_of.items():
        last = {key: row for (v, key), (_, row) in sink.last.items() if v == view}
        if not last:
            continue
        names = feature_names(entity)
        keys = list(last)
        got = store.get_online_features(
            features=[f"{view}:{n}" for n in names],
            entity_rows=[{ENTITY_KEYS[entity]: k} for k in keys]).to_dict()
        keys_read += len(keys)
        for name in names:
            for key, value in zip(keys, got[name], strict=True):
                if name in last[key]:
                    tally(report[name], last[key][name], value, f"redis {key}")
    return keys_read


def _drain(processor: StreamProcessor, worker: threading.Thread,
           quiet_s: float = QUIET_SECONDS) -> None:
    """Wait for the stream to finish the replay: it stops by itself once idle (2 s without a
    record), or, once it has applied nothing for ``quiet_s``, is asked to stop — its last
    flush takes every record it still holds. A safeguard: should the intake (Intake.select)
    hold a few records at the end of a live replay, a buffer that is never empty never
    counts as idle and the loop would not end by itself."""
    last, since = -1, time.monotonic()
    while worker.is_alive():
        worker.join(0.5)
        applied = processor.stats.applied
        if applied != last:
            last, since = applied, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            processor.request_stop()


def compare_engines(events: pd.DataFrame, sink: RecordingSink,
                    report: dict[str, FeatureParity]) -> None:
    """Every row written online against the per-event engine (WindowSet, state.py) over the
    replayed events: the entity's events up to the row's time, in order of arrival, with
    the window aggregates as of the last of them. The array path and the per-event path
    are two engines of one definition; the offline and redis checks compare the array
    path with itself, this one with the other engine."""
    entity_of = _entity_of_view()
    ordered = events.assign(time_us=events["event_time"].dt.as_unit("us").astype("int64"))
    ordered = ordered.sort_values("time_us", kind="stable")  # ties: in order of arrival
    logs: dict[Entity, dict[str, EventLog]] = {}
    for entity in ENTITIES:
        logs[entity] = {}
        columns = [ordered[c].tolist() for c in ("txn_id", "time_us", "amount", "country",
                                                  "terminal_id", "mcc", "lat", "lon")]
        for key, *event in zip(ordered[ENTITY_KEYS[entity]].tolist(), *columns, strict=True):
            logs[entity].setdefault(key, EventLog()).add(cast(Event, tuple(event)))
    windows = {e: WindowSet(e) for e in ENTITIES}
    for (view, key, t), written in sink.rows.items():
        entity = entity_of[view]
        log = logs[entity].get(key)
        at = bisect_right(log.times, t) - 1 if log is not None else -1
        if log is None or at < 0 or log.times[at] != t:
            for name in written:  # the stream wrote a row for an event that was not sent
                tally(report[name], written[name], None, f"engine {key} @ {t}",
                      missing_row=True)
            continue
        expected = windows[entity].features(log, at)
        for name in feature_names(entity):
            if name in written:
                tally(report[name], written[name], expected[name], f"engine {key} @ {t}")


def run_parity(settings: Settings, days: int, customers: int = 1000, terminals: int = 2000,
               seed: int = 42, progress: Any = print,
               rate: float = PARITY_EVENTS_PER_SECOND, with_spark: bool = True,
               keep_rows: bool = False) -> ParityReport:
    """Replay, then compare (the module's docstring says what). The events are produced at
    ``rate`` per second while the stream runs, as live traffic arrives: a backlog consumed
    at once is applied in a batch or two, which write each entity to the online store about
    once, and the comparison would see little more than the last rows. At a hundred
    events per second each batch (``stream_batch_ms``) writes the entities it touched, so
    most rows reach the online store. ``with_spark``: also backfill the replayed days with
    Spark and compare (parity_spark.py); ``keep_rows``: keep what was compared in
    ``report.rows``."""
    config = SimulationConfig(customers=customers, terminals=terminals, days=days, seed=seed)
    tokenize = CardTokenizer(b"parity-replay-key-0123456789abcdef").token
    names = [n for e in ENTITIES for n in feature_names(e)]
    report = {n: FeatureParity() for n in names}
    spark: SparkParity | None = None
    stream_log: dict[Entity, pd.DataFrame] = {}
    backfill: dict[Entity, pd.DataFrame] = {}
    with private_services(settings, with_redis=True) as own:
        own = own.model_copy(update={"stream_metrics_port": 0})
        sink = RecordingSink(OnlineWriter(own, dedup=False))  # as `kestrel stream` writes
        processor = StreamProcessor(own, sink)  # the columnar path, as `kestrel stream` runs
        worker = threading.Thread(target=processor.run, kwargs={"idle_seconds": 2.0})
        worker.start()
        progress(f"replaying {days} days ({customers:,} customers) through a private broker "
                 f"at {rate:,.0f} events/s …")
        try:
            sent = stream_to_kafka(config, own, tokenize, rate=rate, with_labels=False)
        finally:
            _drain(processor, worker)
        progress(f"stream applied {processor.stats.applied:,} of {sent.transactions:,} events "
                 f"in {processor.stats.batches:,} batches; {len(sink.rows):,} online rows "
                 "written")
        log = OfflineLog(own.var_dir)
        for entity in ENTITIES:
            log.compact(entity)
        apply(own, echo=lambda _: None)
        progress("reading every online row back offline (Feast point-in-time join) …")
        compare_offline(own, sink, report)
        progress("reading the online store back (Feast get_online_features) …")
        keys_read = compare_redis(own, sink, report)
        if with_spark or keep_rows:
            from pipelines.stream import parity_spark as ps

            stream_log = ps.stream_log_rows(own)
        if with_spark:
            # after the offline comparison: the backfill's files join the same log folder
            began = time.monotonic()
            excluded, unidentified = ps.unapplied_txn_ids(own)
            progress(f"backfilling the replayed days with Spark ({len(excluded):,} late/DLQ "
                     "events left out) …")
            backfill = ps.run_backfill(own, config, tokenize, excluded, progress)
            spark = ps.SparkParity({n: FeatureParity() for n in names},
                                   excluded=len(excluded), unidentified=unidentified)
            ps.compare_spark(backfill, stream_log, sink, spark)
            spark.seconds = time.monotonic() - began
    progress("recomputing every online row with the per-event engine (state.py) …")
    events = pa.concat_tables([b.transactions for b in iter_days(config, tokenize)]).to_pandas()
    compare_engines(events, sink, report)
    return ParityReport(days, sent.transactions, report, online_rows=len(sink.rows),
                        redis_keys=keys_read, spark=spark,
                        rows=ParityRows(events, stream_log, backfill) if keep_rows else None)
