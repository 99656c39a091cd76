"""Bounded stream state (docs/feature-state.md): entities whose windows, slack and duplicate
check are over are dropped whole (EntityArrays.expire), by event time only, so the state
holds what the feature spec says can still change — and nothing else changes: not a feature
value, not a duplicate check, not the state a restore rebuilds."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from kestrel.windows import Entity
from pipelines.stream.arrays.entity_arrays import Applied, EntityArrays
from pipelines.stream.state import AMOUNT, LAT, LON, WindowSet

MINUTE = 60 * 1_000_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
SLACK = 10 * MINUTE  # the default allowed lateness


def _batches(seed: int, days: int, entity: Entity, per_batch: int = 250,
             batch_span: int = 20 * MINUTE) -> list[tuple[list[str], list[str], np.ndarray,
                                                          dict[int, np.ndarray]]]:
    """Synthetic batches over ``days`` simulated days: entities churn (each lives a day or
    two, then never comes back), some return after a gap, a few events are out of order
    within the slack, a few too late."""
    rng = random.Random(seed)
    out = []
    clock = serial = 0
    fields = EntityArrays(WindowSet(entity), DAY, SLACK).fields
    for _ in range(days * DAY // batch_span):
        keys, txns, times = [], [], []
        for _ in range(per_batch):
            clock += rng.randint(0, 2 * batch_span // per_batch)
            t = clock - rng.choice([0, 0, 0, 0, 0, rng.randint(0, SLACK), 3 * SLACK])
            generation = max(0, clock // DAY - rng.choice([0, 0, 0, 0, 1, 3]))
            keys.append(f"e{generation}-{rng.randint(0, 300)}")
            serial += 1
            txns.append(f"t{serial}")
            times.append(max(0, t))
        values = {f: np.array([rng.uniform(1, 100) for _ in keys]) if f in (AMOUNT, LAT, LON)
                  else np.array([rng.choice("ABC") for _ in keys], dtype=object)
                  for f in fields}
        out.append((keys, txns, np.array(times, np.int64), values))
    return out


def _table(entity: Entity) -> EntityArrays:
    ws = WindowSet(entity)
    return EntityArrays(ws, ws.horizon_us + SLACK, SLACK, keep_ids=entity != "card")


def _rows(applied: Applied, key_name: str) -> dict[tuple[str, int], tuple[Any, ...]]:
    if applied.rows is None:
        return {}
    names = sorted(n for n in applied.rows if n not in (key_name, "event_timestamp"))
    return {(k, int(t)): tuple(applied.rows[n][i].item() for n in names)
            for i, (k, t) in enumerate(zip(applied.rows[key_name].tolist(),
                                           applied.rows["event_timestamp"].tolist(),
                                           strict=True))}


def _within_reach(history: list[tuple[str, int]], table: EntityArrays) -> tuple[int, int]:
    """The spec's bound: entities with an event after ``clock - horizon - slack``, and
    their events after their own latest minus horizon and slack (everything the state may
    still need)."""
    cutoff = table.clock - table.kept_us
    last: dict[str, int] = {}
    for k, t in history:
        last[k] = max(last.get(k, t), t)
    alive = {k for k, t in last.items() if t > cutoff}
    return len(alive), sum(1 for k, t in history
                           if k in alive and t > last[k] - table.kept_us)


@pytest.mark.parametrize("entity", ["card", "customer", "terminal"])
def test_state_stays_within_the_entities_active_within_horizon_and_slack(entity: Entity
                                                                           ) -> None:
    bounded, unbounded = _table(entity), _table(entity)
    history: list[tuple[str, int]] = []
    for i, (keys, txns, times, values) in enumerate(_batches(1, 8, entity)):
        applied = bounded.apply(keys, txns, times, values)
        unbounded.apply(keys, txns, times, values)
        bounded.expire()
        history += [(k, t) for k, t, a in zip(keys, times.tolist(), applied.accepted.tolist(),
                                             strict=True) if a]
        if i % 12:
            continue  # every 4 simulated hours
        entities, events = _within_reach(history, bounded)
        assert bounded.entities <= entities and len(bounded) <= events
        assert len(bounded.keys) <= 2 * entities + 1  # codes are reused, not grown
        if bounded.keep_ids:
            assert len(bounded.ids) == len(bounded)
    # 8 days of churn: the unbounded state holds every entity ever seen
    assert unbounded.entities >= len({k for k, _ in history})
    assert unbounded.entities > 2 * bounded.entities
    assert len(unbounded) == len(bounded)  # events go by the clock either way; entities not


@pytest.mark.parametrize("entity", ["card", "customer", "terminal"])
def test_expiring_changes_no_feature_value_and_no_acceptance(entity: Entity) -> None:
    bounded, unbounded = _table(entity), _table(entity)
    key_name = f"{entity}_id"
    expired = 0
    for keys, txns, times, values in _batches(2, 5, entity):
        a = bounded.apply(keys, txns, times, values)
        b = unbounded.apply(keys, txns, times, values)
        assert a.accepted.tolist() == b.accepted.tolist()
        assert _rows(a, key_name) == _rows(b, key_name)
        assert a.latest is not None and b.latest is not None
        assert dict(zip(a.latest[0], a.latest[2].tolist(), strict=True)) == dict(
            zip(b.latest[0], b.latest[2].tolist(), strict=True))
        expired += bounded.expire()
    assert expired > 100  # entities did go, and came back (the generations that return)


def test_live_state_equals_a_restore_from_snapshot_and_batches() -> None:
    """What the processor does: expire after each batch; a restore loads the snapshot and
    replays the changelog batch by batch, expiring after each."""
    for entity in ("card", "customer", "terminal"):
        batches = _batches(3, 4, entity)
        live = _table(entity)
        snapshot: dict[str, Any] = {}
        for i, (keys, txns, times, values) in enumerate(batches):
            live.apply(keys, txns, times, values)
            live.expire()
            if i == len(batches) // 2:
                snapshot = live.snapshot()
        restored = _table(entity)
        restored.load(snapshot)
        for keys, txns, times, values in batches[len(batches) // 2 + 1:]:
            restored.apply(keys, txns, times, values)
            restored.expire()
        assert restored.snapshot() == live.snapshot()
        assert restored.ids == live.ids and restored.clock == live.clock
        assert restored.entities == live.entities


def test_a_duplicate_of_an_expired_entitys_event_is_not_applied_twice() -> None:
    """Terminals: a forwarded update replayed after its terminal was dropped is behind the
    clock by more than the slack, so it is refused, not counted again. (Cards and
    customers: the processor sends it to `transactions.late` first; see the processor test.)"""
    table = _table("terminal")
    table.apply(["T1"], ["x"], np.array([HOUR]))
    table.apply(["T2"], ["y"], np.array([HOUR + DAY + 2 * SLACK]))
    assert table.expire() == 1 and "x" not in table.ids and "T1" not in table.index
    again = table.apply(["T1"], ["x"], np.array([HOUR]))
    assert again.accepted.tolist() == [False] and again.rows is None
    assert "T1" not in table.index or table.expire() == 1
    # a code freed is taken by the next new entity, which starts clean
    fresh = table.apply(["T3"], ["z"], np.array([HOUR + DAY + 2 * SLACK]))
    assert fresh.rows is not None and fresh.rows["terminal_txn_count_24h"].tolist() == [1]


def test_production_refuses_an_online_retention_shorter_than_a_views_ttl(
        tmp_path: Any) -> None:
    from datetime import timedelta
    from types import SimpleNamespace

    from kestrel.errors import ConfigError
    from pipelines.features.store import check_retention, online_key_ttl_seconds
    from tests.conftest import make_settings

    views: Any = [SimpleNamespace(name="card_stream_features", ttl=timedelta(days=30)),
                  SimpleNamespace(name="customer_batch_features", ttl=timedelta(days=2))]
    prod = make_settings(tmp_path).model_copy(update={"env": "prod"})
    assert online_key_ttl_seconds(prod) == 30 * 86_400  # the default: the retention
    check_retention(prod, views)
    short = prod.model_copy(update={"feast_online_key_ttl_seconds": 86_400})
    with pytest.raises(ConfigError, match="card_stream_features, customer_batch_features"):
        check_retention(short, views)
    with pytest.warns(UserWarning, match="KESTREL_FEATURE_RETENTION_DAYS"):
        check_retention(short.model_copy(update={"env": "test"}), views)
