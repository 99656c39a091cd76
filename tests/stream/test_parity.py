"""Online/offline parity on the path production runs: every row the stream wrote to the online
store equals what Feast's point-in-time join reads at its time, what the per-event engine
computes and what the Spark backfill of the same events computes, and Redis holds the last
row written per key, feature by feature."""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa
import pytest
from confluent_kafka import Producer

from kestrel.dlq import dead_letter
from kestrel.errors import EventValidationError, FieldError
from kestrel.kafka import producer_config
from kestrel.pan import CardTokenizer
from kestrel.settings import Settings
from kestrel.topics import TRANSACTIONS_DLQ, TRANSACTIONS_LATE
from kestrel.windows import ENTITIES, feature_names
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.generator import iter_days
from pipelines.stream.parity import run_parity
from pipelines.stream.parity_spark import SPARK_TOLERANCE, run_backfill, unapplied_txn_ids
from tests.batch.conftest import spark  # noqa: F401  (the session's Spark: a fixture)
from tests.conftest import TEST_SECRET
from tests.stream.feature_reference import compare, expected_rows, prepare

pytestmark = [pytest.mark.slow]


@pytest.mark.integration
@pytest.mark.spark
def test_replayed_days_have_zero_mismatches(settings: Settings, spark: Any) -> None:  # noqa: F811
    report = run_parity(settings, days=3, customers=400, terminals=800,
                        progress=lambda *_: None)
    assert report.transactions > 2000
    names = {n for e in ENTITIES for n in feature_names(e)}
    assert set(report.features) == names
    # paced replay: most (entity, event) rows reach the online store (3 per transaction)
    assert report.online_rows > 2 * report.transactions
    assert report.redis_keys > 0
    for name, fp in report.features.items():
        # each of its entity's online rows offline and per event, each key in Redis
        assert fp.compared >= report.transactions * 1.5, name
        assert fp.mismatches == 0, (name, fp.examples)

    sp = report.spark  # the Spark backfill of the same days
    assert sp is not None and set(sp.features) == names
    assert sp.excluded == 0 and sp.unidentified == 0  # a simulated replay: none late, none invalid
    # one backfill row per (entity, event time): about 3 per transaction, every one logged
    assert sp.backfill_rows > 2.9 * report.transactions
    assert sp.only_in_backfill == 0, sp.only_in_backfill_examples
    for name, fp in sp.features.items():
        # every offline-log row of its entity (one per event) and every online row
        assert fp.compared >= report.transactions * 1.5, name
        assert fp.mismatches == 0, (name, fp.examples)
        assert fp.max_abs_diff <= SPARK_TOLERANCE, name
    assert report.mismatches == 0


@pytest.mark.integration
def test_unapplied_events_are_read_from_the_late_and_dlq_topics(services: Settings) -> None:
    """What the backfill must leave out: a late record's txn_id, a DLQ record's (from its
    payload), and a DLQ record whose payload has none is counted, not guessed."""
    producer = Producer(producer_config(services))
    producer.produce(TRANSACTIONS_LATE, key=b"cust-1",
                     value=orjson.dumps({"txn_id": "late-1", "amount": 3.5}))
    invalid = EventValidationError([FieldError("amount", "not a number")])
    for i, raw in enumerate((orjson.dumps({"txn_id": "bad-1", "amount": "x"}), b"{not json")):
        key, value = dead_letter("transactions", 0, i, raw, invalid, "kestrel-stream")
        producer.produce(TRANSACTIONS_DLQ, key=key, value=value)
    producer.flush(10)
    assert unapplied_txn_ids(services) == ({"late-1", "bad-1"}, 1)


@pytest.mark.spark
def test_the_backfill_leaves_out_excluded_events(settings: Settings, spark: Any) -> None:  # noqa: F811
    """``exclude_txn_ids``: the backfill's rows are those of the lake less those events —
    checked against the pandas reference computed over the kept events."""
    config = SimulationConfig(customers=60, terminals=120, days=1, seed=5)
    tokenize = CardTokenizer(TEST_SECRET.encode()).token
    events = pa.concat_tables([b.transactions for b in iter_days(config, tokenize)]).to_pandas()
    dropped = set(events["txn_id"].iloc[::7])
    assert len(dropped) > 10
    backfill = run_backfill(settings, config, tokenize, dropped, lambda _: None)
    kept = prepare(events[~events["txn_id"].isin(dropped)])
    for entity in ENTITIES:  # rows of dropped events only would show under "<rows>"
        assert compare(expected_rows(kept, entity), backfill[entity], entity,
                       feature_names(entity)) == {}, entity
