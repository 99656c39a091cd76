"""POST /v1/events/transactions over HTTP, against the real BentoML service and broker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from pydantic import SecretStr

from kestrel.pan import CardTokenizer
from kestrel.services import BROKER, free_port, start_broker, stop
from kestrel.settings import Settings
from kestrel.topics import TRANSACTIONS
from pipelines.archive import Archiver
from serving.auth import mint_token
from serving.process import running_service
from tests.conftest import TEST_SECRET, make_settings
from tests.pipelines.events_factory import make_event
from tests.pipelines.test_archive import read_topic

pytestmark = pytest.mark.integration
PAN = "4111 1111 1111 1111"
PAN_DIGITS = PAN.replace(" ", "")
ROUTE = "/v1/events/transactions"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[
        tuple[Settings, str]]:
    var = tmp_path_factory.mktemp("http-var")
    settings = make_settings(var, kafka_bootstrap=f"127.0.0.1:{free_port()}",
                             redis_url=redis_url, archive_batch_seconds=0.5)
    start_broker(settings)
    try:
        with running_service(settings, free_port(), var / "serve.log") as url:
            yield settings, url
    finally:
        stop(settings, BROKER)


def auth(settings: Settings, role: str = "scorer") -> dict[str, str]:
    token = mint_token(settings, role, "acme", customer="C1" if role == "bot" else None)
    return {"authorization": f"Bearer {token}"}


def with_pan(event: dict) -> dict:  # type: ignore[type-arg]
    out = dict(event)
    del out["card_id"]
    out["card_number"] = PAN
    return out


def test_single_event_accepted_and_tokenized(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    ev = with_pan(make_event(1, prefix="single"))
    r = httpx.post(url + ROUTE, content=orjson.dumps(ev), headers=auth(settings))
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 1, "txn_ids": ["single-0000001"]}
    records = [m for m in read_topic(settings, TRANSACTIONS, 1)
               if orjson.loads(m.value())["txn_id"] == "single-0000001"]
    [rec] = records
    body = orjson.loads(rec.value())
    assert body["card_id"] == CardTokenizer(TEST_SECRET.encode()).token(PAN)
    assert rec.key() == ev["customer_id"].encode()
    assert PAN_DIGITS.encode() not in rec.value() and b"card_number" not in rec.value()


def test_batch_accepted_in_order(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    events = [with_pan(make_event(i, prefix="batch")) if i % 2 else make_event(i, prefix="batch")
              for i in range(2000)]
    r = httpx.post(url + ROUTE, content=orjson.dumps({"events": events}), headers=auth(settings))
    assert r.status_code == 202, r.text
    assert r.json()["txn_ids"] == [e["txn_id"] for e in events]


def test_400_lists_every_field_error(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    events = [make_event(i, prefix="bad") for i in range(5)]
    events[1]["amount"] = -1
    events[3]["country"] = "XX"
    events[3]["mcc"] = "12"
    events[4] = {**with_pan(events[4]), "card_number": "4111 1111 1111 1112"}  # fails Luhn
    r = httpx.post(url + ROUTE, content=orjson.dumps({"events": events}), headers=auth(settings))
    assert r.status_code == 400
    doc = r.json()
    assert doc["error"] == "invalid_event"
    paths = {e["path"] for e in doc["errors"]}
    assert {"events[1].amount", "events[3].country", "events[3].mcc"} <= paths
    assert "1112" not in r.text


def test_400_on_luhn_failure_has_path_and_no_number(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    ev = {**with_pan(make_event(7, prefix="luhn")), "card_number": "4111 1111 1111 1112"}
    r = httpx.post(url + ROUTE, content=orjson.dumps({"events": [ev]}), headers=auth(settings))
    assert r.status_code == 400
    assert r.json()["errors"] == [{"path": "events[0].card_number",
                                   "reason": "card_number fails the Luhn check"}]


def test_400_on_garbage_and_duplicates(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    r = httpx.post(url + ROUTE, content=b"{nope", headers=auth(settings))
    assert r.status_code == 400 and r.json()["errors"][0]["path"] == "$"
    ev = make_event(1, prefix="dup")
    r = httpx.post(url + ROUTE, content=orjson.dumps({"events": [ev, ev]}),
                   headers=auth(settings))
    assert r.status_code == 400
    assert r.json()["errors"][0]["path"] == "events[1].txn_id"


def test_413_for_an_oversized_batch(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    events = [make_event(i, prefix="big") for i in range(settings.max_batch_events + 1)]
    r = httpx.post(url + ROUTE, content=orjson.dumps({"events": events}), headers=auth(settings),
                   timeout=60)
    assert r.status_code == 413
    assert "10000" in r.json()["message"] or "10,000" in r.json()["message"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"authorization": "Bearer not-a-jwt"}, 401),
     ({"authorization": "Basic dXNlcjpwYXNz"}, 401)],
)
def test_auth_required(stack: tuple[Settings, str], headers: dict[str, str], status: int) -> None:
    _, url = stack
    r = httpx.post(url + ROUTE, content=orjson.dumps(make_event(1)), headers=headers)
    assert r.status_code == status
    assert r.headers["www-authenticate"] == "Bearer"


def test_roles(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    body = orjson.dumps(make_event(1, prefix="role"))
    for role, status in (("bot", 403), ("investigator", 403), ("admin", 202), ("scorer", 202)):
        r = httpx.post(url + ROUTE, content=body, headers=auth(settings, role))
        assert r.status_code == status, (role, r.text)


def test_token_signed_with_another_key_rejected(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    other_key = SecretStr("another-secret-0123456789-0123456789")
    other = settings.model_copy(update={"jwt_secret": other_key})
    r = httpx.post(url + ROUTE, content=orjson.dumps(make_event(1)), headers=auth(other))
    assert r.status_code == 401


def test_health_needs_no_auth_and_openapi_lists_the_route(stack: tuple[Settings, str]) -> None:
    _, url = stack
    assert httpx.get(url + "/healthz").status_code == 200
    spec = httpx.get(url + "/openapi.json").json()
    assert ROUTE in spec["paths"]
    assert "202" in spec["paths"][ROUTE]["post"]["responses"]


def test_no_raw_card_number_in_kafka_lake_or_logs(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    events = [with_pan(make_event(i, prefix="pan")) for i in range(50)]
    r = httpx.post(url + ROUTE, content=orjson.dumps({"events": events}), headers=auth(settings))
    assert r.status_code == 202
    archiver = Archiver(settings)
    worker = threading.Thread(target=archiver.run, kwargs={"idle_seconds": 2.0})
    worker.start()
    worker.join(120)
    assert archiver.stats.written >= 50
    for m in read_topic(settings, TRANSACTIONS, 1):
        assert PAN_DIGITS.encode() not in m.value()
    for path in Path(settings.var_dir).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert PAN_DIGITS.encode() not in data and PAN.encode() not in data, path


@pytest.mark.slow
def test_503_when_the_broker_is_gone(tmp_path: Path, redis_url: str) -> None:
    """The service answers 503 (with Retry-After) instead of hanging or losing events."""
    from fastapi.testclient import TestClient

    from serving.app import create_app

    settings = make_settings(tmp_path / "var", kafka_bootstrap=f"127.0.0.1:{free_port()}",
                             redis_url=redis_url)
    client = TestClient(create_app(settings))
    r = client.post(ROUTE, content=orjson.dumps(make_event(1)), headers=auth(settings))
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert "retry" in r.json()["message"]


def test_direct_routes_answer_as_the_router_does(tmp_path: Path, redis_url: str) -> None:
    """POST /v1/score and GET /v1/users/{id}/insights skip FastAPI's router
    (serving.routes.direct.DirectRoutes); their answers must be the router's, byte for byte,
    the router must really be skipped, and a query it would have to interpret goes to
    FastAPI."""
    from fastapi.testclient import TestClient

    from serving.app import create_app

    settings = make_settings(tmp_path / "var", kafka_bootstrap=f"127.0.0.1:{free_port()}",
                             redis_url=redis_url)
    app = create_app(settings)
    routed: list[str] = []
    for _, route, _ in app.state.direct_routes:
        def spy(handle):  # type: ignore[no-untyped-def]
            async def counting(scope, receive, send):  # type: ignore[no-untyped-def]
                routed.append(scope["path"])
                await handle(scope, receive, send)
            return counting
        route.handle = spy(route.handle)
    event = orjson.dumps(make_event(1))
    bot = {"authorization": "Bearer " + mint_token(settings, "bot", "acme", customer="C-nobody")}
    insights = "/v1/users/C-nobody/insights"
    cases = [("POST", "/v1/score", {}, event),  # 401
             ("POST", "/v1/score", bot, event),  # 403
             ("POST", "/v1/score", auth(settings), b"{not json"),  # 400
             ("POST", "/v1/score", auth(settings), orjson.dumps({"events": [make_event(1)]})),
             ("POST", "/v1/score", auth(settings), orjson.dumps({**make_event(1), "amount": -3})),
             ("GET", insights, {}, None),  # 401
             ("GET", insights, auth(settings), None),  # 403
             ("GET", insights, bot, None),  # 404
             ("GET", insights + "?fresh=true&fields=risk_level", bot, None),  # 404
             ("GET", insights + "?fields=nope", bot, None),  # 400
             ("GET", insights + "?fresh=maybe", bot, None)]  # FastAPI's 400, either way
    client = TestClient(app)

    def answers() -> list[tuple[int, bytes, str | None, str | None]]:
        out = []
        for method, path, headers, body in cases:
            r = client.request(method, path, content=body, headers=headers)
            out.append((r.status_code, r.content, r.headers.get("content-type"),
                        r.headers.get("www-authenticate")))
        return out

    direct = answers()
    assert routed == [insights]  # only ?fresh=maybe
    assert [a[0] for a in direct] == [401, 403, 400, 400, 400, 401, 403, 404, 404, 400, 400]
    app.state.direct_routes.clear()
    routed.clear()
    assert answers() == direct
    assert routed == [path.split("?")[0] for _, path, _, _ in cases]
