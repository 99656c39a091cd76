"""Errors as console pages: every console route answers in HTML, never the API's JSON, and
never a stack trace.

- no live session: 303 to the sign-in page;
- the case store's database does not answer: 503 "The case store is unavailable…" with
  Retry-After;
- a stale version, or an action the case's status does not allow: 409 "This case changed
  since you opened it" with a reload link;
- invalid input (a note with a card number, a bad filter): 400 with what to change;
- an unknown case, action or outcome: 404;
- a role other than investigator or admin, a missing or wrong CSRF token: 403;
- anything else: 500, logged with its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from kestrel.errors import (
    BodyTooLarge,
    CaseStoreUnavailable,
    Conflict,
    EventValidationError,
    Forbidden,
    NotFound,
    RateLimited,
    ServiceUnavailable,
)
from kestrel.pan import redact_pans
from serving.console.core import SignInRequired
from serving.console.render import page
from serving.console.security import secure_headers

log = logging.getLogger("kestrel.console")
STORE_RETRY_AFTER_S = 5


def store_down(exc: BaseException) -> bool:
    """Whether ``exc`` says the case store's database does not answer."""
    if isinstance(exc, CaseStoreUnavailable | DisconnectionError | PoolTimeout):
        return True
    if isinstance(exc, DBAPIError):  # OperationalError, InterfaceError: the connection
        return exc.connection_invalidated or type(exc).__name__ in (
            "OperationalError", "InterfaceError")
    return False


def sign_in_redirect(request: Request) -> Response:
    target = request.url.path if request.method == "GET" else "/console/"
    if request.method == "GET" and request.url.query:
        target += "?" + request.url.query
    response = RedirectResponse("/console/sign-in?next=" + quote(target, safe=""), 303)
    return secure_headers(response)


def error_page(request: Request, exc: BaseException) -> Response:
    """The console's answer to ``exc`` (see the module doc)."""
    if isinstance(exc, SignInRequired):
        return sign_in_redirect(request)
    if store_down(exc):
        log.warning("case store unavailable: %s", type(exc).__name__)
        return _error(503, "The case store is unavailable",
                      "The console cannot reach the case store's database right now. The "
                      "cases are safe in it, and the case intake keeps new alerts until it "
                      "answers again; scoring is not affected. Try again in a few seconds.",
                      headers={"Retry-After": str(STORE_RETRY_AFTER_S)}, retry=True)
    if isinstance(exc, Conflict):
        # the store's words for a stale version or a status that no longer allows it
        stale = "changed since" in str(exc) or "cannot" in str(exc)
        return _error(409, "This case changed since you opened it" if stale else
                      "That action is not possible now",
                      f"{str(exc).rstrip('.')}. Nothing was changed by your action: reload "
                      "the case to see its current state, then act again.",
                      reload=_case_of(request))
    if isinstance(exc, Forbidden):
        return _error(403, "Not allowed", str(exc))
    if isinstance(exc, NotFound):
        return _error(404, "Not found", str(exc))
    if isinstance(exc, EventValidationError):
        reasons = "; ".join(f"{e.path}: {e.reason}" for e in exc.errors)
        return _error(400, "Please check what you entered", reasons,
                      reload=_case_of(request))
    if isinstance(exc, RequestValidationError):
        reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                            for e in exc.errors())
        return _error(400, "Please check the address", redact_pans(reasons))
    if isinstance(exc, BodyTooLarge):
        return _error(413, "Too much text", str(exc))
    if isinstance(exc, RateLimited):
        return _error(429, "Too many requests", str(exc),
                      headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, ServiceUnavailable):
        return _error(503, "A service is unavailable", str(exc),
                      headers={"Retry-After": "1"}, retry=True)
    if isinstance(exc, HTTPException):
        return _error(exc.status_code, "Error", str(exc.detail))
    log.error("console error: %s", type(exc).__name__, exc_info=exc)
    return _error(500, "Something went wrong",
                  "The console could not answer this request; the service log has the "
                  "details.")


def _case_of(request: Request) -> str | None:
    case_id = request.path_params.get("case_id")
    return f"/console/cases/{case_id}" if case_id is not None else None


def _error(status: int, title: str, message: str, *, headers: dict[str, str] | None = None,
           reload: str | None = None, retry: bool = False) -> Response:
    return page("error.html", status, headers=headers, title=title,
                message=redact_pans(message), reload=reload, retry=retry)


class ConsoleRoute(APIRoute):
    """A route whose errors are console pages (:func:`error_page`), not JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:  # every error becomes a page
                return error_page(request, exc)

        return answer
