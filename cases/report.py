"""The console's report: how the queue is doing, from SQL aggregates over the case store.

:func:`report` answers, at ``now`` and over the last ``days`` days (from midnight UTC of the
first of them):

- ``open_cases`` and ``escalated``: cases in those states now (whenever opened);
- ``closed``: cases closed in the window;
- ``per_day``: cases opened per UTC day of the window, days without any included;
- ``median_hours_to_close``: the median time from opening to closing of the cases closed in
  the window (None when none was);
- ``by_rule`` and ``by_band``: per rule (of the case's alerts and decisions; a decision
  flagged by its score alone counts under ``MODEL_SCORE``) and per score band of the case's
  highest score (``BANDS``, always all five), how many cases closed in the window and how
  many of them as confirmed fraud. A case with two rules counts under both.

Every figure is a GROUP BY or an ORDER BY … LIMIT in the database: nothing loops over the
cases in Python, so a report over 100,000 cases stays a few queries (figures in
docs/console-content.md). The same SQL runs on SQLite, PostgreSQL and MySQL-protocol stores;
only the duration of a case is written per dialect.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Engine, and_, case, func, literal, literal_column, select
from sqlalchemy.sql.elements import ColumnElement

from cases.models import Case, CaseAlert

BANDS = ("≥ 0.9", "0.8–0.9", "0.5–0.8", "< 0.5", "no score")
MODEL_SCORE = "model score"  # the rule name of a decision that no rule flagged
CONFIRMED = "confirmed_fraud"
EDGE = 5e-7  # see _band


@dataclass(frozen=True)
class Share:
    """Of the cases closed in the window under one rule or band, how many were confirmed."""

    name: str
    closed: int
    confirmed: int

    @property
    def rate(self) -> float | None:
        """The share confirmed as fraud; None when no case closed."""
        return self.confirmed / self.closed if self.closed else None


@dataclass(frozen=True)
class Report:
    open_cases: int
    escalated: int
    closed: int
    per_day: list[tuple[date, int]]
    median_hours_to_close: float | None
    by_rule: list[Share]
    by_band: list[Share]


def report(engine: Engine, *, now: datetime, days: int = 30) -> Report:
    """The report at ``now`` over the last ``days`` days (see the module doc)."""
    if days < 1:
        raise ValueError(f"a report covers at least one day, not {days}")
    if now.tzinfo is None:
        raise ValueError("give `now` with its timezone (UTC): the case store keeps UTC")
    first = now.astimezone(UTC).date() - timedelta(days=days - 1)
    start = datetime.combine(first, time(0), tzinfo=UTC)
    closed_in_window = and_(Case.status == "closed", Case.closed_at >= start)
    with engine.connect() as conn:
        states = dict(conn.execute(select(Case.status, func.count()).where(
            Case.status.in_(("open", "escalated"))).group_by(Case.status)).tuples().all())
        day = func.date(Case.opened_at).label("day")
        opened = {_day(d): int(n) for d, n in conn.execute(
            select(day, func.count()).where(Case.opened_at >= start).group_by(day))}
        confirmed = case((Case.outcome == CONFIRMED, 1), else_=0)
        band = _band().label("band")
        bands = {str(name): (int(n), int(c or 0)) for name, n, c in conn.execute(
            select(band, func.count(), func.sum(confirmed))
            .where(closed_in_window).group_by(band))}
        closed = sum(n for n, _ in bands.values())
        median = _median(conn, closed_in_window, closed)
        # each (case, rule) once, however many alerts of that rule the case holds
        pairs = select(Case.id, func.coalesce(CaseAlert.rule, literal(MODEL_SCORE))
                       .label("rule"), confirmed.label("confirmed")).distinct() \
            .join(CaseAlert, CaseAlert.case_id == Case.id).where(closed_in_window).subquery()
        by_rule = [Share(str(name), int(n), int(c or 0)) for name, n, c in conn.execute(
            select(pairs.c.rule, func.count(), func.sum(pairs.c.confirmed))
            .group_by(pairs.c.rule))]
    return Report(
        open_cases=int(states.get("open", 0)), escalated=int(states.get("escalated", 0)),
        closed=int(closed),
        per_day=[(d, opened.get(d, 0)) for d in (first + timedelta(days=i)
                                                 for i in range(days))],
        median_hours_to_close=median,
        by_rule=sorted(by_rule, key=lambda s: (-s.closed, s.name)),
        by_band=[Share(b, *bands.get(b, (0, 0))) for b in BANDS])


def _band() -> ColumnElement[Any]:
    """The band's name. Its edges are compared with a margin of half a score's last decimal
    (scores carry 6, serving/decisions.py rounds them): a MySQL/MariaDB FLOAT keeps single
    precision, where 0.9 is stored as 0.89999998 and would fall a band too low."""
    score = Case.max_score
    return case((score >= 0.9 - EDGE, literal(BANDS[0])), (score >= 0.8 - EDGE, literal(BANDS[1])),
                (score >= 0.5 - EDGE, literal(BANDS[2])),
                (score.is_not(None), literal(BANDS[3])), else_=literal(BANDS[4]))


def _hours(dialect: str) -> ColumnElement[Any]:
    """Hours from a case's opening to its closing, in the dialect's date arithmetic."""
    if dialect == "sqlite":
        return (func.julianday(Case.closed_at) - func.julianday(Case.opened_at)) * 24.0
    if dialect == "postgresql":
        return func.extract("epoch", Case.closed_at - Case.opened_at) / 3600.0
    if dialect in ("mysql", "mariadb"):
        return func.timestampdiff(literal_column("MICROSECOND"), Case.opened_at,
                                  Case.closed_at) / 3_600_000_000.0
    raise ValueError(f"no duration arithmetic for a {dialect!r} database; the case store runs "
                     "on SQLite, PostgreSQL or a MySQL-protocol store")


def _median(conn: Any, where: ColumnElement[bool], n: int) -> float | None:
    """The median of the closed cases' hours: the middle one or two by ORDER BY … LIMIT."""
    if n == 0:
        return None
    hours = _hours(conn.dialect.name).label("hours")
    middle = [float(h) for h in conn.scalars(select(hours).where(where).order_by(hours)
                                             .offset((n - 1) // 2).limit(2 - n % 2))]
    return sum(middle) / len(middle)


def _day(value: Any) -> date:
    """``date(opened_at)`` as the database answers it: a date, or ISO text on SQLite."""
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
