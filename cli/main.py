"""The `kestrel` command line: the Typer app and which command lives where.

The commands are grouped by what they run (cli/services.py, data.py, stream.py, features.py,
train.py, serve.py, cases.py, end_to_end.py); each imports its engine inside the function, so
`kestrel --help` answers at once.
"""

from __future__ import annotations

import sys

import typer

from cli import cases, data, end_to_end, features, serve, services, stream, train

app = typer.Typer(
    help="Kestrel: real-time fraud features, decisions and insights.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# the groups `kestrel --help` shows (the README's tour follows them)
SERVICES, DATA, FEATURES, MODELS, OPERATIONS = (
    "Local services", "Data in", "Features", "Models", "Operations")

app.command(rich_help_panel=SERVICES)(services.up)
app.command(rich_help_panel=SERVICES)(services.status)
app.command(rich_help_panel=SERVICES)(services.down)
app.command(rich_help_panel=SERVICES)(serve.serve)
app.command(rich_help_panel=SERVICES)(serve.token)
app.command(rich_help_panel=DATA)(data.simulate)
app.command(rich_help_panel=DATA)(data.archive)
app.add_typer(train.labels_app, name="labels", rich_help_panel=DATA)
app.command(rich_help_panel=DATA)(data.lake)
app.add_typer(features.features_app, name="features", rich_help_panel=FEATURES)
app.command(rich_help_panel=FEATURES)(stream.stream)
app.command(rich_help_panel=FEATURES)(features.batch)
app.command(rich_help_panel=FEATURES)(features.backfill)
app.command(rich_help_panel=FEATURES)(stream.parity)
app.command("training-set", rich_help_panel=MODELS)(train.training_set)
app.command(rich_help_panel=MODELS)(train.train)
app.command("mlflow-ui", rich_help_panel=MODELS)(train.mlflow_ui)
app.add_typer(serve.audit_app, name="audit", rich_help_panel=OPERATIONS)
app.add_typer(cases.cases_app, name="cases", rich_help_panel=OPERATIONS)
app.command(rich_help_panel=OPERATIONS)(end_to_end.bench)
app.command(rich_help_panel=OPERATIONS)(end_to_end.demo)

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
