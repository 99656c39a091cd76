"""Training assets: the chain `kestrel train` runs, one asset per step, per day of data.

``training_set`` → ``model`` → ``evaluation`` → ``registered_model``: the same functions as
the CLI (training.pipeline, training.run). A partition D is the protocol whose test folds end
with D. Each step keeps its output under ``<var_dir>/training/<D>/`` (Parquet for the
training set, a pickle of the trained results — written and read only by this project), so a
step can be re-run alone, and the UI links to the files.

The drift check compares each model feature over the week ending with D (a whole weekly
cycle: one day alone would make calendar features such as the weekend flag "drift" every
day) with the final fold's training window, what the production model learns from: PSI ≥ 0.1
warns, ≥ 0.25 fails.
"""

import json
import pickle
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from dagster_project.drift import FAIL_PSI, WARN_PSI, baseline, psi
from dagster_project.partitions import daily, day_of, days_back
from dagster_project.resources import KestrelSettings, MLflowResource
from kestrel.settings import Settings

# test folds + validation folds + training + delay (training.protocol): about 11 weeks
TRAINING_HISTORY_DAYS = 80
DRIFT_DAYS = 7


class TrainingConfig(dg.Config):
    folds: int = 4
    train_days: int = 7
    test_days: int = 7
    engine: str = "asof"  # or "feast": Feast's own get_historical_features


def _dir(settings: Settings, day: str) -> Path:
    return (settings.var_dir / "training" / day).resolve()


