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


def test_production_is_the_default_and_names_every_missing_secret(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KESTREL_ENV", raising=False)
    s = Settings(var_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    assert s.env == "prod"
    with pytest.raises(ConfigError) as info:
        s.check_secrets()
    message = str(info.value)
    for name in ("KESTREL_PAN_TOKEN_KEY", "KESTREL_AUDIT_KEY", "KESTREL_JWT_SECRET",
                 "KESTREL_ENV=dev"):
        assert name in message
    assert not (tmp_path / "secrets").exists()
    # with an identity provider, no JWT secret is needed
    idp = Settings(var_dir=tmp_path, jwt_jwks_url="http://127.0.0.1:1/jwks",  # type: ignore[call-arg]
                   pan_token_key="p" * 32, audit_key="a" * 32, _env_file=None)
    idp.check_secrets()
    assert "jwt_secret" not in idp.required_secrets()


def test_client_overrides_read_the_tenant_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KESTREL_RATE_LIMIT_TENANTS", "acme=1:2")
    assert Settings(_env_file=None).rate_limit_clients == "acme=1:2"  # type: ignore[call-arg]
    monkeypatch.setenv("KESTREL_RATE_LIMIT_CLIENTS", "bank=3:4")
    assert Settings(_env_file=None).rate_limit_clients == "bank=3:4"  # type: ignore[call-arg]


def test_token_lifetime_is_capped_at_a_day() -> None:
    with pytest.raises(ValueError):
        Settings(token_ttl_seconds=2 * 86400, _env_file=None)  # type: ignore[call-arg]
