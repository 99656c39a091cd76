"""The BentoML service: one deployment serving every Kestrel HTTP route.

The routes live in the FastAPI app of ``serving/app.py``, mounted at ``/``; BentoML supplies
the server and the operational endpoints: ``/healthz`` and ``/livez`` (liveness), ``/readyz``
(ready when Redis and the broker answer and a model is loaded — this class's ``__is_ready__``;
``GET /v1/ready`` shows the checks); the app serves ``/metrics`` itself (Prometheus: the
``kestrel_*`` metrics of serving/metrics.py, summed over the workers). Start it with
`kestrel serve` (or `bentoml serve serving.service:Kestrel`). Each worker loads the champion
model when it starts and runs the case intake thread (KESTREL_CASE_INTAKE, serving/case_intake.py).
"""

from __future__ import annotations

from typing import Any, cast

import bentoml

from kestrel import heap
from kestrel.logs import configure_logging
from kestrel.settings import get_settings
from serving import http_errors
from serving.app import create_app

configure_logging(get_settings().log_level)
http_app = create_app()


# Per-request work BentoML would add that costs as much CPU as a decision on 2 cores is off:
# its access log line (the access audit of serving/audit.py records every authenticated
# call), OpenTelemetry spans (no exporter is configured here; a deployment that wants traces
# empties excluded_urls) and its generic traffic metrics (request count, duration and
# in-flight gauge per endpoint, written to multiprocess files on every request; with them
# off an insights cache hit at 200 req/s measured p99 3.2-6.2 ms, median 3.6, over 8 runs,
# against 4.3-8.0 ms, median 5.4, with them, interleaved). Turning those off also drops
# BentoML's /metrics route, so the app serves /metrics itself (serving/metrics.py), with the
# per-route `kestrel_request_seconds`.
@bentoml.service(name="kestrel", traffic={"timeout": 60}, workers=get_settings().serve_workers,
                 logging={"access": {"enabled": False}}, metrics={"enabled": False},
                 tracing={"excluded_urls": ["/v1/", "/healthz", "/livez", "/readyz",
                                            "/metrics"]})
@bentoml.asgi_app(http_app, path="/")
class Kestrel:
    """Ingestion, decisioning, insights, alerts and labels."""

    def __init__(self) -> None:
        self.runtime = http_app.state.runtime()
        self.runtime.start()
        heap.settle(heap.SERVING_YOUNG_OBJECTS)  # see kestrel/heap.py for what it saved

    @bentoml.on_shutdown
    def stop(self) -> None:
        """Publish what is still queued (decisions linger up to
        KESTREL_DECISION_PUBLISH_LINGER_MS), stop the threads, close the audit files."""
        self.runtime.stop()

    def __is_ready__(self) -> bool:
        return bool(self.runtime.readiness()["ready"])


# BentoML answers itself, in plain text, what it does not hand to the app (a path no route
# matches, a newline in the path): the same error body as the app's (serving/http_errors.py).
cast(Any, Kestrel).add_asgi_middleware(http_errors.PlainErrors)  # the decorator made a Service
