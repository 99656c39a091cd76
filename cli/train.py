"""`kestrel labels intake` (the `labels` topic into the label store), `kestrel train`,
`kestrel training-set` and `kestrel mlflow-ui`: labels, training and the model registry."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from cli.common import END, START, fail, load_settings, parse_day

labels_app = typer.Typer(help="The label store (lake/labels) and its intake.",
                         no_args_is_help=True)


@labels_app.command("intake")
def labels_intake(
    idle_seconds: Annotated[
        float | None, typer.Option(help="Stop after this long without new records")
    ] = None,
) -> None:
    """Consume the `labels` topic into the label store (exactly once; invalid → DLQ)."""
    from kestrel.errors import KestrelError
    from labels.intake import IntakeStats, LabelIntake

    settings = load_settings()

    def progress(s: IntakeStats) -> None:
        typer.echo(f"stored {s.written:,} labels ({s.invalid:,} invalid → DLQ) in "
                   f"{s.batches} batches, {s.seconds:.1f} s")

    try:
        stats = LabelIntake(settings).run(idle_seconds=idle_seconds, progress=progress)
    except KestrelError as exc:
        fail(exc)
    typer.echo(f"labels intake done: {stats.consumed:,} records read, {stats.written:,} "
               f"labels stored under {settings.lake_dir / 'labels'}, {stats.invalid:,} to "
               f"the DLQ, {stats.seconds:.1f} s")


def train(
    days: Annotated[int | None, typer.Option(min=1, help="Use only the last N lake days")] = None,
    start: Annotated[str | None, typer.Option(help="First day to use, YYYY-MM-DD")] = None,
    end: Annotated[str | None, typer.Option(help="Last day (test folds end here)")] = None,
    folds: Annotated[int, typer.Option(min=1, help="Test (and validation) folds")] = 4,
    train_days: Annotated[int, typer.Option(min=1, help="Training window, days")] = 7,
    test_days: Annotated[int, typer.Option(min=1, help="Test window, days")] = 7,
    engine: Annotated[str, typer.Option(help="asof (fast) | feast (get_historical_features)")
                      ] = "asof",
    out: Annotated[Path | None, typer.Option(help="Write the metrics as benchmark JSON")] = None,
) -> None:
    """Backfill features if missing, build the point-in-time training set, train XGBoost,
    logistic regression and IsolationForest, log to MLflow, register, run the gate."""
    from datetime import timedelta

    from kestrel.errors import KestrelError
    from training.run import run_training

    settings = load_settings()
    if engine not in ("asof", "feast"):
        fail(ValueError("--engine must be asof or feast"))
    try:
        last = date.fromisoformat(end) if end else None
        first = date.fromisoformat(start) if start else None
        if days is not None:
            from training.pipeline import lake_days

            last = last or lake_days(settings)[1]
            first = last - timedelta(days=days - 1)
        report = run_training(settings, first, last, folds=folds, train_days=train_days,
                              test_days=test_days, engine=engine,  # type: ignore[arg-type]
                              progress=typer.echo)
    except (KestrelError, ValueError) as exc:
        fail(exc)
    for name, m in report.metrics.items():
        typer.echo(f"{name:8s} AUC ROC {m['auc_roc']:.4f}  AP {m['average_precision']:.4f}  "
                   f"CP@100 {m['card_precision_at_100']:.4f}  params {report.params[name]}")
    typer.echo(f"train done in {report.seconds['total']:.1f} s; MLflow: "
               f"{report.registry['tracking_uri']} (`kestrel mlflow-ui`)")
    if out is not None:
        from bench.train import result_from_report

        path = result_from_report(report, quick=False).write(out)
        typer.echo(f"metrics written to {path}")


def training_set(
    out: Annotated[Path, typer.Option(help="Parquet file to write")],
    service: Annotated[str | None, typer.Option(
        help="Feature service version (default: the one new models train on)")] = None,
    start: Annotated[str | None, START] = None,
    end: Annotated[str | None, END] = None,
    engine: Annotated[str, typer.Option(help="asof (fast) | feast (get_historical_features)")
                      ] = "asof",
    prepare: Annotated[bool, typer.Option(
        help="First backfill missing stream-view days and run the batch views")] = False,
) -> None:
    """Build a point-in-time training set of a feature service into Parquet and summarize it
    (rows, label rate, coverage per feature); trains nothing. Stops when a feature's coverage
    is below KESTREL_TRAINING_MIN_COVERAGE, naming the command that fills it."""
    from kestrel.errors import KestrelError
    from training.features import FEATURE_SERVICE
    from training.training_set import write_training_set

    if engine not in ("asof", "feast"):
        fail(ValueError("--engine must be asof or feast"))
    settings = load_settings()
    try:
        summary = write_training_set(settings, service or FEATURE_SERVICE,
                                     parse_day(start, "start"), parse_day(end, "end"), out,
                                     engine=engine, prepare=prepare,  # type: ignore[arg-type]
                                     progress=typer.echo)
    except KestrelError as exc:
        fail(exc)
    for line in summary.lines():
        typer.echo(line)


def mlflow_ui(
    port: Annotated[int, typer.Option(help="Port of the MLflow UI")] = 5000,
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
) -> None:
    """Open the MLflow UI on the project's tracking store (runs, plots, registry)."""
    import os

    settings = load_settings()
    settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", settings.mlflow_uri,
           "--host", host, "--port", str(port)]
    if not settings.mlflow_tracking_uri:
        cmd += ["--default-artifact-root", (settings.mlflow_dir / "artifacts").as_uri()]
    os.execv(sys.executable, cmd)
