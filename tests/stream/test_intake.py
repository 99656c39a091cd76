"""How the stream's intake picks a batch from the records it has buffered (Intake.select),
and when it counts a partition at its end or the batch full.

No broker is needed: the intake only reads the records' partitions and event times, so the
records are built with confluent_kafka's Message constructor.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import orjson
import pytest
from confluent_kafka import Message

from kestrel.settings import Settings
from kestrel.topics import TRANSACTIONS
from pipelines.stream import batch_decode, columnar, intake, records
from pipelines.stream.event_time import TimeLimits, event_time_keys, event_times_us
from pipelines.stream.intake import Intake, intake_columns
from pipelines.stream.processor import MAX_PARTITION_SKEW_US
from tests.pipelines.events_factory import make_event
from tests.stream.test_batch_decode import _values

HOUR_US = 3600 * 1_000_000
T0 = 1_522_540_800_000_000  # 2018-04-01T00:00:00Z


def _record(part: int, offset: int, time_us: int) -> Message:
    value = orjson.dumps({"txn_id": f"t{part}-{offset}", "event_time": records.iso(time_us)})
    return Message(topic=TRANSACTIONS, partition=part, offset=offset, value=value)


def _intake(settings: Settings) -> Intake:
    """Owning partitions 0 and 1, both at T0."""
    proc = Intake(settings.model_copy(update={"stream_batch_records": 20_000}),
                  {0: T0, 1: T0}, TimeLimits(settings))
    proc.assign({0, 1})
    return proc


class _Fetching:
    """Stands in for the consumer's pause and resume: which partitions it fetches."""

    def __init__(self) -> None:
        self.paused: set[int] = set()

    def pause(self, parts: list[Any]) -> None:
        self.paused |= {tp.partition for tp in parts}

    def resume(self, parts: list[Any]) -> None:
        self.paused -= {tp.partition for tp in parts}


def test_a_partition_alone_in_the_buffer_cannot_run_ahead_of_one_being_fetched(
        settings: Settings) -> None:
    """Partition 1 has 300 hours of records buffered, partition 0 none yet (it is being
    fetched): only partition 1's records within MAX_PARTITION_SKEW_US of partition 0's
    stream time go in this batch, although all of them fit in partition 1's share
    (otherwise partitions run far apart on a backlog, and terminal updates from the ones
    behind come later than the terminal reorder slack)."""
    proc = _intake(settings)
    buffer = [_record(1, i, T0 + i * HOUR_US) for i in range(300)]
    take, hold = proc.select(buffer)
    assert [m.offset() for m in take] == [0, 1]  # T0 and T0 + 1 h
    assert len(take) + len(hold) == 300 and hold[0].offset() == 2
    assert MAX_PARTITION_SKEW_US == HOUR_US
    # partition 0 delivers: the ceiling follows its newest buffered record
    later = [_record(0, i, T0 + 50 * HOUR_US + i) for i in range(3)]
    take, hold = proc.select(hold + later)
    assert sorted(m.offset() for m in take if m.partition() == 1) == list(range(2, 52))
    assert [m.offset() for m in take if m.partition() == 0] == [0, 1, 2]


def test_a_paused_partition_with_nothing_buffered_does_not_hold_the_others(
        settings: Settings) -> None:
    """A partition pace paused as ahead delivers nothing until the others catch up, so it
    must not cap them, or neither would ever move; paused but behind (pace resumes it), it
    still caps them."""
    proc = _intake(settings)
    proc.paused = {0}
    buffer = [_record(1, i, T0 + i * HOUR_US) for i in range(300)]
    take, hold = proc.select(buffer)
    assert len(take) == 2 and len(hold) == 298  # partition 0 is at T0 too: it will deliver
    proc = _intake(settings)
    proc.paused = {0}
    proc.stream_time[0] = T0 + 10 * HOUR_US  # ahead of partition 1
    take, hold = proc.select(buffer)
    assert len(take) == 300 and hold == []


def test_waiting_records_are_rescanned_only_when_something_changed(settings: Settings) -> None:
    """While every buffered record waits for a partition behind, the consumer loop flushes at
    each poll (the buffer is over the batch size): the answer is reused until a record, an
    end of partition or a pause could change it."""
    proc = _intake(settings)
    buffer = [_record(1, i, T0 + (2 + i) * HOUR_US) for i in range(300)]
    take, hold = proc.select(buffer)
    assert take == [] and len(hold) == 300
    proc.stream_time[0] = T0 + 400 * HOUR_US  # not a signal: still the same answer
    assert proc.select(hold) == ([], hold)
    proc.on_eof(Message(topic=TRANSACTIONS, partition=0, offset=0))  # partition 0 ended
    take, hold = proc.select(hold)
    assert len(take) == 300 and hold == []



