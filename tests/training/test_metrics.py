"""The metrics against values computed by hand on a six-transaction set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.metrics import (
    auc_roc,
    average_precision,
    card_precision_at_k,
    evaluate_scores,
    precision_recall_at,
    threshold_for_budget,
)

# day 1: card A .9 fraud, A .2 legit, B .8 legit, C .3 fraud; day 2: A .1 legit, B .7 fraud
FRAME = pd.DataFrame({
    "day": ["d1", "d1", "d1", "d1", "d2", "d2"],
    "card_id": ["A", "A", "B", "C", "A", "B"],
    "score": [0.9, 0.2, 0.8, 0.3, 0.1, 0.7],
    "is_fraud": [1, 0, 0, 1, 0, 1],
})
Y, S = FRAME["is_fraud"].to_numpy(), FRAME["score"].to_numpy()


def test_auc_and_average_precision() -> None:
    # positive/negative pairs ranked right: .9 beats 3, .3 beats 2, .7 beats 2 → 7 of 9
    assert auc_roc(Y, S) == pytest.approx(7 / 9)
    # ranked: .9 F, .8 L, .7 F, .3 F → precisions at the frauds 1, 2/3, 3/4
    assert average_precision(Y, S) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert np.isnan(auc_roc(np.zeros(3), np.ones(3)))


def test_card_precision_per_day_averaged() -> None:
    # day 1 cards by best score: A .9 (fraud), B .8, C .3 (fraud); day 2: B .7 (fraud), A .1
    assert card_precision_at_k(FRAME, 1) == pytest.approx((1 + 1) / 2)
    assert card_precision_at_k(FRAME, 2) == pytest.approx((1 / 2 + 1 / 2) / 2)
    # k larger than the cards of a day still divides by k (the handbook's definition)
    assert card_precision_at_k(FRAME, 100) == pytest.approx((2 / 100 + 1 / 100) / 2)


def test_thresholds_from_an_alert_budget() -> None:
    # 2 days × 1 a day: the two highest scores (.9, .8) are flagged, .7 is not
    thr = threshold_for_budget(S, days=2, per_day=1)
    assert 0.8 >= thr > 0.7 and int(np.count_nonzero(S - thr >= 0)) == 2
    assert precision_recall_at(Y, S, thr) == pytest.approx((1 / 2, 1 / 3))
    assert int(np.count_nonzero(S - threshold_for_budget(S, 2, 0.5) >= 0)) == 1
    assert threshold_for_budget(S, 2, 10) == pytest.approx(0.1)  # budget above volume
    ties = np.array([0.5, 0.5, 0.5, 0.1])
    assert int(np.sum(ties >= threshold_for_budget(ties, 1, 2))) <= 2  # never over budget


def test_evaluate_scores_bundle() -> None:
    out = evaluate_scores(FRAME, {"challenge": 0.75}, k=2)
    assert out["card_precision_at_2"] == pytest.approx(0.5)
    assert out["precision_at_challenge"] == pytest.approx(1 / 2)
    assert out["recall_at_challenge"] == pytest.approx(1 / 3)
    assert out["alerts_per_day_at_challenge"] == pytest.approx(1.0)
