"""The suspicious-activity report draft: Markdown and the printable page hold the header,
narrative, timeline, evidence, decisions, notes and history; free text renders as text; no
card number, in any form, reaches either."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cases.store import CaseStore
from cases.views import CaseView
from kestrel.errors import EventValidationError
from kestrel.pan import canonical, pan_like
from serving.console.evidence import transactions_of
from serving.console.narrative import narrative
from serving.console.render import render_text
from serving.console.sar import sar_context, sar_markdown
from tests.console.records import alert, decision
from tests.security.pan_scan import PLANTED, forms

NOW = datetime(2026, 12, 8, 10, 30, tzinfo=UTC)
NOTE = "Customer called: <script>alert(1)</script> says | not me & card lost\nsecond line"


@pytest.fixture
def cases(tmp_path: Path) -> Iterator[CaseStore]:
    s = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    yield s
    s.dispose()


@pytest.fixture
def worked(cases: CaseStore) -> CaseView:
    """A case worked end to end: an alert and a decision in, assigned, a note, a label,
    closed as confirmed fraud, marked as reported."""
    rec = alert("cu1", "card_ghijklmnop", 5)
    case_id = cases.add_alert(rec).case_id
    cases.add_decision(decision("cu1", "card_ghijklmnop", "t-decl-1"))
    v = cases.get(case_id).version
    v = cases.assign(case_id, "ana", version=v, actor="ana").version
    v = cases.add_note(case_id, NOTE, version=v, actor="ana").version
    v = cases.label(case_id, rec["evidence_txn_ids"][0], True, "customer denies it",
                    version=v, actor="ana").version
    v = cases.close(case_id, "confirmed_fraud", version=v, actor="ana").version
    cases.mark_sar(case_id, version=v, actor="ana")
    return cases.get(case_id)


def test_the_markdown_holds_every_section(worked: CaseView):
    txns = transactions_of(worked)
    md = sar_markdown(worked, txns, generated_by="ana", now=NOW)
    assert md.startswith(f"# Suspicious activity report — case {worked.id} — DRAFT\n")
    headings = re.findall(r"^## (.+)$", md, re.MULTILINE)
    assert headings == ["Narrative", "Timeline", "Evidence transactions", "Decisions",
                        "Notes", "Action history"]
    assert "Generated 2026-12-08T10:30:00Z by ana" in md
    assert "| Card tokens | card_ghijklmnop |" in md
    assert "| Status | closed — confirmed fraud |" in md
    assert "| Reported in a SAR | yes |" in md
    for sentence in narrative(worked, txns):
        assert sentence in md
    for t in txns:  # the full ids, in the evidence table
        assert f"| {t.txn_id} |" in md
    assert "| 2026-12-07T09:00:00Z | " in md and "950.00 EUR" in md
    assert "| card_txn_count_1h | 6 | +1.210 |" in md
    assert "- Rule velocity_decline (decline): more than 5 payments in 10 minutes" in md
    timeline = md.split("## Timeline")[1].split("##")[0]
    stamps = re.findall(r"^- (\S+) — ", timeline, re.MULTILINE)
    assert stamps == sorted(stamps) and len(stamps) >= len(txns) + 5
    assert "ana labelled payment " in timeline and "Closed as confirmed fraud by ana" in timeline
    history = md.split("## Action history")[1]
    for said in ("assigned the case to ana", "added a note", "closed the case as confirmed "
                 "fraud", "marked the case as reported in a SAR", "customer denies it"):
        assert said in history


def test_free_text_is_escaped_in_markdown(worked: CaseView):
    md = sar_markdown(worked, transactions_of(worked), generated_by="<b>ana</b>", now=NOW)
    assert "<script>" not in md and "<b>" not in md
    assert "> Customer called: &lt;script&gt;alert(1)&lt;/script&gt; says | not me &amp; card" \
        in md
    assert "> second line" in md


def test_the_printable_page_holds_every_section_and_no_script(worked: CaseView):
    ctx = sar_context(worked, transactions_of(worked), generated_by="ana", now=NOW)
    html = render_text("sar.html", **ctx)
    assert html.lstrip().startswith("<!doctype html>")
    assert "<script" not in html.lower() and "@media print" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    for title in ("Narrative", "Timeline", "Evidence transactions", "Decisions", "Notes",
                  "Action history"):
        assert f"<h2>{title}</h2>" in html
    assert "DRAFT" in html and "card_ghijklmnop" in html
    for t in ctx["evidence"]:
        assert t["txn_id"] in html
    for sentence in ctx["narrative"]:
        assert str(sentence).replace("'", "&#39;") in html


def test_no_card_number_reaches_a_sar(cases: CaseStore):
    """The case store refuses a card number anywhere in a record (cases.records); a record
    stored before that check could still hold one in a payload field (a terminal id): the
    SAR redacts every form of it."""
    planted = []
    for i, digits in enumerate(PLANTED):
        for j, (name, form) in enumerate(forms(digits).items()):
            rec = alert("cu-pan", "card_pan", 1, tag=f"p{i}{j}")
            rec["evidence"][0]["terminal_id"] = f"term {form}"
            rec["evidence"][0]["country"] = form if name == "embedded" else "FR"
            with pytest.raises(EventValidationError, match="card number"):
                cases.add_alert(rec)
            planted.append(rec)
    clean = cases.get(cases.add_alert(alert("cu-pan", "card_pan", 1, tag="clean")).case_id)
    template = clean.alerts[0]
    case = replace(clean, alerts=tuple(
        replace(template, key=rec["alert_id"], payload=rec,
                evidence_txn_ids=tuple(rec["evidence_txn_ids"])) for rec in planted))
    txns = transactions_of(case)
    assert len(txns) == len(PLANTED) * len(forms())
    md = sar_markdown(case, txns, generated_by="ana", now=NOW)
    html = render_text("sar.html", **sar_context(case, txns, generated_by="ana", now=NOW))
    for text in (md, html):
        flat = canonical(text).replace(" ", "").replace("-", "")
        for digits in PLANTED:
            assert digits not in flat
        assert not pan_like(text)  # no run of 12 digits at all: dates are written with a T


def test_a_case_without_notes_or_decisions_says_so(cases: CaseStore):
    case = cases.get(cases.add_alert(alert("cu2", "card_st", 3)).case_id)
    md = sar_markdown(case, transactions_of(case), generated_by="ana", now=NOW)
    assert "No notes." in md and "No model decision is part of this case." in md
    assert "| Closed | not closed |" in md and "| Reported in a SAR | not yet |" in md
    empty = replace(case, alerts=())
    md = sar_markdown(empty, [], generated_by="ana", now=NOW)
    assert "No evidence transactions recorded." in md
    assert "Nothing to tell: the case holds no alert." in md
