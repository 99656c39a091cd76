"""The trust boundary over HTTP, against the running service (`kestrel serve` as a process),
a real broker and Redis: card numbers refused wherever they are sent, bodies capped while
they are read, batches charged by size, event times bounded, bad query values answered 400.
Production mode's refusals are checked on the real commands."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest

from kestrel.services import BROKER, free_port, start_broker, stop
from kestrel.settings import Settings
from serving.auth import AuthError, mint_token
from serving.fixtures import transaction
from serving.process import running_service, settings_env
from tests.conftest import make_settings
from tests.pipelines.poison import PAN, PAN_FORMS, TXN_ID_FIELDS

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FORMS = PAN_FORMS  # one card number in every form a person or a system writes one
IDS = TXN_ID_FIELDS


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[
        tuple[Settings, str]]:
    var = tmp_path_factory.mktemp("trust-var")
    settings = make_settings(var, kafka_bootstrap=f"127.0.0.1:{free_port()}",
                             redis_url=redis_url, max_body_bytes=8192,
                             max_batch_body_bytes=200_000,
                             rate_limit_clients="small=0.01:25,small-2=0.01:25")
    start_broker(settings)
    try:
        with running_service(settings, free_port(), var / "serve.log") as url:
            yield settings, url
    finally:
        stop(settings, BROKER)


def _auth(settings: Settings, role: str = "scorer", client: str = "acme", **kw: Any
          ) -> dict[str, str]:
    return {"authorization": f"Bearer {mint_token(settings, role, client, **kw)}"}


def _no_echo(r: httpx.Response) -> None:
    body = r.text
    assert PAN not in body and "4111-1111" not in body and "4111 1111" not in body


@pytest.mark.parametrize("field", IDS)
def test_a_card_number_in_any_identifier_is_refused_on_every_route(
        stack: tuple[Settings, str], field: str) -> None:
    settings, url = stack
    for form, value in FORMS.items():
        ev = transaction(1, **{"txn_id": f"pan-{field}-x", field: value})
        for route, doc, path in (
                ("/v1/score", ev, field),
                ("/v1/score/batch", {"events": [transaction(2), ev]}, f"events[1].{field}"),
                ("/v1/events/transactions", ev, field),
                ("/v1/events/transactions", {"events": [ev]}, f"events[0].{field}")):
            r = httpx.post(url + route, content=orjson.dumps(doc), headers=_auth(settings))
            assert r.status_code == 400, (route, field, form, r.text)
            assert path in [e["path"] for e in r.json()["errors"]], (route, form, r.text)
            _no_echo(r)


def test_other_producers_tokens_stay_valid(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    for i, card in enumerate(("card-x-9f8e7d", "card_abcdefabcdefabcdefabcdefabcdefab",
                              "card-0001", "tok:4111-1111")):  # 8 digits: not a card
        r = httpx.post(url + "/v1/score", content=orjson.dumps(transaction(40 + i,
                                                                           card_id=card)),
                       headers=_auth(settings))
        assert r.status_code == 200, (card, r.text)


def test_card_numbers_in_urls_tokens_and_labels(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    inv = _auth(settings, "investigator")
    for form in FORMS.values():
        r = httpx.get(url + f"/v1/users/{form}/insights", headers=inv)
        assert r.status_code == 400 and r.json()["errors"][0]["path"] == "path", r.text
        _no_echo(r)
        r = httpx.get(url + "/v1/alerts", params={"status": form}, headers=inv)
        assert r.status_code == 400 and r.json()["errors"][0]["path"] == "query.status"
        _no_echo(r)
    # a path no route serves is BentoML's 404, which does not echo it
    r = httpx.get(url + f"/nowhere/{PAN}")
    assert r.status_code in (400, 404)
    _no_echo(r)
    # a token whose subject is a card number (`kestrel token` refuses to mint one)
    with pytest.raises(AuthError, match="card number"):
        mint_token(settings, "investigator", "acme", subject=PAN)
    now = int(time.time())
    forged = jwt.encode({"sub": "4111 1111 1111 1111", "role": "investigator", "client": "c",
                         "iss": settings.jwt_issuer, "iat": now, "exp": now + 60},
                        settings.secret("jwt_secret"), algorithm="HS256")
    r = httpx.get(url + "/v1/alerts", headers={"authorization": f"Bearer {forged}"})
    assert r.status_code == 400 and r.json()["errors"][0]["path"] == "authorization.sub"
    # labels: the reason and the txn_id are screened; IdP-style analyst ids are fine
    idp = _auth(settings, "investigator", subject="auth0|5f1c2e")
    for doc, path in (({"txn_id": "t-1", "is_fraud": True, "reason": f"card {FORMS['en dashes']}"},
                       "reason"),
                      ({"txn_id": PAN, "is_fraud": True}, "txn_id")):
        r = httpx.post(url + "/v1/labels", content=orjson.dumps(doc), headers=idp)
        assert r.status_code == 400 and r.json()["errors"][0]["path"] == path, r.text
        _no_echo(r)
    r = httpx.post(url + "/v1/labels", content=orjson.dumps(
        {"txn_id": "t-1", "is_fraud": True, "reason": "customer called"}), headers=idp)
    assert r.status_code == 202, r.text
    assert r.json()["label"]["analyst_id"] == "auth0|5f1c2e"
    r = httpx.post(url + "/v1/labels", content=orjson.dumps({"txn_id": "t-2", "is_fraud": False}),
                   headers=_auth(settings, "investigator", subject="a@bank.com"))
    assert r.status_code == 202 and r.json()["label"]["analyst_id"] == "a@bank.com"


def test_a_card_number_sent_as_card_number_is_tokenized(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    answers = []
    for i, form in enumerate(FORMS.values()):
        if form.startswith("cust-"):
            continue
        ev = {k: v for k, v in transaction(60 + i).items() if k != "card_id"}
        ev["card_number"] = form
        r = httpx.post(url + "/v1/score", content=orjson.dumps(ev), headers=_auth(settings))
        assert r.status_code == 200, (form, r.text)
        _no_echo(r)
        answers.append(r.json())
    assert answers


def test_bodies_are_capped_while_read(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    big = orjson.dumps({**transaction(3), "padding": "x" * 20_000})
    r = httpx.post(url + "/v1/score", content=big, headers=_auth(settings))
    assert r.status_code == 413 and "KESTREL_MAX_BODY_BYTES" in r.json()["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        yield b'{"events": ['
        for _ in range(10_000):
            yield b'{"txn_id": "' + b"y" * 60 + b'"},'

    for route in ("/v1/score/batch", "/v1/events/transactions"):
        r = httpx.post(url + route, content=chunks(), headers=_auth(settings), timeout=60)
        assert r.status_code == 413, (route, r.text)
        assert "KESTREL_MAX_BATCH_BODY_BYTES" in r.json()["message"]
    r = httpx.post(url + "/v1/labels", content=b'{"reason": "' + b"z" * 9000 + b'"}',
                   headers=_auth(settings, "investigator"))
    assert r.status_code == 413


def test_a_batch_costs_in_proportion_to_its_size(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    small = _auth(settings, client="small")  # 25 tokens, refilled at 0.01/s
    batch = orjson.dumps({"events": [transaction(100 + i) for i in range(100)]})
    # 100 events x 0.1 = 10 tokens a batch: two pass, the third finds 5 left
    codes = [httpx.post(url + "/v1/score/batch", content=batch, headers=small,
                        timeout=60).status_code for _ in range(3)]
    assert codes == [200, 200, 429], codes
    # explaining every decision costs three times as much: 30, capped at the burst of 25
    other = _auth(settings, client="small-2")
    assert httpx.post(url + "/v1/score/batch?reasons=all", content=batch, headers=other,
                      timeout=60).status_code == 200
    assert httpx.post(url + "/v1/score/batch?reasons=all", content=batch, headers=other,
                      timeout=60).status_code == 429


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                                  "1999-12-31T23:59:59Z", "2100-01-01T00:00:00Z"])
def test_event_times_out_of_range_are_400(stack: tuple[Settings, str], when: str) -> None:
    settings, url = stack
    ev = transaction(5, event_time=when)
    for route, doc, path in (("/v1/score", ev, "event_time"),
                             ("/v1/score/batch", {"events": [ev]}, "events[0].event_time"),
                             ("/v1/events/transactions", ev, "event_time")):
        r = httpx.post(url + route, content=orjson.dumps(doc), headers=_auth(settings))
        assert r.status_code == 400, (route, when, r.text)
        assert r.json()["errors"][0]["path"] == path


def test_bad_query_values_are_400_with_their_path(stack: tuple[Settings, str]) -> None:
    settings, url = stack
    inv = _auth(settings, "investigator")
    for query, path in (("offset=1e20", "query.offset"), ("offset=-1", "query.offset"),
                        ("limit=abc", "query.limit"), ("status=nope", "query.status")):
        r = httpx.get(url + "/v1/alerts?" + query, headers=inv)
        assert r.status_code == 400, (query, r.text)
        assert r.json()["errors"][0]["path"] == path, r.text
    r = httpx.get(url + "/v1/insights/top-spenders?date=2018-13-45", headers=inv)
    assert r.status_code == 400 and r.json()["errors"][0]["path"] == "query.date"


def test_the_spec_states_errors_400_and_bearer(stack: tuple[Settings, str]) -> None:
    _, url = stack
    spec = httpx.get(url + "/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            responses = operation["responses"]
            assert "422" not in responses, path
            assert "400" in responses, path
            for code, answer in responses.items():
                if code.startswith("4"):
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, code)
            if path != "/v1/ready":
                assert operation["security"] == [{"bearer": []}], path


# --- production mode -------------------------------------------------------------------------

def _prod_env(settings: Settings, **unset: bool) -> dict[str, str]:
    env = settings_env(settings)
    env["KESTREL_ENV"] = "prod"
    for name in unset:
        env.pop(f"KESTREL_{name.upper()}", None)
    return env


@pytest.mark.parametrize("command", [["serve", "--port", "1"], ["stream"], ["archive"],
                                     ["labels", "intake"], ["token", "--role", "admin"]])
def test_production_refuses_to_start_without_its_secrets(tmp_path: Path,
                                                         command: list[str]) -> None:
    settings = make_settings(tmp_path / "var")
    env = _prod_env(settings, pan_token_key=True, audit_key=True)
    r = subprocess.run([sys.executable, "-m", "cli", *command], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "KESTREL_PAN_TOKEN_KEY" in r.stderr and "KESTREL_AUDIT_KEY" in r.stderr, r.stderr
    assert "KESTREL_ENV=dev" in r.stderr and "Traceback" not in r.stderr  # one line
    assert not (tmp_path / "var" / "secrets").exists()  # nothing generated


def test_production_mints_no_tokens_and_prints_no_secrets(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "var")
    env = _prod_env(settings)
    r = subprocess.run([sys.executable, "-m", "cli", "token", "--role", "admin"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "identity provider" in r.stderr
    for secret in ("pan_token_key", "jwt_secret", "audit_key"):
        assert env[f"KESTREL_{secret.upper()}"] not in r.stdout + r.stderr
    # dev and test mint, capped at the token lifetime setting
    env["KESTREL_ENV"] = "test"
    r = subprocess.run([sys.executable, "-m", "cli", "token", "--role", "bot",
                        "--tenant", "assistant"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "--customer" in r.stderr
    r = subprocess.run([sys.executable, "-m", "cli", "token", "--role", "scorer",
                        "--ttl", "90000"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "at most 3600" in r.stderr


def test_the_service_in_production_takes_identity_provider_tokens_only(tmp_path: Path) -> None:
    """`kestrel serve` with KESTREL_ENV=prod and no JWT secret: RS256 tokens from a JWKS
    served on loopback by this test, with `aud` checked; HS256, a foreign audience, an
    over-long lifetime and a bot without its customer are refused."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    keys = json.dumps({"keys": [{**jwk, "kid": "idp-1", "use": "sig", "alg": "RS256"}]})

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(keys.encode())

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = make_settings(tmp_path / "var", env="prod", jwt_secret=None,
                             jwt_audience="kestrel-api", case_intake=False,
                             jwt_jwks_url=f"http://127.0.0.1:{server.server_port}/jwks")
    now = int(time.time())
    claims = {"sub": "auth0|gateway", "role": "scorer", "client": "gateway", "iss": "kestrel",
              "aud": "kestrel-api", "iat": now, "exp": now + 600}

    def call(token: str) -> httpx.Response:
        return httpx.post(url + "/v1/score", content=orjson.dumps(transaction(1)),
                          headers={"authorization": f"Bearer {token}"}, timeout=30)

    def rs(**over: object) -> str:
        return jwt.encode({**claims, **over}, key, algorithm="RS256", headers={"kid": "idp-1"})

    try:
        with running_service(settings, free_port(), tmp_path / "serve.log") as url:
            assert call(rs()).status_code == 200
            hs = jwt.encode(claims, "a-guessed-secret-0123456789-0123456789", "HS256")
            assert call(hs).status_code == 401
            assert call(rs(aud="another-api")).status_code == 401
            assert call(rs(exp=now + 7200)).status_code == 401
            r = httpx.get(url + "/v1/users/C1/insights", timeout=30,
                          headers={"authorization": "Bearer " + rs(role="bot")})
            assert r.status_code == 401 and "customer" in r.json()["message"]
    finally:
        server.shutdown()
