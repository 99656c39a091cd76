"""One table from errors to HTTP answers, and the OpenAPI spec made to say the same.

Every 4xx and 5xx the service gives has one shape, :class:`ErrorBody`:
``{"error": code, "message": text, "errors": [{"path", "reason"}]}``. Invalid input is 400
(FastAPI's 422 never appears, in answers or in the spec); 409 is an edit made from a stale
read (the case store's version check); 401 carries
``WWW-Authenticate: Bearer``; 429 and 503 carry ``Retry-After``. The router's own answers (404
unknown path, 405 wrong method) and an unexpected exception (500) take the same shape, and no
error body repeats a card number the request held (an unknown field's name is quoted in its
``path``). :class:`PlainErrors` gives that shape to the plain-text errors of the server the
app is mounted in (BentoML answers a path none of the app's routes matches itself).

:data:`HANDLERS` is the one table from exceptions to answers; :func:`install` registers it.
Each route names the error statuses it answers besides the common ones with :func:`answers`
(its ``openapi_extra``), and :func:`document` rewrites the generated spec so that each route
lists those statuses with that body, the headers they carry and the bearer scheme it needs
(the API fuzz test, tests/serving/test_api_fuzz.py, checks the service against it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from kestrel.errors import (
    AuthError,
    BatchTooLarge,
    BodyTooLarge,
    Conflict,
    EventValidationError,
    Forbidden,
    KestrelError,
    NotFound,
    RateLimited,
    ServiceUnavailable,
)
from kestrel.pan import pan_like, redact_pans
from serving import metrics

log = logging.getLogger("kestrel.serving")


class FieldProblem(BaseModel):
    path: str = Field(description="Where in the request, e.g. `events[3].amount`, "
                      "`query.offset`, `path`, `authorization.sub`.")
    reason: str = Field(description="What is wrong; never echoes the value.")


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: str = Field(description="Machine-readable code, e.g. `invalid_event`.",
                       examples=["invalid_event"])
    message: str = Field(description="What went wrong and what to do.")
    errors: list[FieldProblem] | None = Field(
        None, description="Every field error (400 only).")


def error_response(status: int, code: str, message: str,
                   errors: list[dict[str, str]] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error answer; card numbers quoted from the request are redacted."""
    body: dict[str, Any] = {"error": code, "message": _redacted(message)}
    if errors is not None:
        body["errors"] = [{"path": _redacted(e["path"]), "reason": _redacted(e["reason"])}
                          for e in errors]
    return JSONResponse(body, status_code=status, headers=headers)


def _redacted(text: str) -> str:
    return redact_pans(text) if pan_like(text) else text


Handler = Callable[[Request, Any], JSONResponse]


def answer(status: int, code: str, headers: dict[str, str] | None = None) -> Handler:
    """The handler of an error answered with its own message, ``status`` and ``code``."""
    return lambda _, exc: error_response(status, code, str(exc), headers=headers)


def _parameters(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"path": ".".join(str(p) for p in e["loc"]) or "$",
               "reason": e["msg"]} for e in exc.errors()]
    return error_response(400, "invalid_request", "invalid request parameters", errors)


def _invalid_event(_: Request, exc: EventValidationError) -> JSONResponse:
    return error_response(400, "invalid_event", str(exc), [e.as_dict() for e in exc.errors])


def _limited(_: Request, exc: RateLimited) -> JSONResponse:
    metrics.RATE_LIMITED.labels(exc.client).inc()
    return error_response(429, "rate_limited", str(exc),
                          headers={"Retry-After": str(exc.retry_after)})


def _redis_down(_: Request, exc: RedisError) -> JSONResponse:
    return error_response(503, "unavailable", f"Redis is unavailable ({type(exc).__name__}); "
                          "retry shortly", headers={"Retry-After": "1"})


def _internal(_: Request, exc: KestrelError) -> JSONResponse:
    log.exception("unhandled Kestrel error")
    return error_response(500, "internal", str(exc))


def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected error: %s", type(exc).__name__, exc_info=exc)
    return error_response(500, "internal", "internal error; the service log has the details")


# codes of the answers the routers give themselves (an unknown path, a method the path does
# not take; BentoML's /readyz when not ready)
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 503: "unavailable"}


def _http(_: Request, exc: HTTPException) -> JSONResponse:
    code = HTTP_CODES.get(exc.status_code, "internal" if exc.status_code >= 500 else "http")
    return error_response(exc.status_code, code, str(exc.detail),
                          headers=dict(exc.headers) if exc.headers else None)


# exception class → handler; the most specific class wins (FastAPI walks the MRO)
HANDLERS: dict[type[Exception], Handler] = {
    RequestValidationError: _parameters,  # 400 invalid_request, every parameter's error
    EventValidationError: _invalid_event,  # 400 invalid_event, every field's error
    AuthError: answer(401, "unauthenticated", {"WWW-Authenticate": "Bearer"}),
    Forbidden: answer(403, "forbidden"),
    NotFound: answer(404, "not_found"),
    Conflict: answer(409, "conflict"),  # a stale edit: reload and apply it again
    BatchTooLarge: answer(413, "batch_too_large"),
    BodyTooLarge: answer(413, "body_too_large"),
    RateLimited: _limited,  # 429 rate_limited, Retry-After: the client's own wait
    ServiceUnavailable: answer(503, "unavailable", {"Retry-After": "1"}),
    RedisError: _redis_down,  # 503 unavailable
    KestrelError: _internal,  # 500 internal, logged with its traceback
    HTTPException: _http,  # the router's own: 404 unknown path, 405 wrong method
    Exception: _unexpected,  # 500 internal, the message kept for the log
}


