"""Entries of the customers' recent-transactions lists (pipelines/stream/recent.py): the same
bytes as a dict of those fields through orjson, which serving/insights.py reads; and the
commands that push them, grouped per customer."""

from __future__ import annotations

import random

import orjson
import pyarrow as pa
import pytest
import redis

from kestrel.events import MAX_AMOUNT
from kestrel.redis_keys import recent_key
from kestrel.resp import RespTransaction
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
    got = recent.entries(cols, accepted).to_pylist()
    assert got == [_as_dict(cols, i) for i in accepted]
    assert orjson.loads(got[0])["txn_id"] == cols.txn_id[accepted[0]]


def test_an_entry_with_a_brace_in_a_value_is_still_cut_right() -> None:
    """The batch is cut into entries where each object starts; a "{" inside a value (no
    valid event has one) makes each entry be encoded on its own instead."""
    cols = batch_decode.decode_batch(_values(50, seed=11))
    accepted = [i for i in range(cols.n) if i not in cols.errors]
    cols.txn_id[accepted[3]] = "tx-{odd}"
    got = recent.entries(cols, accepted).to_pylist()
    assert got == [_as_dict(cols, i) for i in accepted]
    assert orjson.loads(got[3])["txn_id"] == "tx-{odd}"


def test_every_amount_the_contract_allows_is_written_as_orjson_writes_it() -> None:
    rng = random.Random(3)
    amounts = [0.01, 0.1, 1.0, 5e-324, 1e-7, 12.5, 999_999.99, MAX_AMOUNT, 123_456.789]
    amounts += [round(rng.uniform(0, MAX_AMOUNT), 2) for _ in range(20_000)]
    amounts += [rng.uniform(0, MAX_AMOUNT) for _ in range(20_000)]
    amounts += [rng.random() * 10.0 ** rng.randint(-300, 0) for _ in range(20_000)]
    for amount in amounts:
        assert recent.encode(amount) == orjson.dumps(amount), amount


@pytest.mark.integration
def test_push_commands_leave_each_customer_with_its_newest_entries_newest_first(
        redis_url: str) -> None:
    """Against a real Redis: customers with 1 to 3 × KEEP entries over two batches end with
    the list a push-and-trim per customer would leave; every customer is listed once."""
    client = redis.Redis.from_url(redis_url)
    rng = random.Random(5)
    customers = [f"C{i:03d}" for i in range(60)]
    for c in customers:
        client.delete(recent_key(c))
    model: dict[str, list[bytes]] = {c: [] for c in customers}
    for batch in range(2):
        owners = [rng.choice(customers) for _ in range(rng.randint(400, 900))]
        docs = [b'{"n":%d,"b":%d}' % (i, batch) for i in range(len(owners))]
        payload, commands, distinct = recent.push_commands(owners, pa.array(docs, pa.binary()))
        assert sorted(distinct.to_pylist()) == sorted(set(owners))
        assert commands == 2 * len(distinct)
        tx = RespTransaction()
        tx.raw(payload, commands)
        tx.execute(client)
        for owner, doc in zip(owners, docs, strict=True):
            model[owner] = [doc, *model[owner]][:recent.KEEP]
    for c in customers:
        assert client.lrange(recent_key(c), 0, -1) == model[c], c
    assert max(len(v) for v in model.values()) == recent.KEEP  # some were trimmed
