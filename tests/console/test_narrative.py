"""The case in plain language: one sentence per alert rule and flagged decision, never a
sentinel value."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from cases.store import CaseStore
from serving.console.evidence import transactions_of
from serving.console.narrative import (
    clean_explanation,
    feature_phrase,
    feature_value,
    narrative,
)
from tests.console.records import T0, alert, decision

# what must never be printed: a sentinel, or an unknown said with a unit
SENTINELS = re.compile(r"(?<![\w.])-1(?:\.0+)?(?![\w.])|\bnan\b|\bNone\b|\binf\b|"
                       r"unknown (km|s|seconds|x)\b", re.IGNORECASE)


@pytest.fixture
def cases(tmp_path: Path) -> Iterator[CaseStore]:
    s = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    yield s
    s.dispose()


def _story(cases: CaseStore, case_id: int) -> list[str]:
    case = cases.get(case_id)
    return narrative(case, transactions_of(case))


def test_multi_country_says_the_card_the_countries_the_time_and_the_total(cases: CaseStore):
    rec = alert("cu1", "card_ghijklmnopabcdef", 4)
    story = _story(cases, cases.add_alert(rec).case_id)
    total = sum(e["amount"] for e in rec["evidence"])
    assert story == [
        "Card card_ghijk… paid in 4 countries (DE, ES, FR, IT) within 3 minutes: "
        f"4 payments totalling {total:,.2f} (currency not recorded)."]


def test_velocity_and_a_declined_decision_and_the_whole(cases: CaseStore):
    rec = alert("cu2", "card_kl", 6, rule="velocity")
    dec = decision("cu2", "card_kl", "txn-9f8e7d6c5b4a", at=T0 + timedelta(minutes=7))
    cases.add_alert(rec)
    case_id = cases.add_decision(dec).case_id
    story = _story(cases, case_id)
    assert story[0].startswith("Card card_kl made 6 payments within 5 minutes totalling ")
    assert story[1] == (
        "Payment txn-9f8e7d… of 950.00 EUR in IT was declined with fraud score 0.97, mainly "
        "because the card had 6 payments in the last hour and card km from last was "
        "1,054.70; rule hit: "
        "velocity_decline: more than 5 payments in 10 minutes.")
    assert story[2].startswith("In all, 7 transactions in 6 countries on 2026-12-07 between "
                               "09:00 UTC and 09:07 UTC totalling ")
    assert "950.00 EUR" in story[2]


def test_sentinels_and_unknowns_are_said_in_words_or_left_out(cases: CaseStore):
    dec = decision("cu3", "card_mn", "t-sentinel", score=0.93)
    dec["reasons"] = [
        {"feature": "km_from_home", "value": -1.0, "contribution": 0.9,
         "text": "the payment is -1 km from the customer's home"},
        {"feature": "amount_to_avg_30d", "value": 7.5, "contribution": 0.5,
         "text": "the amount is 7.5x the customer's 30-day average"},
        {"feature": "seconds_since_last_txn", "value": None, "contribution": 0.2,
         "text": "seconds_since_last_txn is unknown"}]
    dec["explanation"] = ("Declined: fraud score 0.930 is above the decline threshold 0.900, "
                          "mainly because the payment is -1 km from the customer's home")
    dec["rules"] = []
    dec["transaction"]["currency"] = None
    story = _story(cases, cases.add_decision(dec).case_id)
    text = " ".join(story)
    assert not SENTINELS.search(text), text
    assert story == ["Payment t-sentinel of 950.00 (currency not recorded) in IT was declined "
                     "with fraud score 0.93, mainly because the amount was 7.5 times the "
                     "customer's 30-day average."]


def test_a_decision_without_a_score_or_a_known_amount(cases: CaseStore):
    dec = decision("cu4", "card_op", "t-degraded", score=0.5, action="challenge")
    dec.update(score=None, reasons=[], model_version=None)
    dec["transaction"].update(amount=float("nan"), country=None)
    story = _story(cases, cases.add_decision(dec).case_id)
    assert story == ["Payment t-degraded was challenged by the rules alone (no model score), "
                     "rule hit: velocity_decline: more than 5 payments in 10 minutes."]


def test_a_closed_case_says_its_outcome_and_the_words_are_the_same_each_time(cases: CaseStore):
    case_id = cases.add_alert(alert("cu5", "card_qr", 5)).case_id
    summary = cases.close(case_id, "confirmed_fraud", version=cases.get(case_id).version,
                          actor="ana")
    assert summary.closed_at is not None
    story = _story(cases, case_id)
    assert story[-1] == f"The case was closed as confirmed fraud on {summary.closed_at:%Y-%m-%d}."
    assert story == _story(cases, case_id)


@pytest.mark.parametrize(("feature", "value", "said"), [
    ("km_from_home", -1.0, "unknown"), ("km_from_home", 1234.4, "1,234 km"),
    ("km_from_last_txn", -1, "no previous payment"),
    ("seconds_since_last_txn", -1.0, "no previous payment"),
    ("seconds_since_last_txn", 42.0, "42 s"), ("seconds_since_last_txn", 600.0, "10 minutes"),
    ("amount_to_avg_30d", -1.0, "unknown"), ("amount_to_avg_30d", 4.24, "4.2×"),
    ("txn_hour_of_day", 3.0, "03:00 UTC"), ("txn_is_night", 1.0, "yes"),
    ("txn_amount", float("nan"), "unknown"), ("txn_amount", None, "unknown"),
    ("txn_amount", 12.5, "12.50"), ("anything", "text", "unknown"), ("anything", True, "unknown"),
])
def test_feature_values_in_words(feature: str, value: object, said: str):
    assert feature_value(feature, value) == said


def test_a_phrase_for_an_unknown_value_is_left_out():
    assert feature_phrase("km_from_home", -1.0) is None
    assert feature_phrase("txn_amount", float("nan")) is None
    assert feature_phrase("km_from_home", 800.0) == (
        "the payment was 800 km from the customer's home")


@pytest.mark.parametrize(("feature", "value", "said"), [
    ("card_txn_count_10m", 5.0, "the card had 5 payments in the last 10 minutes"),
    ("customer_amount_sum_24h", 1234.5,
     "the customer's payments in the last 24 hours came to 1,234.50"),
    ("card_distinct_country_1h", 3.0, "the card was used in 3 countries in the last hour"),
    ("terminal_fraud_risk_7d", 0.125, "the terminal's fraud risk over the last 7 days was 0.12"),
    ("customer_avg_amount_1d", 20.0, "the customer's average payment in the last day was 20.00"),
    ("card_last_lat", 4.5, "card last lat was 4.50"),
])
def test_windowed_aggregates_in_words(feature: str, value: float, said: str):
    assert feature_phrase(feature, value) == said


@pytest.mark.parametrize(("text", "kept"), [
    ("Declined: fraud score 0.970 is above the decline threshold 0.900.", True),
    ("the card was used 1.5 km away; score -1.5 below", True),
    ("mainly because the payment is -1 km from the customer's home", False),
    ("amount to avg 30d is -1.00", False), ("x is nan", False), ("x is None", False),
    ("", False), (None, False), (3, False),
])
def test_a_recorded_explanation_is_repeated_only_without_sentinels(text: object, kept: bool):
    assert (clean_explanation(text) is not None) is kept
