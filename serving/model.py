"""The champion model: loaded from the MLflow registry at start, swapped when the alias moves.

``models:/{model_name}@{champion_alias}`` is resolved to a version; its XGBoost booster, the
feature order (the signature's input columns) and the thresholds (version tags) travel
together in one immutable :class:`LoadedModel`, so a request sees either the old model or the
new one, never a mix. A background thread polls the alias every
``KESTREL_MODEL_POLL_SECONDS`` and loads a new version before swapping the reference: no
request waits on a load and nothing is ever half-swapped.

Each registered version names the feature service it was trained on in its
``feature_service`` tag (training/registry.py sets it); serving reads exactly that service's
features for it (serving.features.OnlineFeatures.for_service), so a ``fraud_scoring_v1``
champion keeps being served with v1's inputs while v2 models are trained, until a v2 model
replaces it. A version without the tag, naming a service feature_repo/ does not declare, or
whose signature asks for a feature its service does not provide is refused at load
(:class:`ModelRefused`, logged as an error and shown by /v1/ready): guessing its inputs
would score with the wrong columns silently.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kestrel.errors import KestrelError
from kestrel.settings import Settings

if TYPE_CHECKING:
    from serving.features import FeatureFrame

log = logging.getLogger("kestrel.serving.model")
WIDE_ROWS = 256  # from this many rows on, predictions use every core
SERVICE_TAG = "feature_service"
ServiceNames = Callable[[str], tuple[str, ...]]
"""A feature service's outputs by name (serving.features.OnlineFeatures.service_names)."""


class ModelRefused(KestrelError):
    """A registered model version serving cannot score with; the message says what to fix."""


@dataclass(frozen=True)
class LoadedModel:
    version: str
    features: tuple[str, ...]
    booster: Any  # xgboost.Booster
    tags: dict[str, str] = field(default_factory=dict)
    feature_service: str = ""  # the tag's service: the features serving reads for it
    native: Any = field(init=False, repr=False, compare=False)  # serving.xgb_native.NativeScorer
    _picks: dict[tuple[str, ...], np.ndarray] = field(  # a frame's columns, in order
        init=False, repr=False, compare=False, default_factory=dict)
    _wide: Any = field(init=False, repr=False, compare=False)  # NativeScorer, every core

    def threshold(self, name: str) -> float | None:
        raw = self.tags.get(f"threshold_{name}")
        try:
            value = float(raw) if raw is not None else None
        except ValueError:
            return None
        return value if value is not None and math.isfinite(value) else None

    def __post_init__(self) -> None:
        from serving.xgb_native import NativeScorer

        object.__setattr__(self, "native", NativeScorer(self.booster))
        wide = self.booster.copy()
        wide.set_param({"nthread": os.cpu_count() or 1})
        object.__setattr__(self, "_wide", NativeScorer(wide))

    def matrix(self, frame: FeatureFrame) -> Rows:
        """The frame's rows in ``features`` order (checked against the booster once at load,
        see :func:`serving_booster`); a feature the frame lacks is missing (NaN). Building
        XGBoost's matrix is most of a one-row prediction, so it is built once and shared by
        the prediction and the contributions."""
        from serving.xgb_native import NativeMatrix

        picks = self._picks.get(frame.names)
        if picks is None:
            where = {name: j for j, name in enumerate(frame.names)}
            picks = np.array([where.get(f, len(frame.names)) for f in self.features],
                             dtype=np.intp)  # one past the last column: the NaN column
            self._picks[frame.names] = picks
        source = frame.x
        if len(picks) and picks.max() == source.shape[1]:  # the frame lacks a feature
            source = np.hstack([source, np.full((len(source), 1), np.nan)])
        x = np.ascontiguousarray(source[:, picks], dtype=np.float64)
        return Rows(x, NativeMatrix(x))

    def probabilities(self, rows: Rows) -> np.ndarray:
        """Fraud probability per row."""
        return self._scorer(len(rows.x)).probabilities(rows.matrix)

    def contributions(self, rows: Rows, which: list[int]) -> np.ndarray:
        """Exact TreeSHAP contributions (last column: the bias) of the rows ``which``. About
        0.1 ms a row for the 300-tree depth-3 champion here, over ten times its prediction,
        which is why a batch explains only the rows it flags unless asked for all."""
        from serving.xgb_native import NativeMatrix

        matrix = rows.matrix if len(which) == len(rows.x) else NativeMatrix(rows.x[which])
        return self._scorer(len(which)).contributions(matrix)

    def _scorer(self, rows: int) -> Any:
        """One thread for a few rows (see :func:`serving_booster`); every core for a batch's
        worth, where OpenMP's start and spin are small next to the work (exact TreeSHAP of
        2,000 rows, 300 depth-3 trees: 0.39 s on one core, 0.30 s on two, here)."""
        return self._wide if rows >= WIDE_ROWS else self.native


