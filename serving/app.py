"""The HTTP application (FastAPI, mounted in the BentoML service of ``serving/service.py``).

Routes and roles (``admin`` may call everything; health, readiness and metrics need no token
and are BentoML's own endpoints, see serving/service.py):

| route | roles |
|---|---|
| ``POST /v1/events/transactions`` | scorer |
| ``POST /v1/score``, ``POST /v1/score/batch`` | scorer |
| ``GET /v1/users/{customer_id}/insights`` | bot (its own customer only), investigator |
| ``GET /v1/insights/top-spenders`` | investigator |
| ``GET /v1/alerts``, ``POST /v1/labels`` | investigator |

Every authenticated call passes the client's rate limit (a batch costs in proportion to its
size) and leaves an access audit record. A URL holding a card number is refused before any of
that (serving/screen.py); bodies are capped while they are read. Errors follow one shape and
one table (serving/http_errors.py): 400 invalid input with every field's path, 401/403 auth,
404 unknown, 413 body or batch too large, 429 rate limited (with Retry-After), 503 a store or
the broker unavailable, or (ingest, labels) the audit log unable to write; ``/v1/score``
still decides then and says ``audited: false``.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, date, datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from kestrel import heap
from kestrel.errors import EventValidationError, FieldError, NotFound
from kestrel.events import (
    FreeText,
    Identifier,
    LabelEvent,
    TimeBounds,
    TransactionIn,
    field_errors,
)
from kestrel.settings import Settings, get_settings
from kestrel.topics import LABELS
from pipelines.ingest import parse_events
from serving import http_errors, metrics
from serving.auth import Authenticator, Principal
from serving.decisions import Explain
from serving.insights import FIELDS
from serving.runtime import Runtime
from serving.screen import Screen, read_body

log = logging.getLogger("kestrel.serving")

# route area → roles that may call it (admin may call everything); a bot reads insights of
# its own customer only (Authenticator.authorize_customer)
ROLE_MATRIX: dict[str, tuple[str, ...]] = {
    "ingest": ("scorer",),
    "score": ("scorer",),
    "insights": ("bot", "investigator"),
    "top_spenders": ("investigator",),
    "alerts": ("investigator",),
    "labels": ("investigator",),
}
# the error statuses each route answers besides 400/401/403/429 (serving/http_errors.py)
ERROR_STATUSES: dict[str, tuple[int, ...]] = {
    "/v1/events/transactions": (413, 503),
    "/v1/score": (413,),
    "/v1/score/batch": (413,),
    "/v1/users/{customer_id}/insights": (404, 503),
    "/v1/insights/top-spenders": (404, 503),
    "/v1/alerts": (503,),
    "/v1/labels": (413, 503),
}
PUBLIC = frozenset({"/v1/ready"})
_CUSTOMER = TypeAdapter(Identifier)


class LabelIn(BaseModel):
    """An investigator's verdict; source, analyst and time are filled in by the service."""

    model_config = ConfigDict(extra="forbid")
    txn_id: Identifier
    is_fraud: bool
    reason: FreeText | None = None
    alert_id: Identifier | None = Field(None, description="Closes this alert in the queue.")


def _customer_id(value: str) -> str:
    try:
        return _CUSTOMER.validate_python(value)
    except ValidationError as exc:
        raise EventValidationError(field_errors(exc, "path.customer_id")) from None


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc, option=orjson.OPT_UTC_Z), status_code=status,
                    media_type="application/json")


def _ingest_body_schema(batch_key: str | None = "events", one: bool = True) -> dict[str, Any]:
    item = TransactionIn.model_json_schema(ref_template="#/components/schemas/{model}")
    batch = {"type": "object", "required": ["events"], "additionalProperties": False,
             "properties": {"events": {"type": "array", "items": item, "minItems": 1,
                                       "maxItems": 10_000}}}
    schema = {"oneOf": [item, batch]} if one and batch_key else item if one else batch
    return {"required": True, "content": {"application/json": {"schema": schema}}}


