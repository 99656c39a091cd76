"""Races the database settles, on every backend: intake workers upserting one customer's
alerts at once open one case, and analysts editing one case from the same version at once
get one success and Conflicts (the version column's compare-and-set), never a lost edit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from cases.store import CaseStore
from kestrel.errors import Conflict

pytestmark = pytest.mark.integration
THREADS = 6


def test_racing_intake_workers_open_one_case_per_customer(case_url: str) -> None:
    stores = [CaseStore(case_url, busy_timeout_ms=30_000) for _ in range(THREADS)]
    try:
        def intake(worker: int) -> set[int]:
            return {stores[worker].add_alert({
                "alert_id": f"a{i}", "customer_id": f"c{i % 3}", "card_id": "card_x",
                "rule": "velocity", "evidence_txn_ids": [f"t{i}"]}).case_id
                for i in range(30)}

        with ThreadPoolExecutor(THREADS) as pool:
            seen = set().union(*pool.map(intake, range(THREADS)))
        page = stores[0].queue()
        assert page.total == 3 and {c.id for c in page.cases} == seen
        assert sum(len(stores[0].get(c.id).alerts) for c in page.cases) == 30
    finally:
        for s in stores:
            s.dispose()


def test_racing_edits_from_one_version_let_exactly_one_through(case_url: str) -> None:
    stores = [CaseStore(case_url, busy_timeout_ms=30_000) for _ in range(THREADS)]
    try:
        case_id = stores[0].add_alert({"alert_id": "a1", "customer_id": "c1",
                                       "evidence_txn_ids": ["t1"]}).case_id
        seen = stores[0].get(case_id).version

        def assign(worker: int) -> str:
            try:
                stores[worker].assign(case_id, f"analyst{worker}", version=seen,
                                      actor=f"analyst{worker}")
            except Conflict:
                return "conflict"
            return "ok"

        with ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(assign, range(THREADS)))
        assert sorted(results) == ["conflict"] * (THREADS - 1) + ["ok"]
        case = stores[0].get(case_id)
        assert case.version == seen + 1
        assert [a.action for a in case.actions] == ["open", "assign"]
        assert case.assignee == case.actions[-1].actor
    finally:
        for s in stores:
            s.dispose()
