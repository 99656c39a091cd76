"""The report page and a case's SAR draft.

- ``GET /console/report``: open, escalated and closed cases, cases opened per day, the median
  time to close, and per rule and per score band the share of closed cases confirmed as
  fraud (cases/report.py aggregates in SQL; serving/console/charts.py draws the SVG).
- ``GET /console/cases/{id}/sar.md``: the suspicious-activity report draft as Markdown (an
  attachment); ``GET /console/cases/{id}/sar``: the same as a printable page. Each export is
  an audit record.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from cases.report import report
from cases.views import CaseView
from serving.console.charts import bar_chart, column_chart
from serving.console.core import Console
from serving.console.errors import ConsoleRoute
from serving.console.evidence import Txn, transactions_of
from serving.console.render import page, render_text
from serving.console.sar import sar_context, sar_markdown
from serving.console.security import CSP_STANDALONE, secure_headers

REPORT_DAYS = 30


def router(console: Console) -> APIRouter:
    routes = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

    @routes.get("/console/report")
    async def report_page(request: Request) -> Response:
        analyst = await console.analyst(request)
        store = console.store()
        now = datetime.now(UTC)
        made = await run_in_threadpool(report, store.engine, now=now, days=REPORT_DAYS)
        per_day = column_chart([(d.strftime("%m-%d"), float(n)) for d, n in made.per_day],
                               title=f"Cases opened per day, last {REPORT_DAYS} days")
        by_rule = bar_chart([(s.name, s.rate) for s in made.by_rule],
                            title="Share of closed cases confirmed as fraud, per rule",
                            percent=True)
        by_band = bar_chart([(s.name, s.rate) for s in made.by_band],
                            title="Share of closed cases confirmed as fraud, per score band",
                            percent=True)
        return await run_in_threadpool(  # rendered off the event loop, as the other pages
            page, "report.html", analyst=analyst, report=made, per_day=per_day,
            by_rule=by_rule, by_band=by_band, days=REPORT_DAYS, now=now, nav="report",
            flash=None)

    async def sar_parts(request: Request, case_id: int,
                        fmt: str) -> tuple[str, CaseView, list[Txn]]:
        """The case, after the export is in its action log (and, by the caller, the audit)."""
        analyst = await console.analyst(request)
        store = console.store()
        await run_in_threadpool(store.log_action, case_id, "sar_export",
                                actor=analyst.subject, detail={"format": fmt})
        view = await run_in_threadpool(store.get, case_id)
        return analyst.subject, view, list(transactions_of(view))

    @routes.get("/console/cases/{case_id}/sar.md")
    async def sar_md(request: Request, case_id: int) -> Response:
        who, view, txns = await sar_parts(request, case_id, "markdown")
        text = sar_markdown(view, txns, generated_by=who,
                            now=datetime.now(UTC))
        console.audit("sar_export", who, case_id=case_id, format="markdown")
        response = Response(text, media_type="text/markdown; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="case-{case_id}-sar-draft.md"'})
        return secure_headers(response)

    @routes.get("/console/cases/{case_id}/sar")
    async def sar_html(request: Request, case_id: int) -> Response:
        who, view, txns = await sar_parts(request, case_id, "html")
        context = sar_context(view, txns, generated_by=who,
                              now=datetime.now(UTC))
        console.audit("sar_export", who, case_id=case_id, format="html")
        response = Response(render_text("sar.html", **context), media_type="text/html")
        return secure_headers(response, csp=CSP_STANDALONE)

    return routes
