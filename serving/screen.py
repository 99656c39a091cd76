"""The HTTP edge's first checks, before anything is logged, audited or read in full.

:class:`Screen` is the outermost ASGI middleware: a request whose URL path or query holds a
PAN-like value (kestrel.pan) is answered 400 with the place (``path``, ``query.<name>``)
before a route, the access audit or a log line sees it. :func:`read_body` reads a body in
chunks and answers 413 as soon as it passes its route's cap — a declared Content-Length over
the cap is refused before a byte is read, and a chunked upload is cut off as it goes.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson
from fastapi import Request

from kestrel.errors import BodyTooLarge, EventValidationError, FieldError
from kestrel.events import PAN_LIKE_REASON
from kestrel.pan import pan_like


def url_problems(path: str, query: bytes) -> list[FieldError]:
    """Where the URL holds a PAN-like value (percent-decoded, ``+`` as a space)."""
    problems = []
    if pan_like(unquote(path)):
        problems.append(FieldError("path", PAN_LIKE_REASON))
    if query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if pan_like(name) or pan_like(value):
                shown = "query" if pan_like(name) else f"query.{name}"
                problems.append(FieldError(shown, PAN_LIKE_REASON))
    return problems


class Screen:
    """Refuses PAN-like URLs with 400 before the rest of the app sees the request."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            problems = url_problems(scope.get("raw_path", b"").decode("latin-1")
                                    or scope["path"], scope.get("query_string", b""))
            if problems:
                await _reject(send, EventValidationError(problems))
                return
        await self.app(scope, receive, send)


async def _reject(send: Any, exc: EventValidationError) -> None:
    body = orjson.dumps({"error": "invalid_request", "message": str(exc),
                         "errors": [e.as_dict() for e in exc.errors]})
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def read_body(request: Request, limit: int, setting: str) -> bytes:
    """The request's body, at most ``limit`` bytes; BodyTooLarge (413) as soon as more
    is declared or arrives."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyTooLarge(limit, setting)
        except ValueError:
            raise EventValidationError([FieldError("content-length",
                                                   "must be a whole number")]) from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit, setting)
        chunks.append(chunk)
    return b"".join(chunks)
