"""The report's SQL aggregates against an independent count, on SQLite, PostgreSQL and
MariaDB: a few hundred cases made through CaseStore's public API (intake, escalate, close,
reopen), then each figure recomputed in Python from the cases read back one by one."""

from __future__ import annotations

import random
import statistics
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest

from cases.report import BANDS, MODEL_SCORE, Share, report
from cases.store import CaseStore
from cases.views import CaseView
from tests.cases.conftest import BACKENDS, new_database
from tests.console.records import alert, decision

pytestmark = pytest.mark.integration
CASES = 240
DAYS = 30


@pytest.fixture(params=BACKENDS)
def cases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CaseStore]:
    for url in new_database(request.param, tmp_path):
        s = CaseStore(url, busy_timeout_ms=10_000)
        yield s
        s.dispose()


def _band(score: float | None) -> str:
    if score is None:
        return BANDS[4]
    return BANDS[0] if score >= 0.9 else BANDS[1] if score >= 0.8 else \
        BANDS[2] if score >= 0.5 else BANDS[3]


def _populate(store: CaseStore, now: datetime) -> list[int]:
    """CASES cases opened over the last 45 days: alerts of two rules, decisions with and
    without a rule and across the score bands; then escalated, closed with each outcome,
    reopened or left open."""
    rng = random.Random(31)
    ids = []
    for i in range(CASES):
        customer, card = f"cu{i}", f"card_{i}"
        opened = now - timedelta(days=rng.uniform(0, 45), minutes=5)
        kind = i % 4
        if kind in (0, 1):
            rule = "multi_country" if kind == 0 else "velocity"
            case_id = store.add_alert(alert(customer, card, 3, rule=rule, tag=f"r{i}"),
                                      now=opened).case_id
            if i % 8 == 0:  # the same rule again: the case counts once under it
                store.add_alert(alert(customer, card, 3, rule=rule, tag=f"s{i}"), now=opened)
        if kind in (1, 2, 3):
            score = rng.choice([None, 0.2, 0.5, 0.79, 0.8, 0.85, 0.9, 0.99])
            dec = decision(customer, card, f"t{i}", score=score or 0.5)
            dec["score"] = score
            if kind == 3:
                dec["rules"] = []  # flagged by its score alone
            case_id = store.add_decision(dec, now=opened + timedelta(minutes=1)).case_id
        ids.append(case_id)
        version = store.get(case_id).version
        fate = rng.random()
        if fate < 0.15:
            store.escalate(case_id, version=version, actor="ana")
        elif fate < 0.8:
            outcome = rng.choice(["confirmed_fraud", "confirmed_fraud", "false_positive",
                                  "needs_more_information"])
            if rng.random() < 0.3:
                version = store.escalate(case_id, version=version, actor="ana").version
            version = store.close(case_id, outcome, version=version, actor="ana").version
            if rng.random() < 0.05:
                store.reopen(case_id, version=version, actor="ana")
    return ids


def _expected(views: list[CaseView], now: datetime) -> dict[str, object]:
    first = now.date() - timedelta(days=DAYS - 1)
    start = datetime.combine(first, time(0), tzinfo=UTC)
    closed = [c for c in views if c.status == "closed" and c.closed_at is not None
              and c.closed_at >= start]
    per_day = Counter(c.opened_at.date() for c in views if c.opened_at >= start)
    rules: dict[str, list[int]] = {}
    bands: dict[str, list[int]] = {b: [0, 0] for b in BANDS}
    for c in closed:
        confirmed = c.outcome == "confirmed_fraud"
        for rule in {a.rule or MODEL_SCORE for a in c.alerts}:
            counts = rules.setdefault(rule, [0, 0])
            counts[0] += 1
            counts[1] += confirmed
        bands[_band(c.max_score)][0] += 1
        bands[_band(c.max_score)][1] += confirmed
    hours = [(c.closed_at - c.opened_at).total_seconds() / 3600 for c in closed
             if c.closed_at is not None]
    return {
        "open": sum(c.status == "open" for c in views),
        "escalated": sum(c.status == "escalated" for c in views),
        "closed": len(closed),
        "per_day": [(first + timedelta(days=i), per_day.get(first + timedelta(days=i), 0))
                    for i in range(DAYS)],
        "median": statistics.median(hours) if hours else None,
        "rules": {r: tuple(v) for r, v in rules.items()},
        "bands": [Share(b, *bands[b]) for b in BANDS],
    }


def test_the_report_matches_an_independent_count(cases: CaseStore):
    now = datetime.now(UTC)
    ids = _populate(cases, now)
    views = [cases.get(i) for i in ids]
    now = datetime.now(UTC)  # after the last close: every closing is in the window
    got = report(cases.engine, now=now, days=DAYS)
    want = _expected(views, now)

    assert got.open_cases == want["open"] and got.escalated == want["escalated"]
    assert got.closed == want["closed"]
    assert got.open_cases > 0 and got.escalated > 0 and got.closed > 100
    assert got.per_day == want["per_day"]
    assert sum(n for _, n in got.per_day) < CASES  # the cases opened before the window: out
    assert got.median_hours_to_close == pytest.approx(want["median"], abs=1e-3)
    assert {s.name: (s.closed, s.confirmed) for s in got.by_rule} == want["rules"]
    assert {"multi_country", "velocity", "velocity_decline", MODEL_SCORE} <= {
        s.name for s in got.by_rule}
    assert [s.closed for s in got.by_rule] == sorted((s.closed for s in got.by_rule),
                                                     reverse=True)
    assert got.by_band == want["bands"]
    assert all(s.closed for s in got.by_band)  # every band has cases: each was counted


def test_an_empty_store_gives_zeros_every_day_and_no_median(cases: CaseStore):
    now = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
    got = report(cases.engine, now=now, days=7)
    assert (got.open_cases, got.escalated, got.closed) == (0, 0, 0)
    assert got.per_day == [(date(2026, 12, d), 0) for d in range(1, 8)]
    assert got.median_hours_to_close is None and got.by_rule == []
    assert got.by_band == [Share(b, 0, 0) for b in BANDS]
    assert all(s.rate is None for s in got.by_band)


def test_a_share_rate_and_the_arguments_checked():
    assert Share("x", 4, 1).rate == 0.25 and Share("x", 0, 0).rate is None
    with pytest.raises(ValueError, match="at least one day"):
        report(None, now=datetime.now(UTC), days=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone"):
        report(None, now=datetime(2026, 1, 1), days=1)  # type: ignore[arg-type]
