"""The feature declaration: what it derives, and what it refuses, with a message saying what
to do (no fallback branch anywhere, no type from a name)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from kestrel.features import FEATURES, Feature, FeatureSpecError, aggregation, override
from kestrel.features.spec import check_unique
from pipelines.stream.state import EventLog, WindowSet

H1 = timedelta(hours=1)


def test_names_and_types_follow_from_the_declaration() -> None:
    assert Feature("card", "max", "amount", window=H1).name == "card_amount_max_1h"
    assert Feature("card", "count", window=H1 * 24, filter="night").name == \
        "card_night_txn_count_24h"
    assert Feature("customer", "distinct", "mcc", window=H1).name == \
        "customer_distinct_mcc_1h"
    # the type is the aggregation's, given its input's: never read off the name
    assert Feature("card", "max", "amount", window=H1, named="card_sum_of_nothing").dtype \
        == "float64"
    assert Feature("card", "last", "time", max_age=H1, named="card_amount_sum_x").dtype \
        == "int64"
    assert Feature("card", "distinct", "country", window=H1).dtype == "int64"


def test_the_three_features_of_issue_29_are_declared() -> None:
    names = {f.name: f for f in FEATURES}
    assert names["card_amount_max_1h"].aggregation == "max"
    assert names["card_night_txn_count_24h"].filter == "night"
    assert names["customer_amount_mean_24h"].dtype == "float64"


@pytest.mark.parametrize(("declare", "message"), [
    (lambda: Feature("card", "p95", "amount", window=H1),
     r"unknown aggregation 'p95'.*kestrel/features/aggregations/p95\.py"),
    (lambda: Feature("card", "sum", "tip", window=H1), r"unknown input 'tip'.*INPUTS"),
    (lambda: Feature("card", "sum", "country", window=H1), r"aggregates numbers"),
    (lambda: Feature("card", "max", "amount", window=H1, filter="night"),
     r"max takes no filter"),
    (lambda: Feature("card", "count", window=H1, filter="amount"), r"not a bool input"),
    (lambda: Feature("card", "last", "lat", window=H1), r"declare max_age="),
    (lambda: Feature("card", "sum", "amount", max_age=H1), r"declare window="),
    (lambda: Feature("card", "count", "amount", window=H1), r"count takes no input"),
    (lambda: Feature("merchant", "count", window=H1), r"unknown entity 'merchant'"),
    (lambda: Feature("card", "last", "country", max_age=H1), r"int64 and\s+float64"),
    (lambda: Feature("card", "count", window=timedelta(0)), r"must be positive"),
])
def test_a_declaration_the_engines_cannot_compute_fails_loudly(declare: object,
                                                               message: str) -> None:
    with pytest.raises(FeatureSpecError, match=message):
        declare()  # type: ignore[operator]


def test_two_features_with_one_name_are_refused() -> None:
    a = Feature("card", "count", window=H1)
    with pytest.raises(FeatureSpecError, match=r"named 'card_txn_count_1h'.*name="):
        check_unique((a, Feature("card", "count", window=H1)))


def test_an_override_swaps_an_engine_in_and_back() -> None:
    feature = Feature("card", "max", "amount", window=H1)
    log = EventLog([("a", 1, 5.0, "FR", "T", "", 0.0, 0.0), ("b", 2, 3.0, "FR", "T", "", 0.0, 0.0)])
    assert WindowSet("card", (feature,)).features(log) == {"card_amount_max_1h": 5.0}
    with override("max", reference=lambda values: values[-1]):
        assert WindowSet("card", (feature,)).features(log) == {"card_amount_max_1h": 3.0}
    assert WindowSet("card", (feature,)).features(log) == {"card_amount_max_1h": 5.0}
    assert aggregation("max").array is not None
    with pytest.raises(FeatureSpecError, match="no engine"), override("max", gpu=np.max):
        pass


def test_kestrel_features_list_prints_every_declared_feature() -> None:
    from typer.testing import CliRunner

    from cli.main import app

    out = CliRunner().invoke(app, ["features", "list"], env={"KESTREL_ENV": "dev"})
    assert out.exit_code == 0, out.output
    for f in FEATURES:
        assert f.name in out.output
    line = next(x for x in out.output.splitlines() if "card_night_txn_count_24h" in x)
    assert "night" in line and "int64" in line and "fraud_scoring_v2" in line
    assert "fraud_scoring_v1" not in line
