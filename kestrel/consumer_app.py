"""The consumer-app skeleton: consume in micro-batches, commit each with the state, stop on
signals. The archiver (pipelines/archive), the label intake (labels/intake.py) and the
stream (pipelines/stream) are each a :class:`ConsumerApp` plus what they do with a batch.

Records accumulate in :attr:`ConsumerApp.buffer` until it holds ``max_records`` or its oldest
record has waited ``max_wait_s``; then the owner's ``commit(buffer)`` commits them with its
state (and empties the list in place). The buffer belongs to the app so that the owner's
rebalance callback can commit it too. With ``idle_seconds`` the loop ends once partitions are
assigned and no record came for that long (counted from the assignment, so a slow group join
is not mistaken for idleness); a consumer that gets no assignment at all within
``idle_seconds`` + :data:`UNASSIGNED_GRACE_S` gives up too (the group has nothing for it).
At the end, whatever is still buffered is committed.

Usage::

    app = ConsumerApp(BatchConfig(max_records=50_000, max_wait_s=1.0))
    consumer.subscribe([topic], on_assign=lambda c, parts: (c.assign(parts), app.assigned()),
                       on_revoke=lambda c, _parts: commit(app.buffer))
    app.stop_on_signals()
    app.run(consumer, commit, idle_seconds=5)
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, Message

log = logging.getLogger("kestrel.consumer")
UNASSIGNED_GRACE_S = 60.0
MAX_RECORDS_PER_POLL = 10_000

Commit = Callable[[list[Message]], None]


@dataclass(frozen=True)
class BatchConfig:
    """The shape of a micro-batch: it is committed once it holds ``max_records`` or its
    oldest record has waited ``max_wait_s``; each poll waits at most ``poll_s``."""

    max_records: int
    max_wait_s: float
    poll_s: float = 0.2

    def __post_init__(self) -> None:
        if self.max_records < 1 or self.max_wait_s < 0 or self.poll_s <= 0:
            raise ValueError(f"a batch needs max_records >= 1, max_wait_s >= 0 and "
                             f"poll_s > 0; got {self}")


@dataclass(frozen=True)
class BatchHooks:
    """Optional calls into the owner during the loop (None: not called). The stream's
    intake uses them; the lake consumers need none.

    ``first_record(at)``: a record arrived in an empty buffer (``at``: ``time.monotonic()``).
    ``eof(msg)``: a partition reported its end. ``records(added)``: the records one poll
    added, once per poll. ``full()``: the owner says the buffer is complete before
    ``max_records`` (e.g. every partition delivered its share), so it is committed at once.
    """

    first_record: Callable[[float], None] | None = None
    eof: Callable[[Message], None] | None = None
    records: Callable[[list[Message]], None] | None = None
    full: Callable[[], bool] | None = None


def stop_on_signals(request_stop: Callable[..., None]) -> None:
    """SIGINT / SIGTERM end the loop after the current batch commits. Outside the main
    thread (tests, the demo) signals cannot be handled there; the caller stops the loop."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):
            signal.signal(sig, request_stop)


class ConsumerApp:
    """One consumer's loop: poll, batch, commit, until stopped, idle or never assigned."""

    def __init__(self, config: BatchConfig, hooks: BatchHooks | None = None):
        self.config = config
        self.hooks = hooks or BatchHooks()
        self.buffer: list[Message] = []
        self._stop = False
        self._assigned_at: float | None = None

    # --- what the owner tells the app --------------------------------------------------------
    def request_stop(self, *_: object) -> None:
        """End the loop after the current batch commits (safe from any thread or a signal
        handler)."""
        self._stop = True

    def stop_on_signals(self) -> None:
        stop_on_signals(self.request_stop)

    def assigned(self) -> None:
        """Partitions were assigned: idleness counts from now (call it from on_assign)."""
        self._assigned_at = time.monotonic()

    # --- what the loop asks ------------------------------------------------------------------
    def stopped(self) -> bool:
        return self._stop

    def assigned_at(self) -> float | None:
        """When partitions were last assigned (``time.monotonic()``); None before."""
        return self._assigned_at

    # --- the loop ----------------------------------------------------------------------------
    def run(self, consumer: Consumer, commit: Commit, idle_seconds: float | None = None) -> None:
        """Consume until stopped, or idle for ``idle_seconds`` once assigned; then commit what
        is still buffered. ``commit(batch)`` empties the list it is given, in place; it may
        leave records in it for the next batch."""
        cfg, hooks, buffer = self.config, self.hooks, self.buffer
        first_at = 0.0
        started = last_record_at = time.monotonic()
        while not self.stopped():
            msgs = consumer.consume(num_messages=min(MAX_RECORDS_PER_POLL, cfg.max_records),
                                    timeout=cfg.poll_s)
            now = time.monotonic()
            added = len(buffer)
            failed = [m for m in msgs if m.error() is not None]  # usually none: the records
            for m in failed:  # are then taken in one step
                err = m.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    if hooks.eof is not None:
                        hooks.eof(m)
                else:
                    log.warning("consumer error: %s", err)
            records = [m for m in msgs if m.error() is None] if failed else msgs
            if records:
                if not buffer:
                    first_at = now
                    if hooks.first_record is not None:
                        hooks.first_record(now)
                buffer += records
            if hooks.records is not None and len(buffer) > added:
                hooks.records(buffer[added:])
            if buffer:
                last_record_at = now
                if (len(buffer) >= cfg.max_records or now - first_at >= cfg.max_wait_s
                        or (hooks.full is not None and hooks.full())):
                    commit(buffer)
                    last_record_at = time.monotonic()  # a long commit is not idleness
                    first_at = last_record_at  # records the commit held back start the next
                continue
            if idle_seconds is None:
                continue
            since = self.assigned_at()
            if since is not None and now - max(last_record_at, since) >= idle_seconds:
                break
            if since is None and now - started >= idle_seconds + UNASSIGNED_GRACE_S:
                log.warning("no partitions assigned within %.0f s; stopping",
                            idle_seconds + UNASSIGNED_GRACE_S)
                break
        while buffer:  # a commit may hold records back for the next batch
            commit(buffer)
