"""Unit tests: the Feast config built from Settings, and the writer's byte encoding.

No Redis here: the encoding is checked against Feast's own serializers, byte for byte.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.utils import make_tzaware
from google.protobuf.timestamp_pb2 import Timestamp

from kestrel.errors import ConfigError
from kestrel.feast_codec import encode_double, encode_int64, timestamp_parts
from kestrel.settings import Settings
from kestrel.windows import ENTITY_KEYS, feature_names, stream_view_name
from pipelines.features.online_writer import ViewWriter
from pipelines.features.store import (
    expand,
    feast_env,
    load_repo,
    redis_connection_string,
    registry_path,
    repo_config,
)
from tests.conftest import make_settings


def test_feast_env_file_registry(settings: Settings) -> None:
    env = feast_env(settings)
    assert env == {
        "KESTREL_FEAST_REDIS": "127.0.0.1:1,db=0",
        "KESTREL_FEAST_REGISTRY_TYPE": "file",
        "KESTREL_FEAST_REGISTRY": str((settings.var_dir / "feast" / "registry.db").resolve()),
        "KESTREL_FEAST_REGISTRY_TTL": "60",
        "KESTREL_FEAST_KEY_TTL": str(30 * 86_400),  # the feature retention
    }
    config = repo_config(settings)
    assert config.project == "kestrel"
    assert config.registry.registry_type == "file"
    assert config.registry.path == str(registry_path(settings))
    assert config.online_store.connection_string == "127.0.0.1:1,db=0"
    assert config.online_store.key_ttl_seconds == 30 * 86_400
    assert config.entity_key_serialization_version == 3


def test_feast_env_sql_registry_and_key_ttl(tmp_path: Path) -> None:
    s = make_settings(tmp_path, feast_registry_url="postgresql+psycopg://kestrel@db:5432/feast",
                      feast_registry_cache_ttl_seconds=5, feast_online_key_ttl_seconds=86_400)
    config = repo_config(s)
    assert config.registry.registry_type == "sql"
    assert config.registry.path == "postgresql+psycopg://kestrel@db:5432/feast"
    assert config.registry.cache_ttl_seconds == 5
    assert config.online_store.key_ttl_seconds == 86_400


@pytest.mark.parametrize(("url", "want"), [
    ("redis://127.0.0.1:6379/0", "127.0.0.1:6379,db=0"),
    ("redis://localhost", "localhost:6379,db=0"),
    ("rediss://user:s%40cret@cache.internal:6380/2",
     "cache.internal:6380,db=2,username=user,password=s@cret,ssl=true"),
])
def test_redis_connection_string(url: str, want: str) -> None:
    assert redis_connection_string(url) == want


@pytest.mark.parametrize("url", ["unix:///tmp/redis.sock", "redis://:a,b@h:1/0",
                                 "redis://:1e3@h:1/0"])
def test_redis_urls_feast_cannot_carry(url: str) -> None:
    with pytest.raises(ConfigError):
        redis_connection_string(url)


def test_expand_is_expandvars_over_a_mapping() -> None:
    env = {"A": "1", "B_C": "two"}
    assert expand("x ${A} $B_C ${MISSING} $MISSING $", env) == "x 1 two ${MISSING} $MISSING $"


# --- the writer's encoding, against Feast's serializers ----------------------------------


@pytest.fixture(scope="module")
def card_writer(tmp_path_factory: pytest.TempPathFactory) -> ViewWriter:
    s = make_settings(tmp_path_factory.mktemp("enc") / "var")
    views = {v.name: v for v in load_repo(s).feature_views}
    return ViewWriter(repo_config(s), views[stream_view_name("card")])


@pytest.mark.parametrize("card_id", ["c", "card-0001", "tok_ÄÖ€", "x" * 300])
def test_key_is_feasts_redis_key(card_writer: ViewWriter, card_id: str) -> None:
    proto = EntityKey(join_keys=[ENTITY_KEYS["card"]], entity_values=[Value(string_val=card_id)])
    assert card_writer.key(card_id) == _redis_key("kestrel", proto, 3)


def test_fields_are_feasts_hash_fields(card_writer: ViewWriter) -> None:
    view = stream_view_name("card")
    assert card_writer.features == feature_names("card")
    assert card_writer.ts_field == f"_ts:{view}".encode()
    for name in feature_names("card"):
        assert card_writer.field(name) == _mmh3(f"{view}:{name}")


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31, 2**63 - 1, -1, -(2**63),
                                   True, 5.0, 7.9])
def test_int64_values(value: int | float) -> None:
    assert encode_int64(value) == Value(int64_val=int(value)).SerializeToString()


@pytest.mark.parametrize("value", [0.0, -0.0, 1.5, -2.25, 1e308, 5e-324, 3, math.inf])
def test_double_values(value: float) -> None:
    assert encode_double(value) == Value(double_val=value).SerializeToString()


@pytest.mark.parametrize("value", [None, math.nan])
def test_missing_values_are_the_empty_value(value: float | None) -> None:
    assert encode_int64(value) == encode_double(value) == Value().SerializeToString() == b""


@pytest.mark.parametrize("when", [
    datetime(2024, 6, 1, 23, 30, tzinfo=UTC),
    datetime(2024, 6, 1, 23, 30, 0, 123456, tzinfo=UTC),
    datetime(2024, 6, 1, 23, 30, 0, 1),  # naive: UTC, as Feast assumes
    datetime(2024, 6, 2, 1, 30, 0, 999999, tzinfo=timezone(timedelta(hours=2))),
    datetime(1970, 1, 1, tzinfo=UTC),
])
def test_timestamps_are_feasts(when: datetime) -> None:
    ts = Timestamp()
    ts.FromDatetime(make_tzaware(when))
    assert timestamp_parts(when) == (ts.seconds, ts.nanos)
    micros = round((make_tzaware(when) - datetime(1970, 1, 1, tzinfo=UTC))
                   / timedelta(microseconds=1))
    assert timestamp_parts(micros) == (ts.seconds, ts.nanos)


def test_unknown_feature_is_refused(card_writer: ViewWriter) -> None:
    pipe = redis.Redis(host="127.0.0.1", port=1).pipeline()  # queueing never connects
    with pytest.raises(KeyError, match="card_txn_count_2h"):
        card_writer.add(pipe, [("c1", {"card_txn_count_2h": 1}, datetime(2024, 1, 1, tzinfo=UTC))])
    assert len(pipe) == 0


def test_summary_never_prints_a_registry_password() -> None:
    from pipelines.features.store import _without_password

    assert (_without_password("postgresql+psycopg://kestrel:s3cret@db:5432/feast")
            == "postgresql+psycopg://kestrel:***@db:5432/feast")
    assert _without_password("/var/feast/registry.db") == "/var/feast/registry.db"
