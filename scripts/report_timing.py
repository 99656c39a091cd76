"""Time cases/report.py's report() on a case store of 100,000 cases (bulk-inserted through the
engine: a benchmark's data, not the intake's path), on SQLite and PostgreSQL (and MariaDB
with --mysql). Each backend gets a new database, dropped afterwards.

    .venv/bin/python scripts/report_timing.py [--cases 100000] [--runs 7] [--mysql]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text

from cases.models import Case, CaseAlert
from cases.report import report
from cases.store import CaseStore

SERVERS = {"postgresql": "postgresql+psycopg://root@localhost:5432/postgres",
           "mysql": "mysql+pymysql://root@127.0.0.1:3306/"}
RULES = ("multi_country", "velocity", "amount_limit", None)
OUTCOMES = ("confirmed_fraud", "confirmed_fraud", "false_positive", "needs_more_information")


def rows(n: int, now: datetime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(31)
    cases: list[dict[str, Any]] = []
    alerts: list[dict[str, Any]] = []
    for i in range(1, n + 1):
        opened = now - timedelta(days=rng.uniform(0, 90))
        fate = rng.random()
        status = "open" if fate < 0.2 else "escalated" if fate < 0.25 else "closed"
        closed = opened + timedelta(hours=rng.uniform(0.1, 200)) if status == "closed" else None
        if closed is not None and closed > now:
            closed = now
        score = rng.choice([None, round(rng.random(), 6)])
        rule = rng.choice(RULES)
        cases.append({
            "id": i, "customer_id": f"cu{i}",
            "open_customer_id": None if status == "closed" else f"cu{i}",
            "status": status, "outcome": rng.choice(OUTCOMES) if closed else None,
            "sar": False, "assignee": None, "max_score": score,
            "rules": [rule] if rule else [], "opened_at": opened, "updated_at": closed or opened,
            "closed_at": closed, "version": 1})
        for j in range(1 + (i % 3 == 0)):
            alerts.append({
                "case_id": i, "kind": "alert" if rule else "decision", "key": f"k{i}-{j}",
                "customer_id": f"cu{i}", "card_id": f"card_{i}", "rule": rule, "score": score,
                "action": None, "model_version": None, "decision": None, "features": None,
                "payload": {}, "event_time": opened, "received_at": opened})
    return cases, alerts


def time_backend(url: str, n: int, runs: int) -> list[float]:
    store = CaseStore(url)  # migrates
    now = datetime.now(UTC)
    cases, alerts = rows(n, now)
    t0 = time.perf_counter()
    with store.engine.begin() as conn:
        for table, data in ((Case, cases), (CaseAlert, alerts)):
            for k in range(0, len(data), 5000):
                conn.execute(insert(table), data[k:k + 5000])
    if url.startswith("postgresql"):
        with store.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    print(f"  inserted {len(cases):,} cases and {len(alerts):,} alerts in "
          f"{time.perf_counter() - t0:.1f} s")
    timings = []
    for _ in range(runs):
        t = time.perf_counter()
        got = report(store.engine, now=now, days=30)
        timings.append((time.perf_counter() - t) * 1000)
    print(f"  open {got.open_cases:,}, escalated {got.escalated:,}, closed in 30 days "
          f"{got.closed:,}, median {got.median_hours_to_close:.1f} h")
    store.dispose()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--mysql", action="store_true")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] + (["mysql"] if args.mysql else [])
    for backend in backends:
        print(backend)
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                timings = time_backend(f"sqlite:///{Path(tmp) / 'cases.db'}", args.cases,
                                       args.runs)
        else:
            name = f"kestrel_report_{uuid.uuid4().hex[:10]}"
            server = create_engine(SERVERS[backend], isolation_level="AUTOCOMMIT")
            with server.connect() as conn:
                conn.execute(text(f"CREATE DATABASE {name}"))
            base = SERVERS[backend].rsplit("/", 1)[0]
            try:
                timings = time_backend(f"{base}/{name}", args.cases, args.runs)
            finally:
                force = " WITH (FORCE)" if backend == "postgresql" else ""
                with server.connect() as conn:
                    conn.execute(text(f"DROP DATABASE {name}{force}"))
                server.dispose()
        print(f"  report(): first {timings[0]:.0f} ms, median {statistics.median(timings):.0f} "
              f"ms, max {max(timings):.0f} ms over {len(timings)} runs")


if __name__ == "__main__":
    main()
