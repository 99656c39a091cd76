"""The archiver against a real broker: card numbers in identifiers, event times outside
TimeBounds and bytes that are no event go to the DLQ (redacted); it archives the valid
records after them; nothing PAN-like reaches the DLQ, the lake or its logs."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kestrel.pan import pan_like
from kestrel.settings import Settings
from kestrel.topics import TRANSACTIONS, TRANSACTIONS_DLQ
from tests.pipelines.events_factory import encode, make_event
from tests.pipelines.poison import (
    PAN_FORMS,
    garbage_transactions,
    pan_hits,
    pan_transactions,
    parquet_strings,
    produce_in_order,
    texts,
    time_transactions,
)
from tests.pipelines.test_archive import archive_until_idle, lake_ids, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def lake_texts(lake: Path) -> list[str]:
    """Everything the lake holds, read back: string columns of every Parquet file, and
    every other file (manifests, checkpoints) as text."""
    files = [p for p in lake.rglob("*") if p.is_file()]
    out = parquet_strings(p for p in files if p.suffix == ".parquet")
    return out + [p.read_bytes().decode("utf-8", errors="replace")
                  for p in files if p.suffix != ".parquet"]


def test_pans_bad_times_and_garbage_go_to_the_dlq_and_the_archiver_goes_on(
        services: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    bad = [*pan_transactions(50_000), *time_transactions(60_000),
           *garbage_transactions(70_000)]
    records: list[tuple[str | None, bytes | None]] = []
    good: list[str] = []
    bad_offsets: dict[int, str] = {}
    for n, (what, value) in enumerate(bad):  # a valid record after each bad one
        bad_offsets[len(records)] = what
        records.append((None, value))  # a null key too
        event = make_event(n)
        records.append((event["customer_id"], encode(event)))
        good.append(event["txn_id"])
    produce_in_order(services, TRANSACTIONS, records)

    archiver = archive_until_idle(services)

    assert archiver.stats.invalid == len(bad) and archiver.stats.written == len(good)
    assert sorted(lake_ids(services)) == sorted(good)
    days = sorted(p.name for p in (services.lake_dir / "transactions").iterdir()
                  if p.is_dir() and "=" in p.name)
    assert days == ["event_date=2018-04-01"]  # no partition for the year 1 or 9999
    dlq = read_topic(services, TRANSACTIONS_DLQ, len(bad))
    docs = [orjson.loads(m.value()) for m in dlq]
    assert {d["source"]["offset"]: d["source"]["topic"] for d in docs} == {
        off: TRANSACTIONS for off in bad_offsets}
    assert len(docs) == len(bad)
    by_what = {bad_offsets[d["source"]["offset"]]: d for d in docs}
    for field in ("txn_id", "customer_id", "card_id", "device_id"):
        assert [e["path"] for e in by_what[f"{field} digits"]["errors"]] == [field]
    assert [e["path"] for e in by_what["event_time 9999-12-31T23:59:59Z"]["errors"]] == [
        "event_time"]

    # read back as decoded content: nothing PAN-like in the DLQ, the lake, the logs
    dlq_texts = [t for m in dlq for t in (*texts(orjson.loads(m.value())),
                                          m.value().decode("utf-8", errors="replace"))]
    # (the messages and their reasons: the batch ids in other fields are a 13-digit
    # millisecond clock, PAN-like by the definition but never from a record)
    logged = [t for r in caplog.records for t in (r.getMessage(), *texts(r.__dict__.get(
        "reason")))]
    assert len(logged) > len(bad)
    assert pan_hits(dlq_texts) == []
    assert pan_hits(lake_texts(services.lake_dir)) == []
    assert pan_hits(logged) == []

    # positive control: the same scans flag a card number where there is one
    planted = [v.decode("utf-8", errors="replace") for what, v in bad
               if v is not None and what.split(" ", 1)[-1] in PAN_FORMS]
    assert len(planted) == 6 * len(PAN_FORMS) and len(pan_hits(planted)) == len(planted)
    pq.write_table(pa.table({"txn_id": ["tx-1", PAN_FORMS["Arabic-Indic"]]}),
                   tmp_path / "control.parquet")
    assert pan_hits(parquet_strings([tmp_path / "control.parquet"])) == [
        PAN_FORMS["Arabic-Indic"]]
    assert pan_hits(texts({"payload": orjson.loads(planted[3])})) and pan_like(
        orjson.dumps({"x": PAN_FORMS["en dashes"]}).decode())
