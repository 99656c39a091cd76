"""A case told in plain language, from templates: one sentence per alert rule and per flagged
decision, deterministic (the same case gives the same words).

Values the stores keep as sentinels never reach a sentence: the request features give −1
when there is nothing to measure from (no previous payment of the card, no known home, no
30-day average; feature_repo/kestrel_repo/request_views.py) and a missing value is NaN or
None. Such a value is said in words ("no previous payment", "unknown") or its clause is left
out; the decision's own ``explanation`` is repeated only when it holds none of them
(:func:`clean_explanation`; it is built from serving.decisions.reason_text, which prints
"-1 km").

Times are written ``2026-12-07`` and ``20:10 UTC`` apart, never ``2026-12-07 20:10``: twelve
digits with only spaces and dashes between them read as a card number to the PAN scan.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from kestrel.feature_words import MISSING_WHEN_NEGATIVE, WHOLE_NUMBERS

if TYPE_CHECKING:
    from cases.views import AlertView, CaseView
    from serving.console.evidence import Txn

# request features whose negative value means "nothing to measure from"
NONE_IF_NEGATIVE = {name: m.value for name, m in MISSING_WHEN_NEGATIVE.items()}
ACTIONS = {"decline": "declined", "challenge": "challenged", "allow": "allowed"}
OUTCOME_WORDS = {"confirmed_fraud": "confirmed fraud", "false_positive": "a false positive",
                 "needs_more_information": "needing more information"}
# a sentinel as printed: -1 or -1.0 standing alone, nan, None, inf
_SENTINEL = re.compile(r"(?<![\w.])-1(?:\.0+)?(?![\w.])|\bnan\b|\bNone\b|\binf\b",
                       re.IGNORECASE)


# --- values ----------------------------------------------------------------------------------

def known(value: Any) -> float | None:
    """``value`` as a finite float, or None (None, NaN, ±inf, not a number, a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def number(value: float) -> str:
    """1,234 or 1,234.50: whole numbers without decimals."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def money(amount: float, currency: str | None) -> str:
    """1,234.00 EUR; an amount whose currency was not recorded says so."""
    return f"{amount:,.2f} {currency}" if currency else f"{amount:,.2f} (currency not recorded)"


def short(identifier: str, keep: int = 10) -> str:
    """An id shortened for a sentence (the full id stays in the tables and titles)."""
    return identifier if len(identifier) <= keep + 2 else identifier[:keep] + "…"


def day(when: datetime) -> str:
    return when.strftime("%Y-%m-%d")


def clock(when: datetime) -> str:
    return when.strftime("%H:%M UTC")


def stamp(when: datetime) -> str:
    """2026-12-07T20:10:05Z (the tables' form)."""
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s} second{'s' if s != 1 else ''}"
    if s < 3600:
        m = math.ceil(s / 60)
        return f"{m} minute{'s' if m != 1 else ''}"
    h = s / 3600
    return f"{h:.0f} hour{'s' if round(h) != 1 else ''}" if h < 48 else f"{h / 24:.0f} days"


def feature_value(feature: str, value: Any) -> str:
    """A feature's value for a label: in words when unknown, never a sentinel."""
    v = known(value)
    if v is None:
        return "unknown"
    if feature in NONE_IF_NEGATIVE and v < 0:
        return NONE_IF_NEGATIVE[feature]
    if feature.startswith("km_"):
        return f"{v:,.0f} km"
    if feature.startswith("seconds_"):
        return f"{v:.0f} s" if v < 60 else duration(v)
    if feature == "amount_to_avg_30d":
        return f"{v:.1f}×"
    if feature == "txn_hour_of_day":
        return f"{v:02.0f}:00 UTC"
    if feature.startswith("txn_is_"):
        return "yes" if v >= 0.5 else "no"
    if feature in WHOLE_NUMBERS:
        return f"{v:,.0f}"
    return f"{v:,.2f}"


def feature_phrase(feature: str, value: Any) -> str | None:
    """A clause saying why a feature raised the score, or None when its value is unknown."""
    v = known(value)
    if v is None or (feature in NONE_IF_NEGATIVE and v < 0):
        return None
    shown = feature_value(feature, v)
    phrases = {
        "txn_amount": f"the amount was {v:,.2f}",
        "amount_to_avg_30d": f"the amount was {v:.1f} times the customer's 30-day average",
        "km_from_home": f"the payment was {shown} from the customer's home",
        "km_from_last_txn": f"the card had been used {shown} away the time before",
        "seconds_since_last_txn": f"the card's previous payment was only {shown} earlier",
        "txn_hour_of_day": f"the payment was at {shown}",
        "txn_is_night": "it was a night-time payment" if v >= 0.5 else "it was a daytime payment",
        "txn_is_weekend": ("it was a weekend payment" if v >= 0.5
                           else "it was a weekday payment"),
    }
    return phrases.get(feature) or _window_phrase(feature, v, shown) or \
        f"{feature.replace('_', ' ')} was {shown}"


_WINDOW = re.compile(r"(card|customer|terminal)_(\w+?)_(\d+)([mhd])")
_UNITS = {"m": "minute", "h": "hour", "d": "day"}


def _window_phrase(feature: str, v: float, shown: str) -> str | None:
    """A clause for the windowed aggregates (``card_txn_count_1h``, ``terminal_fraud_risk_7d``
    …: kestrel/features and kestrel/windows)."""
    m = _WINDOW.fullmatch(feature)
    if m is None:
        return None
    who, what, n, unit = m[1], m[2], int(m[3]), _UNITS[m[4]]
    span = f"the last {unit}" if n == 1 else f"the last {n} {unit}s"
    said = {
        "txn_count": f"the {who} had {shown} payments in {span}",
        "amount_sum": f"the {who}'s payments in {span} came to {v:,.2f}",
        "amount_max": f"the {who}'s largest payment in {span} was {v:,.2f}",
        "amount_mean": f"the {who}'s average payment in {span} was {v:,.2f}",
        "avg_amount": f"the {who}'s average payment in {span} was {v:,.2f}",
        "distinct_country": f"the {who} was used in {shown} countries in {span}",
        "distinct_terminal": f"the {who} was used at {shown} terminals in {span}",
        "distinct_mcc": f"the {who} paid {shown} kinds of merchant in {span}",
        "night_txn_count": f"the {who} made {shown} night-time payments in {span}",
        "fraud_risk": f"the {who}'s fraud risk over {span} was {v:.2f}",
    }
    return said.get(what)


def clean_explanation(text: Any) -> str | None:
    """The decision's explanation as recorded, or None when it prints a sentinel (−1, NaN,
    None) or is not text: then say it from the reasons instead (:func:`decision_sentence`)."""
    if not isinstance(text, str) or not text.strip() or _SENTINEL.search(text):
        return None
    return text.strip()


# --- sentences -------------------------------------------------------------------------------

def narrative(case: CaseView, txns: Sequence[Txn]) -> list[str]:
    """The case in sentences: one per alert and flagged decision, in the order they came, and
    one for the whole when there are several."""
    by_id = {t.txn_id: t for t in txns}
    out = []
    for alert in case.alerts:
        evidence = [by_id[t] for t in alert.evidence_txn_ids if t in by_id]
        out.append(decision_sentence(alert, evidence[0] if evidence else None)
                   if alert.kind == "decision" else alert_sentence(alert, evidence))
    if len(case.alerts) > 1 and txns:
        out.append(overall_sentence(txns))
    if case.status == "closed" and case.closed_at is not None:
        outcome = OUTCOME_WORDS.get(case.outcome or "", "without an outcome")
        out.append(f"The case was closed as {outcome} on {day(case.closed_at)}.")
    elif case.status == "escalated":
        out.append("The case has been escalated.")
    return out


def alert_sentence(alert: AlertView, evidence: Sequence[Txn]) -> str:
    card = f"Card {short(alert.card_id)}" if alert.card_id else "A card of the customer"
    n = len(alert.evidence_txn_ids)
    payments = f"{n} payment{'s' if n != 1 else ''}"
    total = _totals(evidence, n)
    span = _span(alert, evidence)
    if alert.rule == "multi_country":
        countries = _countries(alert, evidence)
        where = (f"in {len(countries)} countries ({', '.join(countries)})" if countries
                 else "in several countries")
        return f"{card} paid {where}{span}: {payments}{total}."
    if alert.rule == "velocity":
        return f"{card} made {payments}{span}{total}."
    rule = alert.rule or "an unnamed rule"
    return f"Alert rule {rule} fired for {card[0].lower()}{card[1:]}: {payments}{span}{total}."


def decision_sentence(alert: AlertView, txn: Txn | None) -> str:
    decision = alert.decision or {}
    action = ACTIONS.get(alert.action or "", "flagged")
    what = f"Payment {short(alert.key)}"
    if txn is not None and txn.amount is not None:
        what += f" of {money(txn.amount, txn.currency)}"
    if txn is not None and txn.country:
        what += f" in {txn.country}"
    score = known(alert.score)
    if score is None:
        how = f"was {action} by the rules alone (no model score)"
    else:
        how = f"was {action} with fraud score {score:.2f}"
    clauses = [p for r in decision.get("reasons") or () if isinstance(r, dict)
               and (known(r.get("contribution")) or 0) > 0
               for p in [feature_phrase(str(r.get("feature")), r.get("value"))] if p][:2]
    rules = [r for r in decision.get("rules") or () if isinstance(r, dict) and r.get("text")]
    why = ""
    if clauses:
        why = f", mainly because {' and '.join(clauses)}"
    if rules:
        said = "; ".join(f"{r.get('rule')}: {r.get('text')}" for r in rules)
        why += f"{'; ' if clauses else ', '}rule{'s' if len(rules) > 1 else ''} hit: {said}"
    return f"{what} {how}{why}."


def overall_sentence(txns: Sequence[Txn]) -> str:
    countries = sorted({t.country for t in txns if t.country})
    n = len(txns)
    text = f"In all, {n} transaction{'s' if n != 1 else ''}"
    if countries:
        text += f" in {len(countries)} countr{'ies' if len(countries) != 1 else 'y'}"
    times = [t.event_time for t in txns if t.event_time is not None]
    if times:
        first, last = min(times), max(times)
        text += (f" on {day(first)} between {clock(first)} and {clock(last)}"
                 if day(first) == day(last) else f" between {day(first)} and {day(last)}")
    return text + _totals(txns, n) + "."


def _totals(txns: Sequence[Txn], n: int) -> str:
    sums: dict[str, float] = {}
    counted = 0
    for t in txns:
        if t.amount is not None:
            counted += 1
            key = t.currency or ""
            sums[key] = sums.get(key, 0.0) + t.amount
    if not sums:
        return ""
    text = " totalling " + " and ".join(money(v, k or None) for k, v in sorted(sums.items()))
    missing = n - counted
    if missing:
        text += f" (the amount of {missing} more is not recorded)"
    return text


def _countries(alert: AlertView, evidence: Sequence[Txn]) -> list[str]:
    listed = alert.payload.get("countries")
    if isinstance(listed, list) and all(isinstance(c, str) for c in listed) and listed:
        return sorted(set(listed))
    return sorted({t.country for t in evidence if t.country})


def _span(alert: AlertView, evidence: Sequence[Txn]) -> str:
    times = [t.event_time for t in evidence if t.event_time is not None]
    if len(times) >= 2:
        return f" within {duration(max((max(times) - min(times)).total_seconds(), 1))}"
    window = alert.payload.get("window")
    if isinstance(window, str) and re.fullmatch(r"\d+m", window):
        return f" within {duration(timedelta(minutes=int(window[:-1])).total_seconds())}"
    return ""