@dataclass(frozen=True)
class Rows:
    """Feature rows and XGBoost's matrix of them."""

    x: np.ndarray
    matrix: Any  # serving.xgb_native.NativeMatrix


def serving_booster(booster: Any, features: tuple[str, ...]) -> Any:
    """A copy of ``booster`` for request-time scoring: one thread, no feature names.

    One thread, because a decision is a handful of rows and OpenMP's worker threads spin
    after each call, taking the CPU the event loop needs (on 2 cores a single /v1/score cost
    several times its compute). No names, because checking a DMatrix's names costs as much as
    the prediction; the order is checked here, once, instead.
    """
    names = booster.feature_names
    if names is not None and tuple(names) != features:
        raise ValueError(f"the model's feature order {names} differs from its signature "
                         f"{list(features)}")
    serving = booster.copy()
    serving.set_param({"nthread": 1})
    serving.feature_names = None
    serving.feature_types = None
    return serving


def load_champion(settings: Settings, service_names: ServiceNames | None = None) -> LoadedModel:
    """Load the version the champion alias points at (raises when there is none, and
    ModelRefused as :func:`_load_version` says)."""
    import mlflow
    import mlflow.xgboost
    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    mv = client.get_model_version_by_alias(settings.model_name, settings.champion_alias)
    return _load_version(settings, mv.version, dict(mv.tags or {}), mlflow, service_names)


def feature_service_of(settings: Settings, version: str, tags: dict[str, str],
                       features: tuple[str, ...],
                       service_names: ServiceNames | None = None) -> str:
    """The feature service a version's tag names, checked against what serving can read."""
    where = f"model {settings.model_name} version {version}"
    service = tags.get(SERVICE_TAG, "").strip()
    if not service:
        raise ModelRefused(
            f"{where} has no {SERVICE_TAG!r} tag, so serving cannot know which feature "
            "service it was trained on; tag the version with the service its training set "
            "came from (MlflowClient().set_model_version_tag(name, version, "
            f"'{SERVICE_TAG}', 'fraud_scoring_vN')) or register a model trained by "
            "`kestrel train`, then move the alias")
    if service_names is not None:
        try:
            names = set(service_names(service))
        except KestrelError as exc:
            raise ModelRefused(f"{where}: {exc}") from exc
        missing = [f for f in features if f not in names]
        if missing:
            raise ModelRefused(
                f"{where} reads {', '.join(missing)}, which its feature service {service} "
                "does not provide; fix its feature_service tag or retrain it with "
                "`kestrel train`")
    return service


def _load_version(settings: Settings, version: str, tags: dict[str, str],
                  mlflow: Any, service_names: ServiceNames | None = None) -> LoadedModel:
    mlflow.set_registry_uri(settings.mlflow_uri)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    uri = f"models:/{settings.model_name}/{version}"
    info = mlflow.models.get_model_info(uri)
    if info.signature is None or info.signature.inputs is None:
        raise ModelRefused(f"{uri} has no signature, and the feature order comes from it; "
                           "register it with a signature (training/registry.py does)")
    features = tuple(info.signature.inputs.input_names())
    service = feature_service_of(settings, str(version), tags, features, service_names)
    model = mlflow.xgboost.load_model(uri)
    booster = model.get_booster() if hasattr(model, "get_booster") else model
    return LoadedModel(str(version), features, serving_booster(booster, features), tags,
                       service)


class ModelHolder:
    """The current champion (or None) plus the poll thread that swaps it."""

    def __init__(self, settings: Settings, service_names: ServiceNames | None = None):
        self.settings = settings
        self.service_names = service_names  # checks a version's tag against the repo
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Load the alias's version if it differs from the current one; True when swapped."""
        import mlflow
        from mlflow.tracking import MlflowClient

        try:
            client = MlflowClient(self.settings.mlflow_uri, registry_uri=self.settings.mlflow_uri)
            mv = client.get_model_version_by_alias(self.settings.model_name,
                                                   self.settings.champion_alias)
            if self.current is not None and self.current.version == str(mv.version):
                return False
            loaded = _load_version(self.settings, mv.version, dict(mv.tags or {}), mlflow,
                                   self.service_names)
        except ModelRefused as exc:  # a registry mistake, not a passing outage: loudly
            if self.last_error != str(exc):
                log.error("champion model refused: %s", exc)
            self.last_error = str(exc)
            return False
        except Exception as exc:
            if self.last_error != str(exc):
                log.warning("champion model not loaded: %s", exc)
            self.last_error = str(exc)
            return False
        previous = self.current.version if self.current else None
        self.current = loaded  # one reference assignment: the swap
        self.last_error = None
        log.info("serving model %s version %s on feature service %s (was %s)",
                 self.settings.model_name, loaded.version, loaded.feature_service, previous)
        return True

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="model-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.model_poll_seconds):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
