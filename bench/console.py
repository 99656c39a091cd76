"""`kestrel bench console`: the investigator console on a case store of 100,000 cases.

Each backend (a fresh SQLite file; a fresh PostgreSQL database, created and dropped here)
is seeded through the engine in bulk (the schema of cases.models; every alert's columns made
by cases.records from a realistic `alerts` / `decisions` record, as the intake makes them):
cases with alerts and their evidence, flagged decisions with reasons, explanation and
feature vector, notes, status history and action log; a mix of statuses (one open case per
customer at most), assignees, rules and scores. Then, at the server, in-process:

- ``store.<call>_ms``: the case store calls the pages make (``CaseStore.queue`` with the
  queue page's default filter and with each filter, its counts included; ``get`` and
  ``cases_of`` for a case page), p50 / p95 / p99 over many calls;
- ``page.queue_ms`` / ``page.case_ms`` / ``page.report_ms``: ``GET /console/`` (and with
  filters), ``GET /console/cases/{id}`` and ``GET /console/report`` rendered by the app
  (serving/app.py) through Starlette's TestClient with a signed-in session; target ≤ 300 ms
  p95 on each backend for the queue and case pages.

Then the serve side (``serve.*``): `kestrel serve` (its own process, as bench/serve.py runs
it, on the seeded SQLite store) takes POST /v1/score open-loop from bench/load.py, in
alternating phases with the console idle and with a thread loading console pages (queue and
case pages in turn) at ``CONSOLE_RPS`` requests/s; the /v1/score p99 of each phase.

``--quick``: 2,000 cases, SQLite only, fewer calls, one short pair of serve phases.
"""

from __future__ import annotations

import random
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from sqlalchemy import create_engine, insert, text

from bench.results import BenchResult, Metric
from bench.serve import CHAMPION_TREES, CUSTOMERS, _load, _pct, _seed
from cases.models import Action, Case, CaseAlert, Evidence, Note, StatusChange
from cases.records import Flag, flag_of_alert, flag_of_decision
from cases.store import CaseStore
from kestrel.redis_keys import recent_key
from kestrel.services import free_port, private_services
from kestrel.settings import Settings
from serving.auth import mint_token
from serving.fixtures import register_tiny_model, transaction
from serving.process import running_service

CASES, QUICK_CASES = 100_000, 2_000
PAGE_TARGET_MS = 300.0
CONSOLE_RPS = 5.0
POSTGRES_SERVER = "postgresql+psycopg://root@localhost:5432/postgres"
RULES = ("multi_country", "velocity")
DECISION_RULES = ("velocity_decline", "amount_decline", "new_terminal_decline")
ANALYSTS = tuple(f"analyst_{i:02d}" for i in range(12))
PLACES = (("DE", 52.52, 13.40), ("FR", 48.86, 2.35), ("ES", 40.42, -3.70),
          ("IT", 41.90, 12.50), ("NL", 52.37, 4.90), ("BE", 50.85, 4.35),
          ("PL", 52.23, 21.01), ("PT", 38.72, -9.14))
FEATURES = ("card_txn_count_1h", "card_txn_count_10m", "card_amount_sum_1h",
            "card_distinct_countries_1h", "card_km_from_last", "card_seconds_since_last",
            "customer_txn_count_24h", "customer_amount_sum_24h", "amount_zscore_30d",
            "terminal_fraud_rate_7d", "terminal_txn_count_1h", "mcc_risk", "hour_of_day",
            "is_night", "amount", "customer_distinct_cards_7d")
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
CHUNK = 5_000


# --- seeding -------------------------------------------------------------------------------
def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _alert(rng: random.Random, i: int, k: int, cust: str, card: str,
           at: datetime) -> dict[str, Any]:
    rule = RULES[(i + k) % len(RULES)]
    evidence = []
    for j in range(rng.randint(3, 5)):
        country, lat, lon = PLACES[(i + j) % len(PLACES)]
        evidence.append({"txn_id": f"t{i}-{k}-{j}", "event_time": _iso(at + timedelta(
            seconds=40 * j)), "amount": round(rng.uniform(5, 900), 2), "currency": "EUR",
            "country": country, "lat": lat, "lon": lon, "terminal_id": f"term-{country}-{j}"})
    return {"alert_id": f"al-{i}-{k}", "customer_id": cust, "card_id": card, "rule": rule,
            "window": "10m", "evidence_txn_ids": [e["txn_id"] for e in evidence],
            "evidence": evidence, "first_event_time": evidence[0]["event_time"],
            "last_event_time": evidence[-1]["event_time"]}