def test_a_partition_stays_at_its_end_until_a_record_past_that_end_arrives(
        settings: Settings) -> None:
    """Records from before the offset an end-of-partition report named (the same poll, or
    still buffered) are no new data: partition 0, at its end with nothing buffered, does not
    cap partition 1 at its stream time plus MAX_PARTITION_SKEW_US. A record at that offset
    is new data: partition 0 is live again and caps partition 1 once more."""
    proc = _intake(settings)
    proc.on_eof(Message(topic=TRANSACTIONS, partition=0, offset=3))
    proc.count([_record(0, 2, T0)], cast(Any, None))
    assert proc.at_end == {0}
    later = [_record(1, i, T0 + i * HOUR_US) for i in range(5)]
    take, hold = proc.select(later)
    assert len(take) == 5 and hold == []
    proc.count([_record(0, 3, T0)], cast(Any, None))
    assert proc.at_end == set()
    take, hold = proc.select(later)
    assert [m.offset() for m in take] == [0, 1]

def test_a_live_partition_that_reported_its_end_lets_the_batch_go_without_waiting(
        settings: Settings) -> None:
    """Live traffic: a poll brings partition 0's end of partition (offset 3) and, after it,
    records past that end. Partition 0 is live again (it caps the others), but what the
    consumer had of it when it reported its end is buffered: with partition 1 at its end,
    the batch is full and goes without waiting for the time limit (counting only the
    partitions at their end would leave nearly every batch of a steady stream to the time
    limit). A partition that has not reported its end since its records arrived keeps it waiting."""
    proc = _intake(settings)
    assert not proc.batch_full()
    proc.on_eof(Message(topic=TRANSACTIONS, partition=1, offset=0))
    proc.on_eof(Message(topic=TRANSACTIONS, partition=0, offset=3))
    proc.count([_record(0, i, T0 + i) for i in range(3, 6)], cast(Any, None))
    assert proc.at_end == {1}
    assert proc.batch_full()
    fresh = _intake(settings)
    fresh.on_eof(Message(topic=TRANSACTIONS, partition=1, offset=0))
    fresh.count([_record(0, i, T0 + i) for i in range(3)], cast(Any, None))
    assert not fresh.batch_full()


def test_pace_pauses_a_partition_ahead_and_resumes_it_once_the_others_caught_up(
        settings: Settings) -> None:
    """Partition 1 runs more than MAX_PARTITION_SKEW_US ahead of partition 0: pace stops
    fetching it. Partition 0 moving to within half the skew of it resumes it; a partition at
    its end no longer holds partition 1 back; a revoked one is forgotten."""
    proc = _intake(settings)
    fetching = _Fetching()
    proc.stream_time[1] = T0 + 2 * HOUR_US
    proc.pace(cast(Any, fetching))
    assert proc.paused == fetching.paused == {1}
    proc.stream_time[0] = T0 + HOUR_US  # 1 h behind: more than half the skew
    proc.pace(cast(Any, fetching))
    assert proc.paused == fetching.paused == {1}
    proc.stream_time[0] = T0 + 90 * 60 * 1_000_000
    proc.pace(cast(Any, fetching))
    assert proc.paused == fetching.paused == set()
    proc.stream_time[1] = T0 + 10 * HOUR_US
    proc.on_eof(Message(topic=TRANSACTIONS, partition=0, offset=7))
    proc.pace(cast(Any, fetching))
    assert proc.paused == fetching.paused == set()  # partition 0 is at its end
    proc.revoke(0)
    assert proc.owned == {1} and proc.at_end == set() and not proc.batch_full()


