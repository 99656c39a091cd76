"""The label intake against a real broker: card numbers in txn_id, analyst_id or reason,
labelled_at outside TimeBounds and bytes that are no label go to the DLQ (redacted); the
labels after them are stored; nothing PAN-like reaches the DLQ or the label store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from kestrel.settings import Settings
from kestrel.topics import LABELS
from labels.intake import DLQ_TOPIC, LabelIntake
from labels.store import read_labels
from tests.pipelines.poison import (
    GARBAGE,
    OUT_OF_RANGE,
    PAN_FORMS,
    pan_hits,
    parquet_strings,
    produce_in_order,
    texts,
)
from tests.pipelines.test_archive import read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def label(i: int, **changes: Any) -> bytes:
    return orjson.dumps({"schema_version": 1, "txn_id": f"tx-{i:07d}", "is_fraud": i % 2 == 0,
                         "source": "investigator", "analyst_id": "auth0|analyst-7",
                         "reason": "customer confirmed", "labelled_at": "2024-05-01T12:00:00Z",
                         **changes})


def test_pans_bad_times_and_garbage_go_to_the_dlq_and_the_intake_goes_on(
        services: Settings) -> None:
    bad: list[tuple[str, bytes | None]] = []
    for field in ("txn_id", "analyst_id", "reason"):
        for form, pan in PAN_FORMS.items():
            value = f"card {pan} was used" if field == "reason" else pan
            bad.append((f"{field} {form}", label(90_000 + len(bad), **{field: value})))
    bad += [(f"labelled_at {t}", label(91_000 + n, labelled_at=t))
            for n, t in enumerate(OUT_OF_RANGE)]
    bad += [(f"garbage {n}", g) for n, g in enumerate(GARBAGE)]
    bad += [("is_fraud string", label(92_000, is_fraud="yes")),
            ("txn_id number", label(92_001, txn_id=int(PAN_FORMS["digits"])))]
    records: list[tuple[str | None, bytes | None]] = []
    good: list[str] = []
    bad_offsets: dict[int, str] = {}
    for n, (what, value) in enumerate(bad):  # a valid label after each bad record
        bad_offsets[len(records)] = what
        records.append((None, value))
        records.append((f"tx-{n:07d}", label(n)))
        good.append(f"tx-{n:07d}")
    produce_in_order(services, LABELS, records)

    intake = LabelIntake(services)
    intake.run(idle_seconds=2.0)

    assert intake.stats.invalid == len(bad) and intake.stats.written == len(good)
    assert sorted(read_labels(services.lake_dir).column("txn_id").to_pylist()) == good
    days = sorted(p.name for p in (services.lake_dir / "labels").iterdir() if p.is_dir())
    assert days == ["labelled_date=2024-05-01"]  # no partition for the year 1 or 9999
    dlq = read_topic(services, DLQ_TOPIC, len(bad))
    docs = [orjson.loads(m.value()) for m in dlq]
    assert len(docs) == len(bad)
    assert {d["source"]["offset"] for d in docs} == set(bad_offsets)
    assert {d["source"]["topic"] for d in docs} == {LABELS}
    by_what = {bad_offsets[d["source"]["offset"]]: d for d in docs}
    for field in ("txn_id", "analyst_id", "reason"):
        assert [e["path"] for e in by_what[f"{field} spaces"]["errors"]] == [field]
    assert [e["path"] for e in by_what["labelled_at 0001-01-01T00:00:00Z"]["errors"]] == [
        "labelled_at"]

    # read back as decoded content: nothing PAN-like in the DLQ or the label store
    dlq_texts = [t for m in dlq for t in (*texts(orjson.loads(m.value())),
                                          m.value().decode("utf-8", errors="replace"))]
    stored = parquet_strings(Path(services.lake_dir / "labels").rglob("*.parquet"))
    assert len(stored) >= 3 * len(good)
    assert pan_hits(dlq_texts) == [] and pan_hits(stored) == []
    # positive control: the scan flags what was planted
    planted = [v.decode("utf-8", errors="replace") for what, v in bad
               if v is not None and what.split(" ", 1)[-1] in PAN_FORMS]
    assert len(planted) == 3 * len(PAN_FORMS) and len(pan_hits(planted)) == len(planted)
    assert pan_hits(texts(orjson.loads(planted[4]))) == ["".join(
        chr(0x660 + int(d)) for d in "4111111111111111")]
