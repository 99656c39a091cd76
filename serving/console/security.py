"""The console's browser-facing security: the session cookie, CSRF tokens, response headers.

- **Session cookie** ``kestrel_console``: the random session id only (cases/sessions.py keeps
  its hash), ``HttpOnly``, ``SameSite=Strict``, ``Path=/console``, ``Secure`` unless
  ``KESTREL_ENV=dev`` (a laptop on plain http).
- **CSRF**: every POST form carries the session's token in the hidden field ``csrf``,
  compared in constant time. The sign-in form has no session yet: it carries a token that
  must equal a short-lived pre-sign-in cookie (double submit), so another site cannot sign a
  browser in under someone else's token.
- **Headers** on every console answer: a Content-Security-Policy allowing the console's own
  origin only (no inline script, no framing), ``X-Frame-Options: DENY``,
  ``Referrer-Policy: no-referrer``, ``X-Content-Type-Options: nosniff``; pages are
  ``Cache-Control: no-store``.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from fastapi import Request, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from kestrel.errors import Forbidden

COOKIE = "kestrel_console"
PRE_COOKIE = "kestrel_console_signin"  # the sign-in form's double-submit token
COOKIE_PATH = "/console"
PRE_COOKIE_SECONDS = 1800
CSRF_FIELD = "csrf"

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# the printable SAR page is standalone: its styles are inline (still no script at all)
CSP_STANDALONE = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def secure_headers(response: Response, *, page: bool = True, csp: str = CSP) -> Response:
    response.headers["Content-Security-Policy"] = csp
    for name, value in HEADERS.items():
        response.headers[name] = value
    if page:
        response.headers["Cache-Control"] = "no-store"
    return response


def set_session_cookie(response: Response, session_id: str, *, secure: bool,
                       max_age: int) -> None:
    response.set_cookie(COOKIE, session_id, max_age=max_age, path=COOKIE_PATH,
                        secure=secure, httponly=True, samesite="strict")


def clear_session_cookie(response: Response, *, secure: bool) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, secure=secure, httponly=True,
                           samesite="strict")


def session_id_of(request: Request) -> str | None:
    return request.cookies.get(COOKIE) or None


def pre_sign_in_token(request: Request) -> str:
    """The sign-in form's token: the browser's pre-sign-in cookie, or a new one."""
    return request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(32)


def set_pre_sign_in_cookie(response: Response, token: str, *, secure: bool) -> None:
    response.set_cookie(PRE_COOKIE, token, max_age=PRE_COOKIE_SECONDS, path=COOKIE_PATH,
                        secure=secure, httponly=True, samesite="strict")


def check_csrf(expected: str | None, form: dict[str, str]) -> None:
    """Forbidden unless the form's token equals ``expected`` (constant-time compare)."""
    given = form.get(CSRF_FIELD, "")
    if not expected or not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Forbidden("this form's security token is missing or out of date; reload the "
                        "page and submit it again")


class ConsoleStatic(StaticFiles):
    """The console's vendored assets (CSS, the world outline, the favicon), with the
    console's headers; cached for an hour (they change with a release only)."""

    async def get_response(self, path: str, scope: Scope) -> Any:
        response = await super().get_response(path, scope)
        secure_headers(response, page=False)
        if response.status_code == 200:
            response.headers["Cache-Control"] = "public, max-age=3600"
        return response
