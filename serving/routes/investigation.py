"""``GET /v1/alerts`` (the alerts and flagged decisions of the case store, newest first) and
``POST /v1/labels`` (an investigator's verdict, published to ``labels``); role
``investigator``. Both read or write the case store in a worker thread: SQL is not run on
the event loop."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kestrel.errors import EventValidationError, NotFound
from kestrel.events import FreeText, Identifier, LabelEvent, field_errors
from kestrel.topics import LABELS
from serving.http_errors import answers
from serving.routes.common import RouteContext, json_response
from serving.runtime import Runtime
from serving.screen import read_body


class LabelIn(BaseModel):
    """An investigator's verdict; source, analyst and time are filled in by the service."""

    model_config = ConfigDict(extra="forbid")
    txn_id: Identifier
    is_fraud: bool
    reason: FreeText | None = None
    alert_id: Identifier | None = Field(
        None, description="The alert (or flagged decision's txn_id) the verdict is about: "
        "recorded in its case's action log (404 when no case holds it).")


def router(ctx: RouteContext) -> APIRouter:
    routes = APIRouter()
    settings = ctx.settings

    @routes.get("/v1/alerts", tags=["investigation"],
                summary="Alerts and flagged decisions from the case store, newest first",
                openapi_extra=answers(503))
    async def alerts(request: Request,
                     status: str = Query("open", pattern="^(open|closed|all)$", description=(
                         "By the status of the alert's case: `open` (escalated counts as "
                         "open), `closed`, `all`")),
                     limit: int = Query(50, ge=1, le=500),
                     offset: int = Query(0, ge=0, le=1_000_000)) -> Response:
        ctx.guard(request, "alerts")
        rt = ctx.runtime()
        page = await run_in_threadpool(lambda: rt.case_store().alerts(status, offset, limit))
        listed = [a.as_dict() for a in page.alerts]
        nxt = offset + len(listed) if offset + len(listed) < page.total else None
        return json_response({"alerts": listed, "total": page.total, "offset": offset,
                              "limit": limit, "next_offset": nxt})

    @routes.post("/v1/labels", status_code=202, tags=["investigation"],
                 summary="Label a transaction fraud or legit (published to `labels`)",
                 openapi_extra=answers(404, 413, 503, body={"required": True, "content": {
                     "application/json": {"schema": LabelIn.model_json_schema()}}}))
    async def labels(request: Request) -> Response:
        principal = ctx.guard(request, "labels")
        rt = ctx.runtime()
        rt.audit.check("labels")  # 503 while the audit log cannot write (serving/audit.py)
        body = await read_body(request, settings.max_body_bytes, "KESTREL_MAX_BODY_BYTES")
        try:
            label_in = LabelIn.model_validate_json(body)
        except ValidationError as exc:
            raise EventValidationError(field_errors(exc)) from None
        try:
            label = LabelEvent(txn_id=label_in.txn_id, is_fraud=label_in.is_fraud,
                               source="investigator", analyst_id=principal.subject,
                               reason=label_in.reason, labelled_at=datetime.now(UTC))
        except ValidationError as exc:
            raise EventValidationError(field_errors(exc)) from None
        alert_id = label_in.alert_id
        if alert_id:  # known before publishing: a 404 or 503 then publishes nothing
            case = await run_in_threadpool(lambda: rt.case_store().case_of_key(alert_id))
            if case is None:
                raise NotFound(f"no alert {alert_id!r} in the case store; list them with "
                               "GET /v1/alerts (or send the label without alert_id)")
        await run_in_threadpool(_publish_label, rt, label)
        case_id = None
        if alert_id:  # published directly (acknowledged): the case's log says so, no outbox
            case_id = await run_in_threadpool(lambda: rt.case_store().label_via_api(
                alert_id, label.txn_id, label.is_fraud, label.reason,
                actor=principal.subject))
        return json_response({"accepted": True, "label": label.model_dump(mode="json"),
                              "case_id": case_id}, 202)

    return routes


def _publish_label(runtime: Runtime, label: LabelEvent) -> None:
    """Acknowledged by the broker within KESTREL_PUBLISH_TIMEOUT_MS, or 503 (as ingest)."""
    runtime.ingestor().publish([(LABELS, label.txn_id, label.to_json())], what="labels",
                               retry="the latest label of a transaction wins")
