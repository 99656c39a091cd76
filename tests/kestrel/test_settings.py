from __future__ import annotations

from pathlib import Path

import pytest

from kestrel.errors import ConfigError
from kestrel.settings import Settings


def test_defaults_and_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KESTREL_TRANSACTIONS_PARTITIONS", "12")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.transactions_partitions == 12
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    with pytest.raises(ValueError):
        s.env = "prod"  # type: ignore[misc]  # frozen


def test_dev_secret_generated_once_and_private(tmp_path: Path) -> None:
    s = Settings(env="dev", var_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    first = s.secret("pan_token_key")
    assert len(first) >= 32 and first == s.secret("pan_token_key")
    path = tmp_path / "secrets" / "pan_token_key"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert s.secret("jwt_secret") != first


def test_secrets_required_outside_dev(tmp_path: Path) -> None:
    s = Settings(env="prod", var_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="KESTREL_PAN_TOKEN_KEY"):
        s.secret("pan_token_key")
    short = Settings(env="prod", pan_token_key="x", _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="at least 32"):
        short.secret("pan_token_key")
