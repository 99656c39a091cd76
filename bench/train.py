"""`kestrel bench train`: the default set → training set + models, and each model's metrics.

Everything runs in a private var dir (``<var_dir>/bench/train``, or a temporary one for
``--quick``) with its own lake, feature tables and MLflow store, so the project's registry
never sees benchmark models. Steps, each timed: simulate the default set into the lake
(5,000 customers, 10,000 terminals, 183 days, seed 42), the Spark backfill of the stream
views and the batch views (BATCH's jobs), then the training chain of ``kestrel train``.

``train_default_s`` is the training part: the point-in-time training set over the days the
protocol touches plus the XGBoost work (grid on the validation folds, the test folds, the
production model); the Spark feature jobs and the other families are reported beside it.
The per-model metrics are the means over the test folds (protocol in training/protocol.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.results import BenchResult, Metric
from kestrel.pan import CardTokenizer
from kestrel.settings import Settings
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.to_lake import write_to_lake

MODELS = ("xgboost", "logreg", "iforest")
TARGET_S = 300.0


def result_from_report(report: Any, quick: bool, params: dict[str, Any] | None = None,
                       extra_seconds: dict[str, float] | None = None) -> BenchResult:
    """The DESIGN.md benchmark shape from a training.run.TrainReport."""
    s = {**report.seconds, **(extra_seconds or {})}
    manifest = report.manifest
    result = BenchResult("train", quick, params or {
        "range": manifest.get("range"), "rows": manifest.get("rows"),
        "protocol": {k: manifest["protocol"][k] for k in
                     ("train_days", "delay_days", "test_days", "folds")}})
    train_s = s.get("training_set", 0.0) + s.get("xgboost", 0.0)
    result.metrics["train_default_s"] = Metric(
        train_s, "s", TARGET_S, "lower",
        extra={"training_set_s": round(s.get("training_set", 0.0), 2),
               "xgboost_s": round(s.get("xgboost", 0.0), 2),
               "training_set_rows": manifest.get("rows"),
               **{f"{k}_s": round(v, 2) for k, v in s.items()
                  if k not in ("training_set", "xgboost")}})
    for model in MODELS:
        m = report.metrics.get(model)
        if m is None:
            continue
        params_used = report.params.get(model, {})
        for key in ("auc_roc", "average_precision", "card_precision_at_100"):
            result.metrics[f"{model}.{key}"] = Metric(
                m[key], "ratio", None, "higher",
                extra={"params": params_used} if key == "auc_roc" else {})
    return result


def run(settings: Settings, quick: bool = False, console: Console | None = None) -> BenchResult:
    from training.models import small_grids
    from training.run import run_training

    console = console or Console()
    if quick:
        sim = SimulationConfig(customers=300, terminals=600, days=16, label_delay_days=2.0)
        protocol: dict[str, int] = {"folds": 1, "train_days": 3, "test_days": 3}
        root = Path(tempfile.mkdtemp(prefix="kestrel-bench-train-"))
    else:
        sim = SimulationConfig(label_delay_days=settings.label_delay_days)
        protocol = {"folds": 4, "train_days": 7, "test_days": 7}
        root = (settings.var_dir / "bench" / "train").resolve()
        shutil.rmtree(root, ignore_errors=True)
    own = settings.model_copy(update={"var_dir": root, "mlflow_tracking_uri": None,
                                      "label_delay_days": sim.label_delay_days})
    load_before = round(os.getloadavg()[0], 2)
    try:
        began = time.perf_counter()
        console.print(f"simulating {sim.customers:,} customers × {sim.days} days into {root} …")
        tokenize = CardTokenizer(settings.secret("pan_token_key")).token
        summary = write_to_lake(sim, own.lake_dir, tokenize)
        simulate_s = time.perf_counter() - began
        console.print(f"  {summary.transactions:,} transactions ({summary.frauds:,} frauds) "
                      f"in {simulate_s:.1f} s")
        report = run_training(own, folds=protocol["folds"],
                              train_days=protocol["train_days"],
                              test_days=protocol["test_days"],
                              families=small_grids() if quick else None,
                              progress=console.print)
        params = {"simulation": {"customers": sim.customers, "terminals": sim.terminals,
                                 "days": sim.days, "seed": sim.seed,
                                 "transactions": summary.transactions},
                  "protocol": protocol, "rows": report.manifest["rows"],
                  "range": report.manifest["range"], "label_delay_days": sim.label_delay_days,
                  "load_avg_1m_before": load_before,
                  "load_avg_1m_after": round(os.getloadavg()[0], 2)}
        return result_from_report(report, quick, params, {"simulate": simulate_s})
    finally:
        if quick:
            shutil.rmtree(root, ignore_errors=True)
