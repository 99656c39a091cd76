"""`kestrel cases migrate` and `kestrel cases prune`: the case store's schema and retention
(cases/, docs/cases.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import fail, load_settings

cases_app = typer.Typer(help="The case store in SQL (cases/, docs/cases.md).",
                        no_args_is_help=True)

URL = typer.Option(help="Database URL (default: KESTREL_CASE_STORE_URL, else the SQLite file "
                        "under the var dir outside prod)")


def _url(url: str | None) -> str:
    return url if url else load_settings().case_store


@cases_app.command("migrate")
def migrate(url: Annotated[str | None, URL] = None) -> None:
    """Bring the case store's database to the newest schema (Alembic `upgrade head`;
    idempotent; a CaseStore also does it when it opens)."""
    from sqlalchemy.engine import make_url

    from cases.engine import current_revision, make_engine
    from cases.engine import migrate as upgrade
    from kestrel.errors import KestrelError

    try:
        target = _url(url)
        engine = make_engine(target)
        try:
            before = current_revision(engine)
            upgrade(engine)
            after = current_revision(engine)
        finally:
            engine.dispose()
    except KestrelError as exc:
        fail(exc)
    shown = make_url(target).render_as_string(hide_password=True)
    typer.echo(f"case store {shown}: schema {before or 'empty'} → {after}")


@cases_app.command("prune")
def prune(
    url: Annotated[str | None, URL] = None,
    days: Annotated[int | None, typer.Option(
        min=1, help="Keep this many days (default: KESTREL_CASE_RETENTION_DAYS)")] = None,
) -> None:
    """Delete closed cases (and their alerts) older than the retention, and published label
    outbox rows as old; open cases and cases with a SAR are never deleted."""
    from cases.store import CaseStore
    from kestrel.errors import KestrelError

    try:
        settings = load_settings()
        store = CaseStore(url or settings.case_store,
                          busy_timeout_ms=settings.case_store_busy_timeout_ms,
                          retention_days=settings.case_retention_days)
        try:
            pruned = store.prune(days)
        finally:
            store.dispose()
    except KestrelError as exc:
        fail(exc)
    typer.echo(f"pruned {pruned.cases:,} closed cases and {pruned.outbox_rows:,} published "
               "label outbox rows")
