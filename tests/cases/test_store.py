"""The case store's suite, run on SQLite, PostgreSQL and MariaDB (conftest.py): intake
upserts, grouping, the queue, analyst actions and their log, stale edits, retention, PANs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cases.store import CaseStore
from kestrel.errors import Conflict, EventValidationError, NotFound

pytestmark = pytest.mark.integration
ANALYST = "analyst@bank.example"


def alert(alert_id: str, customer: str = "cust_1", rule: str = "geo_spread",
          txns: tuple[str, ...] = ("t1", "t2", "t3")) -> dict[str, Any]:
    return {"alert_id": alert_id, "customer_id": customer, "card_id": f"card_{customer}",
            "rule": rule, "window": "5m", "evidence_txn_ids": list(txns),
            "countries": ["DE", "FR", "US"], "first_event_time": "2026-12-01T10:00:00Z",
            "last_event_time": "2026-12-01T10:04:00Z", "emitted_at": "2026-12-01T10:04:01Z",
            "status": "open"}


def decision(txn_id: str, customer: str = "cust_1", score: float = 0.9) -> dict[str, Any]:
    return {"txn_id": txn_id, "customer_id": customer, "card_id": f"card_{customer}",
            "action": "decline", "score": score, "reasons": [{"feature": "amount_z",
                                                             "contribution": 0.4}],
            "rules": [{"rule": "high_score", "action": "decline", "text": "score ≥ 0.8"}],
            "explanation": "declined: amount far above the card's usual",
            "model_version": "7", "features": {"amount_z": 5.1, "txn_count_10m": 9},
            "event_time": "2026-12-01T11:00:00Z"}


def test_the_same_alert_twice_is_one_alert(store: CaseStore) -> None:
    first = store.add_alert(alert("a1"))
    again = store.add_alert(alert("a1"))
    assert first.created and first.opened_case
    assert again == type(again)(first.case_id, created=False, opened_case=False)
    case = store.get(first.case_id)
    assert [a.key for a in case.alerts] == ["a1"]
    assert case.evidence_txn_ids == ("t1", "t2", "t3")
    assert [a.action for a in case.actions] == ["open"]


def test_a_flagged_decision_keeps_what_flagged_it(store: CaseStore) -> None:
    took = store.add_decision(decision("tx9"))
    assert store.add_decision(decision("tx9")).created is False
    [flag] = store.get(took.case_id).alerts
    assert (flag.kind, flag.key, flag.score, flag.action, flag.model_version) == (
        "decision", "tx9", 0.9, "decline", "7")
    assert flag.features == {"amount_z": 5.1, "txn_count_10m": 9}
    assert flag.decision is not None and flag.decision["reasons"][0]["feature"] == "amount_z"
    assert flag.evidence_txn_ids == ("tx9",)
    assert store.case_of_alert("decision", "tx9") == took.case_id


def test_a_customers_alerts_join_the_open_case_and_after_close_a_new_one_opens(
        store: CaseStore) -> None:
    one = store.add_alert(alert("a1"))
    two = store.add_decision(decision("tx2", score=0.7))
    other = store.add_alert(alert("a3", customer="cust_2"))
    assert two.case_id == one.case_id and not two.opened_case
    assert other.case_id != one.case_id
    case = store.get(one.case_id)
    assert [a.key for a in case.alerts] == ["a1", "tx2"]
    assert case.max_score == 0.7 and case.rules == ("geo_spread", "high_score")
    store.close(one.case_id, "false_positive", version=case.version, actor=ANALYST)
    late = store.add_alert(alert("a1"))  # a replay of an alert of the closed case
    assert (late.case_id, late.created) == (one.case_id, False)
    fresh = store.add_alert(alert("a4"))
    assert fresh.opened_case and fresh.case_id != one.case_id
    assert [c.id for c in store.cases_of("cust_1")] == [fresh.case_id, one.case_id]


def test_actions_are_logged_and_move_the_case(store: CaseStore) -> None:
    case_id = store.add_alert(alert("a1")).case_id
    v = store.get(case_id).version
    v = store.assign(case_id, ANALYST, version=v, actor=ANALYST).version
    v = store.add_note(case_id, "called the customer <b>twice</b>", version=v,
                       actor=ANALYST).version
    v = store.escalate(case_id, version=v, actor=ANALYST).version
    v = store.label(case_id, "t1", True, "customer denies it", version=v,
                    actor=ANALYST).version
    v = store.close(case_id, "confirmed_fraud", version=v, actor=ANALYST).version
    closed = store.get(case_id)
    assert (closed.status, closed.outcome, closed.assignee) == (
        "closed", "confirmed_fraud", ANALYST)
    assert closed.closed_at is not None and closed.version == v
    assert [n.body for n in closed.notes] == ["called the customer <b>twice</b>"]
    assert [(h.from_status, h.to_status) for h in closed.history] == [
        (None, "open"), ("open", "escalated"), ("escalated", "closed")]
    assert [a.action for a in closed.actions] == [
        "open", "assign", "note", "escalate", "label", "close"]
    [(outbox_id, label)] = store.unpublished_labels()
    assert (label["txn_id"], label["is_fraud"], label["source"]) == ("t1", True, "investigator")
    store.mark_published([outbox_id])
    assert store.unpublished_labels() == []
    reopened = store.reopen(case_id, version=v, actor=ANALYST)
    assert (reopened.status, reopened.outcome, reopened.closed_at) == ("open", None, None)
    assert store.open_case_of("cust_1") == reopened
    with pytest.raises(Conflict, match="cannot reopen"):
        store.reopen(case_id, version=reopened.version, actor=ANALYST)


def test_reopening_while_the_customer_has_another_open_case_is_a_conflict(
        store: CaseStore) -> None:
    first = store.add_alert(alert("a1")).case_id
    closed = store.close(first, "false_positive", version=store.get(first).version,
                         actor=ANALYST)
    store.add_alert(alert("a2"))
    with pytest.raises(Conflict, match="another open case"):
        store.reopen(first, version=closed.version, actor=ANALYST)
    assert store.get(first).status == "closed"


def test_a_stale_version_is_a_conflict_and_changes_nothing(store: CaseStore,
                                                           case_url: str) -> None:
    case_id = store.add_alert(alert("a1")).case_id
    other = CaseStore(case_url)  # a second worker with its own connections
    try:
        seen = store.get(case_id).version  # two analysts open the same page
        assert other.get(case_id).version == seen
        other.assign(case_id, "bob", version=seen, actor="bob")
        with pytest.raises(Conflict, match="reload the case"):
            store.assign(case_id, "alice", version=seen, actor="alice")
        with pytest.raises(Conflict):
            store.close(case_id, "false_positive", version=seen, actor="alice")
    finally:
        other.dispose()
    case = store.get(case_id)
    assert (case.assignee, case.status) == ("bob", "open")
    assert [a.actor for a in case.actions] == ["kestrel-intake", "bob"]


def test_the_queue_filters_orders_and_counts(store: CaseStore) -> None:
    now = datetime.now(UTC)
    old = store.add_decision(decision("tx1", customer="c1", score=0.5),
                             now=now - timedelta(hours=30)).case_id
    high = store.add_decision(decision("tx2", customer="c2", score=0.95)).case_id
    geo = store.add_alert(alert("a3", customer="c3")).case_id
    store.assign(high, ANALYST, version=store.get(high).version, actor=ANALYST)
    store.close(geo, "false_positive", version=store.get(geo).version, actor=ANALYST)

    everything = store.queue()
    assert [c.id for c in everything.cases] == [high, old, geo]  # score first, none last
    assert (everything.total, everything.by_status) == (
        3, {"open": 2, "escalated": 0, "closed": 1})
    assert [c.id for c in store.queue(status="open").cases] == [high, old]
    assert store.queue(status="open").by_status["closed"] == 1
    assert [c.id for c in store.queue(rule="geo_spread").cases] == [geo]
    assert [c.id for c in store.queue(min_score=0.4, max_score=0.9).cases] == [old]
    assert [c.id for c in store.queue(assignee=ANALYST).cases] == [high]
    assert [c.id for c in store.queue(unassigned=True, status="open").cases] == [old]
    assert [c.id for c in store.queue(older_than=timedelta(hours=24)).cases] == [old]
    assert [c.id for c in store.queue(limit=1, offset=1).cases] == [old]
    with pytest.raises(NotFound):
        store.queue(status="pending")
    with pytest.raises(NotFound):
        store.get(10_000)


def test_retention_prunes_old_closed_cases_never_open_ones_or_sars(store: CaseStore) -> None:
    def closed_case(customer: str) -> int:
        case_id = store.add_alert(alert(f"a_{customer}", customer=customer)).case_id
        store.close(case_id, "false_positive", version=store.get(case_id).version,
                    actor=ANALYST)
        return case_id

    gone, sar = closed_case("c1"), closed_case("c2")
    store.mark_sar(sar, version=store.get(sar).version, actor=ANALYST)
    still_open = store.add_alert(alert("a_c3", customer="c3")).case_id
    assert store.prune(days=30).cases == 0  # nothing is old yet
    pruned = store.prune(days=30, now=datetime.now(UTC) + timedelta(days=31))
    assert pruned.cases == 1
    with pytest.raises(NotFound):
        store.get(gone)
    assert store.case_of_alert("alert", "a_c1") is None
    assert store.get(sar).sar and store.get(still_open).status == "open"


@pytest.mark.parametrize("bad", [
    {"customer_id": "4111111111111111"},
    {"card_id": "4111 1111 1111 1111"},
    {"evidence_txn_ids": ["t1", "5500-0000-0000-0004"]},
    {"evidence": [{"txn_id": "t1", "terminal_id": "term 4111 1111 1111 1111"}]},
    {"note": {"4111111111111111": "a card number as a key"}},
])
def test_a_pan_like_id_is_refused_and_nothing_is_stored(store: CaseStore,
                                                        bad: dict[str, Any]) -> None:
    with pytest.raises(EventValidationError, match="card number") as caught:
        store.add_alert({**alert("a1"), **bad})
    assert "4111" not in str(caught.value) and "5500" not in str(caught.value)
    assert store.queue().total == 0


def test_a_card_number_anywhere_in_a_decision_refuses_it(store: CaseStore) -> None:
    bad = {**decision("t9"), "transaction": {"terminal_id": "T-4111-1111-1111-1111",
                                             "lat": 48.856613456789012}}
    with pytest.raises(EventValidationError, match="card number"):
        store.add_decision(bad)
    ok = {**decision("t9"), "transaction": {"terminal_id": "T-1", "lat": 48.856613456789012}}
    assert store.add_decision(ok).created  # a float's digits are no card number


def test_a_score_at_a_band_edge_is_in_the_band(store: CaseStore) -> None:
    """FLOAT is single precision on MySQL/TiDB: a stored 0.9 read back as 0.8999999762 and
    fell out of `min_score=0.9` (migration 0003 makes scores DOUBLE there)."""
    store.add_decision(decision("t1", score=0.9))
    assert store.queue(min_score=0.9).total == 1
    assert store.queue(max_score=0.9).total == 0  # the upper bound is exclusive


def test_a_note_with_a_card_number_is_refused(store: CaseStore) -> None:
    case_id = store.add_alert(alert("a1")).case_id
    with pytest.raises(EventValidationError, match="card number"):
        store.add_note(case_id, "card 4111111111111111 used abroad",
                       version=store.get(case_id).version, actor=ANALYST)
    assert store.get(case_id).notes == ()