def _decision(rng: random.Random, i: int, k: int, cust: str, card: str,
              at: datetime) -> dict[str, Any]:
    score = round(rng.betavariate(5, 1.5), 4)
    country, lat, lon = PLACES[i % len(PLACES)]
    features = {f: round(rng.uniform(0, 50), 3) for f in FEATURES}
    reasons = [{"feature": f, "value": features[f], "contribution": round(rng.uniform(-.5, 1.5),
                                                                          3),
                "text": f"{f.replace('_', ' ')} is {features[f]}"}
               for f in rng.sample(FEATURES, 4)]
    action = "decline" if score >= 0.9 else "challenge"
    return {"txn_id": f"d{i}-{k}", "customer_id": cust, "card_id": card, "event_time": _iso(at),
            "score": score, "action": action, "reasons": reasons,
            "rules": [{"rule": DECISION_RULES[i % 3], "action": action, "text": "a rule"}]
            if i % 4 == 0 else [],
            "explanation": f"{action.title()}d: the fraud score {score} is above the "
                           f"{action} threshold.", "model_version": str(1 + i % 3),
            "degraded": False, "features": features,
            "transaction": {"amount": round(rng.uniform(5, 2500), 2), "currency": "EUR",
                            "country": country, "lat": lat, "lon": lon, "mcc": "5732",
                            "terminal_id": f"term-{country}-9", "channel": "pos",
                            "event_time": _iso(at)}}


