"""The training chain as plain functions (the CLI and the Dagster assets call these):

``build_training_set`` → ``train_models`` (choose on validation folds, report on test folds,
train the production model) → ``register`` (training/registry.py: MLflow runs, the
registered model, the promotion gate).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import feast
import numpy as np
import pandas as pd

from kestrel.lake import list_partitions, read_table
from kestrel.settings import Settings
from labels.store import latest_per_txn, read_labels
from training.coverage import Coverage, check, measure
from training.dataset import Engine, ServiceParts, historical_features, transactions_between
from training.errors import TrainingError
from training.features import FEATURE_SERVICE, MODEL_FEATURES
from training.metrics import evaluate_scores, threshold_for_budget
from training.models import FAMILIES, Family
from training.protocol import DAY, Fold, Protocol
from training.registry import features_frame

Progress = Callable[[str], None]
K = 100


def _quiet(_line: str) -> None:
    pass


@dataclass
class TrainingSet:
    """Feature rows of every transaction the protocol touches, plus what labels say."""

    frame: pd.DataFrame  # ENTITY_COLUMNS, day, features, truth (latest label ever; NaN: none)
    labels: pd.DataFrame  # every label row: txn_id, is_fraud, labelled_at
    compromised: pd.DataFrame  # per fraud txn: card_id, event_time, first_known (labelled)
    protocol: Protocol
    parts: ServiceParts
    manifest: dict[str, Any] = field(default_factory=dict)
    _folds: dict[str, FoldData] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # sorted once, so each fold's "latest label known at T" is a filter and a shift
        self.labels = self.labels.sort_values(["txn_id", "labelled_at", "is_fraud"],
                                              kind="stable").reset_index(drop=True)

    def rows(self, start: Any, end: Any) -> pd.DataFrame:
        t = self.frame["event_time"]
        return self.frame[(t >= start) & (t < end)]


def lake_days(settings: Settings) -> tuple[date, date]:
    days = list_partitions(settings.lake_dir, "transactions")
    if not days:
        raise TrainingError(f"no transactions in the lake at {settings.lake_dir}; run "
                            "`kestrel simulate --to lake` or `kestrel archive` first")
    return date.fromisoformat(days[0]), date.fromisoformat(days[-1])


def make_protocol(settings: Settings, start: date | None = None, end: date | None = None,
                  **kw: int) -> Protocol:
    """The protocol whose test folds end with ``end`` (default: the lake's last day)."""
    first, last = lake_days(settings)
    end = min(end or last, last)
    protocol = Protocol.for_settings(settings, end + DAY, **kw)
    protocol.check(max(first, start or first), end)
    return protocol


def _fraud_cards(settings: Settings, labels: pd.DataFrame, upto: date) -> pd.DataFrame:
    """Per fraud-labelled transaction: its card, its time, when its fraud became known."""
    fraud = labels[labels["is_fraud"]]
    first_known = fraud.groupby("txn_id")["labelled_at"].min().rename("first_known")
    days = [d for d in list_partitions(settings.lake_dir, "transactions") if d <= str(upto)]
    cards = read_table(settings.lake_dir, "transactions", days,
                       columns=["txn_id", "card_id", "event_time"]).to_pandas()
    return cards.merge(first_known, left_on="txn_id", right_index=True)[
        ["card_id", "event_time", "first_known"]]


@dataclass
class FeatureRows:
    """Point-in-time rows of a service (``truth``: the latest label; NaN: none), each
    feature's coverage, and every label row (txn_id, is_fraud, labelled_at)."""

    frame: pd.DataFrame
    parts: ServiceParts
    coverage: dict[str, Coverage]
    labels: pd.DataFrame


def feature_rows(settings: Settings, first: date, last: date, engine: Engine = "asof",
                 progress: Progress | None = None, service: str = FEATURE_SERVICE,
                 min_coverage: float | None = None) -> FeatureRows:
    """Point-in-time rows of ``service`` for the lake's transactions of ``first`` …
    ``last`` (training.dataset), with the latest label of each (``truth``; NaN: none) and
    each feature's coverage; raises TrainingError when a feature's coverage is below
    ``min_coverage`` (default ``KESTREL_TRAINING_MIN_COVERAGE``; training/coverage.py says
    which rows count). What ``kestrel train`` and ``kestrel training-set`` both build on."""
    say = progress or _quiet
    say(f"training set: transactions {first} … {last} through feature service {service} "
        f"(engine {engine})")
    tx = transactions_between(settings.lake_dir, first, last)
    frame, parts = historical_features(settings, tx, engine=engine, progress=say,
                                       service=service)
    frame["day"] = frame["event_time"].dt.strftime("%Y-%m-%d")
    label_rows = read_labels(settings.lake_dir).select(
        ["txn_id", "is_fraud", "labelled_at"]).to_pandas()
    truth = latest_per_txn(label_rows)[["txn_id", "is_fraud"]].rename(
        columns={"is_fraud": "truth"})
    frame = frame.merge(truth, on="txn_id", how="left")
    frame["truth"] = frame["truth"].astype("float64")
    coverage = measure(frame, {v.name: names for v, names in parts.views})
    threshold = settings.training_min_coverage if min_coverage is None else min_coverage
    for name, c in coverage.items():
        say(f"  coverage {name}: {c.share:.1%} ({c.present:,} of {c.due:,} rows due)")
    check(coverage, threshold, first.isoformat(), last.isoformat())
    return FeatureRows(frame, parts, coverage, label_rows)


def build_training_set(settings: Settings, protocol: Protocol, engine: Engine = "asof",
                       progress: Progress | None = None) -> TrainingSet:
    """Point-in-time feature rows for every day the protocol touches (training.dataset), the
    labels, and the cards known compromised, with a manifest of what went in."""
    say = progress or _quiet
    began = time.perf_counter()
    first, last = protocol.span()
    rows = feature_rows(settings, first, last, engine, say)
    frame, parts, coverage, label_rows = rows.frame, rows.parts, rows.coverage, rows.labels
    in_span = label_rows[label_rows["txn_id"].isin(frame["txn_id"])]
    compromised = _fraud_cards(settings, label_rows, last)
    ts = TrainingSet(frame, in_span, compromised, protocol, parts)
    ts.manifest = _manifest(ts, engine, time.perf_counter() - began)
    ts.manifest["coverage"] = {n: round(c.share, 6) for n, c in coverage.items()}
    say(f"  {len(frame):,} rows, {int(np.nansum(frame['truth'])):,} frauds, "
        f"{int(frame['truth'].isna().sum()):,} without a label "
        f"({time.perf_counter() - began:.1f} s)")
    return ts


# --- folds ----------------------------------------------------------------------------------

@dataclass
class FoldData:
    fold: Fold
    x_train: np.ndarray
    y_train: np.ndarray
    x_delay: np.ndarray
    delay_days: float
    test: pd.DataFrame  # day, card_id, is_fraud (+ score once scored)
    x_test: np.ndarray
    counts: dict[str, int]


def _x(frame: pd.DataFrame) -> np.ndarray:
    return frame[list(MODEL_FEATURES)].to_numpy(dtype="float64")


def _known_labels(labels: pd.DataFrame, cutoff: Any) -> pd.DataFrame:
    """latest_per_txn for label rows already sorted by (txn_id, labelled_at, is_fraud)."""
    known = labels[labels["labelled_at"] < cutoff]
    ids = known["txn_id"].to_numpy()
    last = np.append(ids[1:] != ids[:-1], True) if len(ids) else np.zeros(0, dtype=bool)
    return known[last][["txn_id", "is_fraud"]]


def fold_data(ts: TrainingSet, fold: Fold) -> FoldData:
    """The training rows with the labels known at ``fold.label_cutoff``; the delay period's
    rows (unlabelled); the test rows with their final labels, known-compromised cards out.
    Computed once per fold and training set."""
    if fold.name not in ts._folds:
        ts._folds[fold.name] = _fold_data(ts, fold)
    return ts._folds[fold.name]


def _fold_data(ts: TrainingSet, fold: Fold) -> FoldData:
    train = ts.rows(fold.train_start, fold.train_end)
    known = _known_labels(ts.labels, fold.label_cutoff)
    labelled = train.merge(known, on="txn_id", how="inner")
    delay = ts.rows(fold.train_end, fold.test_start)
    test = ts.rows(fold.test_start, fold.test_end)
    test = test[test["truth"].notna()]
    day_start = pd.to_datetime(test["day"], utc=True)
    # the handbook's "known defrauded cards": frauds since the training window began,
    # counted from the moment their label was known
    recent = ts.compromised[ts.compromised["event_time"] >= fold.train_start]
    known_at = recent.groupby("card_id", as_index=False)["first_known"].min()
    first_known = test[["card_id"]].merge(known_at, on="card_id", how="left")[
        "first_known"].to_numpy()
    blocked = pd.notna(first_known) & (first_known < day_start.to_numpy())
    kept = test[~blocked]
    counts = {"train_rows": len(train), "train_labelled": len(labelled),
              "train_frauds": int(labelled["is_fraud"].sum()),
              "train_unlabelled": len(train) - len(labelled), "delay_rows": len(delay),
              "test_rows": len(kept), "test_frauds": int(kept["truth"].sum()),
              "test_removed_known_compromised": int(blocked.sum())}
    test_frame = pd.DataFrame({"day": kept["day"].to_numpy(),
                               "card_id": kept["card_id"].to_numpy(),
                               "is_fraud": kept["truth"].to_numpy(dtype="int64")})
    return FoldData(fold, _x(labelled), labelled["is_fraud"].to_numpy(dtype="int64"),
                    _x(delay), (fold.test_start - fold.train_end) / timedelta(days=1),
                    test_frame, _x(kept), counts)


def _manifest(ts: TrainingSet, engine: str, seconds: float) -> dict[str, Any]:
    first, last = ts.protocol.span()
    folds = {}
    for fold in [*ts.protocol.valid_folds(), *ts.protocol.test_folds(), ts.protocol.final_fold()]:
        folds[fold.name] = {**fold.as_dict(), **fold_data(ts, fold).counts}
    return {
        "feature_service": ts.parts.name, "feature_service_fingerprint": ts.parts.fingerprint,
        "feast_version": feast.__version__, "engine": engine,
        "model_features": list(MODEL_FEATURES),
        "range": {"first_day": first.isoformat(), "last_day": last.isoformat()},
        "rows": len(ts.frame), "frauds": int(np.nansum(ts.frame["truth"])),
        "unlabelled": int(ts.frame["truth"].isna().sum()),
        "protocol": ts.protocol.as_dict(), "folds": folds, "build_seconds": round(seconds, 2),
    }


# --- models ---------------------------------------------------------------------------------

@dataclass
class FamilyResult:
    family: str
    params: dict[str, Any]
    validation: list[dict[str, Any]]  # per candidate: params, mean AP, per-fold AP
    folds: dict[str, dict[str, float]]  # test fold → metrics
    mean: dict[str, float]  # averaged over test folds
    scores: pd.DataFrame  # pooled test rows: fold, day, card_id, is_fraud, score
    model: Any = None  # the production model (trained on the final fold), xgboost only
    thresholds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _thresholds(settings: Settings, delay_scores: np.ndarray, days: float) -> dict[str, float]:
    return {"challenge": threshold_for_budget(delay_scores, days,
                                              settings.alert_challenges_per_day),
            "decline": threshold_for_budget(delay_scores, days,
                                            settings.alert_declines_per_day)}


def evaluate(settings: Settings, family: Family, params: dict[str, Any],
             folds: list[FoldData], seed: int) -> tuple[dict[str, dict[str, float]], pd.DataFrame]:
    """Train ``family`` with ``params`` on each fold's training window and score its test
    window; thresholds come from the fold's delay period (scores only, no labels)."""
    per_fold: dict[str, dict[str, float]] = {}
    pooled = []
    for fd in folds:
        if fd.y_train.sum() == 0 and family.supervised:
            raise TrainingError(f"fold {fd.fold.name} has no known fraud in its training "
                                "window; use longer --train-days or more data")
        model = family.fit(params, seed, fd.x_train, fd.y_train)
        scored = fd.test.assign(score=family.score(model, fd.x_test))
        thresholds = _thresholds(settings, family.score(model, fd.x_delay), fd.delay_days) \
            if len(fd.x_delay) else {}
        per_fold[fd.fold.name] = evaluate_scores(scored, thresholds, K)
        pooled.append(scored.assign(fold=fd.fold.name))
    return per_fold, pd.concat(pooled, ignore_index=True)


def _or(value: float, default: float) -> float:
    return default if np.isnan(value) else value


def _mean(per_fold: dict[str, dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for m in per_fold.values() for k in m})
    out = {}
    for k in keys:
        values = np.array([m.get(k, np.nan) for m in per_fold.values()], dtype="float64")
        out[k] = float(np.mean(values[np.isfinite(values)])) if np.isfinite(values).any() \
            else float("nan")
    return out


def train_models(settings: Settings, ts: TrainingSet, families: dict[str, Family] | None = None,
                 seed: int = 42, progress: Progress | None = None) -> dict[str, FamilyResult]:
    """Per family: pick the candidate with the best mean Average Precision on the validation
    folds, report it on the test folds; for xgboost also train the production model on the
    latest labelled window and set the alert thresholds from the days after it."""
    say = progress or _quiet
    families = families or FAMILIES
    valid = [fold_data(ts, f) for f in ts.protocol.valid_folds()]
    test = [fold_data(ts, f) for f in ts.protocol.test_folds()]
    results = {}
    for name, family in families.items():
        began = time.perf_counter()
        validation: list[dict[str, Any]] = []
        for params in family.candidates():
            per_fold, _ = evaluate(settings, family, params, valid, seed)
            aps = {k: m["average_precision"] for k, m in per_fold.items()}
            validation.append({"params": params, "average_precision": float(
                np.nanmean(list(aps.values()))), "folds": aps})
            say(f"  {name} {params}: validation AP {validation[-1]['average_precision']:.4f}")
        best = max(validation, key=lambda v: _or(v["average_precision"], -1.0))
        per_fold, scores = evaluate(settings, family, best["params"], test, seed)
        result = FamilyResult(name, best["params"], validation, per_fold, _mean(per_fold), scores)
        if name == "xgboost":
            final = fold_data(ts, ts.protocol.final_fold())
            result.model = family.fit(best["params"], seed, features_frame(final.x_train),
                                      final.y_train)
            recent = ts.rows(ts.protocol.final_fold().train_end,
                             ts.protocol.final_fold().test_start)
            result.thresholds = _thresholds(
                settings, family.score(result.model, features_frame(_x(recent))),
                final.delay_days) if len(recent) else {}
        result.seconds = time.perf_counter() - began
        m = result.mean
        say(f"{name}: chose {best['params']}; test AUC {m['auc_roc']:.4f}, AP "
            f"{m['average_precision']:.4f}, CP@{K} {m[f'card_precision_at_{K}']:.4f} "
            f"({result.seconds:.1f} s)")
        results[name] = result
    return results


# --- registry -------------------------------------------------------------------------------

def register(settings: Settings, ts: TrainingSet, results: dict[str, FamilyResult],
             seed: int = 42, progress: Progress | None = None) -> dict[str, Any]:
    """Log one MLflow run per family, register the XGBoost production model and run the
    promotion gate; returns run ids, the new version and the gate's decision."""
    from training import registry

    say = progress or _quiet
    client = registry.tracking(settings)
    out: dict[str, Any] = {"runs": {}, "tracking_uri": settings.mlflow_uri}
    test = [fold_data(ts, f) for f in ts.protocol.test_folds()]
    explain = np.concatenate([fd.x_test for fd in test])[:5000]
    for name, result in results.items():
        out["runs"][name] = registry.log_family_run(settings, client, result, ts.manifest, seed,
                                                    explain if name == "xgboost" else None)
        say(f"mlflow: {registry.experiment_name(settings, name)} run {out['runs'][name]}")
    xgb = results.get("xgboost")
    if xgb is None or xgb.model is None:
        return out
    final = fold_data(ts, ts.protocol.final_fold())
    version = registry.log_model_version(settings, client, out["runs"]["xgboost"], xgb.model,
                                         final.x_train[:200], xgb.thresholds, xgb, ts.manifest)
    out["version"] = version
    say(f"registered {settings.model_name} version {version} (thresholds challenge "
        f"{xgb.thresholds.get('challenge', float('nan')):.4f}, decline "
        f"{xgb.thresholds.get('decline', float('nan')):.4f})")

    def reevaluate(params: dict[str, Any]) -> float:
        say(f"gate: training the champion's parameters {params} on the same test folds")
        per_fold, _ = evaluate(settings, FAMILIES["xgboost"], params, test, seed)
        return float(np.nanmean([m["average_precision"] for m in per_fold.values()]))

    decision = registry.promotion_gate(
        settings, client, version, xgb.mean["average_precision"],
        registry.folds_key(ts.manifest), reevaluate, run_id=out["runs"]["xgboost"])
    out["gate"] = decision
    say(f"gate: {'promoted' if decision.promoted else 'kept the champion'} — {decision.reason}"
        f" ({decision.basis})")
    return out
