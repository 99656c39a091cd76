"""What the case page shows, gathered for its template: the evidence transactions, the
decisions as made (with their SHAP bars and feature vectors), the narrative, the timeline of
the customer's and card's transactions (the case's evidence and, when Redis answers, the
customer's recent list), the map, the customer's past cases, notes, history and actions."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from markupsafe import Markup
from redis.exceptions import RedisError

from cases.views import AlertView, CaseSummary, CaseView
from kestrel.errors import ServiceUnavailable
from kestrel.redis_keys import recent_key
from serving.console.charts import shap_bars
from serving.console.evidence import Txn, map_points, transactions_of
from serving.console.geo import map_svg
from serving.console.narrative import narrative
from serving.runtime import Runtime

log = logging.getLogger("kestrel.console")
RECENT_SHOWN = 20


@dataclass(frozen=True)
class DecisionPanel:
    """One decision of the case as it was made."""

    txn_id: str
    score: float | None
    action: str | None
    explanation: str | None
    model_version: str | None
    rules: tuple[str, ...]
    chart: Markup
    features: tuple[tuple[str, Any], ...]
    degraded: bool


@dataclass(frozen=True)
class Moment:
    """A line of the timeline: an evidence transaction or a recent one from Redis."""

    txn_id: str
    at: datetime | None
    amount: float | None
    currency: str | None
    country: str | None
    terminal_id: str | None
    card_id: str | None
    source: str  # "evidence (alert: velocity)", "evidence (decision)", "recent"
    flagged: bool


def decisions_of(case: CaseView) -> list[DecisionPanel]:
    panels = []
    for alert in case.alerts:
        if alert.kind != "decision":
            continue
        made: dict[str, Any] = dict(alert.decision or {})
        reasons = [r for r in made.get("reasons") or [] if isinstance(r, dict)]
        rules = tuple(str(r.get("rule")) for r in made.get("rules") or []
                      if isinstance(r, dict) and r.get("rule"))
        features = tuple(sorted((alert.features or {}).items()))
        panels.append(DecisionPanel(
            alert.key, alert.score, alert.action, made.get("explanation"),
            alert.model_version, rules, shap_bars(reasons), features,
            bool(made.get("degraded"))))
    return panels


def recent_of(runtime: Runtime, customer_id: str) -> list[dict[str, Any]] | None:
    """The customer's recent transactions from Redis (newest first), or None when Redis
    does not answer (the page says the list is unavailable)."""
    try:
        raw: Any = runtime.redis_guard.call("console", runtime.redis.lrange,
                                            recent_key(customer_id), 0, RECENT_SHOWN - 1)
    except (RedisError, ServiceUnavailable) as exc:
        log.info("recent transactions unavailable: %s", type(exc).__name__)
        return None
    out = []
    for item in raw:
        try:
            doc = orjson.loads(item)
        except orjson.JSONDecodeError:
            continue  # not an entry the stream writes: not shown
        if isinstance(doc, dict):
            out.append(doc)
    return out


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def timeline(txns: list[Txn], recent: list[dict[str, Any]] | None) -> list[Moment]:
    """Evidence and recent transactions, once per txn_id (evidence wins), newest first."""
    moments: dict[str, Moment] = {}
    for t in txns:
        moments[t.txn_id] = Moment(t.txn_id, t.event_time, t.amount, t.currency, t.country,
                                   t.terminal_id, t.card_id, _source(t.source), True)
    for r in recent or []:
        txn_id = str(r.get("txn_id") or "")
        if not txn_id or txn_id in moments:
            continue
        moments[txn_id] = Moment(
            txn_id, _time(r.get("event_time")), _number(r.get("amount")),
            _str(r.get("currency")), _str(r.get("country")), _str(r.get("terminal_id")),
            _str(r.get("card_id")), "recent", False)
    far_past = datetime.min.replace(tzinfo=UTC)
    return sorted(moments.values(), key=lambda m: m.at or far_past, reverse=True)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _source(source: str) -> str:
    kind, _, rule = source.partition(":")
    return f"evidence (alert: {rule})" if kind == "alert" and rule else f"evidence ({kind})"


def map_of(txns: list[Txn]) -> Markup | None:
    points = map_points(txns)
    return map_svg(points) if points else None


def labels_of(case: CaseView) -> dict[str, bool]:
    """Each evidence transaction's latest label in this case (from the action log)."""
    labels: dict[str, bool] = {}
    for action in case.actions:
        if action.action == "label" and "txn_id" in action.detail:
            labels[str(action.detail["txn_id"])] = bool(action.detail.get("is_fraud"))
    return labels


def context(runtime: Runtime, case: CaseView,
            past: tuple[CaseSummary, ...]) -> dict[str, Any]:
    """Everything case.html shows."""
    txns = transactions_of(case)
    recent = recent_of(runtime, case.customer_id)
    alerts: list[AlertView] = [a for a in case.alerts if a.kind == "alert"]
    return {
        "case": case, "txns": txns, "alerts": alerts, "decisions": decisions_of(case),
        "narrative": narrative(case, txns), "timeline": timeline(txns, recent),
        "recent_available": recent is not None, "map": map_of(txns),
        "past": [c for c in past if c.id != case.id], "labels": labels_of(case),
        "cards": sorted({a.card_id for a in case.alerts if a.card_id}),
    }
