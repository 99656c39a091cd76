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

import bentoml

from kestrel.logs import configure_logging
from kestrel.settings import get_settings
from serving.app import create_app

configure_logging(get_settings().log_level)
http_app = create_app()


# BentoML's per-request access log line is off: the access audit (serving/audit.py) records
# every authenticated call, and a log line per request costs more than a decision.
@bentoml.service(name="kestrel", traffic={"timeout": 60},
                 logging={"access": {"enabled": False}})
@bentoml.asgi_app(http_app, path="/")
class Kestrel:
    """Ingestion, decisioning, insights, alerts and labels."""

    def __init__(self) -> None:
        self.runtime = http_app.state.runtime()
        self.runtime.start()

    def __is_ready__(self) -> bool:
        return bool(self.runtime.readiness()["ready"])
