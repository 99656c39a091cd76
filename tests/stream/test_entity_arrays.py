"""The array-backed entity state against the one-event-at-a-time reference (EventLog +
WindowSet.features, the code the processor's per-event path runs)."""

from __future__ import annotations

import random
from bisect import bisect_right
from typing import Any

import numpy as np
import orjson
import pytest

from kestrel.features import registered
from kestrel.windows import Entity
from pipelines.stream.arrays import sort_key
from pipelines.stream.arrays.entity_arrays import Applied, EntityArrays
from pipelines.stream.state import (
    AMOUNT,
    COUNTRY,
    LAT,
    LON,
    MCC,
    TERMINAL,
    TIME,
    Event,
    EventLog,
    WindowSet,
)
from tests.stream.every_aggregation import every_aggregation

HOUR = 3600 * 1_000_000
SLACK = 2 * HOUR


def test_every_registered_aggregation_is_in_the_test_spec() -> None:
    assert {f.aggregation for f in every_aggregation("card")} == set(registered())


def _spec(entity: Entity, spec: str) -> WindowSet:
    return WindowSet(entity) if spec == "declared" else WindowSet(entity, every_aggregation(entity))


class Reference:
    """Events applied one by one: refuse what is older than the latest minus the slack (its
    entity's, or any event's: the arrays' clock), emit the rows of every event from the new
    one to a horizon after it, evict."""

    def __init__(self, ws: WindowSet, kept: int, clocked: bool = True) -> None:
        """``clocked=False``: no clock (the entities handed back, which the arrays accepted,
        are applied one entity after another, so a clock would be out of order)."""
        self.ws, self.kept, self.clocked = ws, kept, clocked
        self.logs: dict[str, EventLog] = {}
        self.clock = 0

    def apply(self, key: str, event: Event, rows: dict[tuple[str, int], Any],
              online: dict[str, tuple[Any, int]]) -> bool:
        log = self.logs.setdefault(key, EventLog())
        if log.times and event[TIME] < log.times[-1] - SLACK:
            return False
        if self.clocked and event[TIME] < self.clock - SLACK:
            return False
        self.clock = max(self.clock, event[TIME])
        i = log.add(event)
        for j in range(i, bisect_right(log.times, event[TIME] + self.ws.horizon_us)):
            rows[(key, log.times[j])] = self.ws.features(log, j)  # the newest wins
        online[key] = (self.ws.features(log), log.times[-1])
        log.evict_before(log.times[-1] - self.kept)
        return True

    def end_batch(self) -> None:
        """What EntityArrays.expire does after a batch: forget every event and mark at or
        before the clock minus kept, and the entities left with none."""
        bound = self.clock - self.kept
        for key, log in list(self.logs.items()):
            log.evict_before(bound)
            log.marks = {rule: t for rule, t in log.marks.items() if t > bound}
            if not log.events:
                del self.logs[key]


def _value(v: Any) -> Any:
    """A numpy value as the reference gives it (missing: None, where arrays hold NaN)."""
    v = v.item()
    return None if v != v else v


def _as_reference(applied: Applied, key_name: str
                  ) -> tuple[dict[tuple[str, int], Any], dict[str, Any]]:
    rows = applied.rows
    if rows is None:  # every entity of the batch was handed back
        assert applied.latest is None and applied.slow
        return {}, {}
    assert applied.latest is not None
    names = [n for n in rows if n not in (key_name, "event_timestamp")]
    got_rows = {}  # events of the same instant share a row: the last one wins, as in the log
    for k in range(len(rows["event_timestamp"])):
        got_rows[(rows[key_name][k], int(rows["event_timestamp"][k]))] = {
            n: _value(rows[n][k]) for n in names}
    keys, feats, times = applied.latest
    online = {key: ({n: _value(feats[n][k]) for n in names}, int(times[k]))
              for k, key in enumerate(keys)}
    return got_rows, online


def _event(rng: random.Random, serial: int, t: int, key: str) -> Event:
    return (f"t{serial}", t, round(rng.uniform(0.01, 500), 2), rng.choice("ABCD"),
            f"T{rng.randint(0, 5)}", rng.choice(["5411", "5812", "4111"]),
            rng.uniform(-50, 50), rng.uniform(-50, 50))


