"""Synthetic serving fixtures for tests, `kestrel bench serve` and a first demo: a tiny real
XGBoost champion registered in MLflow exactly as training registers one (signature columns =
MODEL_FEATURES in order, threshold tags, alias), online features written in Feast's format,
and transactions. Nothing here runs in the service itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from kestrel.settings import Settings

BASE_TIME = datetime(2018, 6, 1, 12, 0, tzinfo=UTC)


def model_features(service: str | None = None) -> list[str]:
    from training.features import FEATURE_SERVICE
    from training.features import model_features as inputs

    return list(inputs(service or FEATURE_SERVICE))


def register_tiny_model(settings: Settings, seed: int = 0, challenge: float = 0.5,
                        decline: float = 0.8, alias: bool = True,
                        n_estimators: int = 20, feature_service: str | None = None,
                        tag_service: bool = True) -> str:
    """Fit an XGBClassifier (depth 3) on synthetic rows (fraud = big amount or a busy card)
    and register it like training does: signature columns in order (the inputs of
    ``feature_service``, default training's), threshold and feature_service tags, alias
    (``tag_service=False``: a version without its service tag, which serving refuses).
    Tests keep it tiny; `kestrel bench serve` asks for the trained champion's 300 trees, since
    the cost of TreeSHAP grows with them."""
    import mlflow
    import mlflow.xgboost
    import xgboost
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    from training.features import FEATURE_SERVICE

    service = feature_service or FEATURE_SERVICE
    features = model_features(service)
    rng = np.random.default_rng(seed)
    n = 2000
    x = pd.DataFrame(rng.uniform(0, 1, (n, len(features))), columns=features)
    x["txn_amount"] = rng.gamma(2.0, 60.0, n)
    x["card_txn_count_1h"] = rng.poisson(1.0, n).astype("float64")
    x["amount_to_avg_30d"] = x["txn_amount"] / 60.0
    y = ((x["txn_amount"] > 300) | (x["card_txn_count_1h"] >= 4)).astype(int)
    x.loc[rng.uniform(0, 1, n) < 0.2, "card_txn_count_1h"] = np.nan  # unknown card: no signal
    x = x.astype("float64")
    model = xgboost.XGBClassifier(n_estimators=n_estimators, max_depth=3, random_state=seed,
                                  n_jobs=1)
    model.fit(x, y)
    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_registry_uri(settings.mlflow_uri)
    client = MlflowClient(settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    name = f"{settings.model_name}-test"
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        name, artifact_location=(settings.mlflow_dir / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=exp_id)
    with mlflow.start_run():
        info = mlflow.xgboost.log_model(
            model, name="model", signature=infer_signature(x, model.predict_proba(x)[:, 1]),
            input_example=x.head(2), registered_model_name=settings.model_name,
            pip_requirements=[f"xgboost=={xgboost.__version__}"])
    version = str(info.registered_model_version)
    tags = {"threshold_challenge": repr(challenge), "threshold_decline": repr(decline)}
    if tag_service:
        tags["feature_service"] = service
    for key, value in tags.items():
        client.set_model_version_tag(settings.model_name, version, key, value)
    if alias:
        client.set_registered_model_alias(settings.model_name, settings.champion_alias, version)
    return version


def write_features(settings: Settings, redis_url: str, cards: dict[str, dict[str, Any]],
                   customers: dict[str, dict[str, Any]] | None = None,
                   at: datetime = BASE_TIME - timedelta(minutes=5)) -> None:
    """Write stream-view rows in Feast's Redis format (through the stream's own writer)."""
    from redis import Redis

    from pipelines.features.online_writer import OnlineWriter

    writer = OnlineWriter(settings, dedup=False)
    client = Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    writer.write(pipe, "card_stream_features", [(c, f, at) for c, f in cards.items()])
    if customers:
        writer.write(pipe, "customer_stream_features",
                     [(c, f, at) for c, f in customers.items()])
    pipe.execute()
    client.close()


def transaction(i: int, **over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "txn_id": f"score-{i:06d}", "event_time": (BASE_TIME + timedelta(seconds=i)).isoformat(),
        "customer_id": f"C{i % 50:04d}", "account_id": f"A{i % 50:04d}",
        "card_id": f"card-{i % 50:04d}", "terminal_id": f"T{i % 30:04d}", "mcc": "5411",
        "amount": 20.0 + (i % 17), "currency": "EUR", "country": "FR", "lat": 48.85,
        "lon": 2.35, "channel": "pos"}
    ev.update(over)
    return ev


def register_copy(settings: Settings, version: str, challenge: float, decline: float) -> str:
    """A new registry version of an existing one's artifact with other thresholds (a cheap
    "retrained" champion for swap tests)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    old = client.get_model_version(settings.model_name, version)
    new = client.create_model_version(settings.model_name, str(old.source), run_id=old.run_id)
    for key, value in {"feature_service": old.tags["feature_service"],
                       "threshold_challenge": repr(challenge),
                       "threshold_decline": repr(decline)}.items():
        client.set_model_version_tag(settings.model_name, new.version, key, value)
    return str(new.version)