def _save_training_set(ts: Any, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ts.frame.to_parquet(folder / "frame.parquet")
    ts.labels.to_parquet(folder / "labels.parquet")
    ts.compromised.to_parquet(folder / "compromised.parquet")
    (folder / "manifest.json").write_text(json.dumps(ts.manifest, indent=2, default=str))
    protocol = {k: v for k, v in ts.protocol.as_dict().items()
                if k in ("end", "train_days", "delay_days", "test_days", "folds", "step_days")}
    (folder / "protocol.json").write_text(json.dumps(protocol))


def _load_training_set(settings: Settings, folder: Path) -> Any:
    from datetime import date

    from pipelines.features.store import feature_store
    from training.dataset import service_parts
    from training.pipeline import TrainingSet
    from training.protocol import Protocol

    if not (folder / "protocol.json").exists():
        raise FileNotFoundError(f"no training set at {folder}; materialize training_set first")
    p = json.loads((folder / "protocol.json").read_text())
    protocol = Protocol(end=date.fromisoformat(p.pop("end")), **p)
    return TrainingSet(pd.read_parquet(folder / "frame.parquet"),
                       pd.read_parquet(folder / "labels.parquet"),
                       pd.read_parquet(folder / "compromised.parquet"), protocol,
                       service_parts(feature_store(settings)),
                       json.loads((folder / "manifest.json").read_text()))


def _load_results(folder: Path) -> dict[str, Any]:
    path = folder / "results.pkl"
    if not path.exists():
        raise FileNotFoundError(f"no trained models at {path}; materialize model first")
    with open(path, "rb") as fh:
        return pickle.load(fh)  # our own file, written by the model asset


def _say(context: dg.AssetExecutionContext) -> Any:
    return lambda line: context.log.info(line)


@dg.asset(
    partitions_def=daily, group_name="training", kinds={"feast", "parquet"},
    deps=[dg.AssetDep("stream_feature_history", partition_mapping=days_back(
              TRAINING_HISTORY_DAYS)),
          dg.AssetDep("batch_feature_tables", partition_mapping=days_back(
              TRAINING_HISTORY_DAYS)),
          dg.AssetDep("label_table", partition_mapping=days_back(TRAINING_HISTORY_DAYS))],
    description="Point-in-time feature rows of fraud_scoring_v1 for every transaction the "
                "validation protocol touches (test folds ending with the day), with the "
                "labels and the cards known compromised; manifest in the metadata.",
    owners=["team:fraud-platform"], tags={"layer": "training"},
)
def training_set(context: dg.AssetExecutionContext, config: TrainingConfig,
                 kestrel: KestrelSettings) -> dg.MaterializeResult:
    from training.pipeline import build_training_set, make_protocol
    from training.run import ensure_feature_repo

    settings = kestrel.get()
    protocol = make_protocol(settings, None, day_of(context), folds=config.folds,
                             train_days=config.train_days, test_days=config.test_days)
    ensure_feature_repo(settings, _say(context))
    ts = build_training_set(settings, protocol, engine=config.engine,  # type: ignore[arg-type]
                            progress=_say(context))
    folder = _dir(settings, str(day_of(context)))
    _save_training_set(ts, folder)
    m = ts.manifest
    return dg.MaterializeResult(metadata={
        "rows": int(m["rows"]), "frauds": int(m["frauds"]), "unlabelled": int(m["unlabelled"]),
        "range": f"{m['range']['first_day']} … {m['range']['last_day']}",
        "feature_service": m["feature_service"], "engine": m["engine"],
        "manifest": dg.MetadataValue.json(m), "path": dg.MetadataValue.path(str(folder)),
    })


@dg.asset(
    partitions_def=daily, group_name="training", kinds={"xgboost", "scikit-learn"},
    deps=[training_set],
    description="XGBoost, logistic regression and IsolationForest, hyper-parameters chosen "
                "on the validation folds; the production XGBoost trained on the latest "
                "labelled window, alert thresholds from the days after it.",
    owners=["team:fraud-platform"], tags={"layer": "training"},
)
def model(context: dg.AssetExecutionContext, kestrel: KestrelSettings) -> dg.MaterializeResult:
    from training.pipeline import train_models

    settings = kestrel.get()
    folder = _dir(settings, str(day_of(context)))
    ts = _load_training_set(settings, folder)
    results = train_models(settings, ts, seed=settings.train_seed, progress=_say(context))
    with open(folder / "results.pkl", "wb") as fh:
        pickle.dump(results, fh)
    xgb = results.get("xgboost")
    return dg.MaterializeResult(metadata={
        "params": dg.MetadataValue.json({k: r.params for k, r in results.items()}),
        "seconds": dg.MetadataValue.json({k: round(r.seconds, 1) for k, r in results.items()}),
        "thresholds": dg.MetadataValue.json(xgb.thresholds if xgb else {}),
        "path": dg.MetadataValue.path(str(folder / "results.pkl")),
    })


@dg.asset(
    partitions_def=daily, group_name="training", kinds={"pandas"}, deps=[model],
    description="Each model on the test folds: AUC ROC, Average Precision, Card "
                "Precision@100 (per test day, averaged), precision / recall at the "
                "thresholds; ROC and precision-recall curves.",
    owners=["team:fraud-platform"], tags={"layer": "training"},
)
def evaluation(context: dg.AssetExecutionContext,
               kestrel: KestrelSettings) -> dg.MaterializeResult:
    from training.plots import curves

    settings = kestrel.get()
    folder = _dir(settings, str(day_of(context)))
    results = _load_results(folder)
    names = ["auc_roc", "average_precision", "card_precision_at_100"]
    lines = ["| model | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for family, r in results.items():
        lines.append(f"| {family} | " + " | ".join(f"{r.mean.get(n, float('nan')):.4f}"
                                                     for n in names) + " |")
    plots: dict[str, Any] = {}
    for family, r in results.items():
        target = folder / "plots" / family
        target.mkdir(parents=True, exist_ok=True)
        for path in curves(r.scores, family, target):
            plots[f"{family}_{path.stem}"] = dg.MetadataValue.path(str(path))
    metrics = {f"{family}.{n}": float(r.mean.get(n, float("nan")))
               for family, r in results.items() for n in names}
    (folder / "evaluation.json").write_text(json.dumps(metrics, indent=2))
    return dg.MaterializeResult(metadata={
        "metrics": dg.MetadataValue.md("\n".join(lines)), **plots,
        **{k: v for k, v in metrics.items() if np.isfinite(v)},
    })


@dg.asset(
    partitions_def=daily, group_name="training", kinds={"mlflow"}, deps=[evaluation],
    description="MLflow runs per model family (params, metrics, curves, importances, SHAP "
                "summary, manifest); the XGBoost model registered; alias champion moved only "
                "if it beats the champion's Average Precision on the same test folds.",
    owners=["team:fraud-platform"], tags={"layer": "registry"},
)
def registered_model(context: dg.AssetExecutionContext, kestrel: KestrelSettings,
                     mlflow: MLflowResource) -> dg.MaterializeResult:
    from training.pipeline import register

    settings = kestrel.get()
    mlflow.client()  # the tracking URI of this environment
    folder = _dir(settings, str(day_of(context)))
    out = register(settings, _load_training_set(settings, folder), _load_results(folder),
                   seed=settings.train_seed, progress=_say(context))
    gate = out.get("gate")
    return dg.MaterializeResult(metadata={
        "model": settings.model_name, "version": str(out.get("version", "")),
        "promoted": bool(getattr(gate, "promoted", False)),
        "gate": str(getattr(gate, "reason", "")),
        "runs": dg.MetadataValue.json(out.get("runs", {})),
        "tracking_uri": out.get("tracking_uri", ""),
    })


@dg.asset_check(asset=training_set, partitions_def=daily,
                description=f"PSI of each model feature over the week ending with the "
                            f"partition's day against the final fold's training window: warn "
                            f"≥ {WARN_PSI}, fail ≥ {FAIL_PSI}.")
def feature_drift(context: dg.AssetCheckExecutionContext,
                  kestrel: KestrelSettings) -> dg.AssetCheckResult:
    from training.features import MODEL_FEATURES

    settings = kestrel.get()
    day = str(day_of(context))
    folder = _dir(settings, day)
    frame = pd.read_parquet(folder / "frame.parquet")
    final = json.loads((folder / "manifest.json").read_text())["protocol"]["final"]
    start, end = (pd.Timestamp(x.strip(), tz="UTC") for x in final["train"].split("…"))
    times = pd.to_datetime(frame["event_time"], utc=True)
    base_rows = frame[(times >= start) & (times < end)]
    week = {str(day_of(context) - timedelta(days=i)) for i in range(DRIFT_DAYS)}
    day_rows = frame[frame["day"].isin(week)]
    scores = {}
    for name in MODEL_FEATURES:
        ref = base_rows[name].to_numpy(dtype=float)
        scores[name] = round(psi(baseline(ref), day_rows[name].to_numpy(dtype=float)), 4) \
            if len(ref) and len(day_rows) else float("nan")
    worst = max((v for v in scores.values() if np.isfinite(v)), default=0.0)
    severity = dg.AssetCheckSeverity.ERROR if worst >= FAIL_PSI else dg.AssetCheckSeverity.WARN
    top = dict(sorted(scores.items(), key=lambda kv: -np.nan_to_num(kv[1]))[:10])
    return dg.AssetCheckResult(passed=worst < WARN_PSI, severity=severity, metadata={
        "max_psi": worst, "rows_week": len(day_rows), "rows_baseline": len(base_rows),
        "psi_top10": dg.MetadataValue.json(top),
        "psi_all": dg.MetadataValue.json({k: v for k, v in scores.items() if np.isfinite(v)}),
    })


ASSETS = [training_set, model, evaluation, registered_model]
CHECKS = [feature_drift]
