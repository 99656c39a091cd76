"""How the stream processor picks a batch from the records it has buffered (_select).

No broker is needed: the intake only reads the records' partitions and event times, so the
records are built with confluent_kafka's Message constructor.
"""

from __future__ import annotations

import orjson
from confluent_kafka import Message

from kestrel.settings import Settings
from kestrel.topics import TRANSACTIONS
from pipelines.features.online_writer import OnlineWriter
from pipelines.stream import records
from pipelines.stream.processor import MAX_PARTITION_SKEW_US, StreamProcessor

HOUR_US = 3600 * 1_000_000
T0 = 1_522_540_800_000_000  # 2018-04-01T00:00:00Z


def _record(part: int, offset: int, time_us: int) -> Message:
    value = orjson.dumps({"txn_id": f"t{part}-{offset}", "event_time": records.iso(time_us)})
    return Message(topic=TRANSACTIONS, partition=part, offset=offset, value=value)


def _processor(settings: Settings) -> StreamProcessor:
    proc = StreamProcessor(settings.model_copy(update={"stream_batch_records": 20_000}),
                           OnlineWriter(settings, dedup=False))
    proc._owned = {0, 1}
    proc.stream_time = {0: T0, 1: T0}
    return proc


def test_a_partition_alone_in_the_buffer_cannot_run_ahead_of_one_being_fetched(
        settings: Settings) -> None:
    """Partition 1 has 300 hours of records buffered, partition 0 none yet (it is being
    fetched): only partition 1's records within MAX_PARTITION_SKEW_US of partition 0's
    stream time go in this batch, although all of them fit in partition 1's share. (They
    used to all go: partitions ran ~190 h apart on a backlog, and terminal updates from
    the ones behind were dropped as later than the terminal reorder slack.)"""
    proc = _processor(settings)
    buffer = [_record(1, i, T0 + i * HOUR_US) for i in range(300)]
    take, hold = proc._select(buffer)
    assert [m.offset() for m in take] == [0, 1]  # T0 and T0 + 1 h
    assert len(take) + len(hold) == 300 and hold[0].offset() == 2
    assert MAX_PARTITION_SKEW_US == HOUR_US
    # partition 0 delivers: the ceiling follows its newest buffered record
    later = [_record(0, i, T0 + 50 * HOUR_US + i) for i in range(3)]
    take, hold = proc._select(hold + later)
    assert sorted(m.offset() for m in take if m.partition() == 1) == list(range(2, 52))
    assert [m.offset() for m in take if m.partition() == 0] == [0, 1, 2]


def test_a_paused_partition_with_nothing_buffered_does_not_hold_the_others(
        settings: Settings) -> None:
    """A partition _pace paused as ahead delivers nothing until the others catch up, so it
    must not cap them, or neither would ever move; paused but behind (_pace resumes it), it
    still caps them."""
    proc = _processor(settings)
    proc._paused = {0}
    buffer = [_record(1, i, T0 + i * HOUR_US) for i in range(300)]
    take, hold = proc._select(buffer)
    assert len(take) == 2 and len(hold) == 298  # partition 0 is at T0 too: it will deliver
    proc = _processor(settings)
    proc._paused = {0}
    proc.stream_time[0] = T0 + 10 * HOUR_US  # ahead of partition 1
    take, hold = proc._select(buffer)
    assert len(take) == 300 and hold == []


def test_waiting_records_are_rescanned_only_when_something_changed(settings: Settings) -> None:
    """While every buffered record waits for a partition behind, the consumer loop flushes at
    each poll (the buffer is over the batch size): the answer is reused until a record, an
    end of partition or a pause could change it."""
    proc = _processor(settings)
    buffer = [_record(1, i, T0 + (2 + i) * HOUR_US) for i in range(300)]
    take, hold = proc._select(buffer)
    assert take == [] and len(hold) == 300
    proc.stream_time[0] = T0 + 400 * HOUR_US  # not a signal: still the same answer
    assert proc._select(hold) == ([], hold)
    proc._on_eof(Message(topic=TRANSACTIONS, partition=0, offset=0))  # partition 0 ended
    take, hold = proc._select(hold)
    assert len(take) == 300 and hold == []
