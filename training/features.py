"""The fraud model's input: ``MODEL_FEATURES``, in the order the model sees them.

Every name is an output of the Feast feature service FEATURE_SERVICE (the version new models
train on; kestrel/features/definitions.py lists each version's stream inputs),
so serving asks the same service and picks these columns in this order (it reads the order
from the registered model's signature, not by importing this module). Values are float64;
a missing value is NaN. Left out on purpose: identifiers, the card's last event time and
position (raw inputs of ``seconds_since_last_txn`` / ``km_from_last_txn``) and the
customer's home position (input of ``km_from_home``): absolute coordinates and times only
let a model memorise places and dates.
"""

from __future__ import annotations

from kestrel.features import STREAM_INPUTS, FeatureSpecError
from kestrel.windows import batch_windows_for

FEATURE_SERVICE = "fraud_scoring_v2"

REQUEST_FEATURES: tuple[str, ...] = (
    "txn_amount", "txn_hour_of_day", "txn_is_night", "txn_is_weekend",
    "seconds_since_last_txn", "km_from_last_txn", "km_from_home", "amount_to_avg_30d",
)



def model_features(service: str = FEATURE_SERVICE) -> tuple[str, ...]:
    """The inputs of a model trained on feature service ``service``, in model order."""
    if service not in STREAM_INPUTS:
        raise FeatureSpecError(f"no feature service {service!r} (known: "
                               f"{', '.join(STREAM_INPUTS)}); declare its stream inputs in "
                               "kestrel/features/definitions.py")
    return (*REQUEST_FEATURES, *STREAM_INPUTS[service],
            *(w.name for w in batch_windows_for("customer")),
            *(w.name for w in batch_windows_for("terminal")))


MODEL_FEATURES: tuple[str, ...] = model_features()
