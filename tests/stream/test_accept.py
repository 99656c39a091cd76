"""The stream's sequential checks for a whole batch (Gate.accept): lateness against each
partition's stream time, duplicates, event times the processor refuses. The array path must
decide exactly as the record-by-record reference (Gate.accept_in_order), and hand a batch
with a duplicate to it.

No broker is needed: records are built with confluent_kafka's Message constructor; what the
checks send to `transactions.late` and `transactions.dlq` is recorded by a stand-in for the
producer (its sending is the broker tests' business)."""

from __future__ import annotations

import random
from typing import Any

import orjson
from confluent_kafka import Message

from kestrel.settings import Settings
from kestrel.topics import TRANSACTIONS, TRANSACTIONS_DLQ, TRANSACTIONS_LATE
from pipelines.stream import batch_decode, records
from pipelines.stream.arrays.entity_arrays import EntityArrays
from pipelines.stream.event_time import TimeLimits
from pipelines.stream.gate import Gate
from pipelines.stream.metrics import StreamStats
from pipelines.stream.state import WindowSet
from tests.pipelines.events_factory import make_event
from tests.stream.sent import SentRecords

T0 = 1_522_540_800_000_000  # 2018-04-01T00:00:00Z
MINUTE_US = 60 * 1_000_000


def _batch(rng: random.Random, n: int, duplicates: bool) -> list[Message]:
    """Records of 3 partitions, times wandering back and forth by minutes (some beyond the
    10-minute lateness), a few dated before 1970 or in the future, a few invalid; with
    ``duplicates``, some txn_ids repeat (same customer, or another one)."""
    out: list[Message] = []
    at = {p: T0 for p in range(3)}
    for i in range(n):
        part = rng.randrange(3)
        at[part] += rng.randint(-4, 5) * MINUTE_US
        event: dict[str, Any] = make_event(i)
        event["event_time"] = records.iso(at[part] + rng.randrange(1000))
        kind = rng.random()
        if kind < 0.02:
            event["event_time"] = "1969-12-31T23:00:00Z"
        elif kind < 0.04:
            event["event_time"] = "2099-01-01T00:00:00Z"
        elif kind < 0.06:
            event["amount"] = -1
        elif duplicates and kind < 0.12 and i > 10:
            event["txn_id"] = make_event(rng.randrange(i))["txn_id"]
            if rng.random() < 0.5:
                event["customer_id"] = "C-other"
        out.append(Message(topic=TRANSACTIONS, partition=part, offset=i,
                           key=event["customer_id"].encode(), value=orjson.dumps(event)))
    return out


def _gate(settings: Settings, held: dict[int, list[str]]) -> Gate:
    """Partitions 0 and 1 with a stream time (2: none yet); ``held``: the txn_ids of each
    partition's customer state."""
    customers = {}
    for part, ids in held.items():
        table = customers[part] = EntityArrays(WindowSet("customer"), 0, 0, keep_ids=True)
        table.ids.update(ids)
    return Gate(settings, "g", {0: T0, 1: T0 + 3 * MINUTE_US}, customers, StreamStats(),
                TimeLimits(settings))


def _run(settings: Settings, txns: list[Message], held: dict[int, list[str]],
         in_order: bool, handed: list[int] | None = None) -> tuple[Any, ...]:
    """``handed`` gets a 1 each time the array path hands the batch to the reference."""
    proc = _gate(settings, held)
    if handed is not None:
        reference = proc.accept_in_order

        def counted(*args: Any) -> Any:
            handed.append(1)
            return reference(*args)

        proc.accept_in_order = counted  # type: ignore[method-assign, assignment]
    sent = SentRecords()
    cols = batch_decode.decode_batch([m.value() for m in txns])
    check = proc.accept_in_order if in_order else proc.accept
    accepted, parts = check(txns, cols, sent)  # type: ignore[arg-type]
    return (accepted, parts, proc.stream_time, proc.stats.late, proc.stats.duplicates,
            proc.stats.invalid, sent.records)


def test_the_array_checks_decide_as_the_record_by_record_ones(settings: Settings) -> None:
    rng = random.Random(11)
    handed: list[int] = []
    for trial in range(30):
        duplicates = trial % 3 == 0
        txns = _batch(rng, rng.randint(1, 400), duplicates)
        held = {0: [make_event(i)["txn_id"] for i in range(0, 400, 37)]} if trial % 5 == 0 \
            else {}
        fast = _run(settings, txns, held, in_order=False, handed=handed)
        reference = _run(settings, txns, held, in_order=True)
        assert fast[:6] == reference[:6], trial
        # the same records go to the same topics (dead letters and late ones are sent in
        # two groups by the array path, so the order across the two topics differs; a dead
        # letter's reason quotes the processor's clock)
        assert sorted(r[:2] for r in fast[6]) == sorted(r[:2] for r in reference[6]), trial
        assert [r for r in fast[6] if r[0] == TRANSACTIONS_LATE] == \
            [r for r in reference[6] if r[0] == TRANSACTIONS_LATE], trial
    # both paths were taken: batches with a duplicate (in the batch, or held) went record
    # by record (14 of these 30), the others by arrays
    assert len(handed) == 14


def test_every_kind_of_refusal_shows_up(settings: Settings) -> None:
    """The random batches above do exercise every branch."""
    rng = random.Random(11)
    txns = _batch(rng, 400, duplicates=True)
    _, _, _, late, duplicates, invalid, sent = _run(
        settings, txns, {0: [make_event(i)["txn_id"] for i in range(0, 400, 37)]}, False)
    assert late > 0 and duplicates > 0 and invalid > 0
    assert {topic for topic, _, _, _ in sent} == {TRANSACTIONS_LATE, TRANSACTIONS_DLQ}
