"""The HTTP application (FastAPI, mounted in the BentoML service of ``serving/service.py``).

The routes live in routers by area (serving/routes/); this module assembles them with the
error handlers and the middlewares. Routes and roles (``admin`` may call everything; health,
readiness and metrics need no token and are BentoML's own endpoints, see serving/service.py):

| route | roles |
|---|---|
| ``POST /v1/events/transactions`` | scorer |
| ``POST /v1/score``, ``POST /v1/score/batch`` | scorer |
| ``GET /v1/users/{customer_id}/insights`` | bot (its own customer only), investigator |
| ``GET /v1/insights/top-spenders`` | investigator |
| ``GET /v1/alerts``, ``POST /v1/labels`` | investigator |
| ``/console/…`` (the console's pages and forms; not in the spec) | investigator (signed in) |

Every authenticated call passes the client's rate limit (a batch costs in proportion to its
size) and leaves an access audit record. A URL holding a card number is refused before any of
that (serving/screen.py); bodies are capped while they are read. Errors follow one shape and
one table (serving/http_errors.py): 400 invalid input with every field's path, 401/403 auth,
404 unknown, 413 body or batch too large, 429 rate limited (with Retry-After), 503 a store or
the broker unavailable, or (ingest, labels) the audit log unable to write; ``/v1/score``
still decides then and says ``audited: false``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from kestrel.settings import Settings, get_settings
from serving import http_errors, metrics
from serving.auth import Principal
from serving.console.mount import install as install_console
from serving.routes import decisions, events, health, insights, investigation
from serving.routes.common import RouteContext
from serving.routes.direct import DirectRoutes
from serving.screen import Screen


class Observe:
    """Latency metric of every HTTP call and access audit of every authenticated call and
    every 401 / 403, as plain ASGI middleware (Starlette's BaseHTTPMiddleware costs more per
    request than a whole decision)."""

    def __init__(self, app: Any, runtime: Any):
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def sent(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            elapsed = time.perf_counter() - t0
            path = getattr(scope.get("route"), "path", "unmatched")
            metrics.REQUEST_SECONDS.labels(path, scope["method"], str(status)).observe(elapsed)
            principal: Principal | None = (scope.get("state") or {}).get("principal")
            if principal is not None or status in (401, 403):  # refusals too, never the token
                self.runtime().audit.record("access", {
                    "at": datetime.now(UTC), "sub": getattr(principal, "subject", None),
                    "role": getattr(principal, "role", None),
                    "client": getattr(principal, "client", None),
                    "method": scope["method"], "route": path, "path": scope["path"],
                    "status": status, "ms": round(elapsed * 1000, 3)})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    settings.check_secrets()  # outside dev the service does not start without its secrets
    app = FastAPI(title="Kestrel", version="0.2.0",
                  description="Real-time fraud decisions, customer insights, alerts and labels.")
    ctx = RouteContext(settings)
    app.state.runtime = ctx.runtime
    http_errors.install(app)
    app.openapi = http_errors.document(app)  # type: ignore[method-assign]
    routers = [area.router(ctx) for area in (health, events, decisions, insights, investigation)]
    for router in routers:
        app.include_router(router)
    install_console(app, ctx)  # /console: server-rendered pages (serving/console/)
    routes = {r.path: r for router in routers for r in router.routes if isinstance(r, APIRoute)}
    # the hottest routes, called past FastAPI's router (serving/routes/direct.py)
    app.state.direct_routes = [
        ("POST", routes["/v1/score"], {}),
        ("GET", routes["/v1/users/{customer_id}/insights"], {"fresh": False, "fields": None})]
    app.add_middleware(DirectRoutes, routes=app.state.direct_routes,
                       handlers=app.exception_handlers)
    app.add_middleware(Observe, runtime=ctx.runtime)
    app.add_middleware(Screen)  # added last: the outermost, before audit and logs
    return app
