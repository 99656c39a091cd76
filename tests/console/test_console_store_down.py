"""The case store goes down under the running service (`kestrel serve`, a real broker and
Redis, a real model): every console page answers a clear 503 page (Retry-After, no stack
trace) while ``/v1/score`` still decides with the model; once the database answers again,
the console works again without a restart. The database is the local PostgreSQL behind a TCP
forwarder the test cuts (tests/console/proxy.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from cases.store import CaseStore
from kestrel.services import free_port
from kestrel.settings import Settings
from serving.auth import mint_token
from serving.fixtures import register_tiny_model, transaction
from serving.process import running_service
from tests.cases.conftest import new_database
from tests.console.conftest import console_settings, open_console, sign_in_over_http
from tests.console.proxy import Proxy
from tests.console.records import alert

pytestmark = [pytest.mark.integration]


@pytest.fixture
def proxied_store(tmp_path: Path) -> Iterator[tuple[str, str, Proxy]]:
    """(the database's own URL, its URL through the forwarder, the forwarder)."""
    for url in new_database("postgresql", tmp_path):
        proxy = Proxy(("127.0.0.1", 5432))
        proxy.up()
        try:
            yield url, url.replace("localhost:5432", f"127.0.0.1:{proxy.port}"), proxy
        finally:
            proxy.down()


def _score(base: str, settings: Settings) -> httpx.Response:
    token = mint_token(settings, "scorer", "gateway")
    return httpx.post(base + "/v1/score", content=orjson.dumps(transaction(1)), timeout=30,
                      headers={"authorization": f"Bearer {token}"})


def test_the_app_answers_the_503_page_while_the_store_is_cut_and_recovers(
        proxied_store: tuple[str, str, Proxy], tmp_path: Path) -> None:
    """In process (the app alone, TestClient): the same pages, the session kept across."""
    direct, proxied, proxy = proxied_store
    seed = CaseStore(direct)
    case_id = seed.add_alert(alert("C1", "card-1")).case_id
    seed.dispose()
    for console in open_console(console_settings(tmp_path / "var", proxied)):
        console.sign_in()
        pages = ("/console/", f"/console/cases/{case_id}", "/console/report",
                 f"/console/cases/{case_id}/sar.md")
        assert [console.page(p).status_code for p in pages] == [200] * len(pages)
        proxy.down()
        for path in pages:
            down = console.page(path)
            assert down.status_code == 503, (path, down.text[:300])
            assert "The case store is unavailable" in down.text
            assert down.headers["retry-after"] == "5"
            assert "Traceback" not in down.text
        token = mint_token(console.settings, "scorer", "gateway")
        scored = console.http.post("/v1/score", content=orjson.dumps(transaction(1)),
                                   headers={"authorization": f"Bearer {token}"})
        assert scored.status_code == 200, scored.text  # no model here: rules alone
        proxy.up()
        deadline = time.monotonic() + 30
        while console.page("/console/").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.3)


@pytest.mark.slow
def test_console_pages_answer_503_while_the_store_is_down_and_scoring_goes_on(
        services: Settings, proxied_store: tuple[str, str, Proxy], tmp_path: Path) -> None:
    direct, proxied, proxy = proxied_store
    settings = services.model_copy(update={"case_store_url": proxied})
    register_tiny_model(settings, seed=0)
    seed = CaseStore(direct)
    case_id = seed.add_alert(alert("C1", "card-1")).case_id
    seed.dispose()
    with running_service(settings, free_port(), tmp_path / "serve.log", timeout=180) as base:
        deadline = time.monotonic() + 90
        while _score(base, settings).json().get("model_version") is None:
            assert time.monotonic() < deadline, "the service never loaded its model"
            time.sleep(1)
        cookie = sign_in_over_http(base, settings)
        pages = ("/console/", f"/console/cases/{case_id}", "/console/report")
        for path in pages:
            assert httpx.get(base + path, headers=cookie, timeout=30).status_code == 200, path

        proxy.down()
        for path in pages:
            down = httpx.get(base + path, headers=cookie, timeout=30)
            assert down.status_code == 503, (path, down.text[:300])
            assert "The case store is unavailable" in down.text
            assert "cases are safe" in down.text and "Try again" in down.text
            assert down.headers["retry-after"].isdigit()
            assert down.headers["content-type"].startswith("text/html")
            assert "Traceback" not in down.text and "sqlalchemy" not in down.text.lower()
        posted = httpx.post(base + f"/console/cases/{case_id}/note", headers=cookie,
                            data={"csrf": "x", "version": "1", "body": "hello"}, timeout=30)
        assert posted.status_code == 503
        scored = _score(base, settings)
        assert scored.status_code == 200, scored.text
        assert scored.json()["model_version"] is not None and scored.json()["score"] is not None

        proxy.up()  # the database answers again: the same session works, no restart
        deadline = time.monotonic() + 30
        while (back := httpx.get(base + "/console/", headers=cookie, timeout=30)
               ).status_code != 200:
            assert time.monotonic() < deadline, back.text[:300]
            time.sleep(0.5)
        assert f"/console/cases/{case_id}" in back.text
