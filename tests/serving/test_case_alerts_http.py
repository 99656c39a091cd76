"""``GET /v1/alerts``, the insights' ``open_alerts`` and ``risk_level`` and ``/v1/ready`` read
the case store, through the HTTP app (serving/app.py's create_app, in process) on a real
store and the session's Redis; and with the store's database absent they answer as
docs/cases.md says: 503 for the alerts, insights without alerts (not cached), scoring
unaffected, and the store used as soon as the database exists."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy import create_engine, text

from cases.store import CaseStore
from kestrel.redis_keys import insight_cache_key, recent_key
from kestrel.settings import Settings
from serving.app import create_app
from serving.auth import mint_token
from serving.fixtures import transaction
from tests.cases.conftest import SERVERS
from tests.conftest import make_settings

pytestmark = [pytest.mark.integration]


def auth(settings: Settings, role: str = "investigator", customer: str | None = None
         ) -> dict[str, str]:
    token = mint_token(settings, role, "acme", customer=customer)
    return {"authorization": f"Bearer {token}"}


def alert(alert_id: str, customer: str) -> dict[str, Any]:
    return {"alert_id": alert_id, "customer_id": customer, "card_id": f"card-{customer}",
            "rule": "multi_country", "evidence_txn_ids": [f"{alert_id}-t1", f"{alert_id}-t2"],
            "last_event_time": "2018-06-02T10:05:00Z"}


def seed_recent(redis_url: str, customer: str) -> Redis:
    redis = Redis.from_url(redis_url)
    redis.delete(recent_key(customer), insight_cache_key(customer, 1))
    redis.lpush(recent_key(customer), orjson.dumps(
        {"txn_id": f"{customer}-r1", "event_time": "2018-06-02T09:00:00Z", "amount": 10.0,
         "mcc": "5411"}))
    return redis


def test_alerts_and_insights_come_from_the_case_store(tmp_path: Path, redis_url: str) -> None:
    customer = f"C-{uuid.uuid4().hex[:8]}"
    settings = make_settings(tmp_path / "var", redis_url=redis_url,
                             case_store_url=f"sqlite:///{tmp_path / 'cases.db'}")
    store = CaseStore(settings.case_store)
    store.add_alert(alert("al-1", customer))
    store.add_decision({"txn_id": "d-1", "customer_id": customer, "card_id": "card-x",
                        "action": "decline", "score": 0.97, "rules": [],
                        "event_time": "2018-06-02T10:06:00Z"})
    other = store.add_alert(alert("al-2", "C-other")).case_id
    store.escalate(other, version=store.get(other).version, actor="ana")  # still open
    closed = store.add_alert(alert("al-3", "C-closed")).case_id
    store.close(closed, "false_positive", version=store.get(closed).version, actor="ana")
    redis = seed_recent(redis_url, customer)
    client = TestClient(create_app(settings))

    body = client.get("/v1/alerts", headers=auth(settings)).json()
    assert [a["alert_id"] for a in body["alerts"]] == ["al-2", "d-1", "al-1"]
    assert body["total"] == 3 and body["next_offset"] is None
    first = body["alerts"][2]
    assert first == {"alert_id": "al-1", "kind": "alert", "customer_id": customer,
                     "card_id": f"card-{customer}", "rule": "multi_country", "score": None,
                     "action": None, "evidence_txn_ids": ["al-1-t1", "al-1-t2"],
                     "event_time": "2018-06-02T10:05:00Z", "received_at": first["received_at"],
                     "case_id": 1, "case_status": "open", "status": "open"}
    assert body["alerts"][0]["case_status"] == "escalated"  # counts as open
    closed_page = client.get("/v1/alerts?status=closed", headers=auth(settings)).json()
    assert [a["alert_id"] for a in closed_page["alerts"]] == ["al-3"]
    page = client.get("/v1/alerts?status=all&limit=2&offset=1", headers=auth(settings)).json()
    assert [a["alert_id"] for a in page["alerts"]] == ["al-2", "d-1"]
    assert page["total"] == 4 and page["next_offset"] == 3

    r = client.get(f"/v1/users/{customer}/insights", headers=auth(settings))
    assert r.status_code == 200 and r.headers["x-cache"] == "miss"
    doc = r.json()
    assert [a["alert_id"] for a in doc["open_alerts"]] == ["d-1", "al-1"]
    assert doc["risk_level"] == "high" and doc["sources"]["cases"] == "ok"
    assert redis.exists(insight_cache_key(customer, 1))
    hit = client.get(f"/v1/users/{customer}/insights", headers=auth(settings))
    assert hit.headers["x-cache"] == "hit" and hit.json() == doc

    case = store.open_case_of(customer)
    assert case is not None
    store.close(case.id, "confirmed_fraud", version=case.version, actor="ana")
    fresh = client.get(f"/v1/users/{customer}/insights?fresh=true", headers=auth(settings))
    assert fresh.json()["open_alerts"] == [] and fresh.json()["risk_level"] == "normal"


def test_without_the_case_store_scoring_and_insights_still_answer(
        tmp_path: Path, redis_url: str) -> None:
    name = f"kestrel_cases_{uuid.uuid4().hex[:12]}"
    url = f"postgresql+psycopg://root:s3cret-pw@localhost:5432/{name}"  # not created yet
    customer = f"C-{uuid.uuid4().hex[:8]}"
    settings = make_settings(tmp_path / "var", redis_url=redis_url, case_store_url=url)
    redis = seed_recent(redis_url, customer)
    app = create_app(settings)
    client = TestClient(app)

    r = client.get("/v1/alerts", headers=auth(settings))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"] == "unavailable"
    message = r.json()["message"]
    assert "case store" in message and name in message and "s3cret-pw" not in message
    r = client.get(f"/v1/users/{customer}/insights", headers=auth(settings))
    assert r.status_code == 200 and r.json()["sources"]["cases"] == "unavailable"
    assert r.json()["open_alerts"] == [] and r.json()["recent_transactions"]
    assert not redis.exists(insight_cache_key(customer, 1))  # incomplete: not cached
    ready = client.get("/v1/ready").json()
    assert ready["case_store"]["reachable"] is False and "case_store" not in ready["checks"]
    scored = client.post("/v1/score", content=orjson.dumps(transaction(1)),
                         headers=auth(settings, "scorer"))
    assert scored.status_code == 200, scored.text  # scoring never needs the case store

    server = create_engine(SERVERS["postgresql"], isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:  # the database is there: the next call opens (and migrates) the store
        r = client.get("/v1/alerts", headers=auth(settings))
        assert r.status_code == 200 and r.json()["total"] == 0
        assert client.get("/v1/ready").json()["case_store"]["reachable"] is True
    finally:
        app.state.runtime().case_store().dispose()
        with server.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        server.dispose()


def test_a_stale_edit_is_a_409_and_an_unreachable_store_a_503() -> None:
    """The one error table (FastAPI picks the most specific class of the exception's MRO)."""
    from kestrel.errors import CaseStoreUnavailable, Conflict, ServiceUnavailable
    from serving.http_errors import DESCRIPTIONS, HANDLERS

    stale = HANDLERS[Conflict](None, Conflict("case 3 changed since you read it"))  # type: ignore[arg-type]
    assert stale.status_code == 409 and orjson.loads(stale.body)["error"] == "conflict"
    assert "409" in DESCRIPTIONS
    assert issubclass(CaseStoreUnavailable, ServiceUnavailable)
    down = HANDLERS[ServiceUnavailable](None, CaseStoreUnavailable("the case store at …"))  # type: ignore[arg-type]
    assert down.status_code == 503 and down.headers["retry-after"] == "1"
