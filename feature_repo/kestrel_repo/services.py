"""Feature services: the named, versioned feature sets that consumers ask for.

A model is trained on and served by one service, so its input cannot drift from what it was
trained on; a change of features is a new service version (``_v2``), never an edit of ``_v1``.
"""

from __future__ import annotations

from feast import FeatureService

from kestrel_repo.batch_views import customer_batch_features, terminal_batch_features
from kestrel_repo.common import OWNER, tags
from kestrel_repo.request_views import (
    card_velocity_features,
    customer_context_features,
    txn_request_features,
)
from kestrel_repo.stream_views import (
    card_stream_features,
    customer_stream_features,
    terminal_stream_features,
)

fraud_scoring_v1 = FeatureService(
    name="fraud_scoring_v1",
    features=[
        card_stream_features,
        customer_stream_features,
        terminal_stream_features,
        customer_batch_features,
        terminal_batch_features,
        txn_request_features,
        card_velocity_features,
        customer_context_features,
    ],
    description=("Input of the fraud model behind POST /v1/score: stream windows per card, "
                 "customer and terminal, daily batch aggregates, and request-time features. "
                 "Needs the transaction's amount, event_time_us, lat and lon as request data."),
    owner=OWNER,
    tags=tags("service", consumer="decisioning", model="fraud"),
)

customer_insights_v1 = FeatureService(
    name="customer_insights_v1",
    features=[customer_stream_features, customer_batch_features],
    description=("A customer's recent and habitual spending for GET /v1/users/{id}/insights: "
                 "the customer's stream windows and daily batch aggregates."),
    owner=OWNER,
    tags=tags("service", consumer="insights"),
)
