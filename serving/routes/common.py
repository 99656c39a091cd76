"""What every router shares: the route context (settings, authenticator, the worker's runtime,
event-time bounds), the role each area needs, and the JSON answer."""

from __future__ import annotations

import threading
from typing import Any

import orjson
from fastapi import Request, Response

from kestrel.events import TimeBounds, TransactionIn
from kestrel.settings import Settings
from serving.auth import Authenticator, Principal
from serving.runtime import Runtime

# route area → roles that may call it (admin may call everything); a bot reads insights of
# its own customer only (Authenticator.authorize_customer)
ROLE_MATRIX: dict[str, tuple[str, ...]] = {
    "ingest": ("scorer",),
    "score": ("scorer",),
    "insights": ("bot", "investigator"),
    "top_spenders": ("investigator",),
    "alerts": ("investigator",),
    "labels": ("investigator",),
}


class RouteContext:
    """The collaborators of every route of one app. The runtime (stores, model, publisher) is
    built on its first use, once, so creating the app touches no service."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.auth = Authenticator(settings)
        self.bounds = TimeBounds.from_settings(settings)
        self._runtime: Runtime | None = None
        self._lock = threading.Lock()

    def runtime(self) -> Runtime:
        runtime = self._runtime
        if runtime is None:
            with self._lock:
                if self._runtime is None:
                    self._runtime = Runtime(self.settings)
                runtime = self._runtime
        return runtime

    def guard(self, request: Request, area: str) -> Principal:
        """The caller, authenticated, allowed in ``area`` and within its rate limit (raises
        AuthError, Forbidden, RateLimited); kept on the request for the access audit."""
        principal = self.auth.principal(request.headers.get("authorization"))
        request.state.principal = principal
        self.auth.authorize(principal, ROLE_MATRIX[area])
        self.runtime().limiter.check(principal.client)
        return principal


def json_response(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc, option=orjson.OPT_UTC_Z), status_code=status,
                    media_type="application/json")


def ingest_body_schema(batch_key: str | None = "events", one: bool = True) -> dict[str, Any]:
    """The spec of a request body of transactions (the routes read the raw body): one
    transaction, a batch ``{"events": [...]}``, or either."""
    item = TransactionIn.model_json_schema(ref_template="#/components/schemas/{model}")
    batch = {"type": "object", "required": ["events"], "additionalProperties": False,
             "properties": {"events": {"type": "array", "items": item, "minItems": 1,
                                       "maxItems": 10_000}}}
    schema = {"oneOf": [item, batch]} if one and batch_key else item if one else batch
    return {"required": True, "content": {"application/json": {"schema": schema}}}
