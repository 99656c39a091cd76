"""The HTTP routes, one router per area, each built from the app's :class:`RouteContext`:

* ``health`` — ``/metrics`` and ``/v1/ready`` (no token);
* ``events`` — ``POST /v1/events/transactions``, ingest;
* ``decisions`` — ``POST /v1/score`` and ``/v1/score/batch``;
* ``insights`` — a customer's insights and the day's top spenders;
* ``investigation`` — the alert queue and labels.

``direct`` calls the hottest of them straight from the ASGI scope. serving/app.py assembles
the app from these.
"""

from serving.routes.common import RouteContext

__all__ = ["RouteContext"]
