"""One micro-batch of a topic → lake consumer, written once for the two that exist: the
transaction archiver (pipelines/archive/archiver.py) and the label intake (labels/intake.py).

Each decodes its records into rows keyed by day, sends invalid records to the dead-letter
topic (durable before the offsets move past them), stages one Parquet file per day and commits
the files with the batch's next offsets through :class:`CommitLog`; Kafka hears about the
offsets only as advice. One consumer owns a lake at a time (:func:`exclusive`).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from confluent_kafka import Consumer, Message, TopicPartition

from kestrel.dlq import dead_letter
from kestrel.errors import EventValidationError, FieldError, ServiceError
from kestrel.lake import PARTITION_KEYS, TableName, partition_dir, write_parquet_durable
from kestrel.lake_commit import CommitLog, StagedFile
from kestrel.pan import redact_pans
from kestrel.producer import EventProducer
from kestrel.topics import TRANSACTIONS_DLQ

log = logging.getLogger("kestrel.lake")  # the archiver's and the label intake's

# A record's value → (day, row); None to leave it out (a duplicate). Raises
# EventValidationError for an invalid record (a PAN-like value, a time outside
# kestrel.events.TimeBounds, anything the contract refuses).
RowOf = Callable[[bytes], "tuple[str, dict[str, Any]] | None"]


@dataclass
class DayRows:
    """A batch sorted for the lake: rows per day, and the offsets it moves to."""

    next_offsets: dict[int, int] = field(default_factory=dict)
    rows_by_day: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(list))
    invalid: int = 0
    left_out: int = 0

    @property
    def written(self) -> int:
        return sum(len(rows) for rows in self.rows_by_day.values())


def sort_by_day(batch: list[Message], topic: str, group_id: str, dlq: EventProducer,
                row_of: RowOf) -> DayRows:
    """Every record of ``batch`` as a row of its day; an invalid one goes to the dead-letter
    topic with the reason (flushed before this returns). So does one that ``row_of`` fails
    on in any other way: a record, whatever its bytes, never stops the consumer (it would
    fail again on every restart); the error's type is kept, not its message, which could
    quote the record."""
    out = DayRows()
    for m in batch:
        part, off = m.partition() or 0, m.offset() or 0
        out.next_offsets[part] = max(out.next_offsets.get(part, 0), off + 1)
        raw = m.value()
        try:
            kept = row_of(raw or b"")
        except Exception as exc:  # any error: see the docstring
            if isinstance(exc, EventValidationError):
                error = exc
            else:
                log.error("%s record at %s:%d could not be read (%s)", topic, part, off,
                          type(exc).__name__)
                error = EventValidationError([FieldError(
                    "$", f"could not be read ({type(exc).__name__})")])
            out.invalid += 1
            key, value = dead_letter(topic, part, off, raw, error, group_id)
            dlq.produce(TRANSACTIONS_DLQ, key, value)
            log.warning("invalid %s record sent to %s", topic, TRANSACTIONS_DLQ,
                        extra={"partition": part, "offset": off,
                               "reason": redact_pans(str(error))})
            continue
        if kept is None:
            out.left_out += 1
            continue
        day, row = kept
        out.rows_by_day[day].append(row)
    if out.invalid:
        dlq.flush()  # the dead-letter copy is durable before the offsets move past it
    return out


def commit_days(commit_log: CommitLog, topic_id: str | None, days: DayRows,
                schema: pa.Schema, lake_dir: Path, table: TableName, file_prefix: str,
                counts: dict[str, int]) -> tuple[str, list[StagedFile]]:
    """Stage one Parquet file per day (``<table>/<key>=<day>/<file_prefix>-<batch>.parquet``)
    and commit them with the batch's next offsets; returns the batch id and the files."""
    batch_id, staging = commit_log.new_batch_dir()
    files = []
    for day, rows in sorted(days.rows_by_day.items()):
        staged = staging / f"{PARTITION_KEYS[table]}={day}.parquet"
        write_parquet_durable(pa.Table.from_pylist(rows, schema=schema), staged)
        final = partition_dir(lake_dir, table, day) / f"{file_prefix}-{batch_id}.parquet"
        files.append(StagedFile(staged, final))
    commit_log.commit(batch_id, topic_id, files, days.next_offsets, counts)
    return batch_id, files


def commit_advisory(consumer: Consumer, topic: str, next_offsets: dict[int, int]) -> None:
    """Tell Kafka too (for `kestrel status` and lag); the lake's checkpoint is what counts."""
    try:
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in next_offsets.items()],
                        asynchronous=True)
    except Exception as exc:  # advisory only: never fail a durable batch over it
        log.warning("could not commit offsets to Kafka: %s", exc)


@contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock file (holding the owner's pid) for the block: one ``what`` per
    lake, since two would race on the checkpoint."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            raise ServiceError(f"another {what} (pid {other}) is writing the lake at "
                               f"{path.parent}; stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
