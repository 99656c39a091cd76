"""Entries of the customers' recent-transactions lists (pipelines/stream/recent.py): the same
bytes as a dict of those fields through orjson, which serving/insights.py reads."""

from __future__ import annotations

import random

import orjson

from kestrel.events import MAX_AMOUNT
from pipelines.stream import batch_decode, recent
from tests.stream.test_batch_decode import _values


def _as_dict(cols: batch_decode.TxnColumns, i: int) -> bytes:
    return orjson.dumps({
        "txn_id": cols.txn_id[i], "event_time": cols.event_time[i], "amount": cols.amount[i],
        "currency": cols.currency[i], "mcc": cols.mcc[i], "country": cols.country[i],
        "terminal_id": cols.terminal_id[i], "card_id": cols.card_id[i],
        "channel": cols.channel[i]})


def test_entries_of_a_batch_with_refused_records_are_those_of_the_accepted_ones() -> None:
    cols = batch_decode.decode_batch(_values(2_000, seed=7))
    assert cols.errors  # some records were refused: their rows hold None
    accepted = [i for i in range(cols.n) if i not in cols.errors]
    got = recent.entries(cols, accepted)
    assert got == [_as_dict(cols, i) for i in accepted]
    assert orjson.loads(got[0])["txn_id"] == cols.txn_id[accepted[0]]


def test_every_amount_the_contract_allows_is_written_as_orjson_writes_it() -> None:
    rng = random.Random(3)
    amounts = [0.01, 0.1, 1.0, 5e-324, 1e-7, 12.5, 999_999.99, MAX_AMOUNT, 123_456.789]
    amounts += [round(rng.uniform(0, MAX_AMOUNT), 2) for _ in range(20_000)]
    amounts += [rng.uniform(0, MAX_AMOUNT) for _ in range(20_000)]
    amounts += [rng.random() * 10.0 ** rng.randint(-300, 0) for _ in range(20_000)]
    for amount in amounts:
        assert recent.encode(amount) == orjson.dumps(amount), amount
