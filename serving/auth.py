"""Bearer-token auth: JWTs naming a role and the calling client, checked on every route but
health, readiness and metrics.

A **client** is the calling system (a payment gateway, an assistant, the console): the
``client`` claim (``tenant`` is read as an alias) names it for rate limits, audit and metrics.
Separating organisations is out of scope. Roles: ``scorer`` (payment gateway), ``bot`` (an AI
assistant acting for one customer: its token names that customer in the claim
``KESTREL_JWT_CUSTOMER_CLAIM``, and a bot token without one is refused), ``investigator``,
``admin`` (everything).

Development and test tokens are HS256, signed with ``KESTREL_JWT_SECRET`` and minted by
`kestrel token` (refused in production). Production tokens come from an identity provider,
signed RS256: the keys are fetched (and cached) from ``KESTREL_JWT_JWKS_URL`` — which turns
HS256 off — or read from the PEM file ``KESTREL_JWT_PUBLIC_KEY_FILE``. ``aud`` is checked when
``KESTREL_JWT_AUDIENCE`` is set; a token living longer than ``KESTREL_TOKEN_TTL_SECONDS`` is
refused. See docs/security.md.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from kestrel.errors import AuthError, ConfigError, EventValidationError, FieldError, Forbidden
from kestrel.events import PAN_LIKE_REASON
from kestrel.pan import pan_like
from kestrel.settings import Settings

ROLES: tuple[str, ...] = ("scorer", "bot", "investigator", "admin")
ALGORITHM = "HS256"
VERIFIED_CACHE_SIZE = 10_000  # distinct live tokens remembered after verification
CLIENT_CLAIMS = ("client", "tenant")  # `tenant` is the claim's earlier name


@dataclass(frozen=True)
class Principal:
    """Who calls: the token's subject, role, client and — for a bot — its one customer."""

    subject: str
    role: str
    client: str
    customer: str | None = None


def mint_token(settings: Settings, role: str, client: str, ttl_seconds: int | None = None,
               subject: str | None = None, customer: str | None = None) -> str:
    """A development token (HS256); refused in production, where an identity provider
    issues the tokens."""
    if settings.env == "prod":
        raise ConfigError("`kestrel token` mints development tokens and is off with "
                          "KESTREL_ENV=prod: get a token from the identity provider "
                          "(KESTREL_ENV=dev is for a laptop)")
    if role not in ROLES:
        raise AuthError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    if not client:
        raise AuthError("a token needs a client (--client)")
    if role == "bot" and not customer:
        raise AuthError("a bot token is scoped to one customer: pass --customer C")
    ttl = settings.token_ttl_seconds if ttl_seconds is None else ttl_seconds
    if not 0 < ttl <= settings.token_ttl_seconds:
        raise AuthError(f"a token may live at most {settings.token_ttl_seconds} s "
                        "(KESTREL_TOKEN_TTL_SECONDS, at most 86400)")
    for name, value in (("client", client), ("subject", subject), ("customer", customer)):
        if value is not None and pan_like(value):
            raise AuthError(f"the {name} {PAN_LIKE_REASON}")
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject or f"{role}-{uuid.uuid4().hex[:8]}", "role": role, "client": client,
        "iss": settings.jwt_issuer, "iat": now, "exp": now + ttl}
    if customer is not None:
        claims[settings.jwt_customer_claim] = customer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    return jwt.encode(claims, settings.secret("jwt_secret"), algorithm=ALGORITHM)


class Authenticator:
    """Verifies bearer tokens (caching the verified ones) and authorises principals."""

    def __init__(self, settings: Settings):
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._customer_claim = settings.jwt_customer_claim
        self._max_ttl = settings.token_ttl_seconds
        self._key: bytes | None = None
        if not settings.jwt_jwks_url and (
                settings.jwt_secret is not None or settings.env == "dev"
                or settings.jwt_public_key_file is None):
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
                                audience=self._audience,
                                options={"require": ["exp", "iat", "sub", "iss"],
                                         "verify_aud": self._audience is not None})
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired; mint a new one") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token ({exc})") from None
        if float(claims["exp"]) - float(claims["iat"]) > self._max_ttl:
            raise AuthError(f"the token lives longer than {self._max_ttl} s "
                            "(KESTREL_TOKEN_TTL_SECONDS); ask for a shorter-lived one")
        return self._principal(claims), float(claims["exp"])

    def _principal(self, claims: dict[str, Any]) -> Principal:
        role = claims.get("role")
        client = next((claims[c] for c in CLIENT_CLAIMS if claims.get(c)), None)
        if role not in ROLES or not isinstance(client, str) or not client:
            raise AuthError("the token lacks a valid role or client claim")
        subject = str(claims["sub"])
        customer = claims.get(self._customer_claim)
        if role == "bot" and (not isinstance(customer, str) or not customer):
            raise AuthError(f"a bot token must name its customer in the "
                            f"{self._customer_claim!r} claim")
        for name, value in (("sub", subject), ("client", client), ("customer", customer)):
            if isinstance(value, str) and pan_like(value):
                raise EventValidationError([FieldError(f"authorization.{name}",
                                                       PAN_LIKE_REASON)])
        return Principal(subject, str(role), client,
                         customer if isinstance(customer, str) else None)

    @staticmethod
    def authorize(principal: Principal, allowed: tuple[str, ...]) -> None:
        if principal.role != "admin" and principal.role not in allowed:
            raise Forbidden(f"role {principal.role!r} may not call this route "
                            f"(allowed: {', '.join(allowed)}, admin)")

    @staticmethod
    def authorize_customer(principal: Principal, customer_id: str) -> None:
        """A bot reads its own customer only."""
        if principal.role == "bot" and principal.customer != customer_id:
            raise Forbidden("this bot token is scoped to another customer")