def _reference_select(proc: Intake, buffer: list[Message]
                      ) -> tuple[list[Message], list[Message]]:
    """select's rules record by record, as its docstring states them (the array version
    must decide the same)."""
    limit, share = proc.batch_records, proc.share()
    times = [records.micros(datetime.fromisoformat(orjson.loads(m.value() or b"{}")
                                                   ["event_time"]))
             if m.topic() == TRANSACTIONS else 0 for m in buffer]
    newest: dict[int, int] = {}
    for m, t in zip(buffer, times, strict=True):
        if m.topic() == TRANSACTIONS:
            newest[m.partition() or 0] = max(t, newest.get(m.partition() or 0, t))
    if not newest:
        return buffer, []
    bounds = [t for p, t in newest.items() if p not in proc.at_end]
    cutoff = min(bounds) if bounds else max(newest.values())
    reached = []
    for p in proc.owned - proc.at_end:
        if p in newest:
            reached.append(newest[p])
        elif p not in proc.paused or proc.stream_time.get(p, 0) <= proc.resume_below():
            reached.append(proc.stream_time.get(p, 0))
    ceiling = min(reached) + MAX_PARTITION_SKEW_US if reached else None
    txn_times = sorted(t for m, t in zip(buffer, times, strict=True)
                       if m.topic() == TRANSACTIONS)
    quota = len(txn_times)
    if len(txn_times) > limit:
        eligible = [t for t in txn_times if t <= cutoff]
        if len(eligible) > limit:
            cutoff = eligible[limit - 1]
            quota = limit - eligible.index(cutoff)
    take, hold, blocked, taken, skewed = [], [], set(), Counter[int](), False
    for m, t in zip(buffer, times, strict=True):
        part = m.partition() or 0
        if m.topic() != TRANSACTIONS:
            take.append(m)
            continue
        too_far = ceiling is not None and t > ceiling
        if part in blocked or too_far or (taken[part] >= share and (
                t > cutoff or (t == cutoff and quota <= 0))):
            blocked.add(part)
            hold.append(m)
            skewed = skewed or too_far
            continue
        quota -= t == cutoff
        taken[part] += 1
        take.append(m)
    if not take and not skewed:
        return buffer, []
    return take, hold


