"""Sign-in and sign-out.

``GET /console/sign-in`` shows the form; ``POST /console/sign-in`` takes the token from the
form body (never from a URL), verifies it as the API does (serving/auth.py: HS256 development
tokens from `kestrel token --role investigator`, RS256 from the identity provider), and opens
a server-side session for the ``investigator`` and ``admin`` roles (403 for any other role, the
form again with 401 for a bad or expired token). ``POST /console/sign-out`` revokes the
session. Every attempt, accepted or refused, is in the audit log (never the token).
"""

from __future__ import annotations

import hmac
from urllib.parse import unquote, unquote_plus

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse

from kestrel.errors import AuthError, EventValidationError, Forbidden
from kestrel.pan import pan_like
from serving.console.core import CONSOLE_ROLES, Console
from serving.console.errors import ConsoleRoute
from serving.console.render import page
from serving.console.security import (
    CSRF_FIELD,
    PRE_COOKIE,
    clear_session_cookie,
    pre_sign_in_token,
    secure_headers,
    set_pre_sign_in_cookie,
    set_session_cookie,
)


def safe_next(target: str | None) -> str:
    """Where to go after signing in or an action: a console path only (never another site),
    and never one holding a card number (it would come back in a Location header or the
    sign-in page; serving/screen.py checks URLs, not form fields)."""
    if target and target.startswith("/console/") and not target.startswith("/console//") \
            and "\\" not in target and "\n" not in target and "\r" not in target \
            and not pan_like(unquote(target)) and not pan_like(unquote_plus(target)):
        return target
    return "/console/"


def router(console: Console) -> APIRouter:
    routes = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
    ctx = console.ctx

    def sign_in_page(request: Request, status: int = 200, error: str | None = None,
                     next_url: str = "/console/") -> Response:
        token = pre_sign_in_token(request)
        response = page("sign_in.html", status, csrf=token, error=error, next_url=next_url,
                        env=console.settings.env, headers=(
                            {"WWW-Authenticate": "Bearer"} if status == 401 else None))
        set_pre_sign_in_cookie(response, token, secure=console.secure_cookies)
        return response

    @routes.get("/console/sign-in")
    async def sign_in_form(request: Request) -> Response:
        return sign_in_page(request, next_url=safe_next(request.query_params.get("next")))

    @routes.post("/console/sign-in")
    async def sign_in(request: Request) -> Response:
        form = await console.form(request)
        expected = request.cookies.get(PRE_COOKIE, "")
        given = form.get(CSRF_FIELD, "")
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            console.audit("sign_in_refused", None, reason="csrf")
            raise Forbidden("the sign-in form's security token is missing or out of date; "
                            "open the sign-in page again")
        next_url = safe_next(form.get("next"))
        token = form.get("token", "").strip()
        try:
            principal = ctx.auth.principal(f"Bearer {token}")
        except (AuthError, EventValidationError) as exc:
            console.audit("sign_in_refused", None, reason="token")
            return sign_in_page(request, 401, f"That token was not accepted: {exc}",
                                next_url)
        request.state.principal = principal  # the access audit records the attempt
        if principal.role not in CONSOLE_ROLES:
            console.audit("sign_in_refused", principal.subject, role=principal.role,
                          reason="role")
            raise Forbidden(f"the role {principal.role!r} may not use the investigator "
                            f"console (allowed: {', '.join(CONSOLE_ROLES)}); sign in with "
                            "an investigator's token")
        sessions = console.sessions()
        session_id, session = await run_in_threadpool(
            sessions.create, principal.subject, principal.role, principal.client)
        await run_in_threadpool(sessions.purge)
        console.audit("sign_in", principal.subject, role=principal.role,
                      client=principal.client, expires_at=session.expires_at)
        response = secure_headers(RedirectResponse(next_url, 303))
        set_session_cookie(response, session_id, secure=console.secure_cookies,
                           max_age=console.settings.console_session_ttl_seconds)
        response.delete_cookie(PRE_COOKIE, path="/console", secure=console.secure_cookies,
                               httponly=True, samesite="strict")
        return response

    @routes.post("/console/sign-out")
    async def sign_out(request: Request) -> Response:
        analyst = await console.analyst(request)
        await console.form(request, analyst)
        await run_in_threadpool(console.sessions().revoke, analyst.session_id)
        console.audit("sign_out", analyst.subject)
        response = secure_headers(RedirectResponse("/console/sign-in", 303))
        clear_session_cookie(response, secure=console.secure_cookies)
        return response

    return routes