class Seeder:
    """Rows of every case table, made in memory and inserted in chunks."""

    def __init__(self, n: int, rng: random.Random, now: datetime):
        self.n, self.rng, self.now = n, rng, now
        self.customers = max(n * 2 // 5, 1)  # ~2.5 cases per customer: past cases to list
        self.rows: dict[Any, list[dict[str, Any]]] = {
            t: [] for t in (Case, CaseAlert, Evidence, Note, StatusChange, Action)}
        self._alert_id = 0

    def customer(self, i: int) -> str:
        return f"cust_{i % self.customers:06d}"

    def make(self, i: int) -> None:
        rng, cid = self.rng, i + 1
        cust, card = self.customer(i), f"card_{i % self.customers:06d}_{i % 2}"
        latest = i + self.customers >= self.n  # the customer's newest case: may be open
        roll = rng.random()
        status = ("open" if roll < 0.8 else "escalated" if roll < 0.9 else "closed") \
            if latest else "closed"
        opened = self.now - timedelta(hours=rng.uniform(0.2, 24 * 90 if status == "closed"
                                                        else 24 * 10))
        records: list[Flag] = []
        kinds = rng.choice((("alert",), ("decision",), ("alert", "decision"),
                            ("decision", "decision")))
        for k, kind in enumerate(kinds):
            at = opened + timedelta(minutes=3 * k)
            records.append(flag_of_alert(_alert(rng, i, k, cust, card, at)) if kind == "alert"
                           else flag_of_decision(_decision(rng, i, k, cust, card, at)))
        scores = [f.score for f in records if f.score is not None]
        rules = list(dict.fromkeys(f.rule for f in records if f.rule))
        closed = opened + timedelta(hours=rng.uniform(0.5, 200)) if status == "closed" else None
        assignee = (rng.choice(ANALYSTS) if status != "open" or rng.random() < 0.5 else None)
        history: list[tuple[str | None, str, str | None, str | None, datetime]] = [
            (None, "open", None, "kestrel-intake", opened)]
        if status == "escalated":
            history.append(("open", "escalated", None, assignee, opened + timedelta(hours=1)))
        if closed is not None:
            history.append(("open", "closed", rng.choice(("confirmed_fraud", "false_positive",
                                                          "needs_more_information")),
                            assignee, closed))
        for frm, to, outcome, actor, at in history:
            self.rows[StatusChange].append({"case_id": cid, "from_status": frm, "to_status": to,
                                            "outcome": outcome, "actor": actor, "at": at})
        notes = rng.choice((0, 0, 0, 1, 2))
        for j in range(notes):
            self.rows[Note].append({"case_id": cid, "author": assignee or ANALYSTS[0],
                                    "body": f"Called the customer ({j}): recognises none of "
                                            "the payments abroad.",
                                    "created_at": opened + timedelta(minutes=30 + j)})
        actions: list[tuple[str | None, str, dict[str, Any], datetime]] = [
            ("kestrel-intake", "open" if k == 0 else "join", {"kind": f.kind, "key": f.key},
             opened) for k, f in enumerate(records)]
        actions += [(assignee or ANALYSTS[0], "note", {"chars": 60}, opened)] * notes
        actions += [(actor, {"escalated": "escalate", "closed": "close"}[to],
                     {"from": frm, "to": to, "outcome": outcome}, at)
                    for frm, to, outcome, actor, at in history[1:]]
        for actor, name, detail, at in actions:
            self.rows[Action].append({"case_id": cid, "actor": actor, "action": name,
                                      "detail": detail, "at": at})
        self.rows[Case].append({
            "id": cid, "customer_id": cust, "status": status,
            "open_customer_id": cust if status != "closed" else None,
            "outcome": history[-1][2], "sar": status == "closed" and i % 97 == 0,
            "assignee": assignee, "assigned_at": opened if assignee else None,
            "max_score": max(scores) if scores else None, "rules": rules,
            "opened_at": opened, "updated_at": closed or opened, "closed_at": closed,
            "version": len(actions)})
        for f in records:
            self._alert_id += 1
            self.rows[CaseAlert].append({
                "id": self._alert_id, "case_id": cid, "kind": f.kind, "key": f.key,
                "customer_id": f.customer_id, "card_id": f.card_id, "rule": f.rule,
                "score": f.score, "action": f.action, "model_version": f.model_version,
                "decision": f.decision, "features": f.features, "payload": f.payload,
                "event_time": f.event_time, "received_at": opened})
            self.rows[Evidence] += [{"alert_id": self._alert_id, "txn_id": t}
                                    for t in f.evidence_txn_ids]

    def flush(self, conn: Any) -> int:
        count = 0
        for model, rows in self.rows.items():  # parents first: the dict's order
            if rows:
                conn.execute(insert(model), rows)
                count += len(rows)
                rows.clear()
        return count


def seed(url: str, n: int, seed_value: int = 7) -> dict[str, Any]:
    """Migrate the database at ``url`` and fill it with ``n`` cases; what went in."""
    store = CaseStore(url)  # migrates
    rng = random.Random(seed_value)
    seeder = Seeder(n, rng, datetime.now(UTC))
    started, rows = time.perf_counter(), 0
    try:
        for lo in range(0, n, CHUNK):
            for i in range(lo, min(lo + CHUNK, n)):
                seeder.make(i)
            with store.engine.begin() as conn:
                rows += seeder.flush(conn)
        with store.engine.begin() as conn:
            if store.engine.dialect.name == "postgresql":  # ids were given: move the sequences
                for table in ("cases", "case_alerts"):
                    conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                      f"(SELECT max(id) FROM {table}))"))
            if store.engine.dialect.name == "sqlite":
                conn.execute(text("ANALYZE"))  # the planner's statistics
        if store.engine.dialect.name == "postgresql":
            # statistics and the visibility map (index-only scans), as autovacuum leaves a
            # table in use; VACUUM runs outside a transaction
            with store.engine.connect().execution_options(
                    isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE"))
        with store.engine.connect() as conn:
            counts = {s: int(c) for s, c in conn.execute(
                text("SELECT status, count(*) FROM cases GROUP BY status"))}
            conn.rollback()
    finally:
        store.dispose()
    return {"cases": n, "customers": seeder.customers, "rows": rows, "by_status": counts,
            "seed_s": round(time.perf_counter() - started, 1)}


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new PostgreSQL database on the local server; dropped afterwards."""
    name = f"kestrel_bench_console_{uuid.uuid4().hex[:10]}"
    server = create_engine(POSTGRES_SERVER, isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield f"postgresql+psycopg://root@localhost:5432/{name}"
    finally:
        with server.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        server.dispose()


# --- timing ----------------------------------------------------------------------------------
def _timed(call: Callable[[Any], Any], args: list[Any]) -> list[float]:
    """``call(a)`` for each ``a``: the time of each, in ms."""
    out = []
    for a in args:
        t0 = time.perf_counter()
        call(a)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _metric(lat: list[float], target: float | None = None, **extra: Any) -> Metric:
    return Metric(_pct(lat, 0.95), "ms", target, "lower",
                  {"p50_ms": round(_pct(lat, 0.5), 3), "p99_ms": round(_pct(lat, 0.99), 3),
                   "calls": len(lat), "stat": "p95", **extra})


def store_figures(url: str, n: int, calls: int, rng: random.Random) -> dict[str, list[float]]:
    store = CaseStore(url)
    now = datetime.now(UTC)
    queries: dict[str, dict[str, Any]] = {
        "queue_open": {"status": "open"},
        "queue_all": {},
        "queue_rule": {"status": "open", "rule": "multi_country"},
        "queue_band": {"status": "open", "min_score": 0.9},
        "queue_me": {"status": "open", "assignee": ANALYSTS[3]},
        "queue_unassigned_24h": {"status": "open", "unassigned": True,
                                 "older_than": timedelta(hours=24)},
        "queue_page_40": {"status": "open", "offset": 39 * 25},
    }
    out: dict[str, list[float]] = {}
    try:
        for name, q in queries.items():
            store.queue(now=now, limit=25, **q)  # warm
            out[name] = _timed(lambda q: store.queue(now=now, limit=25, **q), [q] * calls)
        ids = [rng.randint(1, n) for _ in range(calls)]
        out["get"] = _timed(store.get, ids)
        customers = [store.get(i).customer_id for i in ids[: max(calls // 4, 1)]]
        out["cases_of"] = _timed(store.cases_of, customers)
    finally:
        store.dispose()
    return out


def _sign_in(http: Any, settings: Settings) -> dict[str, str]:
    """Sign in through the form; the session's cookies as a header (the service's cookies
    are Secure outside dev: a client on plain http would not send them back by itself)."""
    form = http.get("/console/sign-in")
    form.raise_for_status()
    jar = dict(form.cookies)
    found = CSRF.search(form.text)
    if found is None:
        raise RuntimeError("the sign-in page has no CSRF token")
    token = mint_token(settings, "investigator", "bench", subject=ANALYSTS[3])
    done = http.post("/console/sign-in", data={"csrf": found.group(1), "next": "/console/",
                                              "token": token},
                     headers={"cookie": "; ".join(f"{k}={v}" for k, v in jar.items())},
                     follow_redirects=False)
    if done.status_code != 303:
        raise RuntimeError(f"sign-in answered {done.status_code}: {done.text[:300]}")
    jar.update(dict(done.cookies))
    return {"cookie": "; ".join(f"{k}={v}" for k, v in jar.items())}


QUEUE_PAGES = ("/console/", "/console/?status=all", "/console/?rule=velocity",
               "/console/?band=%E2%89%A5+0.9", "/console/?assignee=me",
               "/console/?assignee=unassigned&age=24h", "/console/?page=40")


def page_figures(settings: Settings, n: int, calls: int,
                 rng: random.Random) -> dict[str, list[float]]:
    from fastapi.testclient import TestClient

    from serving.app import create_app

    app = create_app(settings)
    out: dict[str, list[float]] = {"queue": [], "case": [], "report": []}
    try:
        with TestClient(app, base_url="https://testserver") as http:
            cookie = _sign_in(http, settings)

            def get(path: str) -> None:
                r = http.get(path, headers=cookie, follow_redirects=False)
                if r.status_code != 200:
                    raise RuntimeError(f"GET {path} answered {r.status_code}: {r.text[:300]}")

            for path in QUEUE_PAGES:
                get(path)  # warm
            out["queue"] = _timed(get, [QUEUE_PAGES[i % len(QUEUE_PAGES)]
                                        for i in range(calls)])
            out["case"] = _timed(get, [f"/console/cases/{rng.randint(1, n)}"
                                       for _ in range(calls)])
            out["report"] = _timed(get, ["/console/report"] * max(calls // 10, 5))
    finally:
        app.state.runtime().stop()
    return out


def _recent(settings: Settings, customers: list[str]) -> None:
    """Recent transactions in Redis for the customers the case pages show (their timeline)."""
    from redis import Redis

    client = Redis.from_url(settings.redis_url)
    pipe = client.pipeline(transaction=False)
    for c in customers:
        pipe.delete(recent_key(c))
        pipe.rpush(recent_key(c), *[orjson.dumps({
            "txn_id": f"r-{c}-{k}", "event_time": "2026-12-01T10:00:00Z", "amount": 12.5,
            "currency": "EUR", "country": "FR", "lat": 48.86, "lon": 2.35,
            "terminal_id": "T1", "card_id": f"card-{c}", "channel": "pos"}) for k in range(20)])
    pipe.execute()
    client.close()


# --- the serve side --------------------------------------------------------------------------
class ConsoleLoad:
    """A thread loading console pages (queue and case pages in turn) at ``rps``."""

    def __init__(self, url: str, settings: Settings, n: int, rps: float):
        self.url, self.settings, self.n, self.rps = url, settings, n, rps
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-load", daemon=True)

    def __enter__(self) -> ConsoleLoad:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        rng = random.Random(3)
        with httpx.Client(base_url=self.url, timeout=30) as http:
            cookie = _sign_in(http, self.settings)
            t0, i = time.monotonic(), 0
            while not self._stop.is_set():
                due = t0 + i / self.rps
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    break
                path = QUEUE_PAGES[i % len(QUEUE_PAGES)] if i % 2 == 0 else \
                    f"/console/cases/{rng.randint(1, self.n)}"
                started = time.perf_counter()
                r = http.get(path, headers=cookie)
                self.latencies.append((time.perf_counter() - started) * 1000)
                self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
                i += 1


def serve_figures(own: Settings, url: str, n: int, quick: bool, result: BenchResult,
                  console: Console) -> None:
    rate, seconds, pairs = (100, 3.0, 1) if quick else (500, 10.0, 3)
    register_tiny_model(own, n_estimators=CHAMPION_TREES)
    _seed(own)
    bodies = [transaction(i) for i in range(CUSTOMERS)]
    for b in bodies:
        b["card_id"] = f"card-{int(b['customer_id'][1:]):04d}"
    settings = own.model_copy(update={"case_store_url": url})
    with running_service(settings, free_port(), own.var_dir / "serve.log", timeout=180) as base:
        headers = {"authorization": f"Bearer {mint_token(own, 'scorer', 'bench')}",
                   "content-type": "application/json"}
        spec = {"url": base + "/v1/score", "rate": rate, "seconds": seconds,
                "headers": headers, "bodies": bodies}
        _load({**spec, "seconds": 1.0})  # warm
        got: dict[str, list[dict[str, Any]]] = {"idle": [], "busy": []}
        page_lat: list[float] = []
        statuses: dict[int, int] = {}
        for p in range(pairs):
            for phase in ("idle", "busy") if p % 2 == 0 else ("busy", "idle"):
                console.print(f"/v1/score at {rate} req/s for {seconds:.0f} s, console "
                              f"{phase} …")
                if phase == "idle":
                    got[phase].append(_load(spec))
                    continue
                with ConsoleLoad(base, settings, n, CONSOLE_RPS) as load:
                    got[phase].append(_load(spec))
                page_lat += load.latencies
                for k, v in load.statuses.items():
                    statuses[k] = statuses.get(k, 0) + v
        for phase, runs in got.items():
            lat = [x for r in runs for x in r["latencies_ms"]]
            result.metrics[f"serve.score_p99_ms@{rate}.console_{phase}"] = Metric(
                _pct(lat, 0.99), "ms", None, "lower",
                {"p50_ms": round(_pct(lat, 0.5), 3), "requests": len(lat),
                 "errors": sum(r["errors"] for r in runs),
                 "per_phase_p99_ms": [round(_pct(r["latencies_ms"], 0.99), 3) for r in runs],
                 "send_lag_p99_ms": max(r["send_lag_p99_ms"] for r in runs)})
        result.metrics["serve.console_page_ms"] = _metric(
            page_lat, None, statuses={str(k): v for k, v in statuses.items()},
            rps=CONSOLE_RPS)


# --- the scenario ----------------------------------------------------------------------------
def run(settings: Settings, quick: bool, console: Console) -> BenchResult:
    n = QUICK_CASES if quick else CASES
    calls = 40 if quick else 300
    backends = ["sqlite"] if quick else ["sqlite", "postgresql"]
    result = BenchResult("console", quick, {"cases": n, "calls": calls, "backends": backends,
                                            "console_rps": CONSOLE_RPS})
    base = settings.model_copy(update={"case_intake": False, "rate_limit_per_second": 0.0,
                                       "log_level": "WARNING", "mlflow_tracking_uri": None})
    with private_services(base, with_redis=True) as own, \
            tempfile.TemporaryDirectory(prefix="kestrel-bench-console-") as tmp:
        sqlite_url = f"sqlite:///{Path(tmp) / 'cases.db'}"
        rng = random.Random(11)
        _recent(own, [f"cust_{i:06d}" for i in range(max(n * 2 // 5, 1))][:20_000])
        for backend in backends:
            with (postgres_database() if backend == "postgresql"
                  else _given(sqlite_url)) as url:
                console.print(f"{backend}: seeding {n:,} cases …")
                result.params[f"{backend}.seed"] = seed(url, n)
                console.print(f"{backend}: timing the store's calls …")
                for name, lat in store_figures(url, n, calls, rng).items():
                    result.metrics[f"{backend}.store.{name}_ms"] = _metric(lat)
                console.print(f"{backend}: timing the pages …")
                app = own.model_copy(update={"case_store_url": url})
                for name, lat in page_figures(app, n, calls, rng).items():
                    target = PAGE_TARGET_MS if name != "report" else None  # not in the issue
                    result.metrics[f"{backend}.page.{name}_ms"] = _metric(lat, target)
        console.print("serve: /v1/score with the console idle and busy …")
        serve_figures(own, sqlite_url, n, quick, result, console)
    return result


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url
