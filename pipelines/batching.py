"""TEMPORARY: the stream moves to ConsumerApp at integration. The old micro-batch loop's
signature, kept for pipelines/stream/processor.py, as a thin wrapper over the consumer-app
skeleton (kestrel/consumer_app.py), which holds the loop and its documentation."""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import Consumer, Message

# TEMPORARY re-export for pipelines/stream/processor.py; removed at integration
from kestrel.consumer_app import (
    UNASSIGNED_GRACE_S,
    BatchConfig,
    BatchHooks,
    ConsumerApp,
    stop_on_signals,
)

__all__ = ["UNASSIGNED_GRACE_S", "consume_in_batches", "stop_on_signals"]


class _CallerOwned(ConsumerApp):
    """A ConsumerApp whose buffer, stop flag and assignment time belong to the caller."""

    def __init__(self, config: BatchConfig, hooks: BatchHooks, buffer: list[Message],
                 stopped: Callable[[], bool], assigned_at: Callable[[], float | None]):
        super().__init__(config, hooks)
        self.buffer = buffer
        self._stopped = stopped
        self._since = assigned_at

    def stopped(self) -> bool:
        return self._stopped()

    def assigned_at(self) -> float | None:
        return self._since()


# TEMPORARY: the stream moves to ConsumerApp at integration
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
    """:meth:`ConsumerApp.run` with the caller's buffer, stop flag and assignment time."""
    app = _CallerOwned(BatchConfig(max_records, max_wait_s, poll_s),
                       BatchHooks(on_first_record, on_eof, on_records, full),
                       buffer, stopped, assigned_at)
    app.run(consumer, flush, idle_seconds)
