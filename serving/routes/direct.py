"""The hottest routes (``/v1/score``, a customer's insights) called straight from the ASGI
scope, as ASGI middleware; every other request goes through FastAPI's router."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.routing import APIRoute


class DirectRoutes:
    """The hottest routes called straight from the ASGI scope, past FastAPI's router, route
    wrappers and dependency solving (a few percent of a decision's CPU). Each is still a
    FastAPI route — the OpenAPI spec and any other caller go through it — and runs
    inside the middlewares above it (``Observe``: latency metric, access audit). A route
    qualifies when its parameters are the ``Request``, path parameters and a few query
    parameters with defaults; a request whose query this class would have to interpret (an
    unknown or repeated name, a flag other than ``true`` / ``false``) goes through FastAPI.
    Exceptions get the app's own exception handlers, so the answers are the same either way
    (a test compares both)."""

    def __init__(self, app: Any, routes: list[tuple[str, APIRoute, dict[str, Any]]],
                 handlers: dict[Any, Any]):
        self.app = app
        self.routes = routes  # (method, route, {query parameter: default}); filled later
        self.handlers = handlers  # the app's exception handlers, by exception class

    def _match(self, scope: Any) -> tuple[APIRoute, dict[str, Any]] | None:
        if scope["type"] != "http" or scope.get("root_path"):
            return None
        for method, route, query in self.routes:
            found = route.path_regex.match(scope["path"]) if scope["method"] == method else None
            if found is None:
                continue
            args = {name: route.param_convertors[name].convert(value)
                    for name, value in found.groupdict().items()}
            args.update(query)
            raw = scope.get("query_string")
            if raw:
                pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
                names = [name for name, _ in pairs]
                if len(set(names)) < len(names) or not set(names) <= query.keys():
                    return None
                for name, value in pairs:
                    if isinstance(query[name], bool):
                        if value not in ("true", "false"):
                            return None
                        args[name] = value == "true"
                    else:
                        args[name] = value
            return route, args
        return None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        hit = self._match(scope)
        if hit is None:
            await self.app(scope, receive, send)
            return
        route, args = hit
        scope["route"] = route  # what Observe labels the metric with
        request = Request(scope, receive)
        try:
            response = await route.endpoint(request, **args)
        except Exception as exc:
            handler = next((self.handlers[c] for c in type(exc).__mro__
                            if c in self.handlers), None)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)
