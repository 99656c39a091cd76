"""Versioned feature services (issue 29, item 5): each version's outputs are pinned by
feature_repo/services.lock.json, and the Feast registry is compared with the repo.

A locked version never changes, whatever is added to the stream views; the drift check finds
a registry that holds other view schemas or service feature lists than feature_repo/, and
`kestrel stream` stops on it with one line naming `kestrel features apply`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from feast import Field
from feast.types import Float64

from kestrel.features import STREAM_INPUTS, features_for
from kestrel.windows import stream_view_name
from pipelines.features.store import (
    LOCK_FILE,
    Definitions,
    RegistryDrift,
    ServiceLockError,
    apply,
    check_registry,
    compare_definitions,
    ensure_applied,
    feature_store,
    load_repo,
    lock_problems,
    locked_services,
    read_lock,
    registry_drift,
    update_lock,
)
from tests.conftest import env_for, make_settings

LAST_SEEN = {"card_last_event_time_us", "card_last_lat", "card_last_lon"}  # card_velocity reads


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_repo(make_settings(tmp_path_factory.mktemp("repo") / "var"))


def test_every_declared_version_is_locked_and_unchanged(repo) -> None:  # type: ignore[no-untyped-def]
    declared = locked_services(repo)
    locked = read_lock()
    assert set(declared) == set(STREAM_INPUTS)
    missing = sorted(set(declared) - set(locked))
    assert not missing, (f"{missing} are declared but not locked: run `kestrel features lock` "
                         f"and commit {LOCK_FILE.name}")
    problems = lock_problems(declared, locked)
    assert not problems, ("a locked feature service version changed: "
                          f"{'; '.join(problems)}. Served versions never change: declare a "
                          "new version instead (see docs/schema-evolution.md)")


def test_stream_projections_follow_stream_inputs_only(repo) -> None:  # type: ignore[no-untyped-def]
    """A version reads its declared stream inputs (plus the card's last time and position,
    which its on-demand views read), never "everything the stream views hold"."""
    for name, inputs in STREAM_INPUTS.items():
        service = next(s for s in repo.feature_services if s.name == name)
        stream = {f.name for p in service.feature_view_projections
                  if p.name.endswith("_stream_features") for f in p.features}
        assert stream == set(inputs) | LAST_SEEN
    v1 = next(s for s in repo.feature_services if s.name == "fraud_scoring_v1")
    card_view = {f.name for f in features_for("card")}
    v1_card = {f.name for p in v1.feature_view_projections
               if p.name == stream_view_name("card") for f in p.features}
    assert "card_amount_max_1h" in card_view - v1_card  # added to the view, not to v1
    assert v1.tags["status"] == "serving" and v1.owner and v1.description


def test_editing_a_locked_version_is_refused(tmp_path: Path, repo) -> None:  # type: ignore[no-untyped-def]
    lock = tmp_path / "services.lock.json"
    doc = json.loads(LOCK_FILE.read_text())
    doc["services"]["fraud_scoring_v1"]["card_stream_features"].remove("card_txn_count_10m")
    del doc["services"]["fraud_scoring_v2"]
    lock.write_text(json.dumps(doc))
    with pytest.raises(ServiceLockError, match="declare a new version") as err:
        update_lock(make_settings(tmp_path / "var"), lock)
    assert "fraud_scoring_v1 changed its features of card_stream_features" in str(err.value)
    # without the edit, a new version is simply added
    doc["services"]["fraud_scoring_v1"] = locked_services(repo)["fraud_scoring_v1"]
    lock.write_text(json.dumps(doc))
    assert update_lock(make_settings(tmp_path / "var"), lock) == ["fraud_scoring_v2"]
    assert read_lock(lock) == read_lock()


def test_compare_definitions_names_each_difference() -> None:
    repo = Definitions({"v": {"a": "Int64", "b": "Float64", "new": "Float64"}},
                       {"s1": {"v": ["a"]}, "s2": {"v": ["a", "new"]}})
    assert compare_definitions(repo, repo) == []
    held = Definitions({"v": {"a": "Int64", "b": "Int64", "gone": "Int64"}, "old": {}},
                       {"s1": {"v": ["a"]}, "s2": {"v": ["a"]}})
    assert compare_definitions(held, repo) == [
        "view v lacks new", "view v has removed gone", "view v retypes b Int64→Float64",
        "service s2 reads other features of v"]
    assert compare_definitions(Definitions({}, {}), repo) == [
        "view v is not registered", "service s1 is not registered",
        "service s2 is not registered"]


@pytest.mark.integration
def test_registry_drift_both_ways(tmp_path: Path, redis_url: str) -> None:
    s = make_settings(tmp_path / "var", redis_url=redis_url)
    assert registry_drift(s) is None  # never applied: no drift, nothing to compare
    assert check_registry(s) is False
    apply(s, echo=lambda _: None)
    assert registry_drift(s) == [] and check_registry(s) is True
    assert ensure_applied(s, echo=lambda _: None) == []  # nothing to do

    # the registry as a deployment had it before a feature was added: a view without it,
    # a service reading another list
    store = feature_store(s)
    view = store.get_feature_view("card_stream_features")
    view.features = [f for f in view.features if f.name != "card_amount_max_1h"]
    store.registry.apply_feature_view(view, store.project)
    service = store.get_feature_service("fraud_scoring_v2")
    for p in service.feature_view_projections:
        if p.name == "card_stream_features":
            p.features = [f for f in p.features if f.name != "card_night_txn_count_24h"]
    store.registry.apply_feature_service(service, store.project)
    store.registry.commit()
    problems = registry_drift(s)
    assert problems == ["view card_stream_features lacks card_amount_max_1h",
                        "service fraud_scoring_v2 reads other features of card_stream_features"]
    with pytest.raises(RegistryDrift, match=r"run `kestrel features apply`"):
        check_registry(s)

    # `kestrel stream` stops on it with one line, before touching Kafka
    done = subprocess.run([sys.executable, "-m", "cli", "stream", "--idle-seconds", "1"],
                          env=env_for(s), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "kestrel features apply" in lines[0], done.stderr

    # a retyped feature is drift too; ensure_applied (train, training-set) fixes all of it
    view = store.get_feature_view("terminal_stream_features")
    view.features = [Field(name=f.name, dtype=Float64) for f in view.features]
    store.registry.apply_feature_view(view, store.project)
    store.registry.commit()
    assert "view terminal_stream_features retypes" in " ".join(registry_drift(s) or [])
    said: list[str] = []
    assert len(ensure_applied(s, echo=said.append)) == 3
    assert "kestrel features apply" in said[0]
    assert registry_drift(s) == []


