"""Serving reads the feature service a model version's tag names (issue 29, item 6).

Against the real MLflow store (SQLite under the test's var dir, as training writes it) and a
real Redis: a v1 champion is served with v1's features only, a v2 version with v2's, the alias
moving swaps both together, and a version without the tag, or whose tag names a service that
lacks its inputs, is refused at load with a message.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from kestrel.events import TransactionEvent
from kestrel.features import STREAM_INPUTS
from kestrel.settings import Settings
from serving.decisions import Decider
from serving.features import OnlineFeatures
from serving.fixtures import register_tiny_model, transaction, write_features
from serving.model import ModelHolder, ModelRefused, load_champion
from serving.redis_guard import RedisGuard
from tests.conftest import make_settings
from training.features import model_features

pytestmark = pytest.mark.integration

NEW = ("card_amount_max_1h", "card_night_txn_count_24h", "customer_amount_mean_24h")


@pytest.fixture
def serving(tmp_path: Path, redis_url: str) -> Iterator[tuple[Settings, OnlineFeatures]]:
    db = f"{redis_url.rsplit('/', 1)[0]}/9"
    settings = make_settings(tmp_path / "var", redis_url=db)
    from redis import Redis

    client = Redis.from_url(db)
    guard = RedisGuard(db)
    yield settings, OnlineFeatures(settings, client, guard)
    guard.close()
    client.close()


def _alias(settings: Settings, version: str) -> None:
    client = MlflowClient(settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    client.set_registered_model_alias(settings.model_name, settings.champion_alias, version)


def test_each_version_is_served_with_its_tagged_service(
        serving: tuple[Settings, OnlineFeatures]) -> None:
    settings, features = serving
    v1 = register_tiny_model(settings, seed=0, feature_service="fraud_scoring_v1")
    v2 = register_tiny_model(settings, seed=1, feature_service="fraud_scoring_v2", alias=False)
    write_features(settings, settings.redis_url, {
        "card-0001": {"card_txn_count_1h": 6, "card_amount_max_1h": 950.0}})
    holder = ModelHolder(settings, features.service_names)
    assert holder.refresh()
    model = holder.current
    assert model is not None and (model.version, model.feature_service) == (
        v1, "fraud_scoring_v1")
    assert model.features == model_features("fraud_scoring_v1")

    events = [TransactionEvent.model_validate(transaction(1))]
    reader = features.for_service(model.feature_service)
    frame = reader.read(events)
    assert set(model.features) <= set(frame.names)  # nothing the model reads is missing
    assert not set(NEW) & set(frame.names)  # nor is anything read that v1 does not have
    assert set(STREAM_INPUTS["fraud_scoring_v1"]) <= set(reader.stored_names)
    assert frame.x[0, frame.names.index("card_txn_count_1h")] == 6

    _alias(settings, v2)  # a v2 challenger promoted: its service comes with it
    assert holder.refresh()
    model = holder.current
    assert model is not None and (model.version, model.feature_service) == (
        v2, "fraud_scoring_v2")
    frame = features.for_service("fraud_scoring_v2").read(events)
    assert frame.x[0, frame.names.index("card_amount_max_1h")] == 950.0
    assert features.for_service("fraud_scoring_v2") is features.for_service("fraud_scoring_v2")


def test_the_decider_reads_the_loaded_models_service(
        serving: tuple[Settings, OnlineFeatures]) -> None:
    settings, features = serving
    register_tiny_model(settings, seed=0, feature_service="fraud_scoring_v1")
    holder = ModelHolder(settings, features.service_names)
    assert holder.refresh()
    seen: list[str] = []
    original = OnlineFeatures.read

    def spy(self: OnlineFeatures, *args: object, **kw: object) -> object:
        seen.append(self.service)
        return original(self, *args, **kw)  # type: ignore[arg-type]

    class NoAudit:
        def admits(self, *_: object) -> bool:
            return True

        def write_many(self, *_: object, **__: object) -> None:
            pass

        def __getattr__(self, _name: str) -> object:
            return lambda *a, **k: None

    from serving.rules import RulesEngine

    decider = Decider(settings, features, holder, RulesEngine.from_file(None), None,
                      NoAudit())  # type: ignore[arg-type]
    OnlineFeatures.read = spy  # type: ignore[method-assign]
    try:
        out = decider.score([TransactionEvent.model_validate(transaction(2))])
    finally:
        OnlineFeatures.read = original  # type: ignore[method-assign]
    assert seen == ["fraud_scoring_v1"]
    assert b'"degraded":false' in out.encoded[0]


def test_a_version_without_the_tag_is_refused_at_load(
        serving: tuple[Settings, OnlineFeatures], caplog: pytest.LogCaptureFixture) -> None:
    settings, features = serving
    register_tiny_model(settings, seed=0, tag_service=False)
    with pytest.raises(ModelRefused, match="has no 'feature_service' tag"):
        load_champion(settings, features.service_names)
    holder = ModelHolder(settings, features.service_names)
    with caplog.at_level("ERROR", logger="kestrel.serving.model"):
        assert not holder.refresh()
    assert holder.current is None
    assert "kestrel train" in (holder.last_error or "")
    assert any("refused" in r.message for r in caplog.records)


def test_a_tag_that_does_not_cover_the_signature_is_refused(
        serving: tuple[Settings, OnlineFeatures]) -> None:
    settings, features = serving
    version = register_tiny_model(settings, seed=0, feature_service="fraud_scoring_v2")
    client = MlflowClient(settings.mlflow_uri, registry_uri=settings.mlflow_uri)
    client.set_model_version_tag(settings.model_name, version, "feature_service",
                                 "fraud_scoring_v1")
    with pytest.raises(ModelRefused, match=r"card_amount_max_1h.*does not provide"):
        load_champion(settings, features.service_names)
    client.set_model_version_tag(settings.model_name, version, "feature_service",
                                 "fraud_scoring_v9")
    with pytest.raises(ModelRefused, match="not declared in feature_repo"):
        load_champion(settings, features.service_names)
