"""Every defined stream feature, as `kestrel stream` computes it, against the pandas reference.

The reference (tests/stream/feature_reference.py) is written from the definitions alone; the
stream runs as in production (the array path, pipelines/stream/arrays/). The test iterates the
definitions rather than naming features, so a feature added to the spec is checked here
without touching this file — or fails loudly if the reference cannot compute it yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from kestrel.pan import CardTokenizer
from kestrel.settings import Settings
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.to_kafka import stream_to_kafka
from tests.conftest import TEST_SECRET
from tests.stream.feature_reference import (
    UnknownDefinition,
    compare,
    expected_rows,
    key_column,
    prepare,
    stream_definitions,
)
from tests.stream.test_processor import (  # noqa: F401  (stream_settings: a fixture)
    offline_rows,
    run_stream,
    simulated,
    stream_settings,
)

ENTITIES = ("card", "customer", "terminal")


def names_of(entity: str) -> list[str]:
    return [d.name for d in stream_definitions() if d.entity == entity]


# --- the reference itself, on events worked out by hand ------------------------------------
@dataclass(frozen=True)
class Spec:
    entity: str
    name: str
    micros: int
    aggregation: str
    field: str | None = None
    filter: str | None = None


T0 = datetime(2018, 4, 1, 4, 0, tzinfo=UTC)  # 04:00 UTC: night until 06:00
MIN = 60 * 1_000_000
DAY = 24 * 60 * MIN
HOUR = 60 * MIN


def _events(rows: list[tuple[str, timedelta, float, str]]) -> pd.DataFrame:
    return prepare(pd.DataFrame([
        {"txn_id": f"t{i}", "card_id": card, "customer_id": "c", "terminal_id": f"term{i % 2}",
         "event_time": T0 + at, "amount": amount, "country": country, "mcc": "5411",
         "lat": float(i), "lon": -float(i)}
        for i, (card, at, amount, country) in enumerate(rows)]))


def test_reference_on_hand_worked_events() -> None:
    events = _events([
        ("A", timedelta(0), 10.0, "FR"),
        ("A", timedelta(minutes=30), 0.104, "FR"),
        ("A", timedelta(minutes=30), 5.0, "DE"),  # a tie: one row, over both, DE last
        ("A", timedelta(hours=2), 7.0, "FR"),  # 06:00: not night; alone in its hour
    ])
    specs = [Spec("card", "n_1h", HOUR, "count"),
             Spec("card", "sum_1h", HOUR, "sum", "amount"),
             Spec("card", "countries_1h", HOUR, "distinct", "country"),
             Spec("card", "min_3h", 3 * HOUR, "min", "amount"),
             Spec("card", "max_3h", 3 * HOUR, "max", "amount"),
             Spec("card", "mean_3h", 3 * HOUR, "mean", "amount"),
             Spec("card", "last_country_1h", HOUR, "last", "country"),
             Spec("card", "since_1h", HOUR, "since_last"),
             Spec("card", "night_n_3h", 3 * HOUR, "count", filter="night"),
             Spec("card", "night_sum_3h", 3 * HOUR, "sum", "amount", filter="night"),
             Spec("card", "card_last_lat", DAY, "last", "lat"),
             Spec("card", "card_last_lon", DAY, "last", "lon"),
             Spec("card", "card_last_event_time_us", DAY, "last", "time")]
    rows = expected_rows(events, "card", specs).set_index("time_us")
    t = [int((T0 + d).timestamp() * 1_000_000) for d in
         (timedelta(0), timedelta(minutes=30), timedelta(hours=2))]
    assert list(rows.index) == t
    first, tie, late = (rows.loc[x].to_dict() for x in t)
    assert (first["n_1h"], first["sum_1h"], first["countries_1h"]) == (1, 10.0, 1)
    assert math.isnan(first["since_1h"])
    assert (tie["n_1h"], tie["sum_1h"], tie["countries_1h"]) == (3, 15.1, 2)  # 15.104
    assert tie["last_country_1h"] == "DE" and tie["card_last_lat"] == 2.0
    assert tie["since_1h"] == 0.0  # the previous event is the other one of the tie
    assert (tie["min_3h"], tie["max_3h"]) == (0.104, 10.0)
    assert tie["mean_3h"] == pytest.approx(15.104 / 3, abs=1e-12)
    assert (late["n_1h"], late["sum_1h"], late["min_3h"]) == (1, 7.0, 0.104)
    assert late["mean_3h"] == pytest.approx(22.104 / 4, abs=1e-12)
    assert math.isnan(late["since_1h"])  # the previous event left the hour
    assert (tie["night_n_3h"], late["night_n_3h"], late["night_sum_3h"]) == (3, 3, 15.1)
    assert late["card_last_event_time_us"] == t[2] and late["card_last_lon"] == -3.0


def test_night_is_22_to_6_utc() -> None:
    events = _events([("B", timedelta(hours=-6, minutes=-1), 1.0, "FR"),  # 21:59: day
                      ("B", timedelta(hours=-6), 2.0, "FR"),  # 22:00: night
                      ("B", timedelta(hours=1, minutes=59), 4.0, "FR"),  # 05:59: night
                      ("B", timedelta(hours=2), 8.0, "FR")])  # 06:00: day
    spec = Spec("card", "night_sum", 24 * HOUR, "sum", "amount", filter="night")
    assert expected_rows(events, "card", [spec])["night_sum"].tolist() == [0.0, 2.0, 6.0, 6.0]


def test_reference_names_what_it_cannot_compute() -> None:
    events = _events([("A", timedelta(0), 1.0, "FR")])
    with pytest.raises(UnknownDefinition, match=r"aggregation 'median' is not in AGGREGATIONS"):
        expected_rows(events, "card", [Spec("card", "m", HOUR, "median", "amount")])
    with pytest.raises(UnknownDefinition, match=r"filter 'weekend' is not in FILTERS"):
        expected_rows(events, "card", [Spec("card", "w", HOUR, "count", filter="weekend")])
    with pytest.raises(UnknownDefinition, match=r"input 'channel' is not in INPUTS"):
        expected_rows(events, "card", [Spec("card", "c", HOUR, "distinct", "channel")])


def test_every_definition_is_computable() -> None:
    """The spec as defined today has no aggregation, input or filter the reference lacks."""
    events = _events([("A", timedelta(0), 1.0, "FR")])
    for entity in ENTITIES:
        rows = expected_rows(events, entity)
        assert set(names_of(entity)) <= set(rows.columns)


# --- the stream, as production runs it, against the reference ------------------------------
@pytest.mark.integration
@pytest.mark.slow
def test_every_stream_feature_matches_the_reference(stream_settings: Settings) -> None:  # noqa: F811
    config = SimulationConfig(customers=300, terminals=600, days=2, seed=7)
    sent = stream_to_kafka(config, stream_settings, CardTokenizer(TEST_SECRET.encode()).token,
                           with_labels=False)
    proc = run_stream(stream_settings)
    assert proc.apply_path == "arrays"  # the path `kestrel stream` runs
    assert proc.stats.applied == sent.transactions > 1000
    events = prepare(simulated(config))
    failures: list[str] = []
    for entity in ENTITIES:
        key = key_column(entity)
        actual = offline_rows(stream_settings, entity)  # newest version per (key, time)
        actual["time_us"] = actual["event_timestamp"].dt.as_unit("us").astype("int64")
        expected = expected_rows(events, entity)
        assert len(expected) == actual[[key, "time_us"]].drop_duplicates().shape[0]
        for name, lines in compare(expected, actual, entity, names_of(entity)).items():
            failures.append(f"{entity} {name}: " + "; ".join(lines))
    assert not failures, "\n".join(failures)
