"""Sign-in, sessions, cookies, CSRF and the security headers of the console, over HTTP with
the real app on a real case store (SQLite in tmp_path)."""

from __future__ import annotations

import time
from http.cookies import SimpleCookie
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cases.store import CaseStore
from serving.app import create_app
from tests.console.conftest import (
    CSRF,
    Console,
    audit_records,
    console_settings,
    open_console,
)
from tests.console.records import alert


def _cookie(header: str, name: str) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for part in header.split(", "):
        if part.startswith(name + "="):
            jar.load(part)
    assert name in jar, header
    return jar


def test_an_investigator_signs_in_with_a_token_in_the_form_body(console: Console) -> None:
    answer = console.sign_in("investigator", "ana")
    assert answer.status_code == 303 and answer.headers["location"] == "/console/"
    queue = console.page("/console/")
    assert queue.status_code == 200 and "Signed in as <strong>ana</strong>" in queue.text
    admin = Console(console.settings, console.http)
    assert admin.sign_in("admin", "root-admin").status_code == 303


def test_other_roles_and_bad_tokens_get_no_session(console: Console) -> None:
    for role in ("bot", "scorer"):
        refused = console.sign_in(role, "someone")
        assert refused.status_code == 403, role
        assert "may not use the investigator console" in refused.text
        assert "kestrel_console=" not in refused.headers.get("set-cookie", "")
        assert console.page("/console/").status_code == 303  # still signed out
    bad = console.sign_in(token="not-a-jwt")
    assert bad.status_code == 401 and "That token was not accepted" in bad.text
    assert '<form method="post" action="/console/sign-in"' in bad.text
    short_lived = console.token(ttl_seconds=1)
    time.sleep(2.1)
    expired = console.sign_in(token=short_lived)
    assert expired.status_code == 401 and "expired" in expired.text
    records = audit_records_after_flush(console)
    refused_roles = {r.get("role") for r in records if r["event"] == "sign_in_refused"}
    assert {"bot", "scorer"} <= refused_roles
    assert not any("eyJ" in str(r) for r in records)  # never a token in the audit


def audit_records_after_flush(console: Console) -> list[dict[str, object]]:
    runtime = console.http.app.state.runtime()  # type: ignore[attr-defined]
    assert runtime.audit.flush(5.0)
    return audit_records(console.settings)


def test_the_session_cookie_is_httponly_strict_scoped_and_secure_outside_dev(
        console: Console, tmp_path: Path) -> None:
    answer = console.sign_in()
    cookie = _cookie(answer.headers["set-cookie"], "kestrel_console")["kestrel_console"]
    assert cookie["httponly"] and cookie["secure"]
    assert cookie["samesite"].lower() == "strict" and cookie["path"] == "/console"
    assert len(cookie.value) >= 43  # 32 random bytes, url-safe base64
    dev = console_settings(tmp_path / "dev", f"sqlite:///{tmp_path / 'dev.db'}", env="dev")
    for other in open_console(dev):
        header = other.sign_in().headers["set-cookie"]
        dev_cookie = _cookie(header, "kestrel_console")["kestrel_console"]
        assert dev_cookie["httponly"] and not dev_cookie["secure"]


