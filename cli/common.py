"""What every command shares: the settings (with logging and the secrets check), the one
red error line, and the date options."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from kestrel.settings import Settings

START = typer.Option(help="First day, YYYY-MM-DD (default: the lake's first)")
END = typer.Option(help="Last day, YYYY-MM-DD (default: the lake's last)")


def load_settings() -> Settings:
    from kestrel.logs import configure_logging
    from kestrel.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level)
    settings.check_secrets()  # outside dev, no command runs without the deployment's secrets
    return settings


def fail(exc: Exception) -> NoReturn:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def parse_day(value: str | None, name: str) -> date | None:
    """``--<name>`` as a date (None when not given); a wrong one fails the command."""
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(ValueError(f"--{name} {value!r} is not a date; use YYYY-MM-DD"))
