"""MLflow: one experiment per model family, runs with params, metrics and plots; the
registered model and its promotion gate.

The XGBoost production model is logged with ``mlflow.xgboost.log_model`` (an
``XGBClassifier`` fitted on a DataFrame with the ``MODEL_FEATURES`` columns), a signature whose
inputs are those columns in order (float64, NaN = missing) and whose output is the fraud
probability, and an input example; it is registered as ``settings.model_name``. Its version
carries the tags serving reads (``feature_service``, ``threshold_challenge``,
``threshold_decline``) and the ones the gate reads (``test_average_precision``,
``folds_key``, ``params``).

The gate: the alias ``settings.champion_alias`` moves to the new version only when its mean
Average Precision on the test folds beats the champion's *on the same test folds*. When the
champion was evaluated on exactly these folds (same protocol, same data: ``folds_key``) its
recorded figure is used; otherwise the champion's hyper-parameters are trained and evaluated
on the challenger's folds (the caller passes how). The decision and both numbers are logged
to the challenger's run and tagged on its version.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import xgboost
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from kestrel.settings import Settings
from training.features import FEATURE_SERVICE, MODEL_FEATURES
from training.plots import bars, curves

Progress = Callable[[str], None]


def tracking(settings: Settings) -> MlflowClient:
    """Point MLflow at the project's store (default: SQLite under var/mlflow)."""
    if not settings.mlflow_tracking_uri:
        settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_registry_uri(settings.mlflow_uri)
    return MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)


def experiment_name(settings: Settings, family: str) -> str:
    return f"{settings.model_name}-{family}"


def ensure_experiment(settings: Settings, client: MlflowClient, family: str) -> str:
    name = experiment_name(settings, family)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = None
    if not settings.mlflow_tracking_uri:  # local store: artifacts next to the database
        location = (settings.mlflow_dir / "artifacts").as_uri()
    return str(client.create_experiment(name, artifact_location=location,
                                        tags={"family": family, "model": settings.model_name}))


def folds_key(manifest: dict[str, Any]) -> str:
    """Identity of the test folds: their windows and what was in them."""
    tests = {k: v for k, v in manifest["folds"].items() if k.startswith("test-")}
    text = json.dumps({"folds": tests, "service": manifest["feature_service_fingerprint"]},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}


def features_frame(x: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(x, columns=list(MODEL_FEATURES)).astype("float64")


def log_family_run(settings: Settings, client: MlflowClient, result: Any,
                   manifest: dict[str, Any], seed: int, x_explain: np.ndarray | None = None,
                   ) -> str:
    """One run in the family's experiment; returns the run id."""
    mlflow.set_experiment(experiment_id=ensure_experiment(settings, client, result.family))
    with mlflow.start_run(run_name=f"{result.family} {manifest['protocol']['end']}") as run, \
            tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        protocol = manifest["protocol"]
        mlflow.log_params({**{f"model.{k}": v for k, v in result.params.items()},
                           "seed": seed, "feature_service": manifest["feature_service"],
                           "engine": manifest["engine"], "train_days": protocol["train_days"],
                           "delay_days": protocol["delay_days"],
                           "test_days": protocol["test_days"], "folds": protocol["folds"],
                           "features": len(MODEL_FEATURES)})
        mlflow.set_tags({"family": result.family, "folds_key": folds_key(manifest),
                         "feature_service_fingerprint": manifest["feature_service_fingerprint"]})
        mlflow.log_metrics(_finite({f"test_{k}": v for k, v in result.mean.items()}))
        for step, (fold, metrics) in enumerate(sorted(result.folds.items())):
            mlflow.log_metrics(_finite({f"fold_{k}": v for k, v in metrics.items()}), step=step)
            mlflow.set_tag(f"fold_step_{step}", fold)
        mlflow.log_metric("train_seconds", result.seconds)
        for name, doc in (("manifest.json", manifest), ("validation.json", result.validation),
                          ("test_folds.json", result.folds)):
            (folder / name).write_text(json.dumps(doc, indent=2, default=str))
        for path in curves(result.scores, result.family, folder):
            mlflow.log_artifact(str(path), "plots")
        importance = _importance(result)
        if importance is not None:
            importance.to_csv(folder / "feature_importance.csv", header=["importance"])
            bars(importance, f"{result.family}: feature importance", "importance",
                 folder / "feature_importance.png")
        if result.family == "xgboost" and result.model is not None and x_explain is not None:
            shap = mean_abs_contributions(result.model, x_explain)
            shap.to_csv(folder / "shap_summary.csv", header=["mean_abs_shap"])
            bars(shap, "xgboost: mean |SHAP contribution| (pred_contribs)", "mean |SHAP|",
                 folder / "shap_summary.png")
        for path in sorted(folder.iterdir()):
            mlflow.log_artifact(str(path), "plots" if path.suffix == ".png" else "reports")
        return str(run.info.run_id)


def _importance(result: Any) -> pd.Series | None:
    if result.family == "xgboost" and result.model is not None:
        gain = result.model.get_booster().get_score(importance_type="gain")
        return pd.Series({f: float(gain.get(f, 0.0)) for f in MODEL_FEATURES})
    return None


def mean_abs_contributions(model: xgboost.XGBClassifier, x: np.ndarray) -> pd.Series:
    """Mean |SHAP value| per feature, from XGBoost's exact TreeSHAP (``pred_contribs``)."""
    dmatrix = xgboost.DMatrix(features_frame(x))
    contribs = model.get_booster().predict(dmatrix, pred_contribs=True)[:, :-1]
    return pd.Series(np.abs(contribs).mean(axis=0), index=list(MODEL_FEATURES))


def _resume_experiment(client: MlflowClient, run_id: str) -> None:
    """mlflow.start_run(run_id=…) insists the active experiment is the run's own."""
    mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)