def test_the_server_keeps_the_session_and_sign_out_revokes_it(console: Console) -> None:
    console.sign_in()
    session_id = console.http.cookies.get("kestrel_console")
    assert session_id
    store = CaseStore(console.settings.case_store)
    try:
        with store.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT id_hash, csrf_token FROM console_sessions")
            hashes = [r[0] for r in rows]
        assert session_id not in hashes and len(hashes[0]) == 64  # only its SHA-256
    finally:
        store.dispose()
    out = console.http.post("/console/sign-out", data={"csrf": console.csrf()},
                            follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/console/sign-in"
    # the browser forgot the cookie; an old copy of it no longer opens anything
    assert console.http.cookies.get("kestrel_console") is None
    replayed = console.http.get("/console/", follow_redirects=False,
                                headers={"cookie": f"kestrel_console={session_id}"})
    assert replayed.status_code == 303
    assert replayed.headers["location"].startswith("/console/sign-in")


def test_every_page_but_sign_in_needs_a_session(console: Console) -> None:
    for path in ("/console/", "/console/cases/1", "/console/report",
                 "/console/cases/1/sar.md"):
        answer = console.page(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/console/sign-in?next=")
    posted = console.http.post("/console/cases/1/note", data={"body": "x"},
                               follow_redirects=False)
    assert posted.status_code == 303


def test_a_form_without_its_csrf_token_is_refused(console: Console, store: CaseStore) -> None:
    case_id = store.add_alert(alert("C1", "card-1")).case_id
    console.sign_in()
    version = console.version(case_id)
    missing = console.http.post(f"/console/cases/{case_id}/note",
                                data={"version": str(version), "body": "no token"},
                                follow_redirects=False)
    wrong = console.act(case_id, "note", version, csrf="x" * 43, body="wrong token")
    assert missing.status_code == 403 and wrong.status_code == 403
    assert "security token" in missing.text
    assert store.get(case_id).notes == ()  # nothing was written
    assert console.act(case_id, "note", version, body="right token").status_code == 303
    # the sign-in form's own token (double submit): a post without it opens no session
    bare = console.http.post("/console/sign-in", data={"token": console.token()},
                             follow_redirects=False)
    assert bare.status_code == 403


def test_pages_carry_the_security_headers_and_no_inline_script(console: Console,
                                                               store: CaseStore) -> None:
    case_id = store.add_alert(alert("C1", "card-1")).case_id
    console.sign_in()
    for path in ("/console/sign-in", "/console/", f"/console/cases/{case_id}"):
        answer = console.page(path)
        assert answer.status_code == 200
        csp = answer.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert answer.headers["cache-control"] == "no-store"
        assert "<script" not in answer.text and " style=" not in answer.text
    css = console.page("/console/static/console.css")
    assert css.status_code == 200 and css.headers["x-frame-options"] == "DENY"


def test_the_console_is_not_in_the_openapi_spec(app_settings: object) -> None:
    spec = create_app(app_settings).openapi()  # type: ignore[arg-type]
    assert spec["paths"] and not [p for p in spec["paths"] if p.startswith("/console")]


def test_sign_in_goes_back_to_the_page_asked_for_and_never_off_site(console: Console) -> None:
    form = console.page("/console/sign-in?next=/console/report")
    assert 'name="next" value="/console/report"' in form.text
    evil = console.page("/console/sign-in?next=https://evil.example/")
    assert 'name="next" value="/console/"' in evil.text
    csrf = CSRF.search(evil.text)
    assert csrf is not None
    answer = console.http.post("/console/sign-in", data={
        "csrf": csrf.group(1), "token": console.token(), "next": "//evil.example/"},
        follow_redirects=False)
    assert answer.headers["location"] == "/console/"


def test_an_identity_providers_rs256_token_signs_in(tmp_path: Path) -> None:
    """As in production: RS256 tokens checked against the provider's public key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "idp.pem"
    pem.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    settings = console_settings(tmp_path / "var", f"sqlite:///{tmp_path / 'c.db'}",
                                jwt_public_key_file=pem)
    now = int(time.time())
    claims = {"sub": "idp-analyst-7", "role": "investigator", "client": "console",
              "iss": settings.jwt_issuer, "iat": now, "exp": now + 600}
    for console in open_console(settings):
        answer = console.sign_in(token=jwt.encode(claims, key, algorithm="RS256"))
        assert answer.status_code == 303
        assert "idp-analyst-7" in console.page("/console/").text
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        forged = console.sign_in(token=jwt.encode(claims, other, algorithm="RS256"))
        assert forged.status_code == 401
