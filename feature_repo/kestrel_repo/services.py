"""Feature services: the named, versioned feature sets that consumers ask for.

A model is trained on and served by one service, so its input cannot drift from what it was
trained on; a change of features is a new service version (``_v2``), never an edit of ``_v1``.

The fraud services are built from ``STREAM_INPUTS`` (kestrel/features/definitions.py): each
stream view enters as a *projection* (``view[[names]]``) holding that version's stream inputs
plus what its on-demand views read (the card's last time and position), so adding a feature to
a stream view leaves every existing version as it was. feature_repo/services.lock.json pins
each version's outputs; tests/features/test_services_lock.py refuses an edit of a locked one.
"""

from __future__ import annotations

from feast import FeatureService, FeatureView

from kestrel.features import STREAM_INPUTS, feature
from kestrel.windows import stream_view_name
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

STREAM_VIEWS: tuple[FeatureView, ...] = (card_stream_features, customer_stream_features,
                                         terminal_stream_features)
ON_DEMAND = (txn_request_features, card_velocity_features, customer_context_features)


def _stream_projections(service: str) -> list[FeatureView]:
    """Each stream view narrowed to the service's stream inputs and the stored features its
    on-demand views read, in the view's declared order (the order online reads return)."""
    wanted = set(STREAM_INPUTS[service])
    for odfv in ON_DEMAND:
        for projection in odfv.source_feature_view_projections.values():
            wanted |= {f.name for f in projection.features}
    by_view = {stream_view_name(feature(n).entity) for n in STREAM_INPUTS[service]}
    out = []
    for view in STREAM_VIEWS:
        names = [f.name for f in view.features if f.name in wanted]
        if names or view.name in by_view:
            out.append(view[names])
    return out


def fraud_service(name: str, description: str, status: str) -> FeatureService:
    """A version of the fraud model's input: its stream projections, the daily batch views
    and the request-time views."""
    return FeatureService(
        name=name,
        features=[*_stream_projections(name), customer_batch_features, terminal_batch_features,
                  *ON_DEMAND],
        description=description,
        owner=OWNER,
        tags=tags("service", consumer="decisioning", model="fraud", status=status),
    )


_NEEDS = ("Needs the transaction's amount, event_time_us, lat and lon as request data.")

fraud_scoring_v1 = fraud_service(
    "fraud_scoring_v1",
    "Input of fraud models trained before issue 29 (the champion until it is retired): 15 "
    "stream windows per card, customer and terminal, daily batch aggregates and request-time "
    f"features. {_NEEDS}",
    status="serving")

fraud_scoring_v2 = fraud_service(
    "fraud_scoring_v2",
    "v1 plus the card's largest amount in the hour, its night transactions in 24 h and the "
    f"customer's mean amount in 24 h: what new fraud models train on. {_NEEDS}",
    status="training")

customer_insights_v1 = FeatureService(
    name="customer_insights_v1",
    features=[customer_stream_features, customer_batch_features],
    description=("A customer's recent and habitual spending for GET /v1/users/{id}/insights: "
                 "the customer's stream windows and daily batch aggregates."),
    owner=OWNER,
    tags=tags("service", consumer="insights"),
)
