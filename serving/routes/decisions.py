"""``POST /v1/score`` and ``POST /v1/score/batch``: decide transactions (role ``scorer``)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from kestrel import heap
from kestrel.errors import EventValidationError, FieldError
from serving.auth import Principal
from serving.decisions import Explain
from serving.http_errors import answers
from serving.ingest import parse_events
from serving.routes.common import RouteContext, ingest_body_schema
from serving.screen import read_body


def router(ctx: RouteContext) -> APIRouter:
    routes = APIRouter()
    settings = ctx.settings

    @routes.post("/v1/score", tags=["decisioning"],
                 summary="Decide one transaction: allow, challenge or decline",
                 openapi_extra=answers(413, body=ingest_body_schema(None)))
    async def score(request: Request) -> Response:
        t0 = time.perf_counter()
        ctx.guard(request, "score")
        body = await read_body(request, settings.max_body_bytes, "KESTREL_MAX_BODY_BYTES")
        rt = ctx.runtime()
        events, prefix = parse_events(body, 1, rt.tokenizer.token)
        if prefix:
            raise EventValidationError([FieldError("$", "send one transaction object; use "
                                                   "/v1/score/batch for several")])
        ctx.bounds.check(events)
        # in the event loop, not a thread: a decision is ~1 ms of CPU under the GIL, and the
        # hop to a worker thread and back costs about as much again; Redis waits at most
        # the score budget (the scoring client's socket timeout).
        [decision] = rt.decider.score(events, t0).encoded
        return Response(decision, media_type="application/json")

    @routes.post("/v1/score/batch", tags=["decisioning"],
                 summary="Decide up to 10,000 transactions in one call",
                 openapi_extra=answers(413, body=ingest_body_schema("events", one=False)))
    async def score_batch(request: Request, reasons: Annotated[Explain, Query(
            description="`flagged` (default): reasons for the challenged and declined "
                        "decisions only; `all`: for every decision (exact SHAP, about seven "
                        "times the cost of the score)")] = "flagged") -> Response:
        t0 = time.perf_counter()
        principal = ctx.guard(request, "score")
        body = await read_body(request, settings.max_batch_body_bytes,
                               "KESTREL_MAX_BATCH_BODY_BYTES")
        with heap.paused():  # its objects die with the request: no collection in between
            answer = await run_in_threadpool(decide_batch, body, t0, reasons, principal)
        return Response(answer, media_type="application/json")

    def decide_batch(body: bytes, t0: float, reasons: Explain, principal: Principal) -> bytes:
        """Parse, charge and decide a batch, in one worker thread. Only the response's bytes
        leave it: the batch's objects are freed before collection resumes, so the first young
        collection after it does not walk them."""
        rt = ctx.runtime()
        events, prefix = parse_events(body, settings.max_batch_events, rt.tokenizer.token)
        if not prefix:
            raise EventValidationError([FieldError("events", "send {\"events\": [...]}")])
        ctx.bounds.check(events, prefix)
        limiter = rt.limiter
        limiter.check(principal.client, limiter.batch_cost(principal.client, len(events),
                                                           reasons == "all"))
        return rt.batch_decider.score(events, t0, reasons).batch_body()

    return routes
