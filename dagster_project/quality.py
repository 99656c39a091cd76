"""Data-quality measurements that the asset checks turn into pass / warn / fail.

Plain functions over Arrow / pandas, so a check's arithmetic is testable without Dagster and
the same numbers can be printed by a CLI. Each returns the measured values; the thresholds
live in the checks (dagster_project/checks.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Measured:
    passed: bool
    metadata: dict[str, object]


def null_rates(frame: pd.DataFrame, columns: list[str] | None = None) -> dict[str, float]:
    cols = columns or list(frame.columns)
    if not len(frame):
        return dict.fromkeys(cols, 0.0)
    return {c: float(frame[c].isna().mean()) for c in cols}


def check_null_rates(frame: pd.DataFrame, limits: dict[str, float]) -> Measured:
    """Each column's share of nulls must stay at or below its limit."""
    rates = null_rates(frame, list(limits))
    worst = {c: r for c, r in rates.items() if r > limits[c]}
    return Measured(not worst, {"null_rates": rates, "over_limit": worst})


def check_ranges(frame: pd.DataFrame, ranges: dict[str, tuple[float, float]]) -> Measured:
    """Non-null values of each column must lie within [low, high]."""
    out: dict[str, object] = {}
    bad: dict[str, int] = {}
    for col, (low, high) in ranges.items():
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)
        values = values[~np.isnan(values)]
        n_bad = int(((values < low) | (values > high)).sum())
        out[col] = {"min": float(values.min()) if len(values) else None,
                    "max": float(values.max()) if len(values) else None,
                    "allowed": [low, high], "outside": n_bad}
        if n_bad:
            bad[col] = n_bad
    return Measured(not bad, {"ranges": out, "outside": bad})


def check_row_count(rows: int, minimum: int) -> Measured:
    return Measured(rows >= minimum, {"rows": rows, "minimum": minimum})


def check_freshness(newest: datetime | None, partition_day: date,
                    max_lag: timedelta) -> Measured:
    """Data time, not wall time: the newest row must reach within ``max_lag`` of the end of
    the partition's day (simulated data lives in 2018; a wall-clock check would always fail,
    and in production the two coincide)."""
    end = datetime.combine(partition_day + timedelta(days=1), datetime.min.time())
    if newest is None:
        return Measured(False, {"newest": None, "partition_end": end.isoformat()})
    newest_naive = newest.replace(tzinfo=None)
    lag = end - newest_naive
    return Measured(lag <= max_lag, {"newest": newest_naive.isoformat(),
                                     "partition_end": end.isoformat(),
                                     "lag_hours": round(lag.total_seconds() / 3600, 2),
                                     "max_lag_hours": max_lag.total_seconds() / 3600})