def _kept(event: Event, fields: tuple[int, ...]) -> tuple[Any, ...]:
    """What the arrays keep of an event: txn_id, time and the entity's fields."""
    return (event[0], event[TIME], *(event[f] for f in fields))


@pytest.mark.parametrize("spec", ["declared", "every aggregation"])
@pytest.mark.parametrize("entity", ["card", "customer", "terminal"])
@pytest.mark.parametrize("key_bits", [62, 40])  # 40: spans past 9 h take the ranks' path
@pytest.mark.parametrize("seed", range(4))
def test_batches_equal_one_event_at_a_time(entity: Entity, seed: int, key_bits: int, spec: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sort_key, "KEY_BITS", key_bits)
    rng = random.Random(seed)
    ws = _spec(entity, spec)
    kept = ws.horizon_us + SLACK
    # as the processor makes them: cards keep no txn_ids (no duplicate check reads them)
    state = EntityArrays(ws, kept, SLACK, keep_ids=entity != "card")
    ref = Reference(ws, kept)
    clock = serial = 0
    rules = [(2 * HOUR, 3)] if entity == "card" else []
    slowed = 0
    for _ in range(12):
        events: list[tuple[str, Event]] = []
        for _ in range(rng.randint(1, 300)):
            clock += rng.randint(0, 20 * 60 * 1_000_000)
            jitter = rng.choice([0, 0, 0, 0, -rng.randint(0, 3 * HOUR)])  # out of order, or
            t = max(0, clock + jitter)  # too late
            if rng.random() < 0.05 and events:
                t = events[-1][1][TIME]  # the same instant as the event before
            serial += 1
            key = f"k{rng.randint(0, 15)}"
            event = _event(rng, serial, t, key)
            if entity == "terminal":
                event = (event[0], t, 0.0, "", key, "", 0.0, 0.0)
            events.append((key, event))
        values = {f: np.array([e[f] for _, e in events],
                              np.float64 if f in (AMOUNT, LAT, LON) else object)
                  for f in state.fields}
        applied = state.apply([k for k, _ in events], [e[0] for _, e in events],
                              np.array([e[TIME] for _, e in events], np.int64), values, rules)
        rows: dict[tuple[str, int], Any] = {}
        online: dict[str, tuple[Any, int]] = {}
        fields = state.fields
        before = {key: [_kept(e, fields) for e in log.events] for key, log in ref.logs.items()}
        accepted = [ref.apply(key, event, rows, online) for key, event in events]
        assert applied.accepted.tolist() == accepted
        # entities handed back go event by event here too, and come back with put
        slow_rows: dict[tuple[str, int], Any] = {}
        slow_online: dict[str, tuple[Any, int]] = {}
        sub = Reference(ws, kept, clocked=False)
        for key, (log, positions) in applied.slow.items():
            sub.logs[key] = log
            assert [_kept(e, fields) for e in log.events] == before.get(key, [])
            for i in positions:
                sub.apply(key, events[i][1], slow_rows, slow_online)
        state.put(sub.logs)
        state.expire()
        ref.end_batch()
        slowed += len(applied.slow)
        got_rows, got_online = _as_reference(applied, ws.entity + "_id")
        got_rows.update(slow_rows)
        got_online.update(slow_online)
        assert got_rows == rows
        assert got_online == online
    if entity == "card":
        assert slowed > 0  # the hand-back was exercised
    snap = state.snapshot()
    assert {k: d["e"] for k, d in snap.items()} == {
        key: [list(_kept(e, fields)) for e in log.events] for key, log in ref.logs.items()}
    assert {k: d["m"] for k, d in snap.items()} == {k: log.marks for k, log in ref.logs.items()}
    assert state.ids == ({txn for log in ref.logs.values() for txn in log.ids}
                         if entity != "card" else set())