def install(app: FastAPI) -> None:
    """Register every handler of the table on ``app``."""
    for exc_class, handler in HANDLERS.items():
        app.add_exception_handler(exc_class, _asynced(handler))


def _asynced(handler: Handler) -> Callable[[Request, Any], Any]:
    async def handle(request: Request, exc: Any) -> JSONResponse:
        return handler(request, exc)
    return handle


class PlainErrors:
    """ASGI middleware for the server the app is mounted in (BentoML's outer app): a 4xx or
    5xx it answers in plain text itself — a path none of the app's routes matches, or one with
    a newline (``%0A``), which its mount's pattern does not match — gets the error body.
    Answers in JSON (the API's) or HTML (the console's error pages) pass as they are."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] | None = None
        body: list[bytes] = []

        async def sent(message: Any) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400 and \
                    not _is_own(message.get("headers", [])):
                start = message  # held: the body is replaced
                return
            if start is None:
                await send(message)
                return
            if message["type"] != "http.response.body":
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            status = start["status"]
            code = HTTP_CODES.get(status, "internal" if status >= 500 else "http")
            text = b"".join(body).decode("utf-8", "replace").strip()[:200]
            kept = {k.decode("latin-1"): v.decode("latin-1")
                    for k, v in start.get("headers", [])
                    if k.lower() in (b"allow", b"retry-after", b"www-authenticate")}
            response = error_response(status, code, _PLAIN_MESSAGES.get(status, text or code),
                                      headers=kept)
            await response(scope, receive, send)

        await self.app(scope, receive, sent)


_PLAIN_MESSAGES = {404: "no such route; the OpenAPI spec at /openapi.json lists them",
                   405: "this route does not take that method (see Allow)"}


_OWN_TYPES = (b"application/json", b"text/html")  # the API's errors, the console's pages


def _is_own(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(k.lower() == b"content-type" and v.split(b";")[0].strip() in _OWN_TYPES
               for k, v in headers)


# --- the spec ---------------------------------------------------------------------------------

# headers an error answer carries, as the spec states them
ERROR_HEADERS: dict[str, dict[str, Any]] = {
    "401": {"WWW-Authenticate": {
        "description": "`Bearer`: the scheme to authenticate with", "required": True,
        "schema": {"type": "string", "const": "Bearer"}}},
    "429": {"Retry-After": {
        "description": "Seconds to wait before the next request", "required": True,
        "schema": {"type": "integer", "minimum": 0}}},
    "503": {"Retry-After": {
        "description": "Seconds to wait before retrying", "required": True,
        "schema": {"type": "integer", "minimum": 0}}},
}
DESCRIPTIONS = {
    "400": "Invalid input: every field error with its path",
    "401": "Missing, invalid or expired bearer token",
    "403": "The token's role or customer may not do this",
    "404": "Nothing found",
    "409": "Changed by someone else since it was read: reload it and apply the change again",
    "413": "Request body or batch too large",
    "429": "The client is over its request rate (see Retry-After)",
    "503": "A store or the broker is unavailable (see Retry-After)",
}
_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
_STATUSES_KEY = "x-kestrel-error-statuses"  # read and removed by document()
_PUBLIC_KEY = "x-kestrel-public"


def answers(*statuses: int, public: bool = False,
            body: dict[str, Any] | None = None) -> dict[str, Any]:
    """A route's ``openapi_extra``: the error statuses it answers besides 400 and, unless it
    is ``public`` (no token), 401, 403 and 429; and its request body's spec when the route
    reads the raw body (FastAPI cannot derive it). :func:`document` states the statuses."""
    extra: dict[str, Any] = {_STATUSES_KEY: list(statuses), _PUBLIC_KEY: public}
    if body is not None:
        extra["requestBody"] = body
    return extra


def document(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """An ``app.openapi`` that describes the answers as they are: each route's error
    statuses (:func:`answers`), every one with :class:`ErrorBody`; 422 is gone; protected
    routes need the bearer scheme."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = original()
        components = spec.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        schemas["ErrorBody"] = ErrorBody.model_json_schema(
            ref_template="#/components/schemas/{model}")
        schemas["FieldProblem"] = FieldProblem.model_json_schema()
        schemas["ErrorBody"].pop("$defs", None)
        # absent, never null: the answer leaves the key out when there is no field error
        errors = schemas["ErrorBody"]["properties"]["errors"]
        errors.pop("anyOf", None)
        errors.pop("default", None)
        errors.update({"type": "array", "items": {"$ref": "#/components/schemas/FieldProblem"}})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        components["securitySchemes"] = {"bearer": {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "A JWT with `role` and `client` claims (`kestrel token` in "
                           "development, the identity provider in production)."}}
        for operations in spec["paths"].values():
            for operation in operations.values():
                _describe(operation, tuple(operation.pop(_STATUSES_KEY, ())),
                          operation.pop(_PUBLIC_KEY, False))
        app.openapi_schema = spec
        return spec

    return openapi


def _describe(operation: dict[str, Any], extra: tuple[int, ...], public: bool) -> None:
    responses = operation.setdefault("responses", {})
    responses.pop("422", None)
    codes = {400, *extra} if public else {400, 401, 403, 429, *extra}
    if not public:
        operation["security"] = [{"bearer": []}]
    for code in sorted(str(c) for c in codes):
        entry = responses.setdefault(code, {})
        entry.setdefault("description", DESCRIPTIONS.get(code, "Error"))
        entry["content"] = {"application/json": {"schema": _ERROR_REF}}
        if code in ERROR_HEADERS:
            entry["headers"] = ERROR_HEADERS[code]
