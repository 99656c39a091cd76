"""Decoding a batch at once: the same columns and errors as record by record."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from kestrel.errors import EventValidationError
from kestrel.events import decode_transaction
from pipelines.stream import batch_decode, records
from pipelines.stream.batch_decode import TxnColumns
from tests.pipelines.events_factory import make_event

FIELDS = (*batch_decode.COLUMNS, "time_us", "event_time")


def _values(n: int, seed: int) -> list[bytes | None]:
    """Valid records with every kind of record the fast path hands to the per-record one
    mixed in: invalid fields, broken JSON, no value, a line break inside a string, a
    non-canonical time, times that are no time, an extra field."""
    rng = random.Random(seed)
    out: list[bytes | None] = []
    for i in range(n):
        event: dict[str, Any] = make_event(i)
        kind = rng.random()
        if kind < 0.04:
            event["amount"] = -1
        elif kind < 0.06:
            del event["card_id"]
        elif kind < 0.08:
            event["event_time"] = event["event_time"].replace("Z", "+00:00")
        elif kind < 0.085:  # a day no month has
            event["event_time"] = "2018-02-30T00:00:00Z"
        elif kind < 0.09:  # a fraction that is no number
            event["event_time"] = event["event_time"][:19] + ".12ab56Z"
        elif kind < 0.095:  # a day that exists only in leap years
            event["event_time"] = rng.choice(["2020-02-29T10:00:00Z", "2019-02-29T10:00:00Z"])
        elif kind < 0.10:
            event["channel"] = "line\nbreak"
        elif kind < 0.11:
            event["surprise"] = 1
        if kind < 0.12 and rng.random() < 0.1:
            out.append(None if rng.random() < 0.5 else b"{not json")
            continue
        out.append(orjson.dumps(event))
    return out


def _reference(values: list[bytes | None]) -> dict[int, Any]:
    """Per position: the record's fields as records.decode gives them, or its error."""
    out: dict[int, Any] = {}
    for i, value in enumerate(values):
        try:
            txn = records.decode(value)
        except EventValidationError as exc:
            out[i] = str(exc)
            continue
        row = {name: getattr(txn, name) for name in batch_decode.COLUMNS}
        out[i] = {**row, "time_us": txn.time_us, "event_time": records.iso(txn.time_us)}
    return out


def _rows(cols: TxnColumns) -> dict[int, Any]:
    out: dict[int, Any] = {}
    for i in range(cols.n):
        if i in cols.errors:
            out[i] = str(cols.errors[i])
        else:
            out[i] = {name: getattr(cols, name)[i] for name in FIELDS}
    return out


def test_a_batch_decodes_as_its_records_do_one_by_one() -> None:
    values = _values(600, seed=1)
    cols = batch_decode.decode_batch(values)
    assert cols.n == 600 and 0 < len(cols.errors) < 100 and cols.slow > 0
    assert _rows(cols) == _reference(values)


def _edge_values() -> list[bytes | None]:
    """Records at the edges of what the batch decoder checks itself (msgspec while parsing,
    then per column) rather than leaving to the per-record path."""
    def one(i: int, **changes: Any) -> bytes:
        event = make_event(i)
        event.update(changes)
        return orjson.dumps(event)

    good = one(0)
    return [
        good,
        one(1, amount=5), one(2, lat=45, lon=-3),  # JSON integers where floats go
        one(3, amount=True), one(4, amount="5.0"), one(5, amount=1_000_000.01),
        one(6, amount=1_000_000.0), one(7, lat=90.0, lon=-180.0), one(8, lat=90.0001),
        one(9, schema_version=2), one(10, schema_version=1.0), one(11, device_id=""),
        one(12, device_id="dev-1"), one(13, device_id="dév"), one(14, txn_id="x" * 64),
        one(15, txn_id="x" * 65), one(16, card_id="card é"), one(17, customer_id=" C1"),
        one(18, mcc="54a1"), one(19, mcc="٥٤١١"), one(20, mcc="541"), one(21, currency="eur"),
        one(22, country="XX"), one(23, channel="POS"), one(24, terminal_id=""),
        one(25, event_time=None), one(26, txn_id=None), one(27, lat=None),
        one(28, event_time="2018-04-01T00:00:09.000000Z"), one(29, event_time="2018-04-01"),
        b" " + one(30) + b"\n",  # surrounding whitespace is still one JSON value
        one(31) + one(32),  # two objects in one record
        one(33)[:-1] + b',"txn_id":"tx-dup"}',  # a duplicate key: the last one counts
        one(34)[:-1] + b',"extra":{"nested":1}}',
        one(35, currency=["EUR"]), one(36, channel={"pos": 1}), one(37, schema_version=[]),
        b"[]", b"null", b"1e400", b'{"amount":1e400}', b"", None, good,
    ]


def test_records_at_the_edges_of_the_contract_decode_as_one_by_one() -> None:
    values = _edge_values()
    cols = batch_decode.decode_batch(values)
    assert _rows(cols) == _reference(values)
    decoded = {i for i in range(cols.n) if i not in cols.errors}
    assert {0, 1, 2, 6, 7, 10, 12, 14, 30, 32} <= decoded  # valid, whichever path took them
    assert cols.txn_id[32] == "tx-dup" and cols.amount[1] == 5.0
    assert 19 in cols.errors  # Arabic-Indic digits are digits to str.isdigit, not to the contract
    assert {35, 36, 37} <= set(cols.errors)  # unhashable values are field errors, no crash


