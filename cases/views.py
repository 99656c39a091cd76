"""What the case store answers with: plain frozen records, detached from any session, so a
caller (the console, the intake, an API route) never touches the ORM."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cases.models import Action, Case, CaseAlert, StatusChange
from cases.records import FlagFields


@dataclass(frozen=True)
class AlertView(FlagFields):
    """One of a case's alerts or flagged decisions, the record as received (``payload``:
    the alert's evidence details, the decision's transaction), and when it arrived."""

    received_at: datetime
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NoteView:
    author: str
    body: str
    created_at: datetime


@dataclass(frozen=True)
class StatusView:
    from_status: str | None
    to_status: str
    outcome: str | None
    actor: str
    at: datetime


@dataclass(frozen=True)
class ActionView:
    actor: str
    action: str
    detail: dict[str, Any]
    at: datetime


@dataclass(frozen=True)
class CaseSummary:
    """A case as the queue lists it."""

    id: int
    customer_id: str
    status: str
    outcome: str | None
    sar: bool
    assignee: str | None
    max_score: float | None
    rules: tuple[str, ...]
    opened_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    version: int  # send it back with an edit: a stale one is a Conflict


@dataclass(frozen=True)
class CaseView(CaseSummary):
    """A case with everything in it, for the case page."""

    alerts: tuple[AlertView, ...] = ()
    notes: tuple[NoteView, ...] = ()
    history: tuple[StatusView, ...] = ()
    actions: tuple[ActionView, ...] = ()

    @property
    def evidence_txn_ids(self) -> tuple[str, ...]:
        """Every evidence transaction of the case, once, in the order it came."""
        return tuple(dict.fromkeys(t for a in self.alerts for t in a.evidence_txn_ids))


@dataclass(frozen=True)
class QueuePage:
    """One page of the queue, the number of cases the filter matched, and per status the
    number of cases matching every filter but the status one."""

    cases: tuple[CaseSummary, ...]
    total: int
    by_status: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ListedAlert:
    """An alert or flagged decision as ``GET /v1/alerts`` and the insights list it: the
    alert's own fields, its evidence txn ids and the case it is in (with the case's status:
    an escalated case counts as open)."""

    alert_id: str  # the key: alert_id of an alert, txn_id of a decision
    kind: str
    customer_id: str
    card_id: str | None
    rule: str | None
    score: float | None
    action: str | None
    evidence_txn_ids: tuple[str, ...]
    event_time: datetime | None
    received_at: datetime
    case_id: int
    case_status: str

    def as_dict(self) -> dict[str, Any]:
        """The JSON document (times as datetimes: the caller's encoder writes them)."""
        return {"alert_id": self.alert_id, "kind": self.kind, "customer_id": self.customer_id,
                "card_id": self.card_id, "rule": self.rule, "score": self.score,
                "action": self.action, "evidence_txn_ids": list(self.evidence_txn_ids),
                "event_time": self.event_time, "received_at": self.received_at,
                "case_id": self.case_id, "case_status": self.case_status,
                "status": "closed" if self.case_status == "closed" else "open"}


@dataclass(frozen=True)
class AlertPage:
    """One page of alerts, newest first, and how many the filter matched."""

    alerts: tuple[ListedAlert, ...]
    total: int


@dataclass(frozen=True)
class Intake:
    """What an upsert did: ``created`` False means the alert or decision was already in."""

    case_id: int
    created: bool
    opened_case: bool


@dataclass(frozen=True)
class Pruned:
    cases: int
    outbox_rows: int


def summary_of(case: Case) -> CaseSummary:
    return CaseSummary(**_summary_fields(case))


def view_of(case: Case) -> CaseView:
    return CaseView(
        **_summary_fields(case),
        alerts=tuple(_alert(a) for a in case.alerts),
        notes=tuple(NoteView(n.author, n.body, n.created_at) for n in case.notes),
        history=tuple(_status(h) for h in case.history),
        actions=tuple(_action(a) for a in case.actions),
    )


def _summary_fields(case: Case) -> dict[str, Any]:
    return {
        "id": case.id, "customer_id": case.customer_id, "status": case.status,
        "outcome": case.outcome, "sar": case.sar, "assignee": case.assignee,
        "max_score": case.max_score, "rules": tuple(case.rules or ()),
        "opened_at": case.opened_at, "updated_at": case.updated_at,
        "closed_at": case.closed_at, "version": case.version,
    }


def _alert(a: CaseAlert) -> AlertView:
    return AlertView(
        kind=a.kind, key=a.key, customer_id=a.customer_id, card_id=a.card_id, rule=a.rule,
        score=a.score, action=a.action, model_version=a.model_version, decision=a.decision,
        features=a.features, evidence_txn_ids=tuple(e.txn_id for e in a.evidence),
        event_time=a.event_time, received_at=a.received_at, payload=dict(a.payload or {}))


def _status(h: StatusChange) -> StatusView:
    return StatusView(h.from_status, h.to_status, h.outcome, h.actor, h.at)


def _action(a: Action) -> ActionView:
    return ActionView(a.actor, a.action, dict(a.detail), a.at)
