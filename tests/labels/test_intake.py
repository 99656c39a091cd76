"""`labels` topic → label store, against a real broker: latest wins, duplicates harmless,
invalid records to the DLQ, and a restart neither loses nor duplicates a label."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pyarrow.dataset as ds
import pytest
from confluent_kafka import Consumer

from kestrel.events import LabelEvent
from kestrel.kafka import consumer_config
from kestrel.lake import list_files
from kestrel.producer import EventProducer
from kestrel.settings import Settings
from kestrel.topics import LABELS
from labels.intake import DLQ_TOPIC, LabelIntake
from labels.store import latest_labels, read_labels

pytestmark = pytest.mark.integration

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)


def event(txn: str, fraud: bool, at: datetime, analyst: str | None = "a-7") -> bytes:
    return LabelEvent(txn_id=txn, is_fraud=fraud, source="investigator", analyst_id=analyst,
                      reason="checked", labelled_at=at).to_json()


def publish(settings: Settings, records: list[tuple[str, bytes]]) -> None:
    producer = EventProducer(settings)
    for key, value in records:
        producer.produce(LABELS, key, value)
    producer.flush()


def intake(settings: Settings) -> LabelIntake:
    runner = LabelIntake(settings)
    runner.run(idle_seconds=2.0)
    return runner


def stored_rows(settings: Settings) -> int:
    files = list_files(settings.lake_dir, "labels")
    return ds.dataset(files).count_rows() if files else 0


def test_topic_to_store_exactly_once(services: Settings) -> None:
    s = services
    publish(s, [("t1", event("t1", False, T0)),
                ("t2", event("t2", True, T0)),
                ("t2", event("t2", True, T0)),  # a retried POST: the same label twice
                ("t1", event("t1", True, T0 + timedelta(days=1))),  # overturned next day
                ("bad", b'{"txn_id": "t9", "is_fraud": "maybe"}'),
                ("t3", b'{"schema_version": 99, "txn_id": "t3"}')])
    first = intake(s)
    assert first.stats.consumed == 6 and first.stats.written == 4
    assert first.stats.invalid == 2
    latest = latest_labels(s.lake_dir).set_index("txn_id")
    assert latest.loc["t1", "is_fraud"] and latest.loc["t2", "is_fraud"]
    assert read_labels(s.lake_dir).num_rows == 3  # the repeated label collapses
    assert stored_rows(s) == 4

    # a restart reads nothing twice: the offsets were stored with the files
    again = intake(s)
    assert again.stats.consumed == 0 and stored_rows(s) == 4

    # new labels after the restart are picked up from where it stopped
    publish(s, [("t3", event("t3", True, T0 + timedelta(days=2)))])
    third = intake(s)
    assert third.stats.consumed == 1 and stored_rows(s) == 5
    assert latest_labels(s.lake_dir).set_index("txn_id").loc["t3", "is_fraud"]

    # both invalid records are in the dead-letter topic with their reason, source named
    consumer = Consumer(consumer_config(s, "test-dlq-reader"))
    consumer.subscribe([DLQ_TOPIC])
    dead = []
    deadline = datetime.now(UTC) + timedelta(seconds=20)
    while len(dead) < 2 and datetime.now(UTC) < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            dead.append(orjson.loads(msg.value()))
    consumer.close()
    assert len(dead) == 2
    assert all(d["source"]["topic"] == LABELS and d["reason"] for d in dead)
    assert any("schema_version" in d["reason"] for d in dead)