def log_model_version(settings: Settings, client: MlflowClient, run_id: str,
                      model: xgboost.XGBClassifier, example: np.ndarray,
                      thresholds: dict[str, float], result: Any,
                      manifest: dict[str, Any]) -> str:
    """Log the production XGBoost model into ``run_id`` and register it; returns the version."""
    frame = features_frame(example)
    signature = infer_signature(frame, model.predict_proba(frame)[:, 1])
    _resume_experiment(client, run_id)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.xgboost.log_model(
            model, name="model", signature=signature, input_example=frame.head(5),
            registered_model_name=settings.model_name,
            pip_requirements=[f"xgboost=={xgboost.__version__}"])
    version = str(info.registered_model_version)
    # serving reads exactly this service's features for this version (serving/model.py)
    tags = {"feature_service": manifest.get("feature_service", FEATURE_SERVICE),
            "threshold_challenge": repr(float(thresholds.get("challenge", 1.0))),
            "threshold_decline": repr(float(thresholds.get("decline", 1.0))),
            "test_average_precision": repr(float(result.mean["average_precision"])),
            "folds_key": folds_key(manifest), "params": json.dumps(result.params),
            "training_run_id": run_id,
            "feature_service_fingerprint": manifest["feature_service_fingerprint"]}
    for key, value in tags.items():
        client.set_model_version_tag(settings.model_name, version, key, value)
    return version


@dataclass
class GateDecision:
    promoted: bool
    challenger_version: str
    challenger_ap: float
    champion_version: str | None
    champion_ap: float | None
    basis: str
    reason: str


def promotion_gate(settings: Settings, client: MlflowClient, version: str,
                   challenger_ap: float, key: str,
                   reevaluate: Callable[[dict[str, Any]], float] | None = None,
                   run_id: str | None = None) -> GateDecision:
    """Move the champion alias to ``version`` only if it beats the champion's AP on the same
    test folds (``key``); log and tag the decision either way."""
    name, alias = settings.model_name, settings.champion_alias
    try:
        champion = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        champion = None
    if champion is None:
        decision = GateDecision(True, version, challenger_ap, None, None, "none",
                                "no champion yet")
    elif str(champion.version) == str(version):
        decision = GateDecision(False, version, challenger_ap, str(champion.version),
                                challenger_ap, "same", "already the champion")
    else:
        tags = champion.tags or {}
        if tags.get("folds_key") == key and "test_average_precision" in tags:
            champ_ap, basis = float(tags["test_average_precision"]), "recorded on the same folds"
        elif reevaluate is not None and "params" in tags:
            champ_ap = reevaluate(json.loads(tags["params"]))
            basis = "champion's parameters trained and tested on the challenger's folds"
        else:
            champ_ap, basis = float("nan"), "champion cannot be evaluated on these folds"
        better = bool(np.isfinite(champ_ap) and challenger_ap > champ_ap)
        reason = (f"AP {challenger_ap:.4f} {'>' if better else '<='} champion's "
                  f"{champ_ap:.4f}") if np.isfinite(champ_ap) else basis
        decision = GateDecision(better, version, challenger_ap, str(champion.version),
                                champ_ap, basis, reason)
    if decision.promoted:
        client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, "gate",
                                 "promoted" if decision.promoted else "rejected")
    client.set_model_version_tag(name, version, "gate_reason", decision.reason)
    if run_id is not None:
        _resume_experiment(client, run_id)
        with mlflow.start_run(run_id=run_id):
            mlflow.log_metrics(_finite({"gate_challenger_ap": challenger_ap,
                                        "gate_champion_ap": decision.champion_ap or np.nan,
                                        "gate_promoted": float(decision.promoted)}))
            mlflow.set_tags({"gate_decision": "promoted" if decision.promoted else "rejected",
                             "gate_reason": decision.reason, "gate_basis": decision.basis})
            mlflow.log_dict(asdict(decision), "reports/gate.json")
    return decision
