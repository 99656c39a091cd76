"""Coverage of a training set's features: the share of rows with a value, where one is due.

A feature missing where it should have a value trains a model on NaN that scoring will not
see (the stream serves the value), and XGBoost takes NaN silently; so the training-set builder
measures each feature and stops below ``KESTREL_TRAINING_MIN_COVERAGE``.

Missing by design, not counted: a stream feature of an entity before the entity's first
transaction (a new card has no card row: the view's join finds nothing). So a stream view's
feature is measured over the rows whose entity (card, customer or terminal) has an *earlier*
transaction in the same set, which certainly had a row written before this one; rows of an
entity first seen in the set are left out (they may or may not have earlier history).

Batch features are measured over every row and reported, but the threshold does not apply to
them: their missing values are mostly by design and depend on activity, not on gaps (a
customer without transactions yesterday has no ``customer_avg_amount_1d``, a terminal
without labelled transactions in the window no ``terminal_fraud_risk_*``): measured on the
simulated lake, 67 % to 86 % for the 1-day ones, with every batch partition computed. The
request-time features answer -1 for "no history" and are never missing.

The default 0.95: on complete history a stream feature's coverage is 1.0 over its due rows
(the backfill and the stream write a row per event); a feature added to a deployment with
history and not backfilled is missing on every day before it was deployed, so a week's gap in
a three-week set brings it near 0.67, far below, and named. The margin leaves room for a few
rows the stream dropped as late events and nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from training.errors import TrainingError

STREAM_KEYS = {"card_stream_features": "card_id", "customer_stream_features": "customer_id",
               "terminal_stream_features": "terminal_id"}


@dataclass(frozen=True)
class Coverage:
    """Per feature: rows with a value, rows where one is due, and their share; ``enforced``
    when the threshold applies (stream features)."""

    feature: str
    present: int
    due: int
    enforced: bool = True

    @property
    def share(self) -> float:
        return self.present / self.due if self.due else 1.0


def measure(frame: pd.DataFrame, views: dict[str, list[str]]) -> dict[str, Coverage]:
    """Coverage of every feature of ``views`` (view name → features) in ``frame`` (rows by
    event time, as the builder returns them)."""
    order = frame.sort_values(["event_time", "txn_id"], kind="stable").index
    seen_before = {key: pd.Series(frame.loc[order, key].duplicated(keep="first").to_numpy(),
                                  index=order).reindex(frame.index).to_numpy()
                   for key in set(STREAM_KEYS.values()) if key in frame}
    out = {}
    for view, names in views.items():
        key = STREAM_KEYS.get(view)
        due = seen_before[key] if key in seen_before else np.ones(len(frame), dtype=bool)
        for name in names:
            values = frame[name].to_numpy()
            present = int((~pd.isna(values) & due).sum())
            out[name] = Coverage(name, present, int(due.sum()), enforced=key is not None)
    return out


def check(coverage: dict[str, Coverage], threshold: float, first: str, last: str) -> None:
    """Raise TrainingError naming every feature below ``threshold`` and what fills it; and
    when a batch feature has no value at all (the batch views were never computed for the
    range: not a matter of activity)."""
    empty = [c.feature for c in coverage.values() if not c.enforced and c.due and not c.present]
    if empty:
        raise TrainingError(
            f"batch features without a single value between {first} and {last}: "
            f"{', '.join(empty)}; compute them with `kestrel batch --start {first} --end "
            f"{last}` (or `kestrel training-set --prepare`)")
    low = sorted((c for c in coverage.values() if c.enforced and c.share < threshold),
                 key=lambda c: c.share)
    if not low:
        return
    shown = ", ".join(f"{c.feature} {c.share:.1%}" for c in low)
    raise TrainingError(
        f"stream features below the coverage threshold {threshold:.0%} between {first} and "
        f"{last}: {shown}; fill them with `kestrel backfill --start {first} --end {last}` "
        "(it also fills the log rows the stream wrote before a feature existed), or lower "
        "KESTREL_TRAINING_MIN_COVERAGE if they are missing on purpose")
