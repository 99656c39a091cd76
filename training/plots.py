"""The PNG artifacts of a training run (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve


def curves(scores: pd.DataFrame, title: str, folder: Path) -> list[Path]:
    """ROC and precision-recall curves, one line per test fold."""
    out = []
    for kind in ("roc", "pr"):
        fig, ax = plt.subplots(figsize=(6, 5))
        for fold, rows in scores.groupby("fold", sort=True):
            y, s = rows["is_fraud"].to_numpy(), rows["score"].to_numpy()
            if len(np.unique(y)) < 2:
                continue
            if kind == "roc":
                fpr, tpr, _ = roc_curve(y, s)
                ax.plot(fpr, tpr, label=str(fold))
            else:
                precision, recall, _ = precision_recall_curve(y, s)
                ax.plot(recall, precision, label=str(fold))
        if kind == "roc":
            ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
            ax.set(xlabel="false positive rate", ylabel="true positive rate",
                   title=f"{title}: ROC (test folds)")
        else:
            ax.set(xlabel="recall", ylabel="precision", title=f"{title}: precision-recall")
        ax.legend(loc="best", fontsize="small")
        path = folder / f"{kind}_curve.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        out.append(path)
    return out


def bars(values: pd.Series, title: str, xlabel: str, path: Path, top: int = 25) -> Path:
    """Horizontal bars of the ``top`` largest values (feature importances, mean |SHAP|)."""
    shown = values.sort_values(ascending=True).tail(top)
    fig, ax = plt.subplots(figsize=(7, max(3, 0.28 * len(shown))))
    ax.barh(shown.index, shown.to_numpy())
    ax.set(title=title, xlabel=xlabel)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
