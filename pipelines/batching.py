"""The micro-batch consume loop shared by the archiver and the stream processor.

Records accumulate in ``buffer`` until it holds ``max_records`` or its oldest record has
waited ``max_wait_s``; then ``flush(buffer)`` commits them (and empties the list in place).
The caller owns the buffer so that its rebalance callback can flush it too. With
``idle_seconds`` the loop ends once partitions are assigned and no record came for that long
(counted from the assignment, so a slow group join is not mistaken for idleness); a consumer
that gets no assignment at all within ``idle_seconds`` + ``UNASSIGNED_GRACE_S`` gives up too
(the group has nothing for it).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, Message

log = logging.getLogger("kestrel.consumer")
UNASSIGNED_GRACE_S = 60.0


def stop_on_signals(request_stop: Callable[..., None]) -> None:
    """SIGINT / SIGTERM end the loop after the current batch commits. Outside the main
    thread (tests, the demo) signals cannot be handled there; the caller stops the loop."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):
            signal.signal(sig, request_stop)


def consume_in_batches(
    consumer: Consumer,
    buffer: list[Message],
    flush: Callable[[list[Message]], None],
    *,
    max_records: int,
    max_wait_s: float,
    poll_s: float,
    stopped: Callable[[], bool],
    assigned_at: Callable[[], float | None],
    idle_seconds: float | None = None,
    on_first_record: Callable[[float], None] | None = None,
    on_eof: Callable[[Message], None] | None = None,
    on_records: Callable[[list[Message]], None] | None = None,
    full: Callable[[], bool] | None = None,
) -> None:
    """``full`` (optional): the caller says the buffer is complete before ``max_records``
    (e.g. every partition delivered its share), so it is flushed without waiting.
    ``on_records`` (optional): told, once per poll, the records that poll added."""
    first_at = 0.0
    started = last_record_at = time.monotonic()
    while not stopped():
        msgs = consumer.consume(num_messages=min(10_000, max_records), timeout=poll_s)
        now = time.monotonic()
        added = len(buffer)
        failed = [m for m in msgs if m.error() is not None]  # usually none: the records
        for m in failed:  # are then taken in one step
            err = m.error()
            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                if on_eof is not None:
                    on_eof(m)
            else:
                log.warning("consumer error: %s", err)
        records = [m for m in msgs if m.error() is None] if failed else msgs
        if records:
            if not buffer:
                first_at = now
                if on_first_record is not None:
                    on_first_record(now)
            buffer += records
        if on_records is not None and len(buffer) > added:
            on_records(buffer[added:])
        if buffer:
            last_record_at = now
            if (len(buffer) >= max_records or now - first_at >= max_wait_s
                    or (full is not None and full())):
                flush(buffer)
                last_record_at = time.monotonic()  # a long flush is not idleness
                first_at = last_record_at  # records the flush held back start the next batch
            continue
        if idle_seconds is None:
            continue
        since = assigned_at()
        if since is not None and now - max(last_record_at, since) >= idle_seconds:
            break
        if since is None and now - started >= idle_seconds + UNASSIGNED_GRACE_S:
            log.warning("no partitions assigned within %.0f s; stopping",
                        idle_seconds + UNASSIGNED_GRACE_S)
            break
    while buffer:  # a flush may hold records back for the next batch
        flush(buffer)
