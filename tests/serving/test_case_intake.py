"""The case intake (serving/case_intake.py) against a real broker and a real case store:
`alerts` and `decisions` into one case per customer, exactly once; the decision policy; bad
records to the DLQ; the store going away (a PostgreSQL database that stops taking
connections) and coming back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from sqlalchemy import create_engine, text

from cases.store import CaseStore
from kestrel.errors import ConfigError
from kestrel.kafka import consumer_config
from kestrel.producer import EventProducer
from kestrel.settings import Settings
from kestrel.topics import ALERTS, DECISIONS, TRANSACTIONS_DLQ
from pipelines.stream.rules import evaluate, rules
from pipelines.stream.state import EventLog
from serving.case_intake import GROUP, CaseIntake
from tests.cases.conftest import SERVERS, new_database
from tests.conftest import make_settings
from tests.faults.probes import wait_for
from tests.pipelines.test_archive import read_topic

pytestmark = [pytest.mark.integration]
T0 = datetime(2018, 6, 2, 10, 0, tzinfo=UTC)


def stream_alert(card: str, customer: str, first_txn: int) -> dict[str, Any]:
    """An alert as the stream raises it (pipelines/stream/rules.py on a card's events):
    five payments in three countries within five minutes."""
    t0 = int(T0.timestamp() * 1e6) + first_txn * 1_000_000
    log = EventLog([(f"t{first_txn + i}", t0 + i * 30_000_000, 10.0 + i, ("FR", "DE", "IT")[i % 3],
                     f"T{i}", "5411", 48.0 + i, 2.0 + i) for i in range(5)])
    alert = evaluate(card, customer, log, rules(50)[0], T0)
    assert alert is not None
    return alert


def decision(txn_id: str, customer: str, action: str, score: float | None) -> dict[str, Any]:
    """A `decisions` record as serving publishes it (serving/decisions.py)."""
    record: dict[str, Any] = {
        "txn_id": txn_id, "action": action, "score": score,
        "reasons": [{"feature": "card_txn_count_1h", "value": 6.0, "contribution": 1.2,
                     "text": "card txn count 1h is 6"}],
        "rules": [], "explanation": f"{action} by score", "model_version": "3",
        "degraded": False, "unpublished": {}, "latency_ms": 1.0, "audited": True,
        "customer_id": customer, "card_id": f"card-{customer}",
        "event_time": T0.isoformat().replace("+00:00", "Z")}
    if action != "allow":
        record["transaction"] = {"amount": 912.5, "currency": "EUR", "country": "FR",
                                 "lat": 48.85, "lon": 2.35, "mcc": "5411", "terminal_id": "T1",
                                 "channel": "pos", "event_time": record["event_time"]}
        record["features"] = {"card_txn_count_1h": 6.0, "km_from_home": None}
    return {**record, "decided_at": "2026-01-01T00:00:00Z"}


def produce(settings: Settings, topic: str, records: list[tuple[str, bytes]]) -> None:
    producer = EventProducer(settings)
    producer.produce_many(topic, iter(records))
    producer.flush()


def committed(settings: Settings) -> int:
    """The sum of the intake group's committed offsets over both topics."""
    consumer = Consumer(consumer_config(settings, GROUP))
    try:
        parts = [TopicPartition(t, p) for t in (ALERTS, DECISIONS)
                 for p in consumer.list_topics(t, timeout=10).topics[t].partitions]
        return sum(max(tp.offset, 0) for tp in consumer.committed(parts, timeout=10))
    finally:
        consumer.close()


@pytest.fixture
def intakes(services: Settings) -> Iterator[Callable[..., CaseIntake]]:
    """Starts intakes on the test's broker (stopped at the end)."""
    started: list[CaseIntake] = []

    def start(store: Callable[[], CaseStore], settings: Settings | None = None,
              **kw: Any) -> CaseIntake:
        s = settings or services
        intake = CaseIntake(s, store, EventProducer(s), **kw)
        intake.STORE_BACKOFF_S = (0.2, 1.0)
        intake.start()
        started.append(intake)
        return intake

    yield start
    for intake in started:
        intake.stop()


def test_a_decline_and_an_alert_make_one_case_exactly_once(
        services: Settings, intakes: Callable[..., CaseIntake], tmp_path: Path) -> None:
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    dropped: list[str] = []
    alert = stream_alert("card-C1", "C1", 0)
    declined = decision("d-1", "C1", "decline", 0.97)
    batch = [(ALERTS, alert["card_id"], orjson.dumps(alert)),
             (DECISIONS, "d-1", orjson.dumps(declined))]
    for topic, key, value in batch + batch:  # every record twice: a replay
        produce(services, topic, [(key, value)])
    first = intakes(lambda: store, invalidate=dropped.append)
    wait_for(lambda: first.counts["stored"] + first.counts["duplicate"] == 4, 60)
    first.stop()  # restart between batches: the next intake goes on from the commits
    assert first.counts == {"stored": 2, "duplicate": 2, "skipped": 0, "dead_lettered": 0}
    assert committed(services) == 4
    assert set(dropped) == {"C1"}  # the customer's insight cache, after a batch changed it

    later = stream_alert("card-C1", "C1", 100)
    for topic, key, value in [*batch, (ALERTS, "card-C1", orjson.dumps(later))]:
        produce(services, topic, [(key, value)])
    second = intakes(lambda: store)
    wait_for(lambda: sum(second.counts.values()) == 3, 60)
    assert second.counts == {"stored": 1, "duplicate": 2, "skipped": 0, "dead_lettered": 0}

    page = store.queue(status="open")
    assert page.total == 1, page
    case = store.get(page.cases[0].id)
    assert case.customer_id == "C1" and case.max_score == 0.97
    assert sorted((a.kind, a.key) for a in case.alerts) == sorted(
        [("alert", alert["alert_id"]), ("alert", later["alert_id"]), ("decision", "d-1")])
    made = {a.key: a for a in case.alerts}["d-1"]
    assert made.features == {"card_txn_count_1h": 6.0, "km_from_home": None}
    assert made.decision is not None and made.decision["explanation"] == "decline by score"
    assert made.payload["transaction"]["amount"] == 912.5
    stored_alert = {a.key: a for a in case.alerts}[alert["alert_id"]]
    assert stored_alert.evidence_txn_ids == tuple(f"t{i}" for i in range(5))
    assert stored_alert.payload["evidence"][1] == {
        "txn_id": "t1", "event_time": "2018-06-02T10:00:30Z", "amount": 11.0,
        "country": "DE", "lat": 49.0, "lon": 3.0, "terminal_id": "T1"}
    assert [a.action for a in case.actions] == ["open", "join", "join"]


@pytest.mark.parametrize(("overrides", "opened"), [
    ({}, {"C-decline", "C-high-challenge"}),
    ({"case_decision_actions": "decline,challenge"},
     {"C-decline", "C-high-challenge", "C-low-challenge"}),
    ({"case_decision_actions": "challenge", "case_challenge_min_score": 1.0},
     {"C-high-challenge", "C-low-challenge"}),
])
def test_which_decisions_open_a_case_is_the_policy_s(
        services: Settings, intakes: Callable[..., CaseIntake], tmp_path: Path,
        overrides: dict[str, Any], opened: set[str]) -> None:
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    records = [decision("a-1", "C-allow", "allow", 0.1),
               decision("c-1", "C-low-challenge", "challenge", 0.5),
               decision("c-2", "C-high-challenge", "challenge", 0.95),
               decision("d-1", "C-decline", "decline", 0.99),
               decision("d-2", "C-degraded", "allow", None)]
    produce(services, DECISIONS, [(r["txn_id"], orjson.dumps(r)) for r in records])
    intake = intakes(lambda: store, services.model_copy(update=overrides))
    wait_for(lambda: sum(intake.counts.values()) == len(records), 60)
    assert {c.customer_id for c in store.queue().cases} == opened
    assert intake.counts["skipped"] == len(records) - len(opened)
    assert committed(services) == len(records)


def test_a_bad_record_goes_to_the_dlq_and_the_intake_goes_on(
        services: Settings, intakes: Callable[..., CaseIntake], tmp_path: Path) -> None:
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    good = stream_alert("card-C2", "C2", 0)
    bad_alerts = [b"not json", b"[1, 2]", orjson.dumps({**good, "alert_id": "4111111111111111"}),
                  orjson.dumps({**good, "alert_id": "al-x", "customer_id": None}),
                  orjson.dumps({**good, "alert_id": "al-y", "evidence_txn_ids": "t1"})]
    bad_decisions = [orjson.dumps({**decision("d-x", "C2", "decline", 0.9), "rules": 5}),
                     orjson.dumps({**decision("d-y", "C2", "decline", 0.9), "customer_id": ""})]
    produce(services, ALERTS, [("card-C2", raw) for raw in bad_alerts])
    produce(services, DECISIONS, [("d", raw) for raw in bad_decisions])
    produce(services, ALERTS, [("card-C2", orjson.dumps(good))])
    intake = intakes(lambda: store)
    wait_for(lambda: intake.stored == 1 and intake.counts["dead_lettered"] == 7, 60)
    assert intake.restarts == 0 and intake.healthy
    dead = [orjson.loads(m.value()) for m in read_topic(services, TRANSACTIONS_DLQ, 7)]
    assert sorted(d["source"]["topic"] for d in dead) == [ALERTS] * 5 + [DECISIONS] * 2
    assert all(d["consumer"] == GROUP for d in dead)
    assert not any("4111111111111111" in orjson.dumps(d).decode() for d in dead)
    assert [a.key for a in store.get(store.queue().cases[0].id).alerts] == [good["alert_id"]]
    assert committed(services) == 8


@pytest.mark.slow
def test_the_store_down_keeps_the_batch_and_the_intake_catches_up(
        services: Settings, intakes: Callable[..., CaseIntake], tmp_path: Path) -> None:
    """The case store's PostgreSQL database stops taking connections (ALLOW_CONNECTIONS
    false, its sessions terminated): the intake keeps its batch, commits nothing and is
    unhealthy (readiness: case_intake false) until the database takes connections again;
    then it writes the batch, once, and commits."""
    urls = new_database("postgresql", tmp_path)
    url = next(urls)
    name = url.rsplit("/", 1)[1]
    server = create_engine(SERVERS["postgresql"], isolation_level="AUTOCOMMIT")
    store = CaseStore(url)
    try:
        intake = intakes(lambda: store)
        first = [stream_alert(f"card-{i}", f"C{i}", 0) for i in range(3)]
        produce(services, ALERTS, [(a["card_id"], orjson.dumps(a)) for a in first])
        wait_for(lambda: intake.stored == 3, 60)
        assert intake.healthy and committed(services) == 3

        with server.connect() as conn:  # the fault: no connection to the database
            conn.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :db"), {"db": name})
        later = [stream_alert(f"card-{i}", f"C{i}", 100) for i in range(3, 8)]
        produce(services, ALERTS, [(a["card_id"], orjson.dumps(a)) for a in later])
        produce(services, DECISIONS, [("d-9", orjson.dumps(decision("d-9", "C1", "decline",
                                                                    0.99)))])
        wait_for(lambda: intake.state == "waiting_for_store", 60)
        assert not intake.healthy and intake.status()["healthy"] is False
        assert "unreachable" in (intake.error or "") and name in (intake.error or "")
        retries = intake.store_retries
        wait_for(lambda: intake.store_retries >= retries + 2, 30)  # it keeps trying
        assert committed(services) == 3 and intake.stored == 3  # nothing committed

        with server.connect() as conn:  # the database is back
            conn.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        wait_for(lambda: intake.stored == 9 and intake.healthy, 60)
        assert intake.state == "running" and intake.error is None
        wait_for(lambda: committed(services) == 9, 30)
        assert intake.counts["dead_lettered"] == 0 and intake.restarts == 0
        page = store.queue(limit=100)
        assert page.total == 8  # one case per customer; d-9 joined C1's
        keys = sorted(k for c in page.cases for k in (a.key for a in store.get(c.id).alerts))
        assert keys == sorted([a["alert_id"] for a in first + later] + ["d-9"])
    finally:
        with server.connect() as conn:
            conn.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        store.dispose()
        server.dispose()
        urls.close()  # type: ignore[attr-defined]  # drops the database


def test_an_unknown_decision_action_is_refused_loudly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KESTREL_CASE_DECISION_ACTIONS names 'allow'"):
        make_settings(tmp_path, case_decision_actions="decline,allow")
    settings = make_settings(tmp_path, case_decision_actions=" Challenge ,decline")
    assert settings.case_actions == {"decline", "challenge"}
