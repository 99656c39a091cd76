"""The queue, the case page and the analyst's actions.

- ``GET /console/``: the queue (filters, counts per status, priority order, SLA ageing,
  pagination); ``POST /console/next``: assign the highest-priority unassigned open case to me
  and open it.
- ``GET /console/cases/{id}``: the case page.
- ``POST /console/cases/{id}/{action}``: ``assign`` (to me), ``note``, ``escalate``,
  ``close`` (with an outcome), ``reopen``, ``sar`` (mark as reported), ``label`` (one
  evidence transaction, fraud or legit, with a reason: through the label outbox to
  `labels`). Every form carries the session's CSRF token and the case version the page was
  rendered with: a stale version changes nothing and answers the 409 page. Each action
  answers 303 back to where it came from, with a message.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse

from cases.store import CaseStore
from cases.views import CaseSummary
from kestrel.errors import Conflict, EventValidationError, FieldError, NotFound
from serving.console import case_page
from serving.console.core import Console
from serving.console.errors import ConsoleRoute
from serving.console.queue import AGE_WORDS, BANDS, PAGE_SIZE, Filters, parse_sla, rows_of
from serving.console.render import page
from serving.console.routes_auth import safe_next
from serving.console.security import secure_headers

NEXT_TRIES = 5
FLASH = {
    "assign": "The case is assigned to you.", "note": "Your note is added.",
    "escalate": "The case is escalated.", "close": "The case is closed.",
    "reopen": "The case is reopened.", "sar": "The case is marked as reported in a SAR.",
    "unsar": "The SAR mark is removed.",
    "label": "The label is recorded; it is on its way to `labels` for training.",
    "none": "There is no unassigned open case: the queue is clear.",
}
OUTCOME_CHOICES = (("confirmed_fraud", "Confirmed fraud"),
                   ("false_positive", "False positive"),
                   ("needs_more_information", "Needs more information"))


def flash_of(request: Request) -> str | None:
    return FLASH.get(request.query_params.get("done", ""))


def _version(form: dict[str, str]) -> int:
    raw = form.get("version", "")
    if not raw.isdigit():
        raise EventValidationError([FieldError("version", "missing: reload the page and "
                                               "act again")])
    return int(raw)


def _back(target: str, done: str) -> Response:
    sep = "&" if "?" in target else "?"
    return secure_headers(RedirectResponse(f"{target}{sep}done={done}", 303))


def _act(store: CaseStore, case_id: int, action: str, form: dict[str, str],
         me: str) -> tuple[CaseSummary, dict[str, Any], str]:
    """Run one action on the store: (the case after it, the audit detail, the flash key)."""
    version = _version(form)
    if action == "assign":
        return store.assign(case_id, me, version=version, actor=me), {}, "assign"
    if action == "note":
        body = form.get("body", "").strip()
        if not body:
            raise EventValidationError([FieldError("note", "empty: write something")])
        return store.add_note(case_id, body, version=version, actor=me), \
            {"chars": len(body)}, "note"
    if action == "escalate":
        return store.escalate(case_id, version=version, actor=me), {}, "escalate"
    if action == "close":
        outcome = form.get("outcome", "")
        return store.close(case_id, outcome, version=version, actor=me), \
            {"outcome": outcome}, "close"
    if action == "reopen":
        return store.reopen(case_id, version=version, actor=me), {}, "reopen"
    if action == "sar":
        mark = form.get("sar", "1") != "0"
        return store.mark_sar(case_id, mark, version=version, actor=me), \
            {"sar": mark}, "sar" if mark else "unsar"
    if action == "label":
        txn_id = form.get("txn_id", "")
        verdict = form.get("verdict", "")
        if verdict not in ("fraud", "legit"):
            raise EventValidationError([FieldError("verdict", "choose fraud or legit")])
        case = store.get(case_id)
        if txn_id not in case.evidence_txn_ids:
            raise NotFound(f"transaction {txn_id!r} is not evidence of case {case_id}; "
                           "label the transactions the case page lists")
        reason = form.get("reason", "").strip() or None
        return store.label(case_id, txn_id, verdict == "fraud", reason, version=version,
                           actor=me), {"txn_id": txn_id, "is_fraud": verdict == "fraud"}, \
            "label"
    raise NotFound(f"no action {action!r} on a case")


ACTIONS = ("assign", "note", "escalate", "close", "reopen", "sar", "label")


def router(console: Console) -> APIRouter:
    routes = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
    sla = parse_sla(console.settings.case_sla_hours)  # a malformed value fails at start
    known_rules = sorted(r for r in sla if r not in ("*", "decision"))

    async def in_pool(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await run_in_threadpool(fn, *args, **kwargs)

    @routes.get("/console/")
    async def queue(request: Request) -> Response:
        analyst = await console.analyst(request)
        filters = Filters.of(request.query_params)
        now = datetime.now(UTC)
        store = console.store()
        found = await in_pool(store.queue, **filters.store_query(analyst.subject, now))
        pages = max((found.total + PAGE_SIZE - 1) // PAGE_SIZE, 1)
        # rendered in a worker thread: a page's template must not hold /v1/score's event loop
        return await in_pool(page, "queue.html", analyst=analyst, filters=filters,
                             rows=rows_of(found.cases, sla, now), total=found.total,
                             by_status=found.by_status, pages=pages, bands=list(BANDS),
                             ages=AGE_WORDS, rules=known_rules, flash=flash_of(request),
                             here=filters.link(), now=now, nav="queue")

    @routes.get("/console/queue")
    async def queue_alias(request: Request) -> Response:
        query = f"?{request.url.query}" if request.url.query else ""
        return secure_headers(RedirectResponse("/console/" + query, 303))

    @routes.get("/console")
    async def console_root() -> Response:
        return secure_headers(RedirectResponse("/console/", 303))

    @routes.post("/console/next")
    async def next_case(request: Request) -> Response:
        analyst = await console.analyst(request)
        await console.form(request, analyst)
        store = console.store()
        for _ in range(NEXT_TRIES):  # another analyst may take the same case first
            found = await in_pool(store.queue, status="open", unassigned=True, limit=1)
            if not found.cases:
                return _back("/console/", "none")
            case = found.cases[0]
            try:
                await in_pool(store.assign, case.id, analyst.subject, version=case.version,
                              actor=analyst.subject)
            except Conflict:
                continue
            console.audit("assign", analyst.subject, case_id=case.id, how="next")
            return _back(f"/console/cases/{case.id}", "assign")
        raise Conflict("other analysts kept taking the next case first; try again")

    @routes.get("/console/cases/{case_id}")
    async def case(request: Request, case_id: int) -> Response:
        analyst = await console.analyst(request)
        store = console.store()
        view = await in_pool(store.get, case_id)
        past = await in_pool(store.cases_of, view.customer_id)
        shown = await in_pool(case_page.context, console.ctx.runtime(), view, past)
        return await in_pool(page, "case.html", analyst=analyst, flash=flash_of(request),
                             outcomes=OUTCOME_CHOICES, nav="case", **shown)

    @routes.post("/console/cases/{case_id}/{action}")
    async def act(request: Request, case_id: int, action: str) -> Response:
        analyst = await console.analyst(request)
        form = await console.form(request, analyst)
        if action not in ACTIONS:
            raise NotFound(f"no action {action!r}; the case page's buttons are "
                           f"{', '.join(ACTIONS)}")
        store = console.store()
        try:
            after, detail, done = await in_pool(_act, store, case_id, action, form,
                                                analyst.subject)
        except Conflict:
            console.audit(action, analyst.subject, case_id=case_id, refused="conflict")
            raise
        console.audit(action, analyst.subject, case_id=case_id, version=after.version,
                      **detail)
        if action == "label":  # in the outbox: the relay publishes it now, not when idle ends
            console.ctx.runtime().cases.label_written()
        back = safe_next(form.get("next")) if form.get("next") else \
            f"/console/cases/{case_id}"
        return _back(back, done)

    return routes
