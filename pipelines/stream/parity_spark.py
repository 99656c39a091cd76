"""Parity's fourth comparison: the stream's rows against the Spark backfill of the same events.

The stream (array path) and the backfill (``pipelines/batch/backfill.py``, each aggregation's
``spark`` implementation over range frames) are two engines of one declared feature set, and
a training set built from history is made of backfill rows while serving reads the stream's.
:func:`compare_spark` recomputes the replayed days with the backfill — written to a lake in
parity's private var dir, exactly the events the replay produced, less those the stream did
not apply (:func:`unapplied_txn_ids`: the ``transactions.late`` and DLQ topics of the
private broker) — and compares, feature by feature and per (entity key, event time):

- every row written to the online store (``RecordingSink.rows``: its last version), and
- every row of the stream's offline log (``part-*`` files; the newest version of each
  (key, time) row, what Feast's join reads — this covers the events whose rows were
  superseded in the online store before a batch wrote them),

with the backfill's row (``backfill-*`` files, read apart from the stream's). A tie (events
of one entity at the same µs) is one row on both sides: its newest version on the stream's,
the range frame over the whole tie with the last event in arrival order on the backfill's.

Floats: the stream's two stores are bit-identical (compared within 1e-9), but the order in
which Spark adds a frame's values is Spark's to choose, and ``avg`` is its own code, not the
stream's left-to-right sum divided by the count; so numbers here agree within
:data:`SPARK_TOLERANCE` (1e-6 absolute: sums are rounded to cents on both sides, means are
not, and a reordered sum of a day's amounts differs by about 1e-12). ``max |diff|`` above
zero is the first sign that Spark's order of addition changed, and above 1e-6 a mismatch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import orjson
import pandas as pd
import pyarrow.dataset as ds
from confluent_kafka import Consumer, TopicPartition

from kestrel.errors import ServiceUnavailable
from kestrel.kafka import consumer_config
from kestrel.settings import Settings
from kestrel.topics import TRANSACTIONS_DLQ, TRANSACTIONS_LATE
from kestrel.windows import ENTITIES, ENTITY_KEYS, Entity, feature_names, stream_view_name
from pipelines.simulator.config import SimulationConfig
from pipelines.stream.offline_log import log_dir
from pipelines.stream.parity import FeatureParity, RecordingSink, tally

SPARK_TOLERANCE = 1e-6


@dataclass
class SparkParity:
    """The Spark comparison: per feature (``features``), and the rows that could not be
    paired — stream rows without a backfill row count as mismatches of every feature;
    backfill rows for a (key, time) the stream never logged are ``only_in_backfill``."""

    features: dict[str, FeatureParity]
    backfill_rows: int = 0
    only_in_backfill: int = 0
    only_in_backfill_examples: list[str] = field(default_factory=list)
    excluded: int = 0  # events left out of the backfill: sent to transactions.late / DLQ
    unidentified: int = 0  # late / DLQ records without a readable txn_id
    seconds: float = 0.0

    @property
    def mismatches(self) -> int:
        return sum(f.mismatches for f in self.features.values()) + self.only_in_backfill


def _txn_id(topic: str, value: bytes | None) -> str | None:
    """The txn_id a late record (the event, re-encoded) or a DLQ record (its payload, as
    text) carries; None when it has none that can be read."""
    try:
        record = orjson.loads(value or b"null")
        if topic == TRANSACTIONS_DLQ:
            record = orjson.loads(record.get("payload") or "null")
        txn_id = record.get("txn_id") if isinstance(record, dict) else None
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return txn_id if isinstance(txn_id, str) else None


def unapplied_txn_ids(settings: Settings, timeout: float = 30.0) -> tuple[set[str], int]:
    """The txn_ids the stream did not apply — every record of ``transactions.late`` and
    ``transactions.dlq`` on the broker, read up to the end offsets taken at the start — and
    how many records had none that could be read. Read by offsets, not until quiet: the
    stream has stopped, so the ends are final."""
    consumer = Consumer(consumer_config(settings, f"kestrel-parity-{time.time_ns()}"))
    try:
        topics = consumer.list_topics(timeout=timeout).topics
        start: list[TopicPartition] = []
        ends: dict[tuple[str, int], int] = {}
        for topic in (TRANSACTIONS_LATE, TRANSACTIONS_DLQ):
            for p in topics[topic].partitions if topic in topics else ():
                lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                        timeout=timeout)
                if hi > lo:
                    start.append(TopicPartition(topic, p, lo))
                    ends[(topic, p)] = hi
        ids: set[str] = set()
        unidentified = 0
        if not start:
            return ids, unidentified
        consumer.assign(start)
        deadline = time.monotonic() + timeout
        while ends:
            if time.monotonic() > deadline:
                raise ServiceUnavailable(
                    f"parity: could not read {TRANSACTIONS_LATE} / {TRANSACTIONS_DLQ} to "
                    f"their ends within {timeout:.0f} s at {settings.kafka_bootstrap} (still "
                    f"open: {sorted(ends)}); rerun `kestrel parity`, or with fewer --days")
            for m in consumer.consume(1000, 0.5):
                if m.error() is not None:
                    continue
                topic, partition = m.topic() or "", m.partition() or 0
                txn_id = _txn_id(topic, m.value())
                if txn_id is None:
                    unidentified += 1
                else:
                    ids.add(txn_id)
                if (m.offset() or 0) + 1 >= ends.get((topic, partition), 0):
                    ends.pop((topic, partition), None)
        return ids, unidentified
    finally:
        consumer.close()


def _time_us(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(time_us=frame["event_timestamp"].dt.as_unit("us").astype("int64"))


def _log_rows(settings: Settings, entity: Entity, pattern: str) -> pd.DataFrame:
    """The rows of a view's offline-log files matching ``pattern`` (``part-*``: the
    stream's; ``backfill-*``: Spark's), the newest version of each (key, time), with
    ``time_us``."""
    key = ENTITY_KEYS[entity]
    files = sorted((log_dir(settings.var_dir) / stream_view_name(entity)).glob(pattern))
    if not files:
        return pd.DataFrame(columns=[key, "time_us", *feature_names(entity)])
    frame = ds.dataset([str(f) for f in files], format="parquet").to_table().to_pandas()
    newest = frame.sort_values("created", kind="stable").drop_duplicates(
        [key, "event_timestamp"], keep="last")
    return _time_us(newest).sort_values([key, "time_us"]).reset_index(drop=True)


def stream_log_rows(settings: Settings) -> dict[Entity, pd.DataFrame]:
    """Per entity, the stream's offline log (newest version per (key, time))."""
    return {e: _log_rows(settings, e, "part-*.parquet") for e in ENTITIES}


