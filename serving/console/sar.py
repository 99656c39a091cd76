"""A case as a suspicious-activity report draft: Markdown (:func:`sar_markdown`) and the
context of the printable page ``templates/sar.html`` (:func:`sar_context`), built from one
set of rows so the two say the same.

Sections: a header (case, customer, card tokens, status and outcome, dates, "DRAFT"), the
narrative (serving/console/narrative.py), a timeline (transactions, alerts and decisions
received, status changes, notes, analyst actions), the evidence table, the decisions with
their reasons, the notes and the action history.

No card number: cards appear as their tokens, every id was checked by the case store where
it came in, and each free text (notes, rule texts, action details, payload text) passes
through kestrel.pan.redact_pans here as well. In Markdown, free text is escaped (``<`` and
``&`` as entities, ``|`` in tables) so a note renders as the text it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from cases.views import ActionView, AlertView, CaseView
from kestrel.pan import pan_like, redact_pans
from serving.console.evidence import Txn
from serving.console.narrative import (
    ACTIONS,
    OUTCOME_WORDS,
    clean_explanation,
    decision_sentence,
    feature_value,
    known,
    money,
    narrative,
    stamp,
)

STATUS_WORDS = {"open": "open", "escalated": "escalated", "closed": "closed"}


def sar_context(case: CaseView, txns: Sequence[Txn], *, generated_by: str,
                now: datetime) -> dict[str, Any]:
    """What ``templates/sar.html`` shows (every value a display string)."""
    cards = sorted({a.card_id for a in case.alerts if a.card_id}
                   | {t.card_id for t in txns if t.card_id})
    status = STATUS_WORDS.get(case.status, case.status)
    if case.outcome:
        status += f" — {OUTCOME_WORDS.get(case.outcome, case.outcome)}"
    header = [
        ("Case", str(case.id)),
        ("Customer", case.customer_id),
        ("Card tokens", ", ".join(cards) or "none recorded"),
        ("Status", status),
        ("Opened", stamp(case.opened_at)),
        ("Closed", stamp(case.closed_at) if case.closed_at else "not closed"),
        ("Assignee", case.assignee or "unassigned"),
        ("Rules", ", ".join(case.rules) or "none"),
        ("Highest fraud score", f"{case.max_score:.2f}" if known(case.max_score) is not None
         else "no score"),
        ("Evidence transactions", str(len(txns))),
        ("Total amount", _total(txns)),
        ("Reported in a SAR", "yes" if case.sar else "not yet"),
    ]
    return {
        "title": f"Suspicious activity report — case {case.id} — DRAFT",
        "case_id": case.id,
        "generated_by": _safe(generated_by),
        "generated_at": stamp(now),
        "header": [(k, _safe(v)) for k, v in header],
        "narrative": [_safe(s) for s in narrative(case, txns)],
        "timeline": [(stamp(at), _safe(text)) for at, text in timeline(case, txns)],
        "evidence": [_evidence_row(t) for t in txns],
        "decisions": [_decision(case, a, txns) for a in case.alerts if a.kind == "decision"],
        "notes": [{"at": stamp(n.created_at), "author": _safe(n.author), "body": _safe(n.body)}
                  for n in case.notes],
        "actions": [{"at": stamp(a.at), "actor": _safe(a.actor), "action": a.action,
                     "detail": _safe(action_text(a))} for a in case.actions],
    }


def sar_markdown(case: CaseView, txns: Sequence[Txn], *, generated_by: str,
                 now: datetime) -> str:
    c = sar_context(case, txns, generated_by=generated_by, now=now)
    out = [f"# {c['title']}", "",
           f"_Generated {c['generated_at']} by {_md(c['generated_by'])} from the Kestrel "
           "case store. A draft for review: check every fact before filing._", "",
           "| | |", "|---|---|"]
    out += [f"| {k} | {_cell(v)} |" for k, v in c["header"]]
    out += ["", "## Narrative", ""]
    out += [_md(s) for s in c["narrative"]] or ["Nothing to tell: the case holds no alert."]
    out += ["", "## Timeline", ""]
    out += [f"- {at} — {_md(text)}" for at, text in c["timeline"]]
    out += ["", "## Evidence transactions", ""]
    if c["evidence"]:
        out += ["| Time | Transaction | Amount | Country | Terminal | Card | Source |",
                "|---|---|---|---|---|---|---|"]
        out += ["| " + " | ".join(_cell(row[k]) for k in
                                   ("time", "txn_id", "amount", "country", "terminal", "card",
                                    "source")) + " |" for row in c["evidence"]]
    else:
        out.append("No evidence transactions recorded.")
    out += ["", "## Decisions", ""]
    for d in c["decisions"]:
        out += [f"### Payment {_md(d['txn_id'])}", "", _md(d["sentence"]), "",
                f"- Action: {d['action']}; fraud score: {d['score']}; "
                f"model version: {_md(d['model_version'])}"]
        if d["explanation"]:
            out.append(f"- Explanation as recorded: {_md(d['explanation'])}")
        if d["reasons"]:
            out += ["", "| Feature | Value | Contribution |", "|---|---|---|"]
            out += [f"| {_cell(r['feature'])} | {_cell(r['value'])} | {r['contribution']} |"
                    for r in d["reasons"]]
            out.append("")  # a line right after a table would be read as one of its rows
        out += [f"- Rule {_md(r['rule'])} ({r['action']}): {_md(r['text'])}"
                for r in d["rules"]]
        out.append("")
    if not c["decisions"]:
        out += ["No model decision is part of this case.", ""]
    out += ["## Notes", ""]
    for n in c["notes"]:
        out += [f"**{_md(n['author'])}**, {n['at']}:", ""]
        out += [f"> {_md(line)}" for line in n["body"].splitlines() or [""]]
        out.append("")
    if not c["notes"]:
        out += ["No notes.", ""]
    out += ["## Action history", "", "| Time | Who | Action |", "|---|---|---|"]
    out += [f"| {a['at']} | {_cell(a['actor'])} | {_cell(a['detail'])} |" for a in c["actions"]]
    return "\n".join(out) + "\n"


def timeline(case: CaseView, txns: Sequence[Txn]) -> list[tuple[datetime, str]]:
    """What happened, oldest first: payments, records received, status changes, notes and
    analyst actions (the intake's and the status ones are said once, by the history)."""
    events: list[tuple[datetime, str]] = []
    for t in txns:
        if t.event_time is not None:
            amount = f" of {money(t.amount, t.currency)}" if t.amount is not None else ""
            where = f" in {t.country}" if t.country else ""
            events.append((t.event_time, f"Payment {t.txn_id}{amount}{where} "
                                         f"({_source(t.source)})"))
    for a in case.alerts:
        if a.kind == "decision":
            score = f", fraud score {a.score:.2f}" if known(a.score) is not None else ""
            events.append((a.received_at, f"Decision on payment {a.key} received: "
                                          f"{ACTIONS.get(a.action or '', 'flagged')}{score}"))
        else:
            n = len(a.evidence_txn_ids)
            events.append((a.received_at, f"Alert {a.rule or 'unnamed'} received for card "
                                          f"{a.card_id or 'not recorded'} ({n} payment"
                                          f"{'s' if n != 1 else ''})"))
    for h in case.history:
        events.append((h.at, f"{_status_change(h.from_status, h.to_status, h.outcome)} "
                             f"by {h.actor}"))
    for note in case.notes:
        events.append((note.created_at, f"Note by {note.author}"))
    for act in case.actions:
        if act.action in ("assign", "label", "sar"):
            events.append((act.at, f"{act.actor} {action_text(act)}"))
    return sorted(events, key=lambda e: e[0])


def action_text(a: ActionView) -> str:
    d = a.detail
    outcome = OUTCOME_WORDS.get(str(d.get("outcome")), str(d.get("outcome")))
    said = {
        "open": f"opened the case with {d.get('kind')} {d.get('key')}",
        "join": f"added {d.get('kind')} {d.get('key')} to the case",
        "assign": (f"assigned the case to {d['to']}" if d.get("to")
                   else "unassigned the case"),
        "note": "added a note",
        "escalate": "escalated the case",
        "close": f"closed the case as {outcome}",
        "reopen": "reopened the case",
        "sar": ("marked the case as reported in a SAR" if d.get("sar")
                else "removed the case's SAR mark"),
        "label": (f"labelled payment {d.get('txn_id')} "
                  f"{'fraud' if d.get('is_fraud') else 'legit'}"
                  + (f" (reason: {d['reason']})" if d.get("reason") else "")),
    }
    if a.action in said:
        return said[a.action]
    shown = ", ".join(f"{k} {v}" for k, v in sorted(d.items()) if v is not None)
    return f"{a.action}" + (f": {shown}" if shown else "")


def _status_change(before: str | None, to: str, outcome: str | None) -> str:
    if before is None:
        return "Case opened"
    if to == "closed":
        return f"Closed as {OUTCOME_WORDS.get(outcome or '', 'without an outcome')}"
    return {"escalated": "Escalated", "open": "Reopened"}.get(to, f"Status {to}")


def _decision(case: CaseView, alert: AlertView, txns: Sequence[Txn]) -> dict[str, Any]:
    decision = alert.decision or {}
    txn = next((t for t in txns if t.txn_id == alert.key), None)
    reasons = [r for r in decision.get("reasons") or () if isinstance(r, dict)]
    rules = [r for r in decision.get("rules") or () if isinstance(r, dict)]
    contribution = [known(r.get("contribution")) for r in reasons]
    return {
        "txn_id": alert.key,
        "sentence": _safe(decision_sentence(alert, txn)),
        "action": ACTIONS.get(alert.action or "", "flagged"),
        "score": f"{alert.score:.3f}" if known(alert.score) is not None else "none (rules alone)",
        "model_version": _safe(alert.model_version or "none"),
        "explanation": _safe(clean_explanation(decision.get("explanation")) or ""),
        "reasons": [{"feature": _safe(str(r.get("feature"))),
                     "value": _safe(feature_value(str(r.get("feature")), r.get("value"))),
                     "contribution": f"{c:+.3f}" if c is not None else "not recorded"}
                    for r, c in zip(reasons, contribution, strict=True)],
        "rules": [{"rule": _safe(str(r.get("rule"))), "action": str(r.get("action")),
                   "text": _safe(str(r.get("text") or ""))} for r in rules],
    }


def _evidence_row(t: Txn) -> dict[str, str]:
    return {
        "time": stamp(t.event_time) if t.event_time else "not recorded",
        "txn_id": t.txn_id,
        "amount": money(t.amount, t.currency) if t.amount is not None else "not recorded",
        "country": t.country or "not recorded",
        "terminal": _safe(t.terminal_id or "not recorded"),
        "card": t.card_id or "not recorded",
        "source": _source(t.source),
    }


def _source(source: str) -> str:
    return "flagged decision" if source == "decision" else \
        f"alert {source.removeprefix('alert:')}"


def _total(txns: Sequence[Txn]) -> str:
    sums: dict[str, float] = {}
    for t in txns:
        if t.amount is not None:
            sums[t.currency or ""] = sums.get(t.currency or "", 0.0) + t.amount
    return " and ".join(money(v, k or None) for k, v in sorted(sums.items())) or "not recorded"


def _safe(text: str) -> str:
    """Text with any card-number-like run redacted (it is never expected: a safety net)."""
    return redact_pans(text) if pan_like(text) else text


def _md(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cell(text: str) -> str:
    return _md(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")
