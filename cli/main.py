"""The `kestrel` command line: the Typer app and which command lives where.

The commands are grouped by what they run (cli/services.py, data.py, stream.py, features.py,
train.py, serve.py, end_to_end.py); each imports its engine inside the function, so
`kestrel --help` answers at once.
"""

from __future__ import annotations

import sys

import typer

from cli import data, end_to_end, features, serve, services, stream, train

app = typer.Typer(
    help="Kestrel: real-time fraud features, decisions and insights.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.add_typer(features.features_app, name="features")

# services
app.command()(services.up)
app.command()(services.down)
app.command()(services.status)
# data
app.command()(data.simulate)
app.command()(data.archive)
app.command()(stream.stream)
# batch features (Spark) and parity
app.command()(features.batch)
app.command()(features.backfill)
app.command()(stream.parity)
app.command()(data.lake)
# labels, training, MLflow
app.add_typer(train.labels_app, name="labels")
app.command()(train.train)
app.command("training-set")(train.training_set)
app.command("mlflow-ui")(train.mlflow_ui)
# serving and audit
app.command()(serve.serve)
app.command()(serve.token)
app.add_typer(serve.audit_app, name="audit")
# benchmarks and the demo
app.command()(end_to_end.bench)
app.command()(end_to_end.demo)


def main() -> None:
    """Entry point that turns Kestrel's own errors into one red line and exit code 1."""
    from kestrel.errors import KestrelError

    try:
        app()
    except KestrelError as exc:  # raised outside a command's own handling: one line, exit 1
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
