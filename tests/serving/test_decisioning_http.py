"""Decisioning, insights, alerts, labels, auth, limits and metrics over HTTP, against the
running BentoML service (`kestrel serve` as a process), a real broker, a private Redis (this
module starts and, at the end, stops its own) and a real MLflow registry with a tiny model."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
from confluent_kafka import Producer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from mlflow.tracking import MlflowClient
from redis import Redis

from kestrel.kafka import producer_config
from kestrel.pan import CardTokenizer
from kestrel.redis_keys import insight_cache_key
from kestrel.services import BROKER, REDIS, free_port, start_broker, start_redis, stop
from kestrel.settings import Settings
from kestrel.topics import ALERTS, DECISIONS, LABELS, TRANSACTIONS
from serving.auth import mint_token
from serving.fixtures import register_copy, register_tiny_model, transaction, write_features
from serving.process import running_service
from tests.conftest import TEST_SECRET, make_settings
from tests.pipelines.test_archive import read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PAN = "4111111111111111"
BOT42: dict[str, Any] = {"role": "bot", "customer": "C0042"}  # an assistant for C0042


class Stack:
    def __init__(self, settings: Settings, url: str, private_key: Any, var: Path):
        self.settings, self.url, self.private_key, self.var = settings, url, private_key, var

    def headers(self, role: str = "scorer", client: str = "acme",
                customer: str = "C0001") -> dict[str, str]:
        token = mint_token(self.settings, role, client,
                           customer=customer if role == "bot" else None)
        return {"authorization": f"Bearer {token}"}

    def post(self, path: str, doc: Any, role: str = "scorer", **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, content=orjson.dumps(doc), headers=self.headers(role),
                          timeout=60, **kw)

    def get(self, path: str, role: str = "investigator", customer: str = "C0001",
            **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.headers(role, customer=customer),
                         timeout=30, **kw)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    var = tmp_path_factory.mktemp("serve-var")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = var / "jwt-public.pem"
    pem.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    settings = make_settings(var, kafka_bootstrap=f"127.0.0.1:{free_port()}",
                             redis_url=f"redis://127.0.0.1:{free_port()}/0",
                             jwt_public_key_file=pem, model_poll_seconds=1.0,
                             rate_limit_clients="tiny=0.2:3", score_budget_ms=200.0)
    start_redis(settings)
    start_broker(settings)
    try:
        register_tiny_model(settings, seed=0)
        register_copy(settings, "1", challenge=0.3, decline=0.6)
        write_features(settings, settings.redis_url, {
            "card-0001": {"card_txn_count_1h": 6, "card_txn_count_10m": 5,
                          "card_last_event_time_us": 1527854000000000,
                          "card_last_lat": 48.8, "card_last_lon": 2.3},
             "card-quiet": {"card_txn_count_1h": 0, "card_txn_count_10m": 0}},
            customers={"C0001": {"customer_txn_count_24h": 3}})
        with running_service(settings, free_port(), var / "serve.log", timeout=180) as url:
            yield Stack(settings, url, key, var)
    finally:
        stop(settings, BROKER)
        stop(settings, REDIS)


def _strip_latency(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "latency_ms"}


# --- decisioning -----------------------------------------------------------------------------

def test_score_returns_a_full_decision_from_the_champion(stack: Stack) -> None:
    r = stack.post("/v1/score", transaction(1))
    assert r.status_code == 200, r.text
    d = r.json()
    assert set(d) >= {"txn_id", "action", "score", "reasons", "explanation", "model_version",
                      "degraded", "latency_ms"}
    assert d["txn_id"] == "score-000001" and d["degraded"] is False and d["audited"] is True
    assert d["model_version"] == "1"
    assert 0.0 <= d["score"] <= 1.0
    # the busy card (6 transactions in the last hour, from Redis) drives the score up
    assert d["reasons"][0]["feature"] == "card_txn_count_1h"
    assert d["reasons"][0]["value"] == 6.0 and d["reasons"][0]["contribution"] > 0
    assert d["action"] == "decline" and "decline threshold" in d["explanation"]
    assert d["explanation"].count(".") >= 1 and "\n" not in d["explanation"]


def test_quiet_card_is_allowed_and_scoring_is_deterministic(stack: Stack) -> None:
    ev = transaction(2, card_id="card-quiet", amount=12.5)
    first = stack.post("/v1/score", ev).json()
    again = [stack.post("/v1/score", ev).json() for _ in range(3)]
    assert first["action"] == "allow" and first["score"] < 0.5
    assert all(_strip_latency(a) == _strip_latency(first) for a in again)
    assert first["reasons"] and "strongest risk signal" in first["explanation"]
    # the batch path decides the same transaction identically when asked for every reason
    batch = stack.post("/v1/score/batch?reasons=all", {"events": [ev, transaction(1)]}).json()
    assert _strip_latency(batch["decisions"][0]) == _strip_latency(first)
    # by default a batch explains only what it flags: same action and score, no reasons
    flagged = stack.post("/v1/score/batch", {"events": [ev, transaction(1)]}).json()
    quiet, busy = flagged["decisions"]
    assert {k: quiet[k] for k in ("action", "score", "model_version")} == \
        {k: first[k] for k in ("action", "score", "model_version")}
    assert quiet["reasons"] == [] and quiet["explanation"].startswith("Allowed: fraud score")
    assert busy["action"] == "decline" and busy["reasons"][0]["feature"] == "card_txn_count_1h"
    assert _strip_latency(busy) == _strip_latency(batch["decisions"][1])
    r = stack.post("/v1/score/batch?reasons=some", {"events": [ev]})
    assert r.status_code == 400 and r.json()["errors"][0]["path"] == "query.reasons"


def test_rules_block_countries_and_limit_amounts(stack: Stack) -> None:
    d = stack.post("/v1/score", transaction(3, card_id="card-quiet", country="KP")).json()
    assert d["action"] == "decline" and d["rules"][0]["rule"] == "blocked_country"
    assert "KP" in d["explanation"]
    d = stack.post("/v1/score", transaction(4, card_id="card-quiet", mcc="7995")).json()
    assert d["action"] == "decline" and d["rules"][0]["rule"] == "blocked_mcc"
    d = stack.post("/v1/score", transaction(5, card_id="card-quiet", amount=1500.0,
                                            channel="atm")).json()
    assert any(h["rule"] == "amount_challenge_limit" for h in d["rules"])


def test_batch_scores_many_and_rejects_bad_input(stack: Stack) -> None:
    events = [transaction(i, card_id=f"card-b{i}") for i in range(100, 2100)]
    r = stack.post("/v1/score/batch", {"events": events})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 2000
    assert [d["txn_id"] for d in body["decisions"]] == [e["txn_id"] for e in events]
    assert not any(d["degraded"] for d in body["decisions"])
    bad = [transaction(1), {**transaction(2), "amount": -3}]
    r = stack.post("/v1/score/batch", {"events": bad})
    assert r.status_code == 400 and r.json()["errors"][0]["path"] == "events[1].amount"
    r = stack.post("/v1/score", {"events": [transaction(1)]})
    assert r.status_code == 400


def test_scored_transactions_and_decisions_are_published(stack: Stack) -> None:
    ev = {k: v for k, v in transaction(7, txn_id="pub-0001").items() if k != "card_id"}
    ev["card_number"] = PAN
    d = stack.post("/v1/score", ev).json()
    assert d["txn_id"] == "pub-0001"
    token = CardTokenizer(TEST_SECRET.encode()).token(PAN)
    txns = [orjson.loads(m.value()) for m in read_topic(stack.settings, TRANSACTIONS, 1)]
    mine = [t for t in txns if t["txn_id"] == "pub-0001"]
    assert mine and mine[0]["card_id"] == token
    decisions = {m.key(): orjson.loads(m.value())
                 for m in read_topic(stack.settings, DECISIONS, 1)}
    record = decisions[b"pub-0001"]
    assert record.pop("decided_at").endswith("Z")  # the response, plus when it was decided
    for k in ("customer_id", "card_id", "event_time", "transaction", "features"):
        record.pop(k, None)  # what a case needs: test_decision_records_carry_what_a_case_needs
    assert record == d


def test_decision_records_carry_what_a_case_needs(stack: Stack) -> None:
    assert stack.post("/v1/score", transaction(1, txn_id="case-1")).json()["action"] == "decline"
    quiet = transaction(2, card_id="card-quiet", txn_id="case-2", amount=12.5)
    assert stack.post("/v1/score", quiet).json()["action"] == "allow"
    got = {m.key(): orjson.loads(m.value()) for m in read_topic(stack.settings, DECISIONS, 2)}
    decline, allow, when = got[b"case-1"], got[b"case-2"], "2018-06-01T12:00:01Z"
    assert [decline[k] for k in ("customer_id", "card_id", "event_time")] == [
        "C0001", "card-0001", when]
    assert decline["transaction"] == {"amount": 21.0, "currency": "EUR", "country": "FR",
                                      "lat": 48.85, "lon": 2.35, "mcc": "5411",
                                      "terminal_id": "T0001", "channel": "pos", "event_time": when}
    assert decline["features"]["card_txn_count_1h"] == 6.0
    assert set(decline["features"]) >= {r["feature"] for r in decline["reasons"]}
    assert allow["txn_id"] == "case-2"  # an allow's record is its answer: nothing spliced
    assert not {"customer_id", "card_id", "features", "transaction"} & set(allow)
    [listed] = _open_alerts(stack, lambda a: a["alert_id"] in ("case-1", "case-2"), 1)
    assert [listed[k] for k in ("alert_id", "kind", "action", "evidence_txn_ids")] == [
        "case-1", "decision", "decline", ["case-1"]]


def _open_alerts(stack: Stack, keep: Any, n: int) -> list[dict[str, Any]]:
    """The open alerts ``keep`` accepts, once there are ``n`` (the intake is asynchronous)."""
    deadline, mine = time.monotonic() + 30, list[dict[str, Any]]()
    while len(mine) < n and time.monotonic() < deadline:
        time.sleep(0.2)
        mine = [a for a in stack.get("/v1/alerts?status=open&limit=500").json()["alerts"]
                if keep(a)]
    return mine


# --- auth, roles, limits -----------------------------------------------------------------------

ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/v1/score", transaction(9)),
    ("POST", "/v1/score/batch", {"events": [transaction(9)]}),
    ("POST", "/v1/events/transactions", transaction(9, txn_id="roles-1")),
    ("GET", "/v1/users/C0001/insights", None),
    ("GET", "/v1/users/C0002/insights", None),
    ("GET", "/v1/insights/top-spenders?date=2018-06-01", None),
    ("GET", "/v1/alerts", None),
    ("POST", "/v1/labels", {"txn_id": "score-000009", "is_fraud": False}),
]
# the acceptance matrix; the bot's token is scoped to customer C0001
ALLOWED = {"/v1/score": {"scorer"}, "/v1/score/batch": {"scorer"},
           "/v1/events/transactions": {"scorer"},
           "/v1/users/C0001/insights": {"bot", "investigator"},
           "/v1/users/C0002/insights": {"investigator"},
           "/v1/insights/top-spenders?date=2018-06-01": {"investigator"},
           "/v1/alerts": {"investigator"}, "/v1/labels": {"investigator"}}


def test_role_matrix_and_missing_tokens(stack: Stack) -> None:
    """Route by route, role by role, over HTTP: 403 exactly where the matrix says."""
    seen = {}
    for method, path, doc in ROUTES:
        for role in ("scorer", "bot", "investigator", "admin"):
            r = httpx.request(method, stack.url + path, headers=stack.headers(role),
                              content=orjson.dumps(doc) if doc is not None else None, timeout=30)
            allowed = role == "admin" or role in ALLOWED[path]
            seen[(path, role)] = r.status_code
            assert (r.status_code != 403) == allowed, (path, role, r.status_code, r.text)
        r = httpx.request(method, stack.url + path, timeout=30,
                          content=orjson.dumps(doc) if doc is not None else None)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(stack.url + "/healthz").status_code == 200


def test_rs256_tokens_verify_with_the_public_key(stack: Stack) -> None:
    now = int(time.time())
    claims = {"sub": "gateway-1", "role": "scorer", "tenant": "acme", "iss": "kestrel",
              "iat": now, "exp": now + 300}
    good = jwt.encode(claims, stack.private_key, algorithm="RS256")
    r = httpx.post(stack.url + "/v1/score", content=orjson.dumps(transaction(11)),
                   headers={"authorization": f"Bearer {good}"})
    assert r.status_code == 200, r.text
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad = jwt.encode(claims, other, algorithm="RS256")
    r = httpx.post(stack.url + "/v1/score", content=orjson.dumps(transaction(11)),
                   headers={"authorization": f"Bearer {bad}"})
    assert r.status_code == 401
    expired = jwt.encode({**claims, "exp": now - 10}, stack.private_key, algorithm="RS256")
    r = httpx.post(stack.url + "/v1/score", content=orjson.dumps(transaction(11)),
                   headers={"authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and "expired" in r.json()["message"]


def test_rate_limit_per_client_with_retry_after(stack: Stack) -> None:
    tiny = {"authorization": f"Bearer {mint_token(stack.settings, 'scorer', 'tiny')}"}
    codes = [httpx.post(stack.url + "/v1/score", content=orjson.dumps(transaction(12)),
                        headers=tiny).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    r = httpx.post(stack.url + "/v1/score", content=orjson.dumps(transaction(12)), headers=tiny)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    # the 429s are counted under the client's name
    text = httpx.get(stack.url + "/metrics").text
    assert 'kestrel_rate_limited_total{client="tiny"}' in text
    # another client is not affected
    assert stack.post("/v1/score", transaction(12)).status_code == 200


def test_every_authenticated_call_is_audited(stack: Stack) -> None:
    stack.get("/v1/alerts")
    time.sleep(0.5)
    lines = [orjson.loads(line) for f in (stack.var / "audit" / "access").glob("*.jsonl")
             for line in f.read_bytes().splitlines()]
    assert any(x["route"] == "/v1/alerts" and x["role"] == "investigator" for x in lines)
    assert any(x["status"] == 403 for x in lines)
    decisions = [orjson.loads(line)
                 for f in (stack.var / "audit" / "decisions").glob("*.jsonl")
                 for line in f.read_bytes().splitlines()]
    first = next(d for d in decisions if d["txn_id"] == "score-000001")
    vector = dict(zip(first["feature_names"], first["features"], strict=True))
    assert first["model_version"] == "1" and vector["card_txn_count_1h"] == 6.0
    assert first["output"]["action"] == "decline"
    # the input is the event as published to `transactions`: the card token, never a number
    assert first["input"]["txn_id"] == "score-000001" and first["input"]["card_id"]
    assert "card_number" not in first["input"] and first["input"]["event_time"].endswith("Z")


# --- insights --------------------------------------------------------------------------------

def _seed_insights(stack: Stack) -> Redis:
    r = Redis.from_url(stack.settings.redis_url)
    doc = {"as_of": "2018-06-01",
           "daily": [{"date": "2018-06-01", "category": "groceries", "amount": 40.0, "count": 2},
                     {"date": "2018-05-30", "category": "fuel", "amount": 60.0, "count": 1},
                     {"date": "2018-05-20", "category": "groceries", "amount": 10.0,
                      "count": 1}],
           "monthly": [{"month": "2018-05", "amount": 300.0, "count": 9, "mom_change": 0.5}]}
    r.set("kestrel:insights:customer:C0042", orjson.dumps(doc))
    recent = [{"txn_id": f"r{i}", "event_time": f"2018-06-02T0{i}:00:00Z", "amount": 5.0,
               "currency": "EUR", "mcc": "5812", "country": "FR", "terminal_id": "T1",
               "card_id": "card-42", "channel": "pos"} for i in range(3)]
    r.delete("kestrel:recent:C0042")
    r.rpush("kestrel:recent:C0042", *[orjson.dumps(x) for x in reversed(recent)][::-1])
    r.set("kestrel:insights:top_spenders:2018-06-01",
          orjson.dumps([{"customer_id": f"C{i}", "amount": 100.0 - i, "count": 3}
                        for i in range(20)]))
    return r


def test_insights_compose_cache_and_invalidate(stack: Stack) -> None:
    redis = _seed_insights(stack)
    redis.delete(insight_cache_key("C0042", 1))
    r = stack.get("/v1/users/C0042/insights", **BOT42)
    assert r.status_code == 200 and r.headers["x-cache"] == "miss"
    doc = r.json()
    assert doc["today"] == "2018-06-02" and doc["spend_today"] == 15.0
    assert doc["spend_7d"] == 115.0 and doc["spend_30d"] == 125.0
    assert doc["top_categories"][0] == {"category": "fuel", "amount": 60.0}
    assert len(doc["recent_transactions"]) == 3
    # 115 this week against 10 the week before, no open alert: elevated
    assert doc["trend"]["vs_previous_7d"] == 10.5 and doc["risk_level"] == "elevated"
    assert doc["trend"]["month_over_month"] == 0.5
    assert stack.get("/v1/users/C0042/insights", **BOT42).headers["x-cache"] == "hit"
    # a change the cache does not know about stays invisible until the stream invalidates
    redis.set("kestrel:insights:customer:C0042", orjson.dumps(
        {"as_of": "2018-06-01", "daily": [], "monthly": []}))
    assert stack.get("/v1/users/C0042/insights", **BOT42).json()["spend_7d"] == 115.0
    fresh = stack.get("/v1/users/C0042/insights?fresh=true", **BOT42)
    assert fresh.headers["x-cache"] == "bypass" and fresh.json()["spend_7d"] == 15.0
    redis.delete(insight_cache_key("C0042", 1))  # what the stream's commit does
    again = stack.get("/v1/users/C0042/insights", **BOT42)
    assert again.headers["x-cache"] == "miss" and again.json()["spend_7d"] == 15.0
    assert redis.ttl(insight_cache_key("C0042", 1)) > 0


def test_insights_partial_fields_and_unknown_customer(stack: Stack) -> None:
    _seed_insights(stack)
    r = stack.get("/v1/users/C0042/insights?fields=spend_7d,risk_level", **BOT42)
    assert set(r.json()) == {"customer_id", "spend_7d", "risk_level"}
    assert stack.get("/v1/users/C0042/insights?fields=nope", **BOT42).status_code == 400
    r = stack.get("/v1/users/NOBODY/insights", role="investigator")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_top_spenders(stack: Stack) -> None:
    _seed_insights(stack)
    r = stack.get("/v1/insights/top-spenders?date=2018-06-01&n=5")
    assert r.status_code == 200
    rows = r.json()["top_spenders"]
    assert [x["customer_id"] for x in rows] == ["C0", "C1", "C2", "C3", "C4"]
    assert stack.get("/v1/insights/top-spenders?date=2017-01-01").status_code == 404


# --- alerts and labels ---------------------------------------------------------------------------

def test_alert_queue_reads_the_case_store_and_labels_go_to_the_case(stack: Stack) -> None:
    producer = Producer(producer_config(stack.settings))
    alerts = [{"alert_id": f"al-{i}", "card_id": "card-0042", "customer_id": "C0042",
               "rule": "velocity", "window": "10m", "evidence_txn_ids": [f"r{i}"],
               "countries": ["FR"], "first_event_time": f"2018-06-02T0{i}:00:00Z",
               "last_event_time": f"2018-06-02T0{i}:05:00Z",
               "emitted_at": "2018-06-02T10:00:00Z", "status": "open"} for i in range(3)]
    for a in [*alerts, alerts[0]]:  # al-0 twice: a replay
        producer.produce(ALERTS, orjson.dumps(a), str(a["card_id"]))
    producer.flush(10)
    mine = _open_alerts(stack, lambda a: a["customer_id"] == "C0042", 3)
    # newest first; one case for the customer; the replay is one alert
    assert [a["alert_id"] for a in mine] == ["al-2", "al-1", "al-0"]
    assert {(a["kind"], a["rule"], a["case_status"]) for a in mine} == {
        ("alert", "velocity", "open")}
    assert len({a["case_id"] for a in mine}) == 1 and mine[0]["evidence_txn_ids"] == ["r2"]
    page = stack.get("/v1/alerts?status=open&limit=2").json()
    assert len(page["alerts"]) == 2 and page["next_offset"] == 2 and page["total"] >= 3
    ins = stack.get("/v1/users/C0042/insights?fresh=true", **BOT42).json()
    assert [a["alert_id"] for a in ins["open_alerts"]] == ["al-2", "al-1", "al-0"]
    assert ins["risk_level"] == "high" and ins["sources"]["cases"] == "ok"

    r = stack.post("/v1/labels", {"txn_id": "r1", "is_fraud": True, "reason": "confirmed",
                                  "alert_id": "al-1"}, role="investigator")
    assert r.status_code == 202 and r.json()["case_id"] == mine[0]["case_id"], r.text
    r = stack.post("/v1/labels", {"txn_id": "r8", "is_fraud": True, "alert_id": "al-none"},
                   role="investigator")
    assert r.status_code == 404 and "al-none" in r.json()["message"]
    # a label does not close the case: an investigator closes it (the console)
    assert len(_open_alerts(stack, lambda a: a["customer_id"] == "C0042", 3)) == 3
    assert not [m for m in read_topic(stack.settings, LABELS, 1) if m.key() == b"r8"]
    [label] = [m for m in read_topic(stack.settings, LABELS, 1) if m.key() == b"r1"]
    value = orjson.loads(label.value())
    assert value["is_fraud"] is True and value["source"] == "investigator"
    assert value["analyst_id"] and value["labelled_at"].endswith("Z")
    r = stack.post("/v1/labels", {"txn_id": "r1"}, role="investigator")
    assert r.status_code == 400 and r.json()["errors"][0]["path"] == "is_fraud"


# --- operations, model swap, no card numbers, degraded ---------------------------------------

def test_openapi_lists_every_route_and_metrics_export(stack: Stack) -> None:
    spec = httpx.get(stack.url + "/openapi.json").json()
    for path in ("/v1/score", "/v1/score/batch", "/v1/users/{customer_id}/insights",
                 "/v1/insights/top-spenders", "/v1/alerts", "/v1/labels",
                 "/v1/events/transactions"):
        assert path in spec["paths"], path
    assert "/metrics" not in spec["paths"]  # operational, like /healthz
    scraped = httpx.get(stack.url + "/metrics")  # no token: Prometheus scrapes it
    assert scraped.headers["content-type"].startswith("text/plain")
    text = scraped.text
    for name in ("kestrel_request_seconds_bucket", "kestrel_score_stage_seconds_bucket",
                 "kestrel_insight_cache_total", "kestrel_decisions_total"):
        assert name in text, name
    assert 'stage="features"' in text and 'stage="model"' in text and 'stage="rules"' in text
    assert httpx.get(stack.url + "/readyz").status_code == 200
    ready = httpx.get(stack.url + "/v1/ready").json()
    assert ready["ready"] and all(ready["checks"].values())
    assert {"redis", "broker", "model", "audit", "case_intake"} <= ready["checks"].keys()
    assert ready["audit"]["healthy"] and ready["case_intake"]["state"] == "running"
    assert ready["case_store"] == {"reachable": True, "error": None}  # reported, not a
    assert "case_store" not in ready["checks"]  # check: scoring does not need the store


def test_champion_swap_without_downtime(stack: Stack) -> None:
    client = MlflowClient(stack.settings.mlflow_uri, registry_uri=stack.settings.mlflow_uri)
    client.set_registered_model_alias(stack.settings.model_name,
                                      stack.settings.champion_alias, "2")
    versions, deadline = set(), time.monotonic() + 60
    while time.monotonic() < deadline:
        r = stack.post("/v1/score", transaction(20))
        assert r.status_code == 200 and not r.json()["degraded"]
        versions.add(r.json()["model_version"])
        if r.json()["model_version"] == "2":
            break
        time.sleep(0.1)
    assert versions <= {"1", "2"} and "2" in versions


def test_no_raw_card_number_in_any_store(stack: Stack) -> None:
    ev = {k: v for k, v in transaction(30, txn_id="pan-0001").items() if k != "card_id"}
    assert stack.post("/v1/score", {**ev, "card_number": PAN}).status_code == 200
    assert stack.post("/v1/score/batch", {"events": [{**ev, "txn_id": "pan-0002",
                                                      "card_number": PAN}]}).status_code == 200
    time.sleep(0.5)
    for topic in (TRANSACTIONS, DECISIONS):
        for m in read_topic(stack.settings, topic, 1):
            assert PAN.encode() not in m.value()
    redis = Redis.from_url(stack.settings.redis_url)
    for key in redis.scan_iter(count=1000):
        assert PAN.encode() not in key
        kind = redis.type(key)
        if kind == b"string":
            assert PAN.encode() not in redis.get(key)
        elif kind == b"hash":
            assert all(PAN.encode() not in v for v in redis.hvals(key))
        elif kind == b"list":
            assert all(PAN.encode() not in v for v in redis.lrange(key, 0, -1))
    for path in stack.var.rglob("*"):
        if path.is_file() and "redis" not in path.name:
            assert PAN.encode() not in path.read_bytes(), path


def test_decisions_still_queued_are_published_at_shutdown(stack: Stack) -> None:
    """Scored transactions linger in the producer (KESTREL_DECISION_PUBLISH_LINGER_MS); a
    service told to stop must send them, not drop them with the process."""
    settings = stack.settings.model_copy(update={"decision_publish_linger_ms": 10_000})
    with running_service(settings, free_port(), stack.var / "serve-linger.log",
                         timeout=180) as url:
        r = httpx.post(url + "/v1/score", content=orjson.dumps(transaction(
            50, txn_id="linger-0001")), headers=stack.headers(), timeout=30)
        assert r.status_code == 200, r.text
    txns = {orjson.loads(m.value())["txn_id"]
            for m in read_topic(stack.settings, TRANSACTIONS, 1, timeout=10)}
    decisions = {m.key() for m in read_topic(stack.settings, DECISIONS, 1, timeout=10)}
    assert "linger-0001" in txns and b"linger-0001" in decisions


def test_degraded_rules_only_when_redis_is_gone(stack: Stack) -> None:
    """Last test of the module: stops this module's private Redis."""
    stop(stack.settings, REDIS)
    r = stack.post("/v1/score", transaction(40, card_id="card-quiet", amount=25.0))
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["degraded"] is True and d["score"] is None and d["model_version"] is None
    assert d["action"] == "allow" and "rules alone" in d["explanation"]
    d = stack.post("/v1/score", transaction(41, amount=800.0)).json()
    assert d["degraded"] is True and d["action"] == "challenge"
    d = stack.post("/v1/score", transaction(42, country="KP")).json()
    assert d["degraded"] is True and d["action"] == "decline"
    assert httpx.get(stack.url + "/readyz").status_code != 200
    assert httpx.get(stack.url + "/v1/ready").json()["checks"]["redis"] is False
    assert stack.get("/v1/users/C0042/insights", **BOT42).status_code == 503
    assert 'kestrel_degraded_decisions_total{cause="features"}' in httpx.get(
        stack.url + "/metrics").text
    assert datetime.now(UTC)  # the service is still up
    assert httpx.get(stack.url + "/healthz").status_code == 200
