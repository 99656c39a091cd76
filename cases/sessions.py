"""The investigator console's sessions, kept by the server in the case store's database
(table ``console_sessions``, models.ConsoleSession).

The browser holds only a random 32-byte session id (an HttpOnly cookie); the table keeps its
SHA-256, never the id itself, nor the token that opened the session. A session ends at the
first of: its expiry (``ttl``, counted from sign-in), ``idle`` seconds without a request, or
sign-out (``revoked_at``). Each session carries its own CSRF token, which every form of the
console posts back.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, or_, select, update
from sqlalchemy.orm import sessionmaker

from cases.models import ConsoleSession, utcnow
from cases.records import check_text

ID_BYTES = 32
TOUCH_EVERY = timedelta(seconds=30)  # last_seen_at is written at most this often


@dataclass(frozen=True)
class SessionView:
    """A live session: who signed in, the forms' CSRF token and when it ends."""

    subject: str
    role: str
    client: str
    csrf_token: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


def id_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class ConsoleSessions:
    """Create, look up, touch and revoke console sessions on one engine."""

    def __init__(self, engine: Engine, *, ttl_seconds: int, idle_seconds: int):
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self.ttl = timedelta(seconds=ttl_seconds)
        self.idle = timedelta(seconds=idle_seconds)

    def create(self, subject: str, role: str, client: str,
               now: datetime | None = None) -> tuple[str, SessionView]:
        """A new session: (its id, for the cookie only; the session)."""
        check_text("subject", subject, 256)
        check_text("client", client, 128)
        now = now or utcnow()
        session_id = secrets.token_urlsafe(ID_BYTES)
        row = ConsoleSession(id_hash=id_hash(session_id), subject=subject, role=role,
                             client=client, csrf_token=secrets.token_urlsafe(32),
                             created_at=now, last_seen_at=now, expires_at=now + self.ttl)
        with self._sessions.begin() as s:
            s.add(row)
        return session_id, _view(row)

    def get(self, session_id: str, now: datetime | None = None) -> SessionView | None:
        """The live session of this id, its last use recorded; None when there is none, or
        it expired, idled out or was revoked."""
        if not session_id or len(session_id) > 128:
            return None
        now = now or utcnow()
        key = id_hash(session_id)
        with self._sessions() as s:
            row = s.get(ConsoleSession, key)
            if row is None or not _live(row, now, self.idle):
                return None
            view = _view(row)
        if now - view.last_seen_at >= TOUCH_EVERY:
            with self._sessions.begin() as s:
                s.execute(update(ConsoleSession).where(ConsoleSession.id_hash == key)
                          .values(last_seen_at=now))
        return view

    def revoke(self, session_id: str, now: datetime | None = None) -> bool:
        """End the session (sign-out); False when there was no live one."""
        with self._sessions.begin() as s:
            result = s.execute(update(ConsoleSession).where(
                ConsoleSession.id_hash == id_hash(session_id),
                ConsoleSession.revoked_at.is_(None)).values(revoked_at=now or utcnow()))
            return bool(getattr(result, "rowcount", 0))

    def purge(self, now: datetime | None = None) -> int:
        """Delete sessions that have expired or were revoked more than a ttl ago."""
        now = now or utcnow()
        with self._sessions.begin() as s:
            result = s.execute(delete(ConsoleSession).where(or_(
                ConsoleSession.expires_at < now,
                ConsoleSession.revoked_at < now - self.ttl)))
            return int(getattr(result, "rowcount", 0) or 0)

    def count_live(self, now: datetime | None = None) -> int:
        now = now or utcnow()
        with self._sessions() as s:
            rows = s.scalars(select(ConsoleSession).where(
                ConsoleSession.expires_at > now, ConsoleSession.revoked_at.is_(None)))
            return sum(1 for r in rows if _live(r, now, self.idle))


def _live(row: ConsoleSession, now: datetime, idle: timedelta) -> bool:
    return row.revoked_at is None and now < row.expires_at and now - row.last_seen_at < idle


def _view(row: ConsoleSession) -> SessionView:
    return SessionView(row.subject, row.role, row.client, row.csrf_token, row.created_at,
                       row.last_seen_at, row.expires_at)
