"""Window aggregation, eviction, out-of-order inserts and alert rules (pure, no services)."""

from __future__ import annotations

from datetime import UTC, datetime

from pipelines.stream.rules import FIVE_MIN_US, evaluate, rules
from pipelines.stream.state import EventLog, WindowSet

MIN = 60 * 1_000_000


def ev(i: int, minute: float, amount: float = 10.0, country: str = "FR", terminal: str = "T1",
       mcc: str = "5411") -> tuple[str, int, float, str, str, str, float, float]:
    return (f"t{i}", int(minute * MIN), amount, country, terminal, mcc, 48.0 + i, 2.0)


def test_card_windows_as_of_the_latest_event() -> None:
    log = EventLog()
    for e in [ev(1, 0, 5), ev(2, 30, 7, "DE"), ev(3, 55, 11, terminal="T2"),
              ev(4, 61, 13, "ES")]:
        log.add(e)
    f = WindowSet("card").features(log)
    # as of minute 61: 10 min → (51, 61] = {55, 61}; 1 h → (1, 61] = {30, 55, 61}; 24 h → all
    assert (f["card_txn_count_10m"], f["card_txn_count_1h"], f["card_txn_count_24h"]) == (2, 3, 4)
    assert f["card_amount_sum_10m"] == 24 and f["card_amount_sum_1h"] == 31
    assert f["card_amount_sum_24h"] == 36
    assert f["card_distinct_country_1h"] == 3 and f["card_distinct_terminal_1h"] == 2
    assert f["card_last_event_time_us"] == 61 * MIN and f["card_last_lat"] == 52.0


def test_window_boundary_is_exclusive_at_the_start() -> None:
    log = EventLog()
    log.add(ev(1, 0))
    log.add(ev(2, 60))  # exactly one hour later: the first event has left the 1 h window
    assert WindowSet("customer").features(log)["customer_txn_count_1h"] == 1


def test_out_of_order_insert_and_eviction() -> None:
    log = EventLog()
    for e in [ev(1, 0), ev(2, 20), ev(3, 10)]:
        log.add(e)
    assert log.times == sorted(log.times) and log.ids == {"t1", "t2", "t3"}
    log.evict_before(10 * MIN)
    assert [e[0] for e in log.events] == ["t2"] and log.ids == {"t2"}


def test_state_round_trips_through_json() -> None:
    log = EventLog()
    log.add(ev(1, 0))
    log.marks["velocity"] = 5
    again = EventLog.loads(log.dumps())
    assert again.events == log.events and again.marks == {"velocity": 5} and again.ids == {"t1"}


def test_multi_country_alert_once_per_window() -> None:
    multi = rules(8)[0]
    log = EventLog()
    now = datetime(2024, 1, 1, tzinfo=UTC)
    alerts = []
    for i, country in enumerate(["FR", "DE", "ES", "FR", "IT", "DE"]):
        log.add(ev(i, i * 0.5, 2.0, country))
        alert = evaluate("card_1", "C1", log, multi, now)
        if alert:
            alerts.append(alert)
    assert len(alerts) == 1  # fired at the 5th event, not again for the 6th (same window)
    a = alerts[0]
    assert a["evidence_txn_ids"] == ["t0", "t1", "t2", "t3", "t4"]
    assert a["rule"] == "multi_country" and a["window"] == "5m"
    assert a["countries"] == ["DE", "ES", "FR", "IT"]
    # a new burst that starts after the last evidence fires again
    for j, country in enumerate(["FR", "DE", "ES", "PT", "NL"]):
        log.add(ev(100 + j, 30 + j * 0.5, 2.0, country))
        alert = evaluate("card_1", "C1", log, multi, now)
    assert alert is not None and alert["evidence_txn_ids"][0] == "t100"
    assert alert["alert_id"] != a["alert_id"]
    assert FIVE_MIN_US == 5 * MIN


def test_single_country_burst_is_not_multi_country_but_velocity() -> None:
    multi, velocity = rules(5)
    log = EventLog()
    now = datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(5):
        log.add(ev(i, i))
    assert evaluate("c", "C", log, multi, now) is None
    assert evaluate("c", "C", log, velocity, now) is not None
