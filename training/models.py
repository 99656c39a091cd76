"""The three model families, each a small hyper-parameter grid and a scorer.

- ``xgboost`` (primary): gradient-boosted trees on the raw features (NaN = missing, handled
  natively); the model that is registered and served;
- ``logreg`` (baseline): median imputation, standard scaling, L2 logistic regression;
- ``iforest`` (unsupervised): IsolationForest on the imputed features, trained without
  labels; its anomaly score (higher = stranger) is evaluated like a fraud score, and can
  serve as a second opinion or a feature.

Every estimator is seeded and uses at most ``N_JOBS`` threads (2 cores here), so the same
data and seed give the same scores.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from xgboost import XGBClassifier

N_JOBS = 2


class Scorer(Protocol):
    def fit(self, x: np.ndarray, y: np.ndarray) -> Any: ...


@dataclass(frozen=True)
class Family:
    name: str
    grid: dict[str, tuple[Any, ...]]
    supervised: bool = True

    def candidates(self) -> list[dict[str, Any]]:
        keys = sorted(self.grid)
        return [dict(zip(keys, values, strict=True))
                for values in itertools.product(*(self.grid[k] for k in keys))]

    def build(self, params: dict[str, Any], seed: int) -> Any:
        if self.name == "xgboost":
            return XGBClassifier(
                n_estimators=params["n_estimators"], max_depth=params["max_depth"],
                learning_rate=params["learning_rate"], subsample=0.9, colsample_bytree=0.9,
                tree_method="hist", n_jobs=N_JOBS, random_state=seed, eval_metric="aucpr")
        if self.name == "logreg":
            return Pipeline([
                ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                ("scale", StandardScaler()),
                ("model", LogisticRegression(C=params["C"], max_iter=2000, random_state=seed)),
            ])
        if self.name == "iforest":
            return Pipeline([
                ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                ("model", IsolationForest(n_estimators=params["n_estimators"],
                                          max_samples=params["max_samples"],
                                          random_state=seed, n_jobs=N_JOBS)),
            ])
        raise ValueError(f"unknown model family {self.name!r}")

    def fit(self, params: dict[str, Any], seed: int, x: np.ndarray, y: np.ndarray) -> Any:
        model = self.build(params, seed)
        if self.supervised:
            model.fit(x, y)
        else:
            model.fit(x)
        return model

    def score(self, model: Any, x: np.ndarray) -> np.ndarray:
        """Higher = more likely fraud."""
        if self.supervised:
            return np.asarray(model.predict_proba(x)[:, 1], dtype="float64")
        return -np.asarray(model.score_samples(x), dtype="float64")


FAMILIES: dict[str, Family] = {
    "xgboost": Family("xgboost", {"max_depth": (3, 6), "n_estimators": (100, 300),
                                  "learning_rate": (0.1,)}),
    "logreg": Family("logreg", {"C": (0.1, 1.0, 10.0)}),
    "iforest": Family("iforest", {"n_estimators": (100, 200), "max_samples": (256, 1024)},
                      supervised=False),
}


def small_grids() -> dict[str, Family]:
    """One candidate per family (tests and `--quick`): the pipeline, not the search."""
    return {
        "xgboost": Family("xgboost", {"max_depth": (3,), "n_estimators": (50,),
                                      "learning_rate": (0.1,)}),
        "logreg": Family("logreg", {"C": (1.0,)}),
        "iforest": Family("iforest", {"n_estimators": (50,), "max_samples": (256,)},
                          supervised=False),
    }
