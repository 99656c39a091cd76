"""Entries of a customer's recent-transactions list (kestrel.redis_keys.recent_key;
serving/insights.py reads them): one JSON object per applied transaction, the fields below in
this order.

Encoded by msgspec from structs (cheaper than a dict per event and ``orjson.dumps`` of it),
with the same bytes for every amount the contract allows (0 < amount ≤ 1,000,000; the two
differ only from 1e16 on, ``1e16`` vs ``1e+16``). A batch's entries are encoded in one call,
as one JSON array, and cut into entries where each object starts (``{`` occurs nowhere else:
every string field is an identifier, a time, a code or a digit string). The entries, the
commands pushing them and their RESP framing then stay in Arrow arrays, so no Python object
is made per entry or per command.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kestrel.redis_keys import recent_key
from kestrel.resp import arrow_bulk, arrow_bytes, arrow_decimal, arrow_keys
from pipelines.stream import columnar
from pipelines.stream.batch_decode import TxnColumns

KEEP = 20
"""Entries a customer's list keeps (the newest)."""
_LAST = b"%d" % (KEEP - 1)
_TRIM_TAIL = b"\r\n$1\r\n0\r\n$%d\r\n%s\r\n" % (len(_LAST), _LAST)


class RecentEntry(msgspec.Struct, gc=False):
    txn_id: str
    event_time: str  # records.iso of the event time
    amount: float
    currency: str
    mcc: str
    country: str
    terminal_id: str
    card_id: str
    channel: str


encode = msgspec.json.Encoder().encode


def entries(cols: TxnColumns, positions: Sequence[int]) -> pa.BinaryArray:
    """The entries of the batch's records at ``positions`` (the accepted ones), in order."""
    fields: list[Sequence[Any]] = [
        cols.txn_id, cols.event_time, cols.amount, cols.currency, cols.mcc, cols.country,
        cols.terminal_id, cols.card_id, cols.channel]
    if len(positions) != cols.n:  # some were refused: their rows may hold None
        fields = [[column[i] for i in positions] for column in fields]
    structs = list(map(RecentEntry, *fields))
    blob = encode(structs)  # [{...},{...}]
    starts = np.flatnonzero(np.frombuffer(blob, np.uint8) == ord("{"))
    if len(starts) != len(structs):  # a "{" inside a value: not from a valid event
        return pa.array(map(encode, structs), pa.binary())
    # each entry with the byte after it ("," or the closing "]"), then without it
    offsets = np.append(starts, len(blob)).astype(np.int32)
    spans = pa.Array.from_buffers(pa.binary(), len(structs),
                                  [None, pa.py_buffer(offsets), pa.py_buffer(blob)])
    return pc.binary_slice(spans, 0, -1)


def entry(**fields: Any) -> pa.BinaryArray:
    """One entry (the per-event path), as :func:`entries` gives them."""
    return pa.array([encode(RecentEntry(**fields))], pa.binary())


def push_commands(customers: Sequence[str], docs: pa.Array
                  ) -> tuple[bytes, int, pa.Array]:
    """``LPUSH`` each customer's entries (``docs[i]`` is ``customers[i]``'s, in order of
    arrival: the last ends up first) and ``LTRIM`` the list to :data:`KEEP`, as RESP: the
    payload, its number of commands and the distinct customers (strings). Grouped with array
    operations, formatted with Arrow's element-wise joins: one array of pieces (per
    customer its LPUSH head, its kept entries, its LTRIM) put in order with one ``take``,
    whose data is the payload."""
    encoded = columnar.strings(customers).dictionary_encode()
    code = encoded.indices.to_numpy().astype(np.int64)
    distinct = encoded.dictionary
    m = len(distinct)
    order = np.argsort(code, kind="stable")  # by customer, in order of arrival
    by_customer = code[order]
    counts = np.bincount(code, minlength=m)
    first = np.cumsum(counts) - counts  # each customer's first position in ``order``
    from_end = counts[by_customer] - (np.arange(len(order)) - first[by_customer])
    taken = order[from_end <= KEEP]  # older entries would be trimmed anyway
    kept = np.minimum(counts, KEEP)
    keys = arrow_keys(recent_key, distinct)
    key_len = arrow_decimal(pc.binary_length(keys))
    heads = pc.binary_join_element_wise(b"*", arrow_decimal(pa.array(kept + 2)),
                                        b"\r\n$5\r\nLPUSH\r\n$", key_len, b"\r\n", keys,
                                        b"\r\n", b"")
    trims = pc.binary_join_element_wise(b"*4\r\n$5\r\nLTRIM\r\n$", key_len, b"\r\n", keys,
                                        _TRIM_TAIL, b"")
    bulk = arrow_bulk(docs)
    # where each piece goes: a customer's head, then its kept entries in order, then its trim
    head_at = np.cumsum(kept + 2) - (kept + 2)
    rank = np.arange(len(taken)) - (np.cumsum(kept) - kept)[code[taken]]
    source = np.empty(2 * m + len(taken), np.int64)
    source[head_at] = np.arange(m)
    source[head_at + kept + 1] = m + np.arange(m)
    source[head_at[code[taken]] + 1 + rank] = 2 * m + taken
    pieces = pa.concat_arrays([heads, trims, bulk]).take(pa.array(source))
    return arrow_bytes(pieces), 2 * m, distinct
