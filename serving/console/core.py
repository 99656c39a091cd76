"""What every console route shares: the case store and the session store, the signed-in
analyst of a request, form bodies, and the audit record of what an analyst did."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from cases.sessions import ConsoleSessions, SessionView
from cases.store import CaseStore
from kestrel.errors import EventValidationError, FieldError, KestrelError
from serving.auth import Principal
from serving.console.security import check_csrf, session_id_of
from serving.routes.common import RouteContext
from serving.screen import read_body

CONSOLE_ROLES = ("investigator", "admin")
FORM_MAX_BYTES = 64 * 1024  # a note is at most 10,000 characters (cases/store.py)


class SignInRequired(KestrelError):
    """No live session: the page redirects to the sign-in form."""


@dataclass(frozen=True)
class Analyst:
    """The signed-in investigator of a request, and their session."""

    session_id: str
    session: SessionView

    @property
    def subject(self) -> str:
        return self.session.subject

    @property
    def csrf(self) -> str:
        return self.session.csrf_token


class Console:
    """The console's collaborators for one app (see the module doc)."""

    def __init__(self, ctx: RouteContext):
        self.ctx = ctx
        self.settings = ctx.settings
        self.secure_cookies = ctx.settings.env != "dev"
        self._sessions: ConsoleSessions | None = None
        self._sessions_of: CaseStore | None = None
        self._lock = threading.Lock()

    def store(self) -> CaseStore:
        """The worker's case store (built on first use; ServiceUnavailable while its
        database does not answer)."""
        return self.ctx.runtime().case_store()

    def sessions(self) -> ConsoleSessions:
        store = self.store()
        with self._lock:
            if self._sessions is None or self._sessions_of is not store:
                self._sessions = ConsoleSessions(
                    store.engine, ttl_seconds=self.settings.console_session_ttl_seconds,
                    idle_seconds=self.settings.console_idle_timeout_seconds)
                self._sessions_of = store
            return self._sessions

    async def analyst(self, request: Request) -> Analyst:
        """The request's live session, or SignInRequired. The principal goes on the request
        for the access audit (serving/app.py's Observe)."""
        session_id = session_id_of(request)
        if session_id is None:
            raise SignInRequired("sign in to use the console")
        session = await run_in_threadpool(self.sessions().get, session_id)
        if session is None:
            raise SignInRequired("your session has ended; sign in again")
        request.state.principal = Principal(session.subject, session.role, session.client)
        return Analyst(session_id, session)

    async def form(self, request: Request, analyst: Analyst | None = None) -> dict[str, str]:
        """A posted form (urlencoded, at most FORM_MAX_BYTES), its CSRF token checked
        against the analyst's session when one is given. A repeated field keeps its first
        value."""
        body = await read_body(request, FORM_MAX_BYTES, "the console's form limit")
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                              strict_parsing=False, max_num_fields=64)
        except (UnicodeDecodeError, ValueError):
            raise EventValidationError([FieldError("form", "not a form this console sent; "
                                                   "reload the page")]) from None
        form: dict[str, str] = {}
        for name, value in pairs:
            form.setdefault(name, value)
        if analyst is not None:
            check_csrf(analyst.csrf, form)
        return form

    def audit(self, event: str, who: str | None, **detail: Any) -> None:
        """A console record in the audit log (kind ``console``): who did what to which case;
        never a token, never a card number (ids and texts were checked by the store)."""
        self.ctx.runtime().audit.record("console", {
            "at": datetime.now(UTC), "event": event, "sub": who, **detail})
