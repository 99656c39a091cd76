"""Ground-truth labels for simulated transactions, as they would arrive later.

Training must only see labels that were known at the time (the point-in-time contract), so a
simulated label is stamped ``event_time + delay``, the way chargebacks and investigations
arrive days after the payment. Every transaction gets one, fraud or legit; the reason is the
scenario's name.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from kestrel.events import SCHEMA_VERSION
from kestrel.lake import LABEL_SCHEMA
from pipelines.simulator.config import SCENARIO_NAMES
from pipelines.simulator.generator import DayBatch

SOURCE = "simulator"
_REASONS = pa.array(
    [SCENARIO_NAMES.get(k, f"scenario_{k}") for k in range(max(SCENARIO_NAMES) + 1)], pa.string()
)


def labels_for(batch: DayBatch, delay_days: float) -> pa.Table:
    """One LABEL_SCHEMA row per transaction of ``batch``, known ``delay_days`` after it."""
    if not math.isfinite(delay_days) or delay_days < 0:
        raise ValueError(f"delay_days must be a finite number >= 0, got {delay_days!r}")
    n = batch.transactions.num_rows
    event_us = batch.transactions["event_time"].combine_chunks().cast(pa.int64())
    delay_us = round(delay_days * 86_400 * 10**6)
    labelled_at = pa.array(event_us.to_numpy() + delay_us, pa.int64()).cast(
        LABEL_SCHEMA.field("labelled_at").type)
    scenario = batch.truth["scenario"].combine_chunks().cast(pa.int64())
    return pa.Table.from_pydict(
        {
            "txn_id": batch.truth["txn_id"],
            "is_fraud": batch.truth["is_fraud"],
            "source": pa.array(np.full(n, SOURCE, dtype=object), pa.string()),
            "analyst_id": pa.nulls(n, pa.string()),
            "reason": _REASONS.take(scenario),
            "labelled_at": labelled_at,
            "schema_version": pa.array(np.full(n, SCHEMA_VERSION, dtype=np.int16)),
        },
        schema=LABEL_SCHEMA,
    )
