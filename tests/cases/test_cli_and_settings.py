"""`kestrel cases migrate` on a fresh database, and the case store's URL setting: the SQLite
default outside prod only, other databases refused with what to give."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cases.engine import backend_of
from kestrel.errors import ConfigError
from kestrel.settings import Settings


def kestrel(*args: str, var: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KESTREL_ENV": "dev", "KESTREL_VAR_DIR": str(var)}
    env.pop("KESTREL_CASE_STORE_URL", None)
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.integration
def test_kestrel_cases_migrate_brings_a_database_to_head_once(tmp_path: Path) -> None:
    first = kestrel("cases", "migrate", var=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "schema empty → 0004" in first.stdout
    assert (tmp_path / "cases" / "cases.db").exists()
    again = kestrel("cases", "migrate", var=tmp_path)
    assert again.returncode == 0 and "schema 0004 → 0004" in again.stdout
    for cmd in ("cases", "cases migrate", "cases prune"):
        assert "Usage" in kestrel(*cmd.split(), "--help", var=tmp_path).stdout, cmd


def test_a_url_of_another_database_is_refused_with_what_to_give(tmp_path: Path) -> None:
    res = kestrel("cases", "migrate", "--url", "oracle://x@y/z", var=tmp_path)
    assert res.returncode == 1 and "postgresql+psycopg://" in res.stderr
    with pytest.raises(ConfigError, match="not a database URL"):
        backend_of("no url at all")
    assert backend_of("mariadb+pymysql://root@127.0.0.1/x") == "mysql"


def test_prod_refuses_the_sqlite_default(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KESTREL_CASE_STORE_URL is not set"):
        _ = Settings(env="prod", var_dir=tmp_path).case_store
    assert Settings(env="dev", var_dir=tmp_path).case_store == (
        f"sqlite:///{(tmp_path / 'cases' / 'cases.db').resolve()}")
    url = "postgresql+psycopg://kestrel@db:5432/cases"
    assert Settings(env="prod", var_dir=tmp_path, case_store_url=url).case_store == url
