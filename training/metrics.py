"""Fraud-detection metrics, as the handbook defines them.

- AUC ROC and Average Precision over the transactions of a test window (threshold-free);
- Card Precision@k: per test day, each card scored by its highest-scored transaction of the
  day; the share of the day's k highest-scored cards that had a fraud that day (divided by k,
  as the handbook does, so a quiet day cannot score higher than a busy one), averaged over the
  days. It is what a team of investigators that can check k cards a day would find;
- precision and recall at a threshold (score ≥ threshold is flagged), and the threshold that
  keeps the flagged transactions within an alert budget per day.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score


def auc_roc(y: np.ndarray, score: np.ndarray) -> float:
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, score))


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    if not np.any(y):
        return float("nan")
    return float(average_precision_score(y, score))


def card_precision_at_k(frame: pd.DataFrame, k: int = 100) -> float:
    """``frame``: columns day, card_id, score, is_fraud (one row per transaction)."""
    if frame.empty:
        return float("nan")
    cards = (frame.groupby(["day", "card_id"], sort=True)
             .agg(score=("score", "max"), fraud=("is_fraud", "max")).reset_index())
    per_day = []
    for _, day in cards.groupby("day", sort=True):
        # highest score first; equal scores by card_id, so the result never depends on order
        top = day.sort_values(["score", "card_id"], ascending=[False, True]).head(k)
        per_day.append(float(top["fraud"].sum()) / k)
    return float(np.mean(per_day))


def precision_recall_at(y: np.ndarray, score: np.ndarray, threshold: float) -> tuple[float, float]:
    flagged = score >= threshold
    tp = float(np.sum(flagged & (y == 1)))
    precision = tp / flagged.sum() if flagged.any() else float("nan")
    recall = tp / y.sum() if y.any() else float("nan")
    return float(precision), float(recall)


def threshold_for_budget(scores: np.ndarray, days: float, per_day: float) -> float:
    """The lowest threshold that flags at most ``per_day`` transactions a day on average
    over ``scores`` (``days`` days of them): strictly above the (n+1)-th highest score."""
    allowed = math.floor(per_day * days)
    if len(scores) == 0:
        return float("inf")
    ordered = np.sort(np.asarray(scores, dtype="float64"))[::-1]
    if allowed >= len(ordered):
        return float(ordered[-1])
    return float(np.nextafter(ordered[allowed], np.inf))


def evaluate_scores(frame: pd.DataFrame, thresholds: dict[str, float] | None = None,
                    k: int = 100) -> dict[str, float]:
    """All metrics for one test window: ``frame`` has day, card_id, score, is_fraud."""
    y = frame["is_fraud"].to_numpy(dtype="int64")
    s = frame["score"].to_numpy(dtype="float64")
    out = {"auc_roc": auc_roc(y, s), "average_precision": average_precision(y, s),
           f"card_precision_at_{k}": card_precision_at_k(frame, k)}
    for name, thr in (thresholds or {}).items():
        p, r = precision_recall_at(y, s, thr)
        out[f"precision_at_{name}"] = p
        out[f"recall_at_{name}"] = r
        out[f"alerts_per_day_at_{name}"] = float(np.sum(s >= thr)) / max(
            1, frame["day"].nunique())
    return out
