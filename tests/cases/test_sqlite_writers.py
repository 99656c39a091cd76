"""Two processes write the embedded SQLite case store at once (two service workers) without
"database is locked": WAL, the busy timeout and BEGIN IMMEDIATE make them queue."""

from __future__ import annotations

import multiprocessing
from contextlib import suppress
from pathlib import Path

import pytest

from cases.store import CaseStore
from kestrel.errors import Conflict

pytestmark = pytest.mark.integration
PER_WORKER = 60


def _work(url: str, worker: int) -> None:
    store = CaseStore(url, busy_timeout_ms=30_000)  # both migrate at start: one wins
    try:
        for i in range(PER_WORKER):
            customer = f"cust_{i % 7}"
            got = store.add_alert({
                "alert_id": f"w{worker}_a{i}", "customer_id": customer, "card_id": "card_x",
                "rule": "velocity", "evidence_txn_ids": [f"w{worker}_t{i}"]})
            store.add_alert({  # the other worker's alerts too: a replay, an overlap
                "alert_id": f"w{1 - worker}_a{i}", "customer_id": customer,
                "card_id": "card_x", "rule": "velocity", "evidence_txn_ids": [f"t{i}"]})
            case = store.get(got.case_id)
            if case.status == "open" and i % 5 == 0:
                with suppress(Conflict):  # fine: the other worker edited the case first
                    store.add_note(case.id, f"worker {worker} saw it", version=case.version,
                                   actor=f"worker{worker}")
    finally:
        store.dispose()


def test_two_processes_write_sqlite_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cases.db'}"
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_work, args=(url, w)) for w in (0, 1)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
    assert [p.exitcode for p in workers] == [0, 0], "a writer failed (see its stderr)"
    store = CaseStore(url)
    try:
        page = store.queue(limit=100)
        assert page.total == 7  # one open case per customer, however the writes interleaved
        keys = [a.key for c in page.cases for a in store.get(c.id).alerts]
        assert sorted(keys) == sorted(f"w{w}_a{i}" for w in (0, 1) for i in range(PER_WORKER))
    finally:
        store.dispose()


def test_a_read_does_not_wait_for_a_writer_holding_the_lock(tmp_path: Path) -> None:
    """Reads (the queue, a case page, the insights' open alerts) begin deferred: while
    another process holds SQLite's write lock they read their snapshot at once instead of
    waiting on the busy timeout (and failing with "database is locked" after it)."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'cases.db'}"
    store = CaseStore(url, busy_timeout_ms=200)
    case_id = store.add_alert({"alert_id": "a1", "customer_id": "c1", "card_id": "k1",
                               "rule": "velocity", "evidence_txn_ids": ["t1"]}).case_id
    writer = sqlite3.connect(tmp_path / "cases.db", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # another process's write in progress
        assert store.get(case_id).customer_id == "c1"
        assert store.queue().total == 1 and store.open_alerts("c1")
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        store.dispose()
