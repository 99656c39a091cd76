"""`kestrel up | status | down` as a user runs them (subprocesses, real binaries)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from kestrel.services import free_port, redis_answers
from tests.conftest import env_for, make_settings

pytestmark = pytest.mark.integration


def kestrel(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_help_is_fast_and_everywhere() -> None:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "cli", "--help"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and "simulate" in out.stdout
    assert time.monotonic() - t0 < 5  # generous bound for a loaded CI box; it is ~0.3 s
    for cmd in ("up", "down", "status", "simulate", "archive", "stream", "batch", "backfill",
                "parity", "lake", "train", "training-set", "mlflow-ui", "serve", "token",
                "bench", "demo", "features", "features apply", "features list",
                "features lock", "features compact", "features env", "features materialize",
                "labels", "labels intake", "audit", "audit verify"):
        res = subprocess.run([sys.executable, "-m", "cli", *cmd.split(), "--help"],
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 0 and "Usage" in res.stdout, cmd


def test_the_console_script_keeps_its_name() -> None:
    script = Path(sys.executable).parent / "kestrel"
    assert script.exists(), f"no console script at {script}; run `make install`"
    res = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "simulate" in res.stdout, res.stderr


def test_up_is_idempotent_and_down_stops_only_its_own(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "var", kafka_bootstrap=f"127.0.0.1:{free_port()}",
                             redis_url=f"redis://127.0.0.1:{free_port()}/0")
    env = env_for(settings)
    try:
        first = kestrel(env, "up")
        assert first.returncode == 0, first.stderr
        assert "broker started" in first.stdout and "topics created: transactions" in first.stdout
        assert "redis-server started" in first.stdout
        second = kestrel(env, "up")
        assert "already running" in second.stdout and "started by kestrel" in second.stdout
        status = kestrel(env, "status")
        assert status.returncode == 0, status.stderr
        assert "transactions" in status.stdout and "kestrel-archiver" in status.stdout
        assert " 8 " in status.stdout  # partitions of `transactions`
    finally:
        down = kestrel(env, "down")
    assert "broker: stopped" in down.stdout and "redis: stopped" in down.stdout
    assert not redis_answers(settings.redis_url)
    again = kestrel(env, "down")
    assert "not started by kestrel, left alone" in again.stdout
    status = kestrel(env, "status")
    assert status.returncode == 1 and "kestrel up" in status.stdout


def test_down_leaves_a_redis_it_did_not_start(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path / "var", kafka_bootstrap=f"127.0.0.1:{free_port()}",
                             redis_url=redis_url)
    env = env_for(settings)
    try:
        up = kestrel(env, "up")
        assert "not started by kestrel" in up.stdout
    finally:
        down = kestrel(env, "down")
    assert "redis: not started by kestrel, left alone" in down.stdout
    assert redis_answers(redis_url)


def test_up_names_the_setting_when_redis_cannot_be_had(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "var", kafka_bootstrap=f"127.0.0.1:{free_port()}",
                             redis_url=f"redis://127.0.0.1:{free_port()}/0")
    env = env_for(settings) | {"PATH": str(Path(sys.executable).parent)}  # no redis-server
    try:
        res = kestrel(env, "up")
    finally:
        kestrel(env, "down")
    assert res.returncode == 1
    assert "KESTREL_REDIS_URL" in res.stderr
