"""The HTTP application (FastAPI, mounted in the BentoML service of ``serving/service.py``).

Routes now: ``GET /healthz`` (no auth) and ``POST /v1/events/transactions`` (roles scorer,
admin). Errors follow one shape, ``{"error": code, "message": text, "errors": [{path,
reason}]}``, mapped from Kestrel's error tree: 400 invalid event, 401/403 auth, 413 batch too
large, 503 broker unavailable.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from kestrel.errors import BatchTooLarge, EventValidationError, KestrelError, ServiceUnavailable
from kestrel.events import TransactionIn
from kestrel.pan import CardTokenizer
from kestrel.settings import Settings, get_settings
from pipelines.ingest import EventProducer, Ingestor
from serving.auth import Authenticator, AuthError, Forbidden

log = logging.getLogger("kestrel.serving")
MAX_EVENT_BYTES = 4096  # generous per-event budget for the request-size check


def _error(status: int, code: str, message: str, errors: list[dict[str, str]] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "message": message}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=headers)


def _ingest_body_schema() -> dict[str, Any]:
    one = TransactionIn.model_json_schema(ref_template="#/components/schemas/{model}")
    return {
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": [
            one,
            {"type": "object", "required": ["events"], "properties": {
                "events": {"type": "array", "items": one, "minItems": 1, "maxItems": 10_000}}},
        ]}}},
    }


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="Kestrel", version="0.1.0",
                  description="Real-time fraud features, decisions and insights.")
    auth = Authenticator(settings)
    state: dict[str, Ingestor] = {}

    def ingestor() -> Ingestor:
        if "ingestor" not in state:
            state["ingestor"] = Ingestor(
                EventProducer(settings, confirm_each=True),
                CardTokenizer(settings.secret("pan_token_key")),
                settings.max_batch_events,
            )
        return state["ingestor"]

    @app.exception_handler(EventValidationError)
    async def _invalid(_: Request, exc: EventValidationError) -> JSONResponse:
        return _error(400, "invalid_event", str(exc), [e.as_dict() for e in exc.errors])

    @app.exception_handler(BatchTooLarge)
    async def _too_large(_: Request, exc: BatchTooLarge) -> JSONResponse:
        return _error(413, "batch_too_large", str(exc))

    @app.exception_handler(AuthError)
    async def _unauthenticated(_: Request, exc: AuthError) -> JSONResponse:
        return _error(401, "unauthenticated", str(exc), headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(Forbidden)
    async def _forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return _error(403, "forbidden", str(exc))

    @app.exception_handler(ServiceUnavailable)
    async def _unavailable(_: Request, exc: ServiceUnavailable) -> JSONResponse:
        return _error(503, "unavailable", str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(KestrelError)
    async def _other(_: Request, exc: KestrelError) -> JSONResponse:
        log.exception("unhandled Kestrel error")
        return _error(500, "internal", str(exc))

    @app.get("/healthz", tags=["operations"], summary="Liveness (no auth)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(
        "/v1/events/transactions", status_code=202, tags=["ingest"],
        summary="Publish one transaction, or a batch of up to 10,000",
        openapi_extra={"requestBody": _ingest_body_schema()},
        responses={400: {"description": "invalid events, with every field error"},
                   401: {"description": "missing or invalid bearer token"},
                   403: {"description": "role may not ingest"},
                   413: {"description": "batch too large"},
                   503: {"description": "broker unavailable"}},
    )
    async def ingest(request: Request) -> dict[str, Any]:
        principal = auth.principal(request.headers.get("authorization"))
        auth.authorize(principal, ("scorer",))
        length = int(request.headers.get("content-length") or 0)
        if length > settings.max_batch_events * MAX_EVENT_BYTES:
            raise BatchTooLarge(length // MAX_EVENT_BYTES, settings.max_batch_events)
        body = await request.body()
        accepted = await run_in_threadpool(ingestor().ingest, body)
        return {"accepted": len(accepted), "txn_ids": accepted}

    return app
