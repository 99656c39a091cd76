"""The BentoML service: one deployment serving every Kestrel HTTP route.

The routes live in the FastAPI app of ``serving/app.py``, mounted at ``/``; BentoML supplies
the server, worker processes and its own operational endpoints. Start it with
`kestrel serve` (or `bentoml serve serving.service:Kestrel`).
"""

from __future__ import annotations

import bentoml

from kestrel.logs import configure_logging
from kestrel.settings import get_settings
from serving.app import create_app

configure_logging(get_settings().log_level)
http_app = create_app()


@bentoml.service(name="kestrel", traffic={"timeout": 30})
@bentoml.asgi_app(http_app, path="/")
class Kestrel:
    """Ingestion now; decisioning, insights, labels and alerts join as they are built."""
