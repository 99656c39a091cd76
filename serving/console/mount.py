"""Puts the console on the app: its routers and its static files."""

from __future__ import annotations

from fastapi import FastAPI

from serving.console import routes_auth, routes_cases, routes_report
from serving.console.core import Console
from serving.console.render import STATIC
from serving.console.security import ConsoleStatic
from serving.routes.common import RouteContext


def install(app: FastAPI, ctx: RouteContext) -> None:
    """The console's routes and static files on ``app``."""
    console = Console(ctx)
    for area in (routes_auth, routes_cases, routes_report):
        app.include_router(area.router(console))
    app.mount("/console/static", ConsoleStatic(directory=STATIC), name="console-static")
