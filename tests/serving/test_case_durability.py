"""Cases survive restarts (issue 31, "done when"): `kestrel serve` takes an alert from
`alerts` into the SQL case store; then the service stops and Redis restarts empty (a
redis-server of the test's own, never the machine's). The next service answers the same
case, unchanged, and the investigator's console session,
kept by the server in the case store, is still signed in."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import orjson
import pytest

from kestrel.producer import EventProducer
from kestrel.services import BROKER, REDIS, free_port, start_broker, start_redis, stop
from kestrel.topics import ALERTS
from serving.auth import mint_token
from serving.fixtures import register_tiny_model
from serving.process import running_service
from tests.conftest import make_settings
from tests.console.conftest import sign_in_over_http
from tests.console.records import alert

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _alerts(base: str, token: str) -> dict[str, object]:
    r = httpx.get(base + "/v1/alerts?status=all", timeout=30,
                  headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    doc: dict[str, object] = r.json()
    return doc


def test_cases_and_console_sessions_survive_a_restart_of_the_service_and_of_redis(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "var", kafka_bootstrap=f"127.0.0.1:{free_port()}",
                             redis_url=f"redis://127.0.0.1:{free_port()}/0", serve_workers=1)
    start_redis(settings)
    start_broker(settings)
    try:
        register_tiny_model(settings, seed=0)
        record = alert("C7", "card-7")
        producer = EventProducer(settings)
        producer.produce_many(ALERTS, iter([(record["card_id"], orjson.dumps(record))]))
        producer.flush()
        token = mint_token(settings, "investigator", "console")
        port = free_port()
        with running_service(settings, port, tmp_path / "serve-1.log", timeout=180) as base:
            deadline = time.monotonic() + 60
            while _alerts(base, token)["total"] != 1:
                assert time.monotonic() < deadline, "the case intake never took the alert"
                time.sleep(0.5)
            first = _alerts(base, token)["alerts"]
            cookie = sign_in_over_http(base, settings)
            assert httpx.get(base + "/console/", headers=cookie, timeout=30).status_code == 200

        stop(settings, REDIS)  # no persistence: Redis comes back empty
        start_redis(settings)
        with running_service(settings, port, tmp_path / "serve-2.log", timeout=180) as base:
            deadline = time.monotonic() + 60
            while httpx.get(base + "/v1/ready", timeout=30).json().get(
                    "case_intake", {}).get("state") != "running":
                assert time.monotonic() < deadline, "the case intake never started"
                time.sleep(0.5)
            again = _alerts(base, token)
            assert again["total"] == 1 and again["alerts"] == first
            case_id = first[0]["case_id"]  # type: ignore[index]
            page = httpx.get(f"{base}/console/cases/{case_id}", headers=cookie, timeout=30)
            assert page.status_code == 200 and "C7" in page.text  # still signed in
    finally:
        stop(settings, BROKER)
        stop(settings, REDIS)
