"""Mutation checks: a wrong implementation swapped in must turn parity and the reference red.

Parity (pipelines/stream/parity.py) and the pandas reference (tests/stream/
feature_reference.py) are only worth their green if they go red when an engine is wrong.
Each case overrides one aggregation's implementation in one engine through
``kestrel.features.override`` (engines resolve implementations when built, so the override
wraps the whole parity run), replays the same small simulation (200 customers, one day)
and asserts that the mutated features — and only those — show mismatches, both in parity's
comparisons and against the reference; the same run without an override (``clean``) shows
none. One replay serves both checks of a case: ``run_parity(keep_rows=True)`` keeps the
replayed events, the stream's offline log and the backfill's rows.

The two array-engine mutations (``sum`` starting a window one event late, ``max`` as the
window's last value) touch disjoint features, so they share one replay; the Spark mutation
(``distinct`` as a plain count) has its own, since the stream side must stay clean there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kestrel.features import override
from kestrel.features.arrays import round2, window_sum
from kestrel.features.registry import ArrayWindow, SparkWindow
from kestrel.settings import Settings
from kestrel.windows import ENTITIES, feature_names
from pipelines.stream.parity import ParityReport, run_parity
from pipelines.stream.parity_spark import SPARK_TOLERANCE
from tests.batch.conftest import spark  # noqa: F401  (the session's Spark: a fixture)
from tests.conftest import make_settings
from tests.stream.feature_reference import compare, expected_rows, prepare
from tests.stream.test_feature_reference import names_of

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.spark]

SUMS = {"card_amount_sum_10m", "card_amount_sum_1h", "card_amount_sum_24h",
        "customer_amount_sum_1h", "customer_amount_sum_24h"}
MAXES = {"card_amount_max_1h"}
DISTINCTS = {"card_distinct_country_1h", "card_distinct_terminal_1h",
             "customer_distinct_mcc_24h"}
ALL = {n for e in ENTITIES for n in feature_names(e)}


def sum_from_second(w: ArrayWindow) -> np.ndarray:
    """``sum`` whose window starts one event late: an off-by-one at the window's start."""
    values = w.values if w.mask is None else np.where(w.mask, w.values, 0.0)
    return round2(window_sum(values, w.lo + 1, w.idx))


def max_is_last(w: ArrayWindow) -> np.ndarray:
    """``max`` as the window's last value."""
    return w.values.astype(np.float64)[w.idx]


def distinct_as_count(w: SparkWindow) -> Any:
    """Spark's ``distinct`` counting values rather than different values."""
    from pyspark.sql import functions as F
    return F.count(w.values).over(w.frame)


def _parity(tmp: Any) -> ParityReport:
    settings: Settings = make_settings(tmp)
    return run_parity(settings, days=1, customers=200, terminals=400, seed=11,
                      progress=lambda *_: None, keep_rows=True)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, spark: Any) -> ParityReport:  # noqa: F811
    return _parity(tmp_path_factory.mktemp("clean") / "var")


@pytest.fixture(scope="module")
def array_mutants(tmp_path_factory: pytest.TempPathFactory,
                  spark: Any) -> ParityReport:  # noqa: F811
    with override("sum", array=sum_from_second), override("max", array=max_is_last):
        return _parity(tmp_path_factory.mktemp("array-mutants") / "var")


@pytest.fixture(scope="module")
def spark_mutant(tmp_path_factory: pytest.TempPathFactory,
                 spark: Any) -> ParityReport:  # noqa: F811
    with override("distinct", spark=distinct_as_count):
        return _parity(tmp_path_factory.mktemp("spark-mutant") / "var")


def red(features: dict[str, Any]) -> set[str]:
    """The features of a parity comparison with mismatches."""
    return {name for name, fp in features.items() if fp.mismatches}


def reference_red(report: ParityReport, side: str) -> dict[str, list[str]]:
    """The reference test's check on a run's rows (``side``: "stream", the offline log; or
    "backfill", Spark's rows): per feature that differs, the reference's report."""
    assert report.rows is not None
    events = prepare(report.rows.events)
    problems: dict[str, list[str]] = {}
    for entity in ENTITIES:
        rows = getattr(report.rows, side)[entity]
        assert len(rows) > 100, (entity, side)
        problems.update(compare(expected_rows(events, entity), rows, entity, names_of(entity)))
    return problems


def test_without_a_mutation_every_comparison_is_clean(clean: ParityReport) -> None:
    assert clean.transactions > 300
    assert clean.spark is not None and clean.spark.backfill_rows >= clean.transactions
    assert clean.mismatches == 0
    assert not red(clean.features) and not red(clean.spark.features)
    assert max(fp.max_abs_diff for fp in clean.spark.features.values()) <= SPARK_TOLERANCE
    assert reference_red(clean, "stream") == {}
    assert reference_red(clean, "backfill") == {}


def test_an_off_by_one_window_start_and_max_as_last_value_in_the_array_engine(
        array_mutants: ParityReport) -> None:
    report = array_mutants
    assert report.spark is not None
    # parity: the per-event engine and Spark disagree with the stream, on those features only
    assert red(report.features) == SUMS | MAXES, {
        n: fp.examples for n, fp in report.features.items() if fp.mismatches}
    assert red(report.spark.features) == SUMS | MAXES
    # the reference test: the stream's rows are wrong on those features, Spark's are right
    assert set(reference_red(report, "stream")) == SUMS | MAXES
    assert reference_red(report, "backfill") == {}


def test_distinct_as_a_count_in_spark(spark_mutant: ParityReport) -> None:
    report = spark_mutant
    assert report.spark is not None
    assert not red(report.features)  # the stream is right: its own comparisons stay green
    assert red(report.spark.features) == DISTINCTS, {
        n: fp.examples[:1] for n, fp in report.spark.features.items() if fp.mismatches}
    assert set(reference_red(report, "backfill")) == DISTINCTS
    assert reference_red(report, "stream") == {}


def test_the_mutated_features_are_checked_at_all() -> None:
    """The sets above name declared features (a renamed feature would make them vacuous)."""
    assert SUMS | MAXES | DISTINCTS <= ALL
