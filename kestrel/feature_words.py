"""How feature values read to people (a decision's reasons, the console's case page), declared
once beside the features.

- :data:`MISSING_WHEN_NEGATIVE`: the request-time features that take ``-1.0`` when there is
  nothing to measure from (feature_repo/kestrel_repo/request_views.py at scoring time,
  training/features.py for training sets): no earlier payment on the card, no home location,
  no 30-day average. The value is a sentinel for the model, never a number to show: what
  it means is said in words instead.
- :data:`WHOLE_NUMBERS`: the features declared as counts (``int64``, or a batch window's
  ``count``), said without decimals.
"""

from __future__ import annotations

from dataclasses import dataclass

from kestrel.features import FEATURES
from kestrel.windows import BATCH_WINDOWS


@dataclass(frozen=True)
class Missing:
    """What a sentinel value of a feature means: as a reason's sentence, and as a value in a
    table."""

    sentence: str
    value: str


_NO_EARLIER = Missing("the card has no earlier payment to compare with", "no previous payment")
MISSING_WHEN_NEGATIVE: dict[str, Missing] = {
    "seconds_since_last_txn": _NO_EARLIER,
    "km_from_last_txn": _NO_EARLIER,
    "km_from_home": Missing("the customer's home location is not known", "unknown"),
    "amount_to_avg_30d": Missing("the customer has no 30-day average amount yet", "unknown"),
}

WHOLE_NUMBERS = frozenset({f.name for f in FEATURES if f.dtype == "int64"}
                          | {w.name for w in BATCH_WINDOWS if w.aggregation == "count"})


def missing(feature: str, value: float) -> Missing | None:
    """What ``value`` of ``feature`` means when it is a sentinel (or NaN); None for a value
    to show as it is."""
    if value != value:  # NaN: not read
        return Missing(f"{feature.replace('_', ' ')} is not known", "unknown")
    if feature in MISSING_WHEN_NEGATIVE and value < 0:
        return MISSING_WHEN_NEGATIVE[feature]
    return None
