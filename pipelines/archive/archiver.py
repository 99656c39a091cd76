"""`kestrel archive`: consume `transactions`, write the date-partitioned Parquet lake.

A :class:`~kestrel.consumer_app.ConsumerApp` hands over micro-batches of up to
``KESTREL_ARCHIVE_BATCH_RECORDS`` records (or ``KESTREL_ARCHIVE_BATCH_SECONDS``); each is
validated, deduplicated by txn_id, written and committed through the lake's commit protocol
(:class:`~kestrel.lake_commit.CommitLog`), which stores the offsets with the files: a ``kill -9``
and a restart neither lose nor duplicate an event. Invalid records — PAN-like identifiers,
event times outside kestrel.events.TimeBounds (no lake partition for the year 1 or 9999),
bytes that are no event at all — go to `transactions.dlq` (redacted, flushed before the batch
commits) and never stop the archiver. One archiver owns a lake at a time (a lock file
enforces it).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message

from kestrel.consumer_app import BatchConfig, ConsumerApp
from kestrel.errors import EventValidationError, FieldError
from kestrel.events import TimeBounds, decode_transaction
from kestrel.kafka import consumer_config, topic_ids
from kestrel.lake import TRANSACTION_SCHEMA
from kestrel.lake_batch import commit_advisory, commit_days, exclusive, sort_by_day
from kestrel.lake_commit import CommitLog
from kestrel.producer import EventProducer
from kestrel.settings import Settings
from kestrel.topics import TRANSACTIONS
from pipelines.archive.dedup import TxnIdIndex

log = logging.getLogger("kestrel.archive")
GROUP_ID = "kestrel-archiver"  # listed in kestrel.topics.CONSUMER_GROUPS


@dataclass
class ArchiveStats:
    consumed: int = 0
    written: int = 0
    duplicates: int = 0
    invalid: int = 0
    files: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)
    partitions: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


class Archiver:
    def __init__(self, settings: Settings, group_id: str = GROUP_ID):
        self.settings = settings
        self.group_id = group_id
        self.lake_dir = settings.lake_dir
        self.log = CommitLog(self.lake_dir, TRANSACTIONS)
        self.index = TxnIdIndex(self.lake_dir)
        self.bounds = TimeBounds.from_settings(settings)
        self.stats = ArchiveStats()
        self.app = ConsumerApp(BatchConfig(max_records=settings.archive_batch_records,
                                           max_wait_s=settings.archive_batch_seconds))
        self._topic_id: str | None = None
        self._resume: dict[int, int] = {}

    # --- lifecycle ----------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        self.app.request_stop()

    def run(self, idle_seconds: float | None = None, progress: Any = None) -> ArchiveStats:
        """Archive until stopped (SIGINT/SIGTERM), or until ``idle_seconds`` pass with no
        new record once partitions are assigned."""
        self.lake_dir.mkdir(parents=True, exist_ok=True)
        with exclusive(self.lake_dir / "_archiver.lock", "archiver"):
            return self._run(idle_seconds, progress)

    def _run(self, idle_seconds: float | None, progress: Any) -> ArchiveStats:
        checkpoint = self.log.recover()
        self._topic_id = _topic_id(self.settings)
        if checkpoint.topic_id not in (None, self._topic_id):
            log.warning("topic %s was recreated (broker restart?); reading it from the start; "
                        "txn_id deduplication keeps the lake free of duplicates", TRANSACTIONS)
            self._resume = {}
        else:
            self._resume = dict(checkpoint.offsets)
        consumer = Consumer(consumer_config(self.settings, self.group_id))
        dlq = EventProducer(self.settings)
        self.app.stop_on_signals()
        consumer.subscribe([TRANSACTIONS], on_assign=self._on_assign,
                           on_revoke=lambda c, parts: self._flush(self.app.buffer, c, dlq))

        def commit(batch: list[Message]) -> None:
            had = bool(batch)
            self._flush(batch, consumer, dlq)
            if had and progress:
                progress(self.stats)

        try:
            self.app.run(consumer, commit, idle_seconds)
        finally:
            consumer.close()
        return self.stats

    def _on_assign(self, consumer: Consumer, partitions: list[Any]) -> None:
        for tp in partitions:
            tp.offset = self._resume.get(tp.partition, OFFSET_BEGINNING)
        consumer.assign(partitions)
        self.app.assigned()  # idleness counts from here
        log.info("assigned partitions", extra={
            "partitions": {tp.partition: tp.offset for tp in partitions}})

    # --- one batch ----------------------------------------------------------------------
    def _flush(self, buffer: list[Message], consumer: Consumer, dlq: EventProducer) -> None:
        if not buffer:
            return
        batch, buffer[:] = list(buffer), []
        seen_in_batch: set[str] = set()

        def row_of(raw: bytes) -> tuple[str, dict[str, Any]] | None:
            event = decode_transaction(raw)  # ids PAN-like: refused (kestrel.events)
            why = self.bounds.reason(event.event_time)
            if why is not None:
                raise EventValidationError([FieldError("event_time", why)])
            day = event.event_time.date().isoformat()
            if event.txn_id in seen_in_batch or event.txn_id in self.index.ids(day):
                return None  # a duplicate
            seen_in_batch.add(event.txn_id)
            return day, event.model_dump()

        days = sort_by_day(batch, TRANSACTIONS, self.group_id, dlq, row_of)
        written, invalid, duplicates = days.written, days.invalid, days.left_out
        batch_id, files = commit_days(
            self.log, self._topic_id, days, TRANSACTION_SCHEMA, self.lake_dir, "transactions",
            "part", {"records": len(batch), "written": written, "invalid": invalid,
                     "duplicates": duplicates})
        for day, rows in days.rows_by_day.items():
            self.index.ids(day).update(r["txn_id"] for r in rows)
        self._resume.update(days.next_offsets)
        commit_advisory(consumer, TRANSACTIONS, days.next_offsets)
        s = self.stats
        s.consumed += len(batch)
        s.written += written
        s.invalid += invalid
        s.duplicates += duplicates
        s.files += len(files)
        s.batches += 1
        for day, rows in days.rows_by_day.items():
            s.partitions[day] += len(rows)
        log.info("batch committed", extra={"batch_id": batch_id, "records": len(batch),
                                           "written": written, "invalid": invalid,
                                           "duplicates": duplicates, "files": len(files)})


def _topic_id(settings: Settings) -> str | None:
    return topic_ids(settings, [TRANSACTIONS])[TRANSACTIONS]
