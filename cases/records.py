"""What opens or joins a case, read from the record that flagged it: a stream rule's alert
(topic `alerts`, key ``alert_id``; pipelines/stream/rules.py) or a flagged decision (topic
`decisions`, key ``txn_id``). Every id is checked where it enters: an id that looks like a
card number (kestrel.pan) is refused with a typed error and never stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kestrel.contract import ID_MAX_LENGTH
from kestrel.errors import EventValidationError, FieldError
from kestrel.pan import pan_like


@dataclass(frozen=True)
class FlagFields:
    """What the case store knows of one alert or flagged decision: the intake's record
    (Flag) and what a case page reads back (views.AlertView) share these."""

    kind: str  # "alert" | "decision"
    key: str  # alert_id | txn_id
    customer_id: str
    card_id: str | None
    rule: str | None
    score: float | None
    action: str | None
    model_version: str | None
    decision: dict[str, Any] | None
    features: dict[str, Any] | None
    evidence_txn_ids: tuple[str, ...]
    event_time: datetime | None


@dataclass(frozen=True)
class Flag(FlagFields):
    """One alert or flagged decision as the intake reads it, with the record as received."""

    payload: dict[str, Any]


def flag_of_alert(alert: dict[str, Any]) -> Flag:
    """An `alerts` record (alert_id, customer_id, card_id, rule, evidence_txn_ids, …)."""
    check_strings("alert", alert)
    return Flag(
        kind="alert", key=check_id("alert_id", alert.get("alert_id")),
        customer_id=check_id("customer_id", alert.get("customer_id")),
        card_id=_optional_id("card_id", alert.get("card_id")),
        rule=_optional_text("rule", alert.get("rule")), score=None, action=None,
        model_version=None, decision=None, features=None,
        evidence_txn_ids=_ids("evidence_txn_ids", alert.get("evidence_txn_ids")),
        event_time=_time("last_event_time", alert.get("last_event_time")), payload=alert)


def flag_of_decision(decision: dict[str, Any]) -> Flag:
    """A flagged decision (txn_id, customer_id, score, action, reasons, explanation,
    model_version, features …); its one evidence transaction is itself."""
    check_strings("decision", decision)
    txn_id = check_id("txn_id", decision.get("txn_id"))
    rules = decision.get("rules") or []
    first_rule = rules[0].get("rule") if rules and isinstance(rules[0], dict) else None
    kept = {k: decision.get(k) for k in ("score", "action", "reasons", "rules",
                                           "explanation", "model_version", "degraded")}
    features = decision.get("features")
    return Flag(
        kind="decision", key=txn_id,
        customer_id=check_id("customer_id", decision.get("customer_id")),
        card_id=_optional_id("card_id", decision.get("card_id")),
        rule=_optional_text("rules[0].rule", first_rule),
        score=_optional_float("score", decision.get("score")),
        action=_optional_text("action", decision.get("action")),
        model_version=_optional_text("model_version", decision.get("model_version")),
        decision=kept, features=features if isinstance(features, dict) else None,
        evidence_txn_ids=(txn_id,),
        event_time=_time("event_time", decision.get("event_time")), payload=decision)


def check_id(name: str, value: Any) -> str:
    """A token id: a non-empty string of at most ID_MAX_LENGTH, never PAN-like."""
    if not isinstance(value, str) or not value.strip():
        _invalid(name, "required: a non-empty id")
    text = str(value).strip()
    if len(text) > ID_MAX_LENGTH:
        _invalid(name, f"longer than {ID_MAX_LENGTH} characters")
    if pan_like(text):
        _invalid(name, "looks like a card number (12 or more digits); the case store keeps "
                       "tokens only: send the card_id token")
    return text


def check_strings(name: str, value: Any) -> None:
    """Every string anywhere in a record as received (it is stored whole, as ``payload``):
    one that looks like a card number refuses the record. Numbers are not strings here: a
    float's many digits are no card number."""
    if isinstance(value, str):
        if pan_like(value):
            _invalid(name, "contains what looks like a card number (12 or more digits); the "
                           "case store keeps tokens only")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_strings(f"{name}.{key}", key)
            check_strings(f"{name}.{key}", item)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_strings(f"{name}[{i}]", item)


def check_text(name: str, value: str, limit: int) -> str:
    """Free text (a note, a reason, an analyst's name): bounded and never PAN-like."""
    if len(value) > limit:
        _invalid(name, f"longer than {limit} characters")
    if pan_like(value):
        _invalid(name, "contains what looks like a card number (12 or more digits); "
                       "remove it: the case store keeps no card numbers")
    return value


def _invalid(name: str, reason: str) -> Any:
    raise EventValidationError([FieldError(name, reason)])


def _optional_id(name: str, value: Any) -> str | None:
    return None if value is None else check_id(name, value)


def _optional_text(name: str, value: Any) -> str | None:
    return None if value is None else check_text(name, str(value), 64)


def _optional_float(name: str, value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return _invalid(name, "must be a number")


def _ids(name: str, values: Any) -> tuple[str, ...]:
    if not isinstance(values, list | tuple):
        return _invalid(name, "must be a list of txn ids")
    return tuple(dict.fromkeys(check_id(f"{name}[{i}]", v) for i, v in enumerate(values)))


def _time(name: str, value: Any) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return _invalid(name, "must be an ISO 8601 time")
    return when if when.tzinfo else when.replace(tzinfo=UTC)
