"""Shared fixtures: real services, started by the tests themselves.

Each test that needs Kafka gets a fresh broker on a free port (memory storage, so every test
starts from empty topics and nothing leaks between tests). Redis is one `redis-server` per
session on a free port; a test never touches a store it did not start.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kestrel.services import BROKER, REDIS, free_port, start_broker, start_redis, stop
from kestrel.settings import Settings
from serving.process import settings_env

TEST_SECRET = "test-secret-0123456789abcdef-0123456789"


def make_settings(var_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "test", "var_dir": var_dir, "pan_token_key": TEST_SECRET,
        "jwt_secret": TEST_SECRET + "-jwt", "audit_key": TEST_SECRET + "-audit",
        "kafka_bootstrap": "127.0.0.1:1",
        "redis_url": "redis://127.0.0.1:1/0", "stream_metrics_port": 0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with a private var dir and no services (unit tests)."""
    return make_settings(tmp_path / "var")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed; the integration tests start their own")
    s = make_settings(tmp_path_factory.mktemp("redis-var"),
                      redis_url=f"redis://127.0.0.1:{free_port()}/0")
    start_redis(s)
    yield s.redis_url
    stop(s, REDIS)


@pytest.fixture
def services(tmp_path: Path, redis_url: str) -> Iterator[Settings]:
    """A fresh broker with the project's topics, plus the session's Redis."""
    s = make_settings(tmp_path / "var", kafka_bootstrap=f"127.0.0.1:{free_port()}",
                      redis_url=redis_url, archive_batch_seconds=0.5)
    start_broker(s)
    yield s
    stop(s, BROKER)


def env_for(settings: Settings) -> dict[str, str]:
    """Environment variables that give a subprocess the same settings."""
    return settings_env(settings)
