"""The console's one Jinja2 environment (templates in serving/console/templates/, autoescape
on for every template: user text — notes, reasons, names — is always escaped) and the page
answer built from it, with the console's security headers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from serving.console.narrative import feature_value
from serving.console.security import CSP, secure_headers

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

OUTCOME_WORDS = {"confirmed_fraud": "confirmed fraud", "false_positive": "false positive",
                 "needs_more_information": "needs more information"}


def when(value: datetime | None) -> str:
    """``07 Dec 2026, 20:53 UTC``; an unknown time says so. (Not ``2026-12-07 20:53``: twelve
    digits joined by dashes and spaces read as a card number to kestrel.pan.pan_like.)"""
    if value is None:
        return "unknown"
    return value.astimezone(UTC).strftime("%d %b %Y, %H:%M UTC")


def when_s(value: datetime | None) -> str:
    if value is None:
        return "unknown"
    return value.astimezone(UTC).strftime("%d %b %Y, %H:%M:%S UTC")


def duration(value: timedelta | float | None) -> str:
    """``3 h 20 min``, ``2 d 4 h``, ``45 min`` (hours when given a number)."""
    if value is None:
        return "unknown"
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value) * 3600
    minutes = max(int(seconds // 60), 0)
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {mins} min"
    return f"{mins} min"


def score(value: float | None) -> str:
    return "no score" if value is None else f"{value:.3f}"


def amount(value: float | None, currency: str | None = None) -> str:
    if value is None:
        return "unknown amount"
    return f"{value:,.2f} {currency}" if currency else f"{value:,.2f}"


def outcome(value: str | None) -> str:
    return "" if value is None else OUTCOME_WORDS.get(value, value)


def feature(value: Any, name: str) -> str:
    """A feature-vector value, with the feature's unit; a sentinel (−1 for "no previous
    payment", NaN) in words (serving.console.narrative.feature_value)."""
    return feature_value(name, value)


def source(value: str) -> str:
    """Where an evidence transaction comes from: ``alert (velocity)``, ``decision``."""
    kind, _, rule = value.partition(":")
    return f"{kind} ({rule})" if rule else kind


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=when, when_s=when_s, duration=duration, score=score,
                       amount=amount, outcome=outcome, source=source,
                       feature=feature)
    return env


ENV = _environment()


def render_text(template: str, **context: Any) -> str:
    return ENV.get_template(template).render(**context)


def page(template: str, status: int = 200, *, csp: str = CSP,
         headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    """A rendered page with the console's headers (no-store)."""
    response = HTMLResponse(render_text(template, **context), status_code=status,
                            headers=headers)
    return secure_headers(response, csp=csp)  # type: ignore[return-value]
