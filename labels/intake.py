"""`kestrel labels intake`: the `labels` topic → the label store, exactly once.

Built from the kernel's pieces, like the archiver: the consumer-app skeleton
(kestrel/consumer_app.py), a lake batch's steps (kestrel/lake_batch.py: rows per day, dead
letters, one lock per lake) and the lake's commit protocol (kestrel/lake_commit.py), which
stores each batch's next offsets in the same manifest as the files they produced. A
``kill -9`` and a restart therefore neither lose nor duplicate a label; Kafka's committed
offsets are only advisory. Labels land in the partition of the day they became known
(``labelled_date=YYYY-MM-DD/intake-<batch>.parquet``).
A record that breaks the LabelEvent contract (a PAN-like txn_id, analyst_id or reason, an
unknown schema_version, bytes that are no label at all) or whose ``labelled_at`` is outside
kestrel.events.TimeBounds (it names the lake partition) goes to the dead-letter topic,
redacted, with the reason, and never stops the intake. One intake owns a lake at a time (a
lock file).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message

from kestrel.consumer_app import BatchConfig, ConsumerApp
from kestrel.errors import EventValidationError, FieldError
from kestrel.events import TimeBounds, decode_label
from kestrel.kafka import consumer_config, topic_ids
from kestrel.lake import LABEL_SCHEMA
from kestrel.lake_batch import commit_advisory, commit_days, exclusive, sort_by_day
from kestrel.lake_commit import CommitLog
from kestrel.producer import EventProducer
from kestrel.settings import Settings
from kestrel.topics import LABELS, TRANSACTIONS_DLQ

log = logging.getLogger("kestrel.labels")
GROUP_ID = "kestrel-labels"
# The project's dead-letter topic; each record names its source topic (`labels`).
DLQ_TOPIC = TRANSACTIONS_DLQ
BATCH_RECORDS = 50_000
BATCH_SECONDS = 1.0

# The intake's own staging folder (the archiver's is `_staging`): a CommitLog drops every
# staged batch in its folder that has no manifest of its topic.
STAGING = "_staging-labels"


@dataclass
class IntakeStats:
    consumed: int = 0
    written: int = 0
    invalid: int = 0
    batches: int = 0
    files: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


def label_row(raw: bytes, bounds: TimeBounds | None = None) -> dict[str, Any]:
    """A validated LABEL_SCHEMA row from one `labels` record (raises EventValidationError),
    its ``labelled_at`` within ``bounds`` when given."""
    event = decode_label(raw)
    if bounds is not None and (why := bounds.reason(event.labelled_at)) is not None:
        raise EventValidationError([FieldError("labelled_at", why)])
    return event.model_dump()


class LabelIntake:
    def __init__(self, settings: Settings, group_id: str = GROUP_ID):
        self.settings = settings
        self.group_id = group_id
        self.lake_dir = settings.lake_dir
        self.log = CommitLog(self.lake_dir, LABELS, staging=STAGING)
        self.bounds = TimeBounds.from_settings(settings)
        self.stats = IntakeStats()
        self.app = ConsumerApp(BatchConfig(max_records=BATCH_RECORDS, max_wait_s=BATCH_SECONDS))
        self._topic_id: str | None = None
        self._resume: dict[int, int] = {}

    def request_stop(self, *_: Any) -> None:
        self.app.request_stop()

    def run(self, idle_seconds: float | None = None,
            progress: Callable[[IntakeStats], None] | None = None) -> IntakeStats:
        """Consume until stopped (SIGINT/SIGTERM) or ``idle_seconds`` without a record."""
        self.lake_dir.mkdir(parents=True, exist_ok=True)
        with exclusive(self.lake_dir / "_labels-intake.lock", "label intake"):
            checkpoint = self.log.recover()
            self._topic_id = topic_ids(self.settings, [LABELS])[LABELS]
            if checkpoint.topic_id not in (None, self._topic_id):
                log.warning("topic %s was recreated (broker restart?); reading it from the "
                            "start (a label read twice is harmless)", LABELS)
            else:
                self._resume = dict(checkpoint.offsets)
            consumer = Consumer(consumer_config(self.settings, self.group_id))
            dlq = EventProducer(self.settings)
            self.app.stop_on_signals()
            consumer.subscribe([LABELS], on_assign=self._on_assign,
                               on_revoke=lambda c, _p: self._flush(self.app.buffer, c, dlq))

            def commit(batch: list[Message]) -> None:
                had = bool(batch)
                self._flush(batch, consumer, dlq)
                if had and progress is not None:
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

    def _flush(self, buffer: list[Message], consumer: Consumer, dlq: EventProducer) -> None:
        if not buffer:
            return
        batch, buffer[:] = list(buffer), []

        def row_of(raw: bytes) -> tuple[str, dict[str, Any]]:
            row = label_row(raw, self.bounds)
            return row["labelled_at"].date().isoformat(), row

        days = sort_by_day(batch, LABELS, self.group_id, dlq, row_of)
        written, invalid = days.written, days.invalid
        batch_id, files = commit_days(
            self.log, self._topic_id, days, LABEL_SCHEMA, self.lake_dir, "labels",
            "intake", {"records": len(batch), "written": written, "invalid": invalid})
        self._resume.update(days.next_offsets)
        commit_advisory(consumer, LABELS, days.next_offsets)
        s = self.stats
        s.consumed += len(batch)
        s.written += written
        s.invalid += invalid
        s.files += len(files)
        s.batches += 1
        log.info("labels committed", extra={"batch_id": batch_id, "records": len(batch),
                                            "written": written, "invalid": invalid})
