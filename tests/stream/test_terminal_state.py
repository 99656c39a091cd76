"""The array-backed terminal state against the one-event-at-a-time reference (EventLog +
WindowSet.features, as pipelines/stream/processor.py applies card and customer events)."""

from __future__ import annotations

import random
from bisect import bisect_right
from typing import Any

import numpy as np
import orjson
import pytest

from kestrel.errors import KestrelError
from pipelines.stream import terminal_state
from pipelines.stream.state import TIME, EventLog, WindowSet
from pipelines.stream.terminal_state import TerminalState, Update

HOUR = 3600 * 1_000_000
SLACK = 2 * HOUR


class Reference:
    """Terminal updates applied one by one: refuse what is older than the latest minus the
    slack, emit the rows of every event from the new one to a horizon after it, evict."""

    def __init__(self, ws: WindowSet, kept: int) -> None:
        self.ws, self.kept = ws, kept
        self.logs: dict[str, EventLog] = {}

    def apply(self, updates: list[Update]) -> tuple[list[bool], dict[tuple[str, int], Any],
                                                    dict[str, tuple[Any, int]]]:
        accepted: list[bool] = []
        rows: dict[tuple[str, int], Any] = {}
        online: dict[str, tuple[Any, int]] = {}
        for txn_id, t, key in updates:
            log = self.logs.setdefault(key, EventLog())
            if log.times and t < log.times[-1] - SLACK:
                accepted.append(False)
                continue
            accepted.append(True)
            i = log.add((txn_id, t, 0.0, "", key, "", 0.0, 0.0))
            for j in range(i, bisect_right(log.times, t + self.ws.horizon_us)):
                rows[(key, log.times[j])] = self.ws.features(log, j)  # the newest wins
            online[key] = (self.ws.features(log), log.times[-1])
            log.evict_before(log.times[-1] - self.kept)
        return accepted, rows, online


def _as_reference(applied: Any) -> tuple[dict[tuple[str, int], Any], dict[str, Any]]:
    rows = applied.rows
    names = [n for n in rows if n not in ("terminal_id", "event_timestamp")]
    got_rows = {}  # events of the same instant share a row: the last one wins, as in the log
    for k in range(len(rows["event_timestamp"])):
        key = (rows["terminal_id"][k], int(rows["event_timestamp"][k]))
        got_rows[key] = {n: int(rows[n][k]) for n in names}
    keys, feats, times = applied.latest
    online = {key: ({n: int(feats[n][k]) for n in names}, int(times[k]))
              for k, key in enumerate(keys)}
    return got_rows, online


@pytest.mark.parametrize("key_bits", [62, 40])  # 40: spans past 9 h take the ranks' path
@pytest.mark.parametrize("seed", range(6))
def test_batches_equal_one_event_at_a_time(seed: int, key_bits: int,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(terminal_state, "_KEY_BITS", key_bits)
    rng = random.Random(seed)
    ws = WindowSet("terminal")
    kept = ws.horizon_us + SLACK
    state, ref = TerminalState(ws, kept, SLACK), Reference(ws, kept)
    clock = 0
    serial = 0
    for _ in range(12):
        updates: list[Update] = []
        for _ in range(rng.randint(1, 300)):
            clock += rng.randint(0, 20 * 60 * 1_000_000)
            jitter = rng.choice([0, 0, 0, 0, -rng.randint(0, 3 * HOUR)])  # out of order, or
            t = max(0, clock + jitter)  # too late
            if rng.random() < 0.05 and updates:
                t = updates[-1][1]  # the same instant as the update before
            serial += 1
            updates.append((f"t{serial}", t, f"term{rng.randint(0, 15)}"))
        applied = state.apply(updates)
        accepted, rows, online = ref.apply(updates)
        assert applied.accepted.tolist() == accepted
        got_rows, got_online = _as_reference(applied)
        want = {k: {n: v for n, v in r.items() if n in ws.names} for k, r in rows.items()}
        assert got_rows == want
        assert got_online == {k: ({n: v for n, v in f.items() if n in ws.names}, t)
                              for k, (f, t) in online.items()}
    held = {key: [[e[0], e[TIME]] for e in log.events] for key, log in ref.logs.items()}
    snap = state.snapshot()
    assert {k: d["e"] for k, d in snap.items()} == held
    assert {k: d["m"].get("_floor", 0) for k, d in snap.items()} == {
        k: log.marks.get("_floor", 0) for k, log in ref.logs.items()}
    assert state.ids == {txn for log in ref.logs.values() for txn in log.ids}


def test_a_snapshot_restores_the_same_state_and_reads_eventlog_tuples() -> None:
    ws = WindowSet("terminal")
    state = TerminalState(ws, ws.horizon_us + SLACK, SLACK)
    updates: list[Update] = [(f"t{i}", i * 40 * 60 * 1_000_000, f"term{i % 3}")
                             for i in range(200)]
    state.apply(updates[:150])
    again = TerminalState(ws, ws.horizon_us + SLACK, SLACK)
    again.load(orjson.loads(orjson.dumps(state.snapshot())))
    assert again.snapshot() == state.snapshot()
    a, b = state.apply(updates[150:]), again.apply(updates[150:])
    assert _as_reference(a) == _as_reference(b)
    # the snapshot format of EventLog-held terminals (before this module)
    old = {"term0": {"e": [["x1", 5, 0.0, "", "term0", "", 0.0, 0.0]], "m": {"_floor": 2}}}
    legacy = TerminalState(ws, ws.horizon_us + SLACK, SLACK)
    legacy.load(old)
    assert legacy.snapshot() == {"term0": {"e": [["x1", 5]], "m": {"_floor": 2}}}
    assert "x1" in legacy.ids
    log = legacy.logs()["term0"]
    assert log.times == [5] and log.marks == {"_floor": 2}


def test_an_update_too_old_for_its_terminal_is_refused_not_placed() -> None:
    ws = WindowSet("terminal")
    state = TerminalState(ws, ws.horizon_us + SLACK, SLACK)
    state.apply([("a", 10 * HOUR, "T")])
    applied = state.apply([("b", 7 * HOUR, "T"), ("c", 9 * HOUR, "T")])
    assert applied.accepted.tolist() == [False, True]
    assert "b" not in state.ids and {"a", "c"} <= state.ids
    assert applied.rows is not None
    assert np.asarray(applied.rows["terminal_txn_count_24h"]).tolist() == [1, 2]  # c, then a
    assert state.apply([]).accepted.tolist() == []


def test_a_window_the_arrays_cannot_compute_is_refused_at_construction() -> None:
    ws = WindowSet("card")  # has sums and distinct counts
    with pytest.raises(KestrelError, match="counts only"):
        TerminalState(ws, ws.horizon_us, SLACK)
