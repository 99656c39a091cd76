"""The console's test harness: the real app (serving/app.py's create_app) on a case store of
its own (SQLite in tmp_path, or a fresh PostgreSQL database), driven over HTTP by Starlette's
TestClient (https, so the Secure cookie travels as in a browser), signed in through the
sign-in form like a person."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from httpx import Response

from cases.store import CaseStore
from kestrel.settings import Settings
from serving.app import create_app
from serving.auth import mint_token
from tests.cases.conftest import new_database
from tests.conftest import make_settings

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
VERSION = re.compile(r'name="version" value="(\d+)"')


class Console:
    """A browser-like client of one app: cookies kept, forms posted with their tokens."""

    def __init__(self, settings: Settings, client: TestClient):
        self.settings = settings
        self.http = client

    def token(self, role: str = "investigator", subject: str = "ana",
              **kw: Any) -> str:
        customer = "C1" if role == "bot" else None
        return mint_token(self.settings, role, "console", subject=subject, customer=customer,
                          **kw)

    def sign_in(self, role: str = "investigator", subject: str = "ana",
                token: str | None = None) -> Response:
        form = self.http.get("/console/sign-in")
        assert form.status_code == 200, form.text
        csrf = CSRF.search(form.text)
        assert csrf is not None
        return self.http.post("/console/sign-in", data={
            "csrf": csrf.group(1), "next": "/console/",
            "token": token if token is not None else self.token(role, subject)},
            follow_redirects=False)

    def page(self, path: str) -> Response:
        return self.http.get(path, follow_redirects=False)

    def csrf(self, path: str = "/console/") -> str:
        found = CSRF.search(self.page(path).text)
        assert found is not None, "no CSRF token on the page"
        return found.group(1)

    def version(self, case_id: int) -> int:
        found = VERSION.search(self.page(f"/console/cases/{case_id}").text)
        assert found is not None
        return int(found.group(1))

    def act(self, case_id: int, action: str, version: int | None = None,
            csrf: str | None = None, **fields: Any) -> Response:
        data = {"csrf": csrf if csrf is not None else self.csrf(f"/console/cases/{case_id}"),
                "version": str(version if version is not None else self.version(case_id)),
                **{k: str(v) for k, v in fields.items()}}
        return self.http.post(f"/console/cases/{case_id}/{action}", data=data,
                              follow_redirects=False)


def console_settings(var: Path, case_url: str, **overrides: Any) -> Settings:
    return make_settings(var, case_store_url=case_url, **overrides)


@pytest.fixture
def app_settings(tmp_path: Path) -> Settings:
    return console_settings(tmp_path / "var", f"sqlite:///{tmp_path / 'cases.db'}")


def open_console(settings: Settings) -> Iterator[Console]:
    app = create_app(settings)
    with TestClient(app, base_url="https://testserver") as client:
        yield Console(settings, client)
    app.state.runtime().stop()


@pytest.fixture
def console(app_settings: Settings) -> Iterator[Console]:
    yield from open_console(app_settings)


@pytest.fixture
def store(app_settings: Settings) -> Iterator[CaseStore]:
    """The same database the app's case store opens (its own engine)."""
    s = CaseStore(app_settings.case_store)
    yield s
    s.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings on a new case store database, once on SQLite and once on PostgreSQL."""
    for url in new_database(request.param, tmp_path):
        yield console_settings(tmp_path / "var", url)


def audit_records(settings: Settings, kind: str = "console") -> list[dict[str, Any]]:
    return [orjson.loads(line) for path in sorted((settings.var_dir / "audit" / kind)
                                                  .glob("*.jsonl"))
            for line in path.read_bytes().splitlines() if line.strip()]


def sign_in_over_http(base: str, settings: Settings, subject: str = "ana") -> dict[str, str]:
    """Sign in to a running service's console through the form; the Cookie header of the
    session (sent by hand: the cookie is Secure and this client speaks plain http to
    127.0.0.1)."""
    form = httpx.get(base + "/console/sign-in", timeout=30)
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    pre = form.cookies["kestrel_console_signin"]
    token = mint_token(settings, "investigator", "console", subject=subject)
    answer = httpx.post(base + "/console/sign-in", timeout=30,
                        data={"csrf": csrf.group(1), "token": token, "next": "/console/"},
                        headers={"cookie": f"kestrel_console_signin={pre}"})
    assert answer.status_code == 303, answer.text
    found = re.search(r"kestrel_console=([^;]+);", answer.headers["set-cookie"])
    assert found is not None
    return {"cookie": f"kestrel_console={found.group(1)}"}
