"""``GET /v1/users/{customer_id}/insights`` (roles ``bot`` for its own customer,
``investigator``) and ``GET /v1/insights/top-spenders`` (``investigator``)."""

from __future__ import annotations

from datetime import date
from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import TypeAdapter, ValidationError

from kestrel.errors import EventValidationError, FieldError, NotFound
from kestrel.events import Identifier, field_errors
from serving import metrics
from serving.http_errors import answers
from serving.insights import FIELDS
from serving.routes.common import RouteContext, json_response

_CUSTOMER = TypeAdapter(Identifier)


def _customer_id(value: str) -> str:
    try:
        return _CUSTOMER.validate_python(value)
    except ValidationError as exc:
        raise EventValidationError(field_errors(exc, "path.customer_id")) from None


def router(ctx: RouteContext) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/users/{customer_id}/insights", tags=["insights"],
                summary="Spend, trends, categories, recent transactions, alerts, risk level",
                openapi_extra=answers(404, 503))
    async def insights(request: Request,
                       customer_id: Annotated[str, Path(
                           min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$",
                           description="The customer's id (never a card number)")],
                       fresh: bool = Query(False, description="Bypass the cache"),
                       fields: str | None = Query(
                           None, description=f"Comma-separated subset of {', '.join(FIELDS)}"),
                       ) -> Response:
        principal = ctx.guard(request, "insights")
        customer_id = _customer_id(customer_id)
        ctx.auth.authorize_customer(principal, customer_id)
        wanted = [f.strip() for f in fields.split(",") if f.strip()] if fields else None
        unknown = sorted(set(wanted or ()) - set(FIELDS))
        if unknown:
            raise EventValidationError([FieldError("fields", f"unknown field(s) {unknown}; "
                                                   f"choose from {', '.join(FIELDS)}")])
        service = ctx.runtime().insights
        body = None if fresh else service.cached(customer_id)
        metrics.INSIGHT_CACHE.labels("bypass" if fresh else "hit" if body else "miss").inc()
        cache = "hit" if body else "bypass" if fresh else "miss"
        if body is None:  # in the event loop, like /v1/score: three loopback round trips
            body = service.build(customer_id)  # cost less than the hop to a worker thread
        if body is None:
            raise NotFound(f"no customer {customer_id!r} in insights, recent transactions or "
                           "alerts")
        if wanted is None:
            return Response(body, media_type="application/json", headers={"X-Cache": cache})
        doc = orjson.loads(body)
        partial = {"customer_id": doc["customer_id"], **{k: doc.get(k) for k in wanted}}
        return Response(orjson.dumps(partial), media_type="application/json",
                        headers={"X-Cache": cache})

    @routes.get("/v1/insights/top-spenders", tags=["insights"],
                summary="The day's top spenders (from the batch insight tables)",
                openapi_extra=answers(404, 503))
    async def top_spenders(request: Request, date_: Annotated[date, Query(alias="date")],
                           n: int = Query(10, ge=1, le=100)) -> Response:
        ctx.guard(request, "top_spenders")
        rows = ctx.runtime().insights.top_spenders(date_.isoformat(), n)
        if rows is None:
            raise NotFound(f"no top spenders for {date_.isoformat()}; run `kestrel features "
                           "materialize` for that day")
        return json_response({"date": date_.isoformat(), "n": n, "top_spenders": rows})

    return routes
