"""Bearer-token auth: JWTs with a role and a tenant, checked on every route but health.

Development tokens are HS256, signed with ``KESTREL_JWT_SECRET`` (generated under var/ in
dev) and minted by `kestrel token --role R --tenant T`. Production tokens come from an identity
provider, signed RS256: the keys are fetched (and cached) from ``KESTREL_JWT_JWKS_URL``, or
read from the PEM file ``KESTREL_JWT_PUBLIC_KEY_FILE``. The token header's ``alg`` picks the
path; an algorithm with no key configured is refused. Roles: ``scorer`` (payment gateway),
``bot`` (AI assistants), ``investigator``, ``admin``; ``admin`` may call everything.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt

from kestrel.errors import KestrelError
from kestrel.settings import Settings

Role = Literal["scorer", "bot", "investigator", "admin"]
ROLES: tuple[str, ...] = ("scorer", "bot", "investigator", "admin")
ALGORITHM = "HS256"
VERIFIED_CACHE_SIZE = 10_000  # distinct live tokens remembered after verification


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
        self._issuer = settings.jwt_issuer
        self._key: bytes | None = None
        if settings.jwt_secret is not None or settings.env == "dev" or not (
                settings.jwt_jwks_url or settings.jwt_public_key_file):
            self._key = settings.secret("jwt_secret")
        self._public_key: str | None = None
        if settings.jwt_public_key_file is not None:
            self._public_key = Path(settings.jwt_public_key_file).read_text()
        # token → (principal, exp): signature checks cost more than the rest of a decision
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._jwks = jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True, lifespan=300) \
            if settings.jwt_jwks_url else None

    def _verification_key(self, token: str) -> tuple[Any, str]:
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token ({exc})") from None
        if alg == ALGORITHM and self._key is not None:
            return self._key, ALGORITHM
        if alg == "RS256" and self._jwks is not None:
            try:
                return self._jwks.get_signing_key_from_jwt(token).key, "RS256"
            except jwt.PyJWKClientError as exc:
                raise AuthError(f"no signing key for this token ({exc})") from None
        if alg == "RS256" and self._public_key is not None:
            return self._public_key, "RS256"
        raise AuthError(f"tokens signed with {alg!r} are not accepted here")

    def principal(self, authorization: str | None) -> Principal:
        """The caller of a request; a token verified before is looked up, not re-verified
        (its expiry is still checked on every call)."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthError("send `Authorization: Bearer <token>` (mint one with `kestrel token`)")
        token = authorization[7:].strip()
        known = self._verified.get(token)
        if known is not None:
            principal, expires = known
            if time.time() < expires:
                return principal
            self._verified.pop(token, None)
        principal, expires = self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()  # crude, bounded; a busy service re-verifies once
        self._verified[token] = (principal, expires)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        key, alg = self._verification_key(token)
        try:
            claims = jwt.decode(token, key, algorithms=[alg], issuer=self._issuer,
                                options={"require": ["exp", "iat", "sub", "iss"]})
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired; mint a new one") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token ({exc})") from None
        role, tenant = claims.get("role"), claims.get("tenant")
        if role not in ROLES or not isinstance(tenant, str) or not tenant:
            raise AuthError("the token lacks a valid role or tenant claim")
        return Principal(str(claims["sub"]), role, tenant), float(claims["exp"])

    @staticmethod
    def authorize(principal: Principal, allowed: tuple[str, ...]) -> None:
        if principal.role != "admin" and principal.role not in allowed:
            raise Forbidden(f"role {principal.role!r} may not call this route "
                            f"(allowed: {', '.join(allowed)}, admin)")
