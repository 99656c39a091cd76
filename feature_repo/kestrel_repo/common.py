"""What every Feast definition in this repo shares: ownership, tags and where data lives.

The offline tables live under ``KESTREL_VAR_DIR``, so their paths come from the settings. Feast
imports these modules itself (``feast apply``), where the process-wide ``get_settings()`` is the
right answer; ``pipelines.features.store.apply(settings)`` pins an explicit Settings object
first, so a test or a tool can apply the repo for a var dir other than the environment's.
"""

from __future__ import annotations

from pathlib import Path

from kestrel.settings import Settings, get_settings

OWNER = "fraud-platform@kestrel.dev"
TEAM = "fraud-platform"

_pinned: Settings | None = None


def pin(settings: Settings | None) -> None:
    """Make ``settings()`` return ``settings`` (None: back to the process-wide settings)."""
    global _pinned
    _pinned = settings


def settings() -> Settings:
    return _pinned if _pinned is not None else get_settings()


def tags(layer: str, **extra: str) -> dict[str, str]:
    """The tags every object carries: who owns it, whether it holds PII, which layer it is."""
    return {"team": TEAM, "pii": "false", "layer": layer, **extra}


def features_dir(s: Settings) -> Path:
    """Root of the offline feature tables (absolute: the registry outlives the cwd)."""
    return (s.var_dir / "features").resolve()


def feature_log_dir(s: Settings, view: str) -> Path:
    """The offline feature log of a stream view: the same rows the stream wrote online."""
    return features_dir(s) / "log" / view


def batch_table_dir(s: Settings, view: str) -> Path:
    """The Parquet table a Spark batch job writes for a batch view."""
    return features_dir(s) / "batch" / view