@pytest.mark.parametrize("seed", range(40))
def test_the_batch_taken_follows_the_rules_record_by_record(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """Random buffers (several partitions, records out of order within a partition, many
    at exactly the same time, other topics' records between them, paused and ended
    partitions): the array version of select takes exactly what the rules, applied record
    by record, take."""
    rng = random.Random(seed)
    monkeypatch.setattr(intake, "PARTITION_SHARE_PER_BATCH", rng.choice([1, 2, 5]))
    parts = range(rng.randint(1, 4))
    owned = set(parts) | {rng.randint(0, 4)}
    proc = Intake(settings.model_copy(update={"stream_batch_records": rng.choice([3, 10, 40])}),
                  {p: T0 + rng.randint(0, 3) * HOUR_US for p in owned}, TimeLimits(settings))
    proc.assign(owned)
    proc.paused = {p for p in proc.owned if rng.random() < 0.3}
    proc.at_end = {p for p in proc.owned if rng.random() < 0.2}
    clock = {p: T0 + rng.randint(0, 4) * HOUR_US for p in parts}
    buffer: list[Message] = []
    for i in range(rng.randint(0, 120)):
        if rng.random() < 0.1:
            buffer.append(Message(topic="transactions.by-terminal", partition=0, offset=i,
                                  value=b"[]"))
            continue
        p = rng.choice(list(parts))
        clock[p] += rng.choice([0, 0, 1, 1_000_000, 20 * 60 * 1_000_000, 2 * HOUR_US])
        back = rng.choice([0, 0, 0, 1, 30 * 60 * 1_000_000])
        buffer.append(_record(p, i, clock[p] - back))
    for _ in range(3):  # what is held back leads the next call (its columns are reused)
        expected = _reference_select(proc, buffer)
        take, hold = proc.select(buffer)
        assert ([m.offset() for m in take], [m.offset() for m in hold]) == (
            [m.offset() for m in expected[0]], [m.offset() for m in expected[1]])
        if not take:
            break
        buffer = hold


def test_event_times_are_read_as_the_decoder_reads_them() -> None:
    """The vectorised reading of the stream's own time format agrees with records.micros on
    random times (with and without a fraction); other ISO forms are read by fromisoformat;
    what has no readable time with an offset, or one before 1970 (which the processor
    dead-letters), is 0 (sorts first)."""
    rng = random.Random(7)
    times = [rng.randrange(0, 10**17) for _ in range(5000)]
    times += [t // 1_000_000 * 1_000_000 for t in times[:500]]
    assert event_times_us([records.iso(t).encode() for t in times]).tolist() == times
    odd = [b"2018-04-01T02:00:09.5+02:00", b"", b"garbage", b"2018-04-01T00:00:09",
           b"2018-13-01T00:00:09Z", b"2018-04-01T00:00:09.118047Z" + b"x" * 80,
           b"1969-12-31T23:59:00Z", b"1653-02-10T06:13:20.000001Z"]
    assert event_times_us(odd).tolist() == [T0 + 9_500_000, 0, 0, 0, 0, 0, 0, 0]
    # a day that does not exist is none (a calendar computation would roll it over)
    assert event_times_us([b"2018-02-30T00:00:00Z", b"2019-02-29T00:00:00.000001Z",
                           b"2020-02-29T00:00:00Z", b"2000-02-29T00:00:00Z"]).tolist() == [
        0, 0, records.micros(datetime(2020, 2, 29, tzinfo=UTC)),
        records.micros(datetime(2000, 2, 29, tzinfo=UTC))]
    assert event_time_keys([b'{"txn_id":"a","event_time": "2018-04-01T00:00:09Z"}',
                            b'{"event_time":20180401}', b'{"txn_id":"a"}', b"",
                            b'{"event_time"\n:\t"x","event_time":"y"}']) \
        == [b"2018-04-01T00:00:09Z", b"", b"", b"", b"x"]


def test_a_record_dated_in_the_future_does_not_hold_its_partition(settings: Settings) -> None:
    """Past the processor's clock plus the allowed lateness, an event time counts as
    unreadable: the record is taken at once (to be dead-lettered), not held behind the
    skew ceiling with every later record of its partition."""
    proc = _intake(settings)
    future = Message(topic=TRANSACTIONS, partition=1, offset=0, value=orjson.dumps(
        {"txn_id": "t", "event_time": "2099-01-01T00:00:00Z"}))
    buffer = [future, *[_record(1, i, T0 + i) for i in range(1, 4)]]
    take, hold = proc.select(buffer)
    assert [m.offset() for m in take] == [0, 1, 2, 3] and hold == []


def test_the_intake_parses_each_record_once_and_orders_by_the_times_in_the_raw_json() -> None:
    """intake_columns parses the records (batch_decode.parse) and takes their event times
    from that; a record that does not parse, or whose time is not in the stream's form, has
    it read from the raw JSON. The times equal those read from the raw JSON for every
    record (the reference: event_time_keys + event_times_us), records of another topic are
    partition -1 and time 0, times past the newest allowed are 0; and a batch decoded from
    the intake's parse equals one decoded from scratch."""
    values = _values(800, seed=21)
    rng = random.Random(21)
    for i in rng.sample(range(len(values)), 20):  # future and pre-1970 times
        event = make_event(i)
        event["event_time"] = rng.choice(["2099-01-01T00:00:00.500000Z", "1969-12-31T23:59:59Z"])
        values[i] = orjson.dumps(event)
    buffer = [Message(topic=TRANSACTIONS if i % 50 else "transactions.by-terminal",
                      partition=i % 4, offset=i, value=v) for i, v in enumerate(values)]
    newest_allowed = T0 + 400 * 24 * HOUR_US
    parts, times, parsed = intake_columns(buffer, newest_allowed)
    other = [m.topic() != TRANSACTIONS for m in buffer]
    expected = event_times_us(event_time_keys([b"" if o else v or b"" for v, o in zip(
        values, other, strict=True)]), newest_allowed)
    assert times.tolist() == expected.tolist()
    assert parts.tolist() == [-1 if o else i % 4 for i, o in enumerate(other)]
    assert all(r is None for r, o in zip(parsed.rows, other, strict=True) if o)
    assert 0 < sum(r is None for r in parsed.rows) < len(parsed) // 5  # both paths taken
    exact = parsed.exact_us != batch_decode.NOT_EXACT
    assert 0 < (~exact & ~np.array(other)).sum() < exact.sum()  # times read both ways
    assert (times == 0).sum() > len(values) // 50  # other topics, unreadable, refused
    txns = [i for i, o in enumerate(other) if not o]
    from_intake = batch_decode.decode_batch([values[i] for i in txns], batch_decode.Parsed(
        [parsed.rows[i] for i in txns], parsed.exact_us[txns]))
    from_scratch = batch_decode.decode_batch([values[i] for i in txns])
    assert {i: str(e) for i, e in from_intake.errors.items()} == {
        i: str(e) for i, e in from_scratch.errors.items()} and from_intake.errors
    from_intake.errors = from_scratch.errors = {}  # exceptions compare by identity
    assert from_intake == from_scratch and from_intake.slow


def test_split_copies_runs_or_items_and_gives_what_compress_gives() -> None:
    rng = np.random.default_rng(4)
    for n, run in [(0, 1), (1, 1), (500, 1), (5_000, 400), (5_000, 40), (20_000, 3_000)]:
        items = list(range(n))
        holding = np.repeat(rng.random(n // run + 1) < 0.5, run)[:n]
        taken, kept = columnar.split(items, holding)
        assert taken == [i for i in items if not holding[i]]
        assert kept == [i for i in items if holding[i]]
