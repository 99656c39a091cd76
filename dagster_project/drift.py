"""Population Stability Index: how far a feature's distribution moved from its baseline.

PSI = Σ (a − e) · ln(a / e) over bins fixed on the baseline (its deciles), with e and a the
shares of the baseline and of the new sample in each bin. The usual reading, used by the
drift asset check: < 0.1 stable, 0.1–0.25 worth a look (warn), ≥ 0.25 shifted (fail).

Bins come from the baseline's quantiles, so a feature with few distinct values (a 0/1 flag,
a small count) gets fewer, wider bins instead of empty ones; NaN (a missing feature) is a bin
of its own, so a feature that starts going missing shows up as drift too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WARN_PSI = 0.1
FAIL_PSI = 0.25
_FLOOR = 1e-4  # share given to an empty bin, so ln() stays finite


@dataclass(frozen=True)
class Baseline:
    """A feature's training distribution: bin edges and the share in each bin (+ NaN)."""

    edges: tuple[float, ...]
    shares: tuple[float, ...]  # len(edges) + 1 bins, then the NaN share last

    def to_dict(self) -> dict[str, list[float]]:
        return {"edges": list(self.edges), "shares": list(self.shares)}

    @classmethod
    def from_dict(cls, doc: dict[str, list[float]]) -> Baseline:
        return cls(tuple(doc["edges"]), tuple(doc["shares"]))


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    nan = np.isnan(values)
    counts = np.bincount(np.searchsorted(edges, values[~nan], side="right"),
                         minlength=len(edges) + 1).astype(float)
    counts = np.append(counts, float(nan.sum()))
    return counts / max(len(values), 1)


def baseline(values: np.ndarray, bins: int = 10) -> Baseline:
    values = np.asarray(values, dtype=float)
    finite = values[~np.isnan(values)]
    if len(finite):
        qs = np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1])
        edges = np.unique(qs)
    else:
        edges = np.array([], dtype=float)
    return Baseline(tuple(float(e) for e in edges),
                    tuple(float(s) for s in _shares(values, edges)))


def psi(base: Baseline, values: np.ndarray) -> float:
    expected = np.maximum(np.asarray(base.shares, dtype=float), _FLOOR)
    actual = np.maximum(_shares(np.asarray(values, dtype=float),
                                np.asarray(base.edges, dtype=float)), _FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))
