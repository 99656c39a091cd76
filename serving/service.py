"""The BentoML service: one deployment serving every Kestrel HTTP route.

The routes live in the FastAPI app of ``serving/app.py``, mounted at ``/``; BentoML supplies
the server and the operational endpoints: ``/healthz`` and ``/livez`` (liveness), ``/readyz``
(ready when Redis and the broker answer and a model is loaded — this class's ``__is_ready__``;
``GET /v1/ready`` shows the checks), ``/metrics`` (Prometheus, with the ``kestrel_*`` metrics
of serving/metrics.py). Start it with `kestrel serve` (or
`bentoml serve serving.service:Kestrel`). Each worker loads the champion model when it starts
and runs the alert-store consumer thread (KESTREL_ALERT_CONSUMER).
"""

from __future__ import annotations

import gc

import bentoml

from kestrel.logs import configure_logging
from kestrel.settings import get_settings
from serving.app import create_app

configure_logging(get_settings().log_level)
http_app = create_app()
GC_YOUNG_OBJECTS = 10_000


# Per-request work BentoML would add that costs as much CPU as a decision on 2 cores is off:
# its access log line (the access audit of serving/audit.py records every authenticated
# call) and OpenTelemetry spans (no exporter is configured here; a deployment that wants
# traces empties excluded_urls). Its generic traffic metrics stay, beside the per-route
# `kestrel_request_seconds` of serving/metrics.py, because turning them off also removes
# /metrics.
@bentoml.service(name="kestrel", traffic={"timeout": 60}, workers=get_settings().serve_workers,
                 logging={"access": {"enabled": False}},
                 tracing={"excluded_urls": ["/v1/", "/healthz", "/livez", "/readyz",
                                            "/metrics"]})
@bentoml.asgi_app(http_app, path="/")
class Kestrel:
    """Ingestion, decisioning, insights, alerts and labels."""

    def __init__(self) -> None:
        self.runtime = http_app.state.runtime()
        self.runtime.start()
        # The worker holds ~470k objects after start-up (Feast, MLflow, XGBoost, pandas); a
        # full collection walks them all and stopped every request for ~300 ms, which was
        # the whole insights p99 (303 -> 47.6 ms). Frozen objects are never scanned.
        gc.collect()
        gc.freeze()
        # A young generation of 10,000 objects instead of 700: a 10,000-transaction batch
        # allocates ~1M objects that live until its response is sent, and with the default
        # thresholds it paid ~160 ms of collections (1,860 young + 169 middle), ~80 ms with
        # these (measured with gc.callbacks). A young collection then takes ~0.5 ms instead
        # of ~0.1 ms, once per 10,000 net allocations instead of 700.
        gc.set_threshold(GC_YOUNG_OBJECTS, 20, 10)

    @bentoml.on_shutdown
    def stop(self) -> None:
        """Publish what is still queued (decisions linger up to
        KESTREL_DECISION_PUBLISH_LINGER_MS), stop the threads, close the audit files."""
        self.runtime.stop()

    def __is_ready__(self) -> bool:
        return bool(self.runtime.readiness()["ready"])
