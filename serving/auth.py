"""Bearer-token auth: JWTs with a role and a tenant, checked on every route but health.

Development tokens are HS256, signed with ``KESTREL_JWT_SECRET`` (generated under var/ in
dev) and minted by `kestrel token --role R --tenant T`. Roles: ``scorer`` (payment gateway),
``bot`` (AI assistants), ``investigator``, ``admin``; ``admin`` may call everything.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Literal

import jwt

from kestrel.errors import KestrelError
from kestrel.settings import Settings

Role = Literal["scorer", "bot", "investigator", "admin"]
ROLES: tuple[str, ...] = ("scorer", "bot", "investigator", "admin")
ALGORITHM = "HS256"


class AuthError(KestrelError):
    """No or a bad credential (HTTP 401)."""


class Forbidden(KestrelError):
    """A valid credential whose role may not call this route (HTTP 403)."""


@dataclass(frozen=True)
class Principal:
    subject: str
    role: str
    tenant: str


def mint_token(settings: Settings, role: str, tenant: str, ttl_seconds: int = 3600,
               subject: str | None = None) -> str:
    if role not in ROLES:
        raise AuthError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if not tenant:
        raise AuthError("a token needs a tenant")
    now = int(time.time())
    claims = {"sub": subject or f"{role}-{uuid.uuid4().hex[:8]}", "role": role,
              "tenant": tenant, "iss": settings.jwt_issuer, "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, settings.secret("jwt_secret"), algorithm=ALGORITHM)


class Authenticator:
    def __init__(self, settings: Settings):
        self._key = settings.secret("jwt_secret")
        self._issuer = settings.jwt_issuer

    def principal(self, authorization: str | None) -> Principal:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthError("send `Authorization: Bearer <token>` (mint one with `kestrel token`)")
        token = authorization[7:].strip()
        try:
            claims = jwt.decode(token, self._key, algorithms=[ALGORITHM], issuer=self._issuer,
                                options={"require": ["exp", "iat", "sub", "iss"]})
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired; mint a new one") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token ({exc})") from None
        role, tenant = claims.get("role"), claims.get("tenant")
        if role not in ROLES or not isinstance(tenant, str) or not tenant:
            raise AuthError("the token lacks a valid role or tenant claim")
        return Principal(str(claims["sub"]), role, tenant)

    @staticmethod
    def authorize(principal: Principal, allowed: tuple[str, ...]) -> None:
        if principal.role != "admin" and principal.role not in allowed:
            raise Forbidden(f"role {principal.role!r} may not call this route "
                            f"(allowed: {', '.join(allowed)}, admin)")
