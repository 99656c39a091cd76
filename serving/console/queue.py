"""The queue page's logic: its filters (read from the query string, each value checked), the
SLA per rule (``KESTREL_CASE_SLA_HOURS``) and each listed case's ageing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from cases.records import check_text
from cases.views import CaseSummary
from kestrel.errors import ConfigError, EventValidationError, FieldError

PAGE_SIZE = 25
STATUSES = ("open", "escalated", "closed", "all")
# score bands: label → (min inclusive, max exclusive); the report uses the same bands
BANDS: dict[str, tuple[float | None, float | None]] = {
    "≥ 0.9": (0.9, None), "0.8–0.9": (0.8, 0.9), "0.5–0.8": (0.5, 0.8), "< 0.5": (None, 0.5)}
AGES: dict[str, timedelta] = {"1h": timedelta(hours=1), "4h": timedelta(hours=4),
                              "24h": timedelta(hours=24), "7d": timedelta(days=7)}
AGE_WORDS = {"1h": "over 1 hour", "4h": "over 4 hours", "24h": "over 1 day",
             "7d": "over 7 days"}
DECISION_SLA = "decision"  # the SLA of a case no stream rule flagged
ANY_RULE = "*"


def parse_sla(text: str) -> dict[str, float]:
    """``multi_country=4,velocity=8,decision=24,*=24`` → hours per rule; ConfigError for a
    malformed value (it must name ``*``, the hours of every other rule)."""
    table: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        name, sep, hours = part.partition("=")
        name = name.strip()
        try:
            value = float(hours) if sep and name else -1.0
        except ValueError:
            value = -1.0
        if not value > 0 or name in table:
            raise ConfigError(
                f"KESTREL_CASE_SLA_HOURS: {part!r} is not `rule=hours` with hours > 0 (or "
                "names a rule twice); give e.g. multi_country=4,velocity=8,decision=24,*=24")
        table[name] = value
    if ANY_RULE not in table:
        raise ConfigError("KESTREL_CASE_SLA_HOURS must give `*=hours` (the SLA of every rule "
                          "it does not name), e.g. multi_country=4,decision=24,*=24")
    return table


def sla_hours(case: CaseSummary, table: Mapping[str, float]) -> float:
    """The shortest SLA among the case's rules that the table names; a case without a stream
    rule takes ``decision`` (else ``*``), any other case ``*``."""
    named = [table[r] for r in case.rules if r in table and r != ANY_RULE]
    if named:
        return min(named)
    if not case.rules:
        return table.get(DECISION_SLA, table[ANY_RULE])
    return table[ANY_RULE]


@dataclass(frozen=True)
class Row:
    """A listed case with its ageing."""

    case: CaseSummary
    age: timedelta
    sla_hours: float
    overdue: bool
    due_in: timedelta  # negative: overdue by that much

    @property
    def rules(self) -> str:
        return ", ".join(self.case.rules) or "decision"


def rows_of(cases: tuple[CaseSummary, ...], table: Mapping[str, float],
            now: datetime) -> list[Row]:
    rows = []
    for case in cases:
        age = now - case.opened_at
        hours = sla_hours(case, table)
        due_in = timedelta(hours=hours) - age
        overdue = case.status != "closed" and due_in < timedelta(0)
        rows.append(Row(case, age, hours, overdue, due_in))
    return rows


@dataclass(frozen=True)
class Filters:
    """The queue's filters as the page's form sends them (empty: no filter)."""

    status: str = "open"
    rule: str = ""
    band: str = ""
    assignee: str = ""  # "", "me", "unassigned" or a name
    age: str = ""
    page: int = 1

    @classmethod
    def of(cls, query: Mapping[str, str]) -> Filters:
        problems: list[FieldError] = []
        status = query.get("status", "open") or "open"
        if status not in STATUSES:
            problems.append(FieldError("status", f"one of {', '.join(STATUSES)}"))
        band = query.get("band", "")
        if band and band not in BANDS:
            problems.append(FieldError("band", f"one of {', '.join(BANDS)}"))
        age = query.get("age", "")
        if age and age not in AGES:
            problems.append(FieldError("age", f"one of {', '.join(AGES)}"))
        rule = query.get("rule", "").strip()
        assignee = query.get("assignee", "").strip()
        try:
            check_text("rule", rule, 64)
            check_text("assignee", assignee, 256)
        except EventValidationError as exc:
            problems += exc.errors
        raw_page = query.get("page", "1") or "1"
        page = int(raw_page) if raw_page.isdigit() and 0 < int(raw_page) <= 100_000 else 0
        if not page:
            problems.append(FieldError("page", "a page number from 1"))
        if problems:
            raise EventValidationError(problems)
        return cls(status, rule, band, assignee, age, page)

    def store_query(self, me: str, now: datetime) -> dict[str, Any]:
        """The keyword arguments of CaseStore.queue for these filters."""
        low, high = BANDS[self.band] if self.band else (None, None)
        return {
            "status": None if self.status == "all" else self.status,
            "rule": self.rule or None, "min_score": low, "max_score": high,
            "assignee": me if self.assignee == "me" else (
                None if self.assignee in ("", "unassigned") else self.assignee),
            "unassigned": self.assignee == "unassigned",
            "older_than": AGES[self.age] if self.age else None, "now": now,
            "limit": PAGE_SIZE, "offset": (self.page - 1) * PAGE_SIZE,
        }

    def link(self, **changes: Any) -> str:
        """The queue's URL with these filters, some changed (e.g. ``status=...``, ``page=``)."""
        values = {"status": self.status, "rule": self.rule, "band": self.band,
                  "assignee": self.assignee, "age": self.age, "page": self.page}
        values.update(changes)
        defaults = {"status": "open", "page": 1}  # left out of the URL
        kept = {k: v for k, v in values.items()
                if v not in ("", None) and defaults.get(k) != v}
        return "/console/" + ("?" + urlencode(kept) if kept else "")
