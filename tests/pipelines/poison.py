"""Records no consumer may apply, nor stop on: card numbers in identifiers (in every form a
person or a system writes one), event times outside kestrel.events.TimeBounds, and bytes that
are no event at all. Plus the scan the tests read every output back with (kestrel.pan)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from confluent_kafka import Producer

from kestrel.kafka import producer_config
from kestrel.pan import pan_like
from kestrel.settings import Settings
from tests.pipelines.events_factory import make_event

PAN = "4111111111111111"
PAN_FORMS = {
    "digits": PAN,
    "dashes": "4111-1111-1111-1111",
    "spaces": "4111 1111 1111 1111",
    "en dashes": "4111\u20131111\u20131111\u20131111",
    "Arabic-Indic": "".join(chr(0x660 + int(d)) for d in PAN),
    "inside an id": "cust-4111-1111-1111-1111-x",
}
TXN_ID_FIELDS = ("txn_id", "customer_id", "account_id", "card_id", "terminal_id", "device_id")
OUT_OF_RANGE = ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+01:00",
                "9999-12-31T23:59:59-01:00", "1999-12-31T23:59:59Z", "2099-01-01T00:00:00Z")


def _deep(n: int) -> bytes:
    return b'{"a":' * n + b"1" + b"}" * n


# Bytes that are no valid event, whatever the topic (None: a record with a null value).
GARBAGE: tuple[bytes | None, ...] = (
    b"not json", b"{not json", b"", None, b"null", b"true", b"42", b'"a string"',
    b"[1, 2, 3]", b'[{"txn_id": "tx-1"}]',  # JSON arrays
    b"1" * 400, b'{"amount": 1' + b"0" * 400 + b"}",  # integers far past 64 bits
    b'{"txn_id": 18446744073709551616}', b'{"amount": 1e400}', b'{"amount": NaN}',
    b"[" * 100_000 + b"]" * 100_000, _deep(5_000),  # deep nesting
    b'{"txn_id": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"txn_id": "\\ud800"}', b'{"txn_id": "\xff\xfe"}',  # a lone surrogate, not UTF-8
    b'{"txn_id": {"a": 1}, "amount": "12", "event_time": 12345, "lat": true}',  # wrong types
    b"\x00\x01\x02\xff" * 10,
)


def transaction_with(i: int, **changes: Any) -> bytes:
    return orjson.dumps({**make_event(i), **changes})


def pan_transactions(start: int) -> list[tuple[str, bytes]]:
    """One record per identifier field and PAN form, each otherwise valid."""
    out = []
    for n, (field, (form, pan)) in enumerate(
            (f, p) for f in TXN_ID_FIELDS for p in PAN_FORMS.items()):
        out.append((f"{field} {form}", transaction_with(start + n, **{field: pan})))
    # a number where an id goes: the wrong type, and the digits of a card
    out.append(("customer_id as a number", transaction_with(start + len(out),
                                                             customer_id=int(PAN))))
    return out


def time_transactions(start: int) -> list[tuple[str, bytes]]:
    return [(f"event_time {t}", transaction_with(start + n, event_time=t))
            for n, t in enumerate(OUT_OF_RANGE)]


def garbage_transactions(start: int) -> list[tuple[str, bytes | None]]:
    """GARBAGE, and valid events with one field of the wrong type or size."""
    wrong = [("amount huge", {"amount": 10 ** 30}), ("lat word", {"lat": "north"}),
             ("event_time list", {"event_time": [2018, 4, 1]}),
             ("device_id list", {"device_id": ["D1"]}), ("txn_id 65", {"txn_id": "t" * 65}),
             ("currency list", {"currency": ["EUR"]}),
             ("schema_version list", {"schema_version": []})]
    out: list[tuple[str, bytes | None]] = [(f"garbage {n}", g) for n, g in enumerate(GARBAGE)]
    for n, (what, change) in enumerate(wrong):
        event = {**make_event(start + n), **change}
        if what == "amount huge":  # orjson writes no integer past 64 bits: spliced in
            raw = orjson.dumps({**event, "amount": 7}).replace(
                b'"amount":7', b'"amount":' + str(10 ** 30).encode())
        else:
            raw = orjson.dumps(event)
        out.append((what, raw))
    return out


def produce_in_order(settings: Settings, topic: str,
                     records: list[tuple[str | bytes | None, bytes | None]],
                     partition: int = 0) -> None:
    """``records`` (key, value) into one partition, in this order: the record at index i
    gets offset i on a fresh topic. Keys and values may be None."""
    producer = Producer(producer_config(settings))
    for key, value in records:
        producer.produce(topic, value=value, key=key, partition=partition)
    assert producer.flush(30) == 0


def texts(doc: Any) -> list[str]:
    """Every string of a decoded document (JSON, or Arrow rows), keys included."""
    if isinstance(doc, str):
        return [doc]
    if isinstance(doc, bytes):
        return [doc.decode("utf-8", errors="replace")]
    if isinstance(doc, dict):
        return [t for k, v in doc.items() for t in (*texts(k), *texts(v))]
    if isinstance(doc, list | tuple):
        return [t for v in doc for t in texts(v)]
    return []


def pan_hits(strings: Iterable[str]) -> list[str]:
    """The strings kestrel.pan calls PAN-like (a scan of decoded output)."""
    return [s for s in strings if pan_like(s)]


def parquet_strings(paths: Iterable[Any]) -> list[str]:
    """Every value of every string column of these Parquet files, read back with pyarrow."""
    out: list[str] = []
    for path in paths:
        table = pq.read_table(path)
        for column, field in zip(table.columns, table.schema, strict=True):
            if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
                out += [v for v in column.to_pylist() if v is not None]
            elif pa.types.is_dictionary(field.type):
                out += [str(v) for v in column.to_pylist() if v is not None]
    return out
