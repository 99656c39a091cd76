"""``/metrics`` (Prometheus) and ``/v1/ready`` (readiness detail): no token, like BentoML's
own health routes."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from serving import metrics
from serving.http_errors import answers
from serving.routes.common import RouteContext, json_response


def router(ctx: RouteContext) -> APIRouter:
    routes = APIRouter()

    @routes.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)

    @routes.get("/v1/ready", tags=["operations"], summary="Readiness detail (no auth)",
                responses={503: {"description": "Not ready: the same document, naming the "
                                                "failing checks"}},
                openapi_extra=answers(public=True))
    async def ready() -> Response:
        doc = await run_in_threadpool(ctx.runtime().readiness)
        return json_response(doc, 200 if doc["ready"] else 503)

    return routes
