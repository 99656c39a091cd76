"""`kestrel serve`, `kestrel token` and `kestrel audit verify`: the HTTP services, their
development tokens, and the tamper-evident audit log they write."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated

import typer

from cli.common import fail, load_settings, parse_day


def serve(
    port: Annotated[int | None, typer.Option(help="Port (default KESTREL_SERVE_PORT)")] = None,
    host: Annotated[str | None, typer.Option(help="Address (default KESTREL_SERVE_HOST)")] = None,
    detach: Annotated[bool, typer.Option(
        help="Run in the background (pid in var/run, log in var/log; `kestrel down` stops it)"
    )] = False,
) -> None:
    """Start the HTTP services (BentoML): decisions, insights, ingest, labels, alerts."""
    import os

    settings = load_settings()
    if detach:
        from kestrel.errors import KestrelError
        from kestrel.services import start_http

        update: dict[str, object] = {}
        if port is not None:
            update["serve_port"] = port
        if host is not None:
            update["serve_host"] = host
        try:
            typer.echo(start_http(settings.model_copy(update=update)))
        except KestrelError as exc:
            fail(exc)
    port = port or settings.serve_port
    cmd = [sys.executable, "-m", "bentoml", "serve", "serving.service:Kestrel",
           "--host", host or settings.serve_host, "--port", str(port)]
    # BentoML keeps its Prometheus multiprocess files under BENTOML_HOME and empties that
    # directory when a server starts, so services sharing a home (a benchmark's, a test's)
    # would erase each other's /metrics: one home per var dir and port.
    home = (settings.var_dir / "run" / f"bentoml-{port}").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.execve(sys.executable, cmd, {**os.environ, "BENTOML_HOME": str(home)})


class Role(StrEnum):
    scorer = "scorer"
    bot = "bot"
    investigator = "investigator"
    admin = "admin"


def token(
    role: Annotated[Role, typer.Option(help="What the token may do")],
    client: Annotated[str, typer.Option(
        "--client", "--tenant", help="The calling client (rate limits, audit, metrics)")] = "demo",
    customer: Annotated[str | None, typer.Option(
        help="The one customer a bot token may read (required with --role bot)")] = None,
    subject: Annotated[str | None, typer.Option(
        help="The token's subject, e.g. an analyst id (default: role plus a random suffix)")
    ] = None,
    ttl: Annotated[int | None, typer.Option(
        min=60, help="Lifetime in seconds (default and most: KESTREL_TOKEN_TTL_SECONDS)")
    ] = None,
) -> None:
    """Mint a development bearer token (HS256, KESTREL_JWT_SECRET); off in production."""
    from kestrel.errors import KestrelError
    from serving.auth import mint_token

    try:
        typer.echo(mint_token(load_settings(), role.value, client, ttl, subject, customer))
    except KestrelError as exc:
        fail(exc)


# --- audit ----------------------------------------------------------------------------------

audit_app = typer.Typer(help="The tamper-evident audit log (var/audit, serving/audit.py).",
                        no_args_is_help=True)


class AuditKind(StrEnum):
    decisions = "decisions"
    access = "access"


_AUDIT_VERIFY_HELP = (
    "Check every audit file's hash chain and its anchor (an HMAC under KESTREL_AUDIT_KEY), "
    "one line per file.\n\n"
    "ok: the chain and its anchor verify (records after the anchor only while their writer "
    "runs).\n\n"
    "broken at record N line L: tampering is evident (a record edited, removed, inserted or "
    "reordered; records cut off the end, or appended after the file was closed; a wrong "
    "key).\n\n"
    "unanchored at record N line L: records after the last anchor and their writer gone "
    "without closing the file (a crash, or records appended without the key).\n\n"
    "Exit status: 0 every file ok, 1 any file broken, 3 none broken but some unanchored."
)


@audit_app.command("verify", help=_AUDIT_VERIFY_HELP)
def audit_verify(
    day: Annotated[str | None, typer.Option(
        help="Only the files of this day, YYYY-MM-DD (UTC; default: every day)")] = None,
    kind: Annotated[AuditKind | None, typer.Option(
        help="Only this kind of record (default: every kind)")] = None,
) -> None:
    from serving.audit_chain import Status, verify

    settings = load_settings()
    when = parse_day(day, "day")
    root = settings.var_dir / "audit"
    reports = verify(root, settings.secret("audit_key"),
                     when.isoformat() if when else None, [kind.value] if kind else None)
    for report in reports:
        typer.echo(report.text())
    counts = {s: sum(r.status is s for r in reports) for s in Status}
    if not reports:
        typer.echo(f"no audit files under {root}" + (f" for {when}" if when else ""))
        return
    typer.echo(f"{len(reports)} files: {counts[Status.ok]} ok, {counts[Status.broken]} "
               f"broken, {counts[Status.unanchored]} unanchored")
    if counts[Status.broken]:
        raise typer.Exit(1)
    if counts[Status.unanchored]:
        raise typer.Exit(3)
