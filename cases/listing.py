"""The case store's listings for the API: alerts with their case's status and evidence
(``GET /v1/alerts``, the insights' ``open_alerts``), and the case that holds an alert."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cases.models import Case, CaseAlert, Evidence
from cases.views import ListedAlert


def case_of_key(s: Session, key: str) -> int | None:
    """The case holding an alert (by alert_id), or else a flagged decision (by txn_id)."""
    for kind in ("alert", "decision"):
        case_id = s.scalar(select(CaseAlert.case_id).where(CaseAlert.kind == kind,
                                                           CaseAlert.key == key))
        if case_id is not None:
            return case_id
    return None


def listed(s: Session, where: Any, order: tuple[Any, ...], limit: int,
            offset: int = 0) -> tuple[ListedAlert, ...]:
    """A page of alerts (each with its case's id and status) and their evidence txn ids, in
    one query: the page is a derived table, the evidence left-joined to it, the page's
    order kept by a row number."""
    page = select(CaseAlert.id.label("row_id"), CaseAlert.key, CaseAlert.kind,
                  CaseAlert.customer_id, CaseAlert.card_id, CaseAlert.rule, CaseAlert.score,
                  CaseAlert.action, CaseAlert.event_time, CaseAlert.received_at,
                  Case.id.label("case_id"), Case.status.label("case_status"),
                  func.row_number().over(order_by=order).label("pos"),
                  ).join(Case, Case.id == CaseAlert.case_id).where(where).order_by(*order)
    sub = page.limit(limit).offset(offset).subquery()
    rows = s.execute(select(sub, Evidence.txn_id).outerjoin(
        Evidence, Evidence.alert_id == sub.c.row_id).order_by(sub.c.pos, Evidence.id))
    out: dict[int, list[Any]] = {}
    for row in rows:
        entry = out.get(row[0])
        if entry is None:
            out[row[0]] = entry = [*row[1:12], []]
        if row[-1] is not None:
            entry[-1].append(row[-1])
    return tuple(ListedAlert(alert_id=k, kind=kind, customer_id=c, card_id=card, rule=rule,
                             score=score, action=action, evidence_txn_ids=tuple(ev),
                             event_time=et, received_at=ra, case_id=cid, case_status=st)
                 for k, kind, c, card, rule, score, action, et, ra, cid, st, ev in out.values())
