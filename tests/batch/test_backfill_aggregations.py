"""Every registered aggregation's Spark implementation against the reference engine, on
synthetic events with ties, night hours and gaps (the backfill's ``entity_rows``)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from kestrel.features import registered
from pipelines.batch.backfill import entity_rows
from pipelines.stream.state import TIME, Event, EventLog, WindowSet
from tests.stream.every_aggregation import every_aggregation

pytestmark = [pytest.mark.spark, pytest.mark.integration, pytest.mark.slow]
MINUTE = 60 * 1_000_000


def _events(seed: int, n: int = 600) -> list[tuple[str, Event]]:
    """(card, event) in arrival order: gaps of up to 40 minutes over days, 1 in 20 at the
    same µs as the event before."""
    rng = random.Random(seed)
    out: list[tuple[str, Event]] = []
    t = int(datetime(2024, 3, 1, 18, tzinfo=UTC).timestamp() * 1_000_000)
    for i in range(n):
        if not out or rng.random() > 0.05:
            t += rng.randint(0, 40 * MINUTE)
        out.append((f"c{rng.randint(0, 6)}", (
            f"t{i}", t, round(rng.uniform(0.01, 300), 2), rng.choice("AB"), f"T{i % 3}",
            rng.choice(["5411", "5812", "4111"]), round(rng.uniform(-50, 50), 4),
            round(rng.uniform(-50, 50), 4))))
    return out


def _reference(events: list[tuple[str, Event]]) -> dict[tuple[str, int], dict[str, Any]]:
    """The final row of each (card, time): events applied in arrival order, no eviction."""
    ws = WindowSet("card", every_aggregation("card"))
    logs: dict[str, EventLog] = {}
    for key, event in events:
        logs.setdefault(key, EventLog()).add(event)
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for key, log in logs.items():
        for j, t in enumerate(log.times):
            rows[(key, t)] = ws.features(log, j)  # a tie's last event wins
    return rows


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def test_every_aggregation_in_spark_equals_the_reference(spark: Any) -> None:
    assert {f.aggregation for f in every_aggregation("card")} == set(registered())
    from pyspark.sql import functions as F

    events = _events(7)
    frame = spark.createDataFrame(
        [(e[0], datetime.fromtimestamp(e[TIME] / 1e6, UTC), key, "cust", e[4], e[5], e[2],
          e[3], e[6], e[7], i) for i, (key, e) in enumerate(events)],
        "txn_id string, event_time timestamp, card_id string, customer_id string, "
        "terminal_id string, mcc string, amount double, country string, lat double, "
        "lon double, ord long").withColumn("t", F.unix_micros("event_time"))
    got = entity_rows(frame, "card", every_aggregation("card")).toPandas()
    want = _reference(events)
    assert len(got) == len(want)
    names = [f.name for f in every_aggregation("card")]
    checked = dict.fromkeys(names, 0)
    for row in got.itertuples(index=False):
        t = int(row.event_timestamp.value // 1000)
        expected = want[(row.card_id, t)]
        for name in names:
            a, b = getattr(row, name), expected[name]
            if _missing(a) or _missing(b):
                assert _missing(a) and _missing(b), (name, row.card_id, t, a, b)
                continue
            assert a == pytest.approx(b, abs=1e-9, rel=0), (name, row.card_id, t, a, b)
            checked[name] += 1
    assert all(n > 100 for n in checked.values()), checked
