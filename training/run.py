"""`kestrel train`: the whole chain on what is in the lake, with progress.

1. the Feast registry (``kestrel features apply``) when it is missing or differs from
   feature_repo/ (pipelines.features.store.ensure_applied);
2. the stream views' history: days of the lake without a Spark backfill file in the stream
   feature log are backfilled (``pipelines.batch.backfill.backfill_stream_features``; rows
   the real stream wrote win over backfill rows, so this never overrides served values);
3. the batch views for the protocol's days (``pipelines.batch.jobs.run_batch_features``,
   which recomputes only partitions whose inputs changed);
4. training set, models, MLflow, gate (training.pipeline).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from kestrel.lake import list_partitions
from kestrel.settings import Settings
from kestrel.windows import ENTITIES, stream_view_name
from training.dataset import Engine
from training.models import FAMILIES, Family

Progress = Callable[[str], None]
BACKFILL_FILE = "backfill-{day}.parquet"


@dataclass
class TrainReport:
    seconds: dict[str, float] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    registry: dict[str, Any] = field(default_factory=dict)


def ensure_feature_repo(settings: Settings, say: Progress) -> None:
    """Apply feature_repo/ when the registry lacks it or differs from it (a view's schema, a
    service's feature list): training reads the service from the registry, and a stale one
    would build the set of another definition. Re-applying is what an operator would run
    (`kestrel features apply`), and it changes nothing the stream or serving read."""
    from pipelines.features.store import ensure_applied

    ensure_applied(settings, echo=say)


def missing_backfill_days(settings: Settings, upto: date) -> list[date]:
    from pipelines.stream.offline_log import log_dir

    days = [date.fromisoformat(d) for d in list_partitions(settings.lake_dir, "transactions")
            if d <= upto.isoformat()]
    root = log_dir(settings.var_dir)
    return [d for d in days if not all(
        (root / stream_view_name(e) / BACKFILL_FILE.format(day=d)).exists() for e in ENTITIES)]


def prepare_features(settings: Settings, first: date, last: date, say: Progress,
                     report: TrainReport) -> None:
    """Backfill the stream views where missing and run the batch views for first … last."""
    missing = missing_backfill_days(settings, last)
    step = time.perf_counter()
    if missing:
        from pipelines.batch.backfill import backfill_stream_features

        say(f"backfilling the stream views for {len(missing)} lake days "
            f"({missing[0]} … {missing[-1]}) with Spark …")
        backfill_stream_features(settings, missing[0], missing[-1],
                                 progress=lambda line: say(f"  {line}"))
    else:
        say("stream views: every lake day already backfilled")
    report.seconds["backfill"] = time.perf_counter() - step
    step = time.perf_counter()
    from pipelines.batch.jobs import run_batch_features

    say(f"batch views for {first - timedelta(days=2)} … {last} …")
    run_batch_features(settings, first - timedelta(days=2), last,
                       progress=lambda line: say(f"  {line}"))
    report.seconds["batch_features"] = time.perf_counter() - step


def run_training(settings: Settings, start: date | None = None, end: date | None = None,
                 *, folds: int = 4, train_days: int = 7, test_days: int = 7,
                 engine: Engine = "asof", families: dict[str, Family] | None = None,
                 seed: int | None = None, prepare: bool = True,
                 progress: Progress | None = None) -> TrainReport:
    from training.pipeline import build_training_set, make_protocol, register, train_models

    say = progress or (lambda _line: None)
    seed = settings.train_seed if seed is None else seed
    report = TrainReport()
    began = time.perf_counter()
    protocol = make_protocol(settings, start, end, folds=folds, train_days=train_days,
                             test_days=test_days)
    first, last = protocol.span()
    say(f"protocol: {folds} test folds of {test_days} days stepping back a week, training "
        f"{train_days} days, delay {protocol.delay_days} days; data {first} … {last}")
    ensure_feature_repo(settings, say)
    if prepare:
        prepare_features(settings, first, last, say, report)
    step = time.perf_counter()
    ts = build_training_set(settings, protocol, engine=engine, progress=say)
    report.seconds["training_set"] = time.perf_counter() - step
    step = time.perf_counter()
    results = train_models(settings, ts, families or FAMILIES, seed=seed, progress=say)
    report.seconds["models"] = time.perf_counter() - step
    report.seconds["xgboost"] = results["xgboost"].seconds if "xgboost" in results else 0.0
    step = time.perf_counter()
    report.registry = register(settings, ts, results, seed=seed, progress=say)
    report.seconds["mlflow"] = time.perf_counter() - step
    report.seconds["total"] = time.perf_counter() - began
    report.manifest = ts.manifest
    report.metrics = {k: r.mean for k, r in results.items()}
    report.params = {k: r.params for k, r in results.items()}
    return report