def test_a_snapshot_restores_the_same_state_and_reads_eventlog_tuples() -> None:
    ws = WindowSet("terminal")
    state = EntityArrays(ws, ws.horizon_us + SLACK, SLACK)
    times = np.array([i * 40 * 60 * 1_000_000 for i in range(200)], np.int64)
    keys, txns = [f"term{i % 3}" for i in range(200)], [f"t{i}" for i in range(200)]
    state.apply(keys[:150], txns[:150], times[:150])
    again = EntityArrays(ws, ws.horizon_us + SLACK, SLACK)
    again.load(orjson.loads(orjson.dumps(state.snapshot())))
    assert again.snapshot() == state.snapshot()
    a = state.apply(keys[150:], txns[150:], times[150:])
    b = again.apply(keys[150:], txns[150:], times[150:])
    assert _as_reference(a, "terminal_id") == _as_reference(b, "terminal_id")
    # the snapshot format of EventLog-held state (before this module)
    old = {"term0": {"e": [["x1", 5, 0.0, "", "term0", "", 0.0, 0.0]], "m": {"_floor": 2}}}
    legacy = EntityArrays(ws, ws.horizon_us + SLACK, SLACK)
    legacy.load(old)
    assert legacy.snapshot() == {"term0": {"e": [["x1", 5]], "m": {}}}  # no floor any more
    assert "x1" in legacy.ids
    log = legacy.logs()["term0"]
    assert log.events == [("x1", 5, 0.0, "", "term0", "", 0.0, 0.0)]
    assert log.marks == {}


def test_checkout_and_put_keep_marks_and_values() -> None:
    ws = WindowSet("card")
    state = EntityArrays(ws, ws.horizon_us + SLACK, SLACK)
    event: Event = ("a", 10 * HOUR, 12.5, "FR", "T1", "5411", 48.8, 2.3)
    log = state.checkout("c1")
    assert log.events == [] and log.marks == {}
    log.add(event)
    log.marks["velocity"] = 7
    state.put({"c1": log})
    again = state.checkout("c1")
    assert again.events == [("a", 10 * HOUR, 12.5, "FR", "T1", "", 48.8, 2.3)]  # no mcc kept
    assert again.marks == {"velocity": 7} and "a" in state.ids
    assert state.snapshot() == {"c1": {"e": [["a", 10 * HOUR, 12.5, "FR", "T1", 48.8, 2.3]],
                                       "m": {"velocity": 7}}}
    assert MCC not in state.fields and COUNTRY in state.fields and TERMINAL in state.fields


def test_an_event_too_old_for_its_entity_is_refused_not_placed() -> None:
    ws = WindowSet("terminal")
    state = EntityArrays(ws, ws.horizon_us + SLACK, SLACK)
    state.apply(["T"], ["a"], np.array([10 * HOUR]))
    applied = state.apply(["T", "T"], ["b", "c"], np.array([7 * HOUR, 9 * HOUR]))
    assert applied.accepted.tolist() == [False, True]
    assert "b" not in state.ids and {"a", "c"} <= state.ids
    assert applied.rows is not None
    assert np.asarray(applied.rows["terminal_txn_count_24h"]).tolist() == [1, 2]  # c, then a
    assert state.apply([], [], np.zeros(0, np.int64)).accepted.tolist() == []


def test_the_fields_kept_are_what_the_declared_features_and_rules_read() -> None:
    assert EntityArrays(WindowSet("customer"), HOUR, SLACK).fields == (AMOUNT, MCC)
    assert EntityArrays(WindowSet("terminal"), HOUR, SLACK).fields == ()
    assert EntityArrays(WindowSet("card"), HOUR, SLACK).fields == (AMOUNT, COUNTRY, TERMINAL,
                                                                    LAT, LON)


def test_a_batch_whose_entities_all_go_event_by_event_computes_no_rows() -> None:
    ws = WindowSet("card")
    state = EntityArrays(ws, ws.horizon_us + SLACK, SLACK)
    values = {f: np.array([1.0, 2.0] if f in (AMOUNT, LAT, LON) else ["FR", "DE"], dtype=object
                          if f not in (AMOUNT, LAT, LON) else np.float64)
              for f in (AMOUNT, COUNTRY, TERMINAL, LAT, LON)}
    applied = state.apply(["c1", "c2"], ["a", "b"], np.array([HOUR, 2 * HOUR]), values,
                          rules=[(HOUR, 1)])
    assert applied.rows is None and applied.latest is None
    assert sorted(applied.slow) == ["c1", "c2"] and len(state) == 0
    assert [positions for _, positions in applied.slow.values()] == [[0], [1]]