class Observe:
    """Latency metric of every HTTP call and access audit of every authenticated call and
    every 401 / 403, as plain ASGI middleware (Starlette's BaseHTTPMiddleware costs more per
    request than a whole decision)."""

    def __init__(self, app: Any, runtime: Any):
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def sent(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            elapsed = time.perf_counter() - t0
            path = getattr(scope.get("route"), "path", "unmatched")
            metrics.REQUEST_SECONDS.labels(path, scope["method"], str(status)).observe(elapsed)
            principal: Principal | None = (scope.get("state") or {}).get("principal")
            if principal is not None or status in (401, 403):  # refusals too, never the token
                self.runtime().audit.record("access", {
                    "at": datetime.now(UTC), "sub": getattr(principal, "subject", None),
                    "role": getattr(principal, "role", None),
                    "client": getattr(principal, "client", None),
                    "method": scope["method"], "route": path, "path": scope["path"],
                    "status": status, "ms": round(elapsed * 1000, 3)})


class DirectRoutes:
    """The hottest routes called straight from the ASGI scope, past FastAPI's router, route
    wrappers and dependency solving (measured at 400 req/s: 3.41 -> 3.22 ms of worker CPU per
    decision). Each is
    still a FastAPI route — the OpenAPI spec and any other caller go through it — and runs
    inside the middlewares above it (``Observe``: latency metric, access audit). A route
    qualifies when its parameters are the ``Request``, path parameters and a few query
    parameters with defaults; a request whose query this class would have to interpret (an
    unknown or repeated name, a flag other than ``true`` / ``false``) goes through FastAPI.
    Exceptions get the app's own exception handlers, so the answers are the same either way
    (a test compares both)."""

    def __init__(self, app: Any, routes: list[tuple[str, APIRoute, dict[str, Any]]],
                 handlers: dict[Any, Any]):
        self.app = app
        self.routes = routes  # (method, route, {query parameter: default}); filled later
        self.handlers = handlers  # the app's exception handlers, by exception class

    def _match(self, scope: Any) -> tuple[APIRoute, dict[str, Any]] | None:
        if scope["type"] != "http" or scope.get("root_path"):
            return None
        for method, route, query in self.routes:
            found = route.path_regex.match(scope["path"]) if scope["method"] == method else None
            if found is None:
                continue
            args = {name: route.param_convertors[name].convert(value)
                    for name, value in found.groupdict().items()}
            args.update(query)
            raw = scope.get("query_string")
            if raw:
                pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
                names = [name for name, _ in pairs]
                if len(set(names)) < len(names) or not set(names) <= query.keys():
                    return None
                for name, value in pairs:
                    if isinstance(query[name], bool):
                        if value not in ("true", "false"):
                            return None
                        args[name] = value == "true"
                    else:
                        args[name] = value
            return route, args
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        hit = self._match(scope)
        if hit is None:
            await self.app(scope, receive, send)
            return
        route, args = hit
        scope["route"] = route  # what Observe labels the metric with
        request = Request(scope, receive)
        try:
            response = await route.endpoint(request, **args)
        except Exception as exc:
            handler = next((self.handlers[c] for c in type(exc).__mro__
                            if c in self.handlers), None)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check_secrets()  # outside dev the service does not start without its secrets
    app = FastAPI(title="Kestrel", version="0.2.0",
                  description="Real-time fraud decisions, customer insights, alerts and labels.")
    auth = Authenticator(settings)
    holder: dict[str, Runtime] = {}
    lock = threading.Lock()

    def rt() -> Runtime:
        if "rt" not in holder:
            with lock:
                if "rt" not in holder:
                    holder["rt"] = Runtime(settings)
        return holder["rt"]

    app.state.runtime = rt

    def guard(request: Request, area: str) -> Principal:
        principal = auth.principal(request.headers.get("authorization"))
        request.state.principal = principal
        auth.authorize(principal, ROLE_MATRIX[area])
        rt().limiter.check(principal.client)
        return principal

    bounds = TimeBounds.from_settings(settings)
    http_errors.install(app)
    app.openapi = http_errors.document(app, ERROR_STATUSES, PUBLIC)  # type: ignore[method-assign]
    direct: list[tuple[str, APIRoute, dict[str, Any]]] = []  # filled once the routes exist
    app.state.direct_routes = direct
    app.add_middleware(DirectRoutes, routes=direct, handlers=app.exception_handlers)
    app.add_middleware(Observe, runtime=rt)
    app.add_middleware(Screen)  # added last: the outermost, before audit and logs

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:  # no auth, like BentoML's health routes
        return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)

    @app.get("/v1/ready", tags=["operations"], summary="Readiness detail (no auth)",
             responses={503: {"description": "Not ready: the same document, naming the "
                                             "failing checks"}})
    async def ready() -> Response:
        doc = await run_in_threadpool(rt().readiness)
        return _json(doc, 200 if doc["ready"] else 503)

    # --- ingest ----------------------------------------------------------------------------

    @app.post(
        "/v1/events/transactions", status_code=202, tags=["ingest"],
        summary="Publish one transaction, or a batch of up to 10,000",
        openapi_extra={"requestBody": _ingest_body_schema()},
    )
    async def ingest(request: Request) -> dict[str, Any]:
        principal = guard(request, "ingest")
        rt().audit.check("ingest")  # 503 while the audit log cannot write (serving/audit.py)
        body = await read_body(request, settings.max_batch_body_bytes,
                               "KESTREL_MAX_BATCH_BODY_BYTES")
        limiter = rt().limiter

        def admit(events: int) -> None:
            limiter.check(principal.client, limiter.batch_cost(principal.client, events))

        # waits at most KESTREL_PUBLISH_TIMEOUT_MS for the broker (503 past it), and not
        # at all while the broker is known not to answer
        accepted = await run_in_threadpool(rt().ingestor().ingest, body, None, admit)
        return {"accepted": len(accepted), "txn_ids": accepted}

    # --- decisioning -------------------------------------------------------------------------

    @app.post("/v1/score", tags=["decisioning"],
              summary="Decide one transaction: allow, challenge or decline",
              openapi_extra={"requestBody": _ingest_body_schema(None)})
    async def score(request: Request) -> Response:
        t0 = time.perf_counter()
        guard(request, "score")
        body = await read_body(request, settings.max_body_bytes, "KESTREL_MAX_BODY_BYTES")
        events, prefix = parse_events(body, 1, rt().tokenizer.token)
        if prefix:
            raise EventValidationError([FieldError("$", "send one transaction object; use "
                                                   "/v1/score/batch for several")])
        bounds.check(events)
        # in the event loop, not a thread: a decision is ~1 ms of CPU under the GIL, and the
        # hop to a worker thread and back cost about as much again; Redis waits at most
        # the score budget (the scoring client's socket timeout).
        [decision] = rt().decider.score(events, t0).encoded
        return Response(decision, media_type="application/json")

    @app.post("/v1/score/batch", tags=["decisioning"],
              summary="Decide up to 10,000 transactions in one call",
              openapi_extra={"requestBody": _ingest_body_schema("events", one=False)})
    async def score_batch(request: Request, reasons: Annotated[Explain, Query(
            description="`flagged` (default): reasons for the challenged and declined "
                        "decisions only; `all`: for every decision (exact SHAP, about seven "
                        "times the cost of the score)")] = "flagged") -> Response:
        t0 = time.perf_counter()
        principal = guard(request, "score")
        body = await read_body(request, settings.max_batch_body_bytes,
                               "KESTREL_MAX_BATCH_BODY_BYTES")
        with heap.paused():  # its objects die with the request: no collection in between
            answer = await run_in_threadpool(decide_batch, body, t0, reasons, principal)
        return Response(answer, media_type="application/json")

    def decide_batch(body: bytes, t0: float, reasons: Explain, principal: Principal) -> bytes:
        """Parse, charge and decide a batch, in one worker thread. Only the response's bytes
        leave it: the batch's objects are freed before collection resumes, so the first young
        collection after it does not walk them (~15 ms a batch when they were still held)."""
        events, prefix = parse_events(body, settings.max_batch_events, rt().tokenizer.token)
        if not prefix:
            raise EventValidationError([FieldError("events", "send {\"events\": [...]}")])
        bounds.check(events, prefix)
        limiter = rt().limiter
        limiter.check(principal.client, limiter.batch_cost(principal.client, len(events),
                                                           reasons == "all"))
        return rt().batch_decider.score(events, t0, reasons).batch_body()

    # --- insights --------------------------------------------------------------------------

    @app.get("/v1/users/{customer_id}/insights", tags=["insights"],
             summary="Spend, trends, categories, recent transactions, alerts, risk level")
    async def insights(request: Request,
                       customer_id: Annotated[str, Path(
                           min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$",
                           description="The customer's id (never a card number)")],
                       fresh: bool = Query(False, description="Bypass the cache"),
                       fields: str | None = Query(
                           None, description=f"Comma-separated subset of {', '.join(FIELDS)}"),
                       ) -> Response:
        principal = guard(request, "insights")
        customer_id = _customer_id(customer_id)
        auth.authorize_customer(principal, customer_id)
        wanted = [f.strip() for f in fields.split(",") if f.strip()] if fields else None
        unknown = sorted(set(wanted or ()) - set(FIELDS))
        if unknown:
            raise EventValidationError([FieldError("fields", f"unknown field(s) {unknown}; "
                                                   f"choose from {', '.join(FIELDS)}")])
        service = rt().insights
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

    @app.get("/v1/insights/top-spenders", tags=["insights"],
             summary="The day's top spenders (from the batch insight tables)")
    async def top_spenders(request: Request, date_: Annotated[date, Query(alias="date")],
                           n: int = Query(10, ge=1, le=100)) -> Response:
        guard(request, "top_spenders")
        rows = rt().insights.top_spenders(date_.isoformat(), n)
        if rows is None:
            raise NotFound(f"no top spenders for {date_.isoformat()}; run `kestrel features "
                           "materialize` for that day")
        return _json({"date": date_.isoformat(), "n": n, "top_spenders": rows})

    # --- alerts and labels -----------------------------------------------------------------

    @app.get("/v1/alerts", tags=["investigation"], summary="The alert queue, newest first")
    async def alerts(request: Request,
                     status: str = Query("open", pattern="^(open|closed|all)$"),
                     limit: int = Query(50, ge=1, le=500),
                     offset: int = Query(0, ge=0, le=1_000_000)) -> Response:
        guard(request, "alerts")
        page, total = rt().alerts.page(None if status == "all" else status, offset, limit)
        nxt = offset + len(page) if offset + len(page) < total else None
        return _json({"alerts": page, "total": total, "offset": offset, "limit": limit,
                      "next_offset": nxt})

    @app.post("/v1/labels", status_code=202, tags=["investigation"],
              summary="Label a transaction fraud or legit (published to `labels`)",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": LabelIn.model_json_schema()}}}})
    async def labels(request: Request) -> Response:
        principal = guard(request, "labels")
        rt().audit.check("labels")  # 503 while the audit log cannot write (serving/audit.py)
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
        if label_in.alert_id:  # a 503 after publishing would make the retry a second label
            rt().redis_guard.check("labels")
        await run_in_threadpool(_publish_label, rt(), label)
        closed = rt().alerts.close(label_in.alert_id) if label_in.alert_id else None
        return _json({"accepted": True, "label": label.model_dump(mode="json"),
                      "alert_closed": closed}, 202)

    routes = {r.path: r for r in app.routes if isinstance(r, APIRoute)}
    direct += [("POST", routes["/v1/score"], {}),
               ("GET", routes["/v1/users/{customer_id}/insights"],
                {"fresh": False, "fields": None})]
    return app


def _publish_label(runtime: Runtime, label: LabelEvent) -> None:
    """Acknowledged by the broker within KESTREL_PUBLISH_TIMEOUT_MS, or 503 (as ingest)."""
    runtime.ingestor().publish([(LABELS, label.txn_id, label.to_json())], what="labels",
                               retry="the latest label of a transaction wins")
