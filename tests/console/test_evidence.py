"""A case's evidence transactions, read from the records the case store kept as received."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cases.store import CaseStore
from cases.views import CaseView
from kestrel.errors import EventValidationError
from kestrel.pan import REDACTED
from serving.console.evidence import label_of, map_points, transactions_of
from tests.console.records import PLACES, T0, alert, decision


@pytest.fixture
def cases(tmp_path: Path) -> Iterator[CaseStore]:
    s = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    yield s
    s.dispose()


def test_every_evidence_transaction_once_oldest_first_with_its_details(cases: CaseStore):
    rec = alert("cu1", "card_gh", 5)
    # the decision is on the alert's third payment: its currency fills the alert's gap
    dec = decision("cu1", "card_gh", rec["evidence_txn_ids"][2])
    late = decision("cu1", "card_gh", "t-late", at=T0.replace(hour=11))
    case_id = cases.add_decision(late).case_id
    cases.add_alert(rec)
    cases.add_decision(dec)
    txns = transactions_of(cases.get(case_id))

    assert [t.txn_id for t in txns] == [*rec["evidence_txn_ids"], "t-late"]
    assert len({t.txn_id for t in txns}) == len(txns)
    first = txns[0]
    country, lat, lon = PLACES[0]
    assert (first.country, first.lat, first.lon) == (country, lat, lon)
    assert first.amount == 120.0 and first.terminal_id == "term-DE-0"
    assert first.event_time == T0 and first.card_id == "card_gh"
    assert first.source == "alert:multi_country" and first.currency is None
    third = txns[2]
    assert third.source == "alert:multi_country"  # first seen in the alert ...
    assert third.currency == "EUR"  # ... the decision fills what the alert lacked
    assert third.amount == rec["evidence"][2]["amount"]  # but does not overwrite it
    assert txns[-1].source == "decision" and txns[-1].amount == 950.0
    assert txns[-1].event_time == T0.replace(hour=11)


def test_records_from_before_the_details_existed_give_unknowns(cases: CaseStore):
    rec = alert("cu2", "card_ij", 3)
    del rec["evidence"]
    dec = decision("cu2", "card_ij", "t-old")
    del dec["transaction"]
    cases.add_alert(rec)
    case_id = cases.add_decision(dec).case_id
    txns = transactions_of(cases.get(case_id))
    assert {t.txn_id for t in txns} == {*rec["evidence_txn_ids"], "t-old"}
    for t in txns:
        assert (t.amount, t.country, t.lat, t.lon, t.terminal_id) == (None,) * 5
    old = next(t for t in txns if t.txn_id == "t-old")
    assert old.event_time == T0  # the decision's own event_time
    assert map_points(txns) == []


def test_values_that_are_not_what_they_claim_count_as_not_recorded(cases: CaseStore):
    rec = alert("cu3", "card_kl", 4)
    rec["evidence"][0].update(amount="12.50", lat=95.0)  # a string, off the globe
    rec["evidence"][1].update(amount=float("nan"), event_time="yesterday")
    rec["evidence"][2].update(country=7, lon=None)
    case = cases.get(cases.add_alert(rec).case_id)
    by_id = {t.txn_id: t for t in transactions_of(case)}
    t0, t1, t2 = (by_id[i] for i in rec["evidence_txn_ids"][:3])
    assert t0.amount is None and t0.lat is None and t0.lon is None
    assert t1.amount is None and t1.event_time is None
    assert t2.country is None and t2.lat is None and t2.lon is None
    assert [t.txn_id for t in transactions_of(case)][-1] == t1.txn_id  # no time: last


def test_a_card_number_in_a_record_is_refused_by_the_store_and_redacted_on_the_page(
        cases: CaseStore):
    """The store refuses it (cases.records.check_strings); a record that got in before that
    check existed is still shown redacted."""
    rec = alert("cu4", "card_km", 4)
    rec["evidence"][3].update(terminal_id="term 4111 1111 1111 1111")  # a card number
    with pytest.raises(EventValidationError, match="card number"):
        cases.add_alert(rec)
    case = _with_alert(CaseView(id=1, customer_id="cu", status="open", outcome=None,
                                sar=False, assignee=None, max_score=None, rules=(),
                                opened_at=T0, updated_at=T0, closed_at=None, version=1),
                       terminal_id="term 4111 1111 1111 1111")
    t = transactions_of(case)[0]
    assert t.terminal_id is not None and "4111" not in t.terminal_id
    assert REDACTED in t.terminal_id


def test_map_points_are_the_transactions_with_a_position_labelled():
    case = CaseView(id=1, customer_id="cu", status="open", outcome=None, sar=False,
                    assignee=None, max_score=None, rules=(), opened_at=T0, updated_at=T0,
                    closed_at=None, version=1)
    assert transactions_of(case) == []
    txns = transactions_of(_with_alert(case))
    points = map_points(txns, flagged=True)
    assert len(points) == len(txns) == 2 and all(p.flagged for p in points)
    assert points[0].label == label_of(txns[0])
    assert points[0].label == "tx-1 · 10.50 (currency not recorded) · FR · 2026-12-07T09:00:00Z"
    assert not map_points(txns, flagged=False)[0].flagged
    unplaced = replace(txns[0], lat=None, lon=None)
    assert len(map_points([unplaced, txns[1]])) == 1


def _with_alert(case: CaseView, terminal_id: str = "T-1") -> CaseView:
    from cases.views import AlertView

    payload = {"evidence": [
        {"txn_id": "tx-1", "event_time": "2026-12-07T09:00:00Z", "amount": 10.5,
         "country": "FR", "lat": 48.86, "lon": 2.35, "terminal_id": terminal_id},
        {"txn_id": "tx-2", "event_time": "2026-12-07T09:01:00+00:00", "amount": 3,
         "country": "DE", "lat": 52.52, "lon": 13.4}]}
    view = AlertView(kind="alert", key="al-1", customer_id="cu", card_id="card_x",
                     rule="velocity", score=None, action=None, model_version=None,
                     decision=None, features=None, evidence_txn_ids=("tx-2", "tx-1"),
                     event_time=None, received_at=datetime(2026, 12, 7, 9, 2, tzinfo=UTC),
                     payload=payload)
    return replace(case, alerts=(view,))
