"""The fraud model's input: ``MODEL_FEATURES``, in the order the model sees them.

Every name is an output of the Feast feature service ``fraud_scoring_v1`` (FEATURE_SERVICE),
so serving asks the same service and picks these columns in this order (it reads the order
from the registered model's signature, not by importing this module). Values are float64;
a missing value is NaN. Left out on purpose: identifiers, the card's last event time and
position (raw inputs of ``seconds_since_last_txn`` / ``km_from_last_txn``) and the
customer's home position (input of ``km_from_home``): absolute coordinates and times only
let a model memorise places and dates.
"""

from __future__ import annotations

from kestrel.windows import batch_windows_for, windows_for

FEATURE_SERVICE = "fraud_scoring_v1"

REQUEST_FEATURES: tuple[str, ...] = (
    "txn_amount", "txn_hour_of_day", "txn_is_night", "txn_is_weekend",
    "seconds_since_last_txn", "km_from_last_txn", "km_from_home", "amount_to_avg_30d",
)

MODEL_FEATURES: tuple[str, ...] = (
    *REQUEST_FEATURES,
    *(w.name for w in windows_for("card")),
    *(w.name for w in windows_for("customer")),
    *(w.name for w in windows_for("terminal")),
    *(w.name for w in batch_windows_for("customer")),
    *(w.name for w in batch_windows_for("terminal")),
)
