"""`kestrel simulate --to kafka`: events through the producer, labels after their delay."""

from __future__ import annotations

from datetime import timedelta

import pytest

from kestrel.events import decode_label, decode_transaction
from kestrel.pan import CardTokenizer
from kestrel.settings import Settings
from kestrel.topics import LABELS, TRANSACTIONS
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.to_kafka import stream_to_kafka
from tests.conftest import TEST_SECRET
from tests.pipelines.test_archive import read_topic

pytestmark = pytest.mark.integration


def test_stream_to_kafka_publishes_valid_keyed_events_and_delayed_labels(
    services: Settings,
) -> None:
    config = SimulationConfig(customers=200, terminals=400, days=4, label_delay_days=2)
    tokenize = CardTokenizer(TEST_SECRET.encode()).token
    summary = stream_to_kafka(config, services, tokenize)
    assert summary.transactions > 500 and summary.labels == summary.transactions
    txns = read_topic(services, TRANSACTIONS, summary.transactions)
    assert len(txns) == summary.transactions
    events = {}
    for m in txns:
        ev = decode_transaction(m.value())  # every record honours the contract
        assert m.key() == ev.customer_id.encode()
        events[ev.txn_id] = ev
    labels = [decode_label(m.value()) for m in read_topic(services, LABELS, summary.labels)]
    assert {lb.txn_id for lb in labels} == set(events)
    for lb in labels[:200]:
        assert lb.labelled_at - events[lb.txn_id].event_time == timedelta(days=2)
        assert lb.source == "simulator"
    assert sum(lb.is_fraud for lb in labels) == summary.frauds


def test_rate_limited_stream_keeps_its_pace(services: Settings) -> None:
    config = SimulationConfig(customers=100, terminals=200, days=1)
    tokenize = CardTokenizer(TEST_SECRET.encode()).token
    summary = stream_to_kafka(config, services, tokenize, rate=500, with_labels=False)
    assert summary.labels == 0
    # ~n/500 s at 500 events/s; generous bounds, this checks pacing happens at all
    assert summary.seconds >= summary.transactions / 500 * 0.8
