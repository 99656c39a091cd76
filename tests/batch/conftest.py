"""Batch fixtures: one Spark session per test session, one simulated lake computed once.

Tests that change the lake work on a copy of the computed var dir (lake, tables, manifest;
modification times kept, so fingerprints still match) and pay only for what they change.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kestrel.pan import CardTokenizer
from kestrel.settings import Settings
from pipelines.batch.jobs import run_batch_features
from pipelines.batch.session import spark_session, stop_session
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.to_lake import write_to_lake
from tests.conftest import TEST_SECRET, make_settings

# 40 days from 2018-04-01: past the 30-day window and the 7-day label delay, two months.
SMALL = SimulationConfig(customers=300, terminals=600, days=40)


def tokenizer() -> Any:
    return CardTokenizer(TEST_SECRET.encode()).token


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    session = spark_session(make_settings(tmp_path_factory.mktemp("spark-var")))
    yield session
    stop_session()


@pytest.fixture(scope="session")
def computed(tmp_path_factory: pytest.TempPathFactory, spark: Any) -> tuple[Settings, dict]:
    """A small simulated lake and one full batch run over it (read-only for tests)."""
    settings = make_settings(tmp_path_factory.mktemp("batch") / "var")
    write_to_lake(SMALL, settings.lake_dir, tokenizer())
    result = run_batch_features(settings)
    return settings, result


@pytest.fixture
def computed_copy(computed: tuple[Settings, dict], tmp_path: Path) -> Settings:
    """A private copy of the computed var dir, for tests that change the lake."""
    settings, _ = computed
    target = tmp_path / "var"
    shutil.copytree(settings.var_dir, target, ignore=shutil.ignore_patterns("_staging"))
    return settings.model_copy(update={"var_dir": target})