PAN_FORMS = ["4111111111111111", "4111-1111-1111-1111", "4111 1111 1111 1111",
             "4111\u20131111\u20131111\u20131111",
             "".join(chr(0x660 + int(d)) for d in "4111111111111111"),  # Arabic-Indic
             "c-4111-1111-1111", "T411111111111x"]  # inside an id, 12 digits
ID_FIELDS = ("txn_id", "customer_id", "account_id", "card_id", "terminal_id", "device_id")


def _pan_values() -> tuple[list[bytes | None], list[tuple[str, str]]]:
    """Valid records with, between them, one record per identifier and PAN form (the
    form alone, and inside an otherwise valid id); which (field, form) each planted one is."""
    values: list[bytes | None] = []
    planted: list[tuple[str, str]] = []
    i = 0
    for name in ID_FIELDS:
        for form in PAN_FORMS:
            values.append(orjson.dumps(make_event(i)))
            values.append(orjson.dumps({**make_event(i + 1), name: form}))
            planted.append((name, form))
            i += 2
    return values, planted


def test_pan_like_identifiers_are_refused_by_the_batch_and_by_the_reference() -> None:
    values, planted = _pan_values()
    cols = batch_decode.decode_batch(values)
    reference = _reference(values)
    assert _rows(cols) == reference
    assert set(cols.errors) == set(range(1, len(values), 2))  # every planted one, only them
    for (name, form), i in zip(planted, range(1, len(values), 2), strict=True):
        error = cols.errors[i]
        assert [e.path for e in error.errors] == [name], (name, form)
        assert not any(form in str(e) for e in error.errors)  # never echoed
    assert cols.slow == 0  # nothing valid left the fast path
    for i in range(1, len(values), 2):  # the contract (pydantic) refuses each one too
        with pytest.raises(EventValidationError):
            decode_transaction(values[i] or b"")


def test_random_identifiers_are_refused_by_the_batch_exactly_when_by_the_contract() -> None:
    """Ids of digits, dashes, spaces, dots and letters, 5 to 30 characters, in a random id
    field: the batch decoder takes a record exactly when kestrel.events does."""
    rng = random.Random(27)
    values: list[bytes | None] = []
    for i in range(3000):
        text = "".join(rng.choice("0123456789" * 4 + "- .a") for _ in range(rng.randint(5, 30)))
        values.append(orjson.dumps({**make_event(i), rng.choice(ID_FIELDS): text}))
    cols = batch_decode.decode_batch(values)
    refused = set()
    for i, value in enumerate(values):
        try:
            decode_transaction(value or b"")
        except EventValidationError:
            refused.add(i)
    assert set(cols.errors) == refused
    assert 300 < len(refused) < 2700  # both answers were met often


def test_the_column_check_finds_the_one_record_among_many() -> None:
    """The PAN check runs per column joined: one planted PAN-like id among 2,000 valid
    records refuses that record only, wherever it sits, and a run never spans two ids."""
    values: list[bytes | None] = [orjson.dumps(make_event(i)) for i in range(2000)]
    values[1234] = orjson.dumps({**make_event(1234), "terminal_id": "T4111-1111-1111"})
    # the end of one id and the start of the next make 12 digits: not a PAN-like id
    values[5] = orjson.dumps({**make_event(5), "customer_id": "C-411111"})
    values[6] = orjson.dumps({**make_event(6), "customer_id": "111111-C"})
    cols = batch_decode.decode_batch(values)
    assert set(cols.errors) == {1234} and cols.slow == 0
    assert [e.path for e in cols.errors[1234].errors] == ["terminal_id"]


def test_times_at_the_ends_of_the_calendar_decode_as_one_by_one() -> None:
    """Year 1 and 9999 times decode (the processor refuses them: TimeBounds); with an offset
    that puts them in year 0 or 10000 in UTC, both paths refuse them (records.iso could not
    write such a time back)."""
    times = ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+01:00",
             "9999-12-31T23:59:59-01:00", "0001-01-01T01:00:59+01:00", "1969-12-31T23:59:59Z"]
    values: list[bytes | None] = [orjson.dumps({**make_event(i), "event_time": t})
                                  for i, t in enumerate(times)]
    cols = batch_decode.decode_batch(values)
    assert _rows(cols) == _reference(values)
    assert set(cols.errors) == {2, 3}
    assert [e.path for e in cols.errors[2].errors] == ["event_time"]
    assert cols.event_time[:2] == times[:2] and cols.event_time[4] == "0001-01-01T00:00:59Z"


def test_a_late_record_is_re_encoded_so_a_shadowed_key_cannot_carry_a_card_number() -> None:
    from kestrel.pan import pan_like
    from pipelines.stream.records import late_value

    raw = orjson.dumps(make_event(3))[:-1] + b',"card_id":"card-x"}'
    raw = raw.replace(b'"card_id":"card_', b'"card_id":"4111 1111 1111 1111","x":"', 1)
    assert pan_like(raw.decode())
    value = late_value(raw)
    assert not pan_like(value.decode()) and orjson.loads(value)["card_id"] == "card-x"
