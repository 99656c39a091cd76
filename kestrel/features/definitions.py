"""Kestrel's stream features: the one file a feature is written in.

One line per feature. The stream processor (reference and array engines), the Spark backfill,
the offline feature log, the Feast views, the training set and ``kestrel parity`` all follow
from these lines; docs/add-a-feature.md walks through adding one. A windowed feature is over
``(t - window, t]`` as of each event of its entity at ``t``; ``last`` and ``since_last``
have no window and look back ``max_age``. A feature a model uses also goes into a *new*
version of its feature service (services below): a served version never changes.
"""

from __future__ import annotations

from datetime import timedelta

from kestrel.features.spec import Feature, check_unique

MIN10, H1, H24 = timedelta(minutes=10), timedelta(hours=1), timedelta(hours=24)

FEATURES: tuple[Feature, ...] = check_unique((
    Feature("card", "count", window=MIN10),
    Feature("card", "count", window=H1),
    Feature("card", "count", window=H24),
    Feature("card", "sum", "amount", window=MIN10),
    Feature("card", "sum", "amount", window=H1),
    Feature("card", "sum", "amount", window=H24),
    Feature("card", "distinct", "country", window=H1),
    Feature("card", "distinct", "terminal", window=H1),
    Feature("card", "last", "time", max_age=H24, named="card_last_event_time_us"),
    Feature("card", "last", "lat", max_age=H24, named="card_last_lat"),
    Feature("card", "last", "lon", max_age=H24, named="card_last_lon"),
    Feature("customer", "count", window=H1),
    Feature("customer", "count", window=H24),
    Feature("customer", "sum", "amount", window=H1),
    Feature("customer", "sum", "amount", window=H24),
    Feature("customer", "distinct", "mcc", window=H24),
    Feature("terminal", "count", window=H1),
    Feature("terminal", "count", window=H24),
    Feature("card", "max", "amount", window=H1),
    Feature("card", "count", window=H24, filter="night"),
    Feature("customer", "mean", "amount", window=H24),
))

# Feature services: the named, versioned inputs of a model. A change of a model's inputs is
# a new version; a version that serves a model is never edited (tests/features pin them).
FRAUD_SCORING_V1: tuple[str, ...] = (
    "card_txn_count_10m", "card_txn_count_1h", "card_txn_count_24h", "card_amount_sum_10m",
    "card_amount_sum_1h", "card_amount_sum_24h", "card_distinct_country_1h",
    "card_distinct_terminal_1h", "customer_txn_count_1h", "customer_txn_count_24h",
    "customer_amount_sum_1h", "customer_amount_sum_24h", "customer_distinct_mcc_24h",
    "terminal_txn_count_1h", "terminal_txn_count_24h")
FRAUD_SCORING_V2: tuple[str, ...] = (
    *FRAUD_SCORING_V1, "card_amount_max_1h", "card_night_txn_count_24h",
    "customer_amount_mean_24h")
STREAM_INPUTS: dict[str, tuple[str, ...]] = {
    "fraud_scoring_v1": FRAUD_SCORING_V1,
    "fraud_scoring_v2": FRAUD_SCORING_V2,
}