def run_backfill(settings: Settings, config: SimulationConfig, tokenize: Callable[[str], str],
                 exclude: Collection[str], progress: Callable[[str], None]
                 ) -> dict[Entity, pd.DataFrame]:
    """Write the replayed days to the lake of ``settings`` (private: parity's var dir), the
    same events as the replay (same config and tokenizer), backfill them less ``exclude``,
    and return the backfill's rows per entity."""
    from pipelines.batch.backfill import backfill_stream_features
    from pipelines.simulator.to_lake import write_to_lake

    write_to_lake(config, settings.lake_dir, tokenize)
    backfill_stream_features(settings, progress=lambda line: progress(f"  {line}"),
                             exclude_txn_ids=exclude)
    return {e: _log_rows(settings, e, "backfill-*.parquet") for e in ENTITIES}


def compare_spark(backfill: Mapping[Entity, pd.DataFrame],
                  stream_log: Mapping[Entity, pd.DataFrame], sink: RecordingSink,
                  result: SparkParity) -> None:
    """Every online row and every offline-log row against the backfill's row for the same
    (key, event time), within SPARK_TOLERANCE; backfill rows the log lacks are counted."""
    for entity in ENTITIES:
        view, key = stream_view_name(entity), ENTITY_KEYS[entity]
        names = list(feature_names(entity))
        spark = backfill[entity]
        result.backfill_rows += len(spark)
        by_row = {(k, int(t)): row for k, t, row in zip(
            spark[key].tolist(), spark["time_us"].tolist(),
            spark[names].to_dict("records"), strict=True)}
        online = [((k, t), written) for (v, k, t), written in sink.rows.items() if v == view]
        log = stream_log[entity]
        logged = list(zip(zip(log[key].tolist(), log["time_us"].tolist(), strict=True),
                          log[names].to_dict("records"), strict=True))
        for source, rows in (("online", online), ("log", logged)):
            for (k, t), written in rows:
                expected = by_row.get((k, int(t)))
                for name in names:
                    if name in written:
                        tally(result.features[name], written[name],
                              None if expected is None else expected[name],
                              f"spark vs {source} {k} @ {t}"
                              + ("" if expected is not None else " (no backfill row)"),
                              SPARK_TOLERANCE, missing_row=expected is None)
        seen = {(k, int(t)) for (k, t), _ in logged}
        extra = [kt for kt in by_row if kt not in seen]
        result.only_in_backfill += len(extra)
        result.only_in_backfill_examples += [f"{view} {k} @ {t}" for k, t in
                                             extra[:3 - len(result.only_in_backfill_examples)]]

