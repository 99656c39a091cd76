"""``POST /v1/events/transactions``: ingest one transaction or a batch (role ``scorer``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from serving.http_errors import answers
from serving.routes.common import RouteContext, ingest_body_schema
from serving.screen import read_body


def router(ctx: RouteContext) -> APIRouter:
    routes = APIRouter()
    settings = ctx.settings

    @routes.post("/v1/events/transactions", status_code=202, tags=["ingest"],
                 summary="Publish one transaction, or a batch of up to 10,000",
                 openapi_extra=answers(413, 503, body=ingest_body_schema()))
    async def ingest(request: Request) -> dict[str, Any]:
        principal = ctx.guard(request, "ingest")
        rt = ctx.runtime()
        rt.audit.check("ingest")  # 503 while the audit log cannot write (serving/audit.py)
        body = await read_body(request, settings.max_batch_body_bytes,
                               "KESTREL_MAX_BATCH_BODY_BYTES")
        limiter = rt.limiter

        def admit(events: int) -> None:
            limiter.check(principal.client, limiter.batch_cost(principal.client, events))

        # waits at most KESTREL_PUBLISH_TIMEOUT_MS for the broker (503 past it), and not
        # at all while the broker is known not to answer
        accepted = await run_in_threadpool(rt.ingestor().ingest, body, None, admit)
        return {"accepted": len(accepted), "txn_ids": accepted}

    return routes
