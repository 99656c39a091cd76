"""The case store and the investigator console in test_no_pan_anywhere.py (issue 31, item 6):

- :func:`plant_case_records`: records produced straight to `alerts` and `decisions` with the
  PAN (every form) as each id, in an alert's evidence details and in a decision's
  ``transaction``/``reasons``/``explanation`` text; the case intake must send each to the DLQ
  (consumer group ``kestrel-case-intake``), redacted;
- :func:`plant_through_console`: one clean alert opens a case; the sign-in form refuses a
  token whose ``sub`` is the PAN; a note, a label's reason, a label's txn_id and a close
  outcome holding the PAN (every form) are refused and change nothing; a clean note and a
  clean label are accepted (the label reaches `labels` through the outbox); the queue, the
  case page, the report and the SAR drafts (HTML and Markdown) are fetched. Every answer goes
  to the exchanges the scan reads;
- :func:`plant_case_store_control`: a copy of the case store with one note holding the PAN,
  so the scan is shown to find one in a case-store table.
"""

from __future__ import annotations

import re
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import httpx
import jwt
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from kestrel.kafka import consumer_config, producer_config
from kestrel.settings import Settings
from kestrel.topics import ALERTS, DECISIONS, LABELS, TRANSACTIONS_DLQ
from serving.auth import mint_token
from tests.console.records import alert, decision
from tests.security.pan_scan import AMEX, CONTROL_DIR, Exchange, forms

CASE_GROUP = "kestrel-case-intake"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
VERSION = re.compile(r'name="version" value="(\d+)"')
CLEAN_NOTE = "Customer called back: she did not make these payments."
CLEAN_REASON = "confirmed by the customer on the phone"


class Caller(Protocol):
    """What the test's Client offers (tests/security/test_no_pan_anywhere.py)."""

    settings: Settings
    url: str
    http: httpx.Client
    exchanges: list[Exchange]

    def auth(self, role: str = ..., **claims: Any) -> dict[str, str]: ...


# --- records straight to `alerts` and `decisions` ------------------------------------------

def _case_records() -> list[tuple[str, str, str, bytes]]:
    """(topic, label, key, value) of every invalid alert and decision."""
    records: list[tuple[str, str, str, bytes]] = []
    n = iter(range(40_000, 50_000))
    values = {**forms(), "amex dashes": forms(AMEX)["dashes"]}
    for form, value in values.items():
        i = next(n)
        for fld in ("alert_id", "customer_id", "card_id", "evidence_txn_ids",
                    "evidence.txn_id", "evidence.terminal_id", "evidence.country"):
            doc = alert(f"C-pan-{i}", f"card-tok-{i}", 3, tag=f"p{next(n)}")
            if fld == "evidence_txn_ids":
                doc["evidence_txn_ids"][1] = value
            elif fld.startswith("evidence."):
                doc["evidence"][1][fld.split(".")[1]] = value
            else:
                doc[fld] = value
            records.append((ALERTS, f"alert {fld}={form}", f"al-{i}", orjson.dumps(doc)))
        for fld in ("txn_id", "customer_id", "card_id", "transaction.terminal_id",
                    "transaction.country", "reasons.text", "explanation", "features name"):
            doc = decision(f"C-pan-{i}", f"card-tok-{i}", f"d-pan-{next(n)}")
            if fld == "transaction.terminal_id" or fld == "transaction.country":
                doc["transaction"][fld.split(".")[1]] = value
            elif fld == "reasons.text":
                doc["reasons"][0]["text"] = f"the card {value} paid 6 times in an hour"
            elif fld == "explanation":
                doc["explanation"] = f"Declined: card {value} is on a watch list."
            elif fld == "features name":
                doc["features"][value] = 1.0
            else:
                doc[fld] = value
            records.append((DECISIONS, f"decision {fld}={form}", str(doc["txn_id"]),
                            orjson.dumps(doc)))
    return records


def plant_case_records(settings: Settings) -> dict[tuple[str, int, int], str]:
    """Produce the invalid alerts and decisions; returns (topic, partition, offset) → what
    each plants (the test's ``inputs``)."""
    placed: dict[tuple[str, int, int], str] = {}
    failures: list[str] = []

    def delivered(label: str) -> Callable[[Any, Any], None]:
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(f"{label}: {err}")
            else:
                placed[(msg.topic(), msg.partition(), msg.offset())] = label
        return cb

    records = _case_records()
    producer = Producer(producer_config(settings))
    for topic, what, key, raw in records:
        producer.produce(topic, raw, key, on_delivery=delivered(f"{topic} {what}"))
    assert producer.flush(30) == 0 and not failures, failures
    assert len(placed) == len(records)
    return placed


def _read_topic(settings: Settings, topic: str) -> list[Any]:
    """Every record of ``topic`` now on the broker (up to each high watermark)."""
    consumer = Consumer(consumer_config(settings, f"pan-cases-{uuid.uuid4().hex}"))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        assign, end = [], {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                assign.append(TopicPartition(topic, p, low))
                end[p] = high
        consumer.assign(assign)
        out: list[Any] = []
        deadline = time.monotonic() + 30
        while end and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.5):
                part, off = m.partition(), m.offset()
                if m.error() is None and part is not None and off is not None:
                    out.append(m)
                    if off + 1 >= end.get(part, 0):
                        end.pop(part, None)
        return out
    finally:
        consumer.close()


def wait_for_case_dlq(settings: Settings, inputs: dict[tuple[str, int, int], str],
                      timeout: float = 90) -> None:
    """Until every planted alert and decision is in the DLQ from the case intake (the
    service must not stop before its intake has read them)."""
    want = {(t, p, o) for t, p, o in inputs if t in (ALERTS, DECISIONS)}
    deadline = time.monotonic() + timeout
    while True:
        seen = set()
        for m in _read_topic(settings, TRANSACTIONS_DLQ):
            d = orjson.loads(m.value())
            if d["consumer"] == CASE_GROUP:
                src = d["source"]
                seen.add((src["topic"], src["partition"], src["offset"]))
        missing = want - seen
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing, f"the case intake did not dead-letter: " \
                        f"{sorted(inputs[k] for k in missing)[:20]}"


# --- the console ---------------------------------------------------------------------------

class ConsoleSession:
    """A browser on the console over plain http: the cookies (Secure outside dev, which an
    http client would not send back) are kept by hand; every answer is kept for the scan."""

    def __init__(self, c: Caller):
        self.c = c
        self.cookies: dict[str, str] = {}

    def request(self, label: str, method: str, path: str,
                data: dict[str, str] | None = None) -> httpx.Response:
        headers = {"cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        r = self.c.http.request(method, self.c.url + path, data=data, headers=headers,
                                follow_redirects=False)
        for raw in r.headers.get_list("set-cookie"):
            name, _, rest = raw.partition("=")
            value = rest.split(";", 1)[0]
            if value and "max-age=0" not in raw.lower():
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        self.c.exchanges.append(Exchange(f"console {label} ({method} {path})", r))
        return r

    def sign_in(self, label: str, token: str) -> httpx.Response:
        form = self.request(f"{label}: the form", "GET", "/console/sign-in")
        assert form.status_code == 200, form.text[:300]
        csrf = CSRF.search(form.text)
        assert csrf is not None
        # `next` holds a card number too: it must not come back in a Location header or
        # the sign-in page (serving/console/routes_auth.safe_next)
        return self.request(label, "POST", "/console/sign-in",
                            {"csrf": csrf[1], "next": "/console/cases/" + forms()["dashes"],
                             "token": token})

    def page(self, label: str, path: str) -> httpx.Response:
        r = self.request(label, "GET", path)
        assert r.status_code == 200, (label, r.status_code, r.text[:300])
        return r

    def form_of(self, case_id: int) -> tuple[str, int]:
        """The case page's CSRF token and version."""
        text = self.page("the case page", f"/console/cases/{case_id}").text
        csrf, version = CSRF.search(text), VERSION.search(text)
        assert csrf is not None and version is not None
        return csrf[1], int(version[1])

    def act(self, label: str, case_id: int, action: str, **fields: str) -> httpx.Response:
        csrf, version = self.form_of(case_id)
        return self.request(label, "POST", f"/console/cases/{case_id}/{action}",
                            {"csrf": csrf, "version": str(version), **fields})


def _sub_token(c: Caller, sub: str) -> str:
    """An investigator's token whose ``sub`` is ``sub``, signed with the test secret (as
    Client.auth does: mint_token refuses PAN-like claims)."""
    now = int(time.time())
    return jwt.encode({"sub": sub, "role": "investigator", "client": "acme", "iss": "kestrel",
                       "iat": now, "exp": now + 300},
                      c.settings.secret("jwt_secret"), algorithm="HS256")


def _wait_for_alert(c: Caller, alert_id: str, timeout: float = 60) -> int:
    """The case id of ``alert_id`` once the intake stored it (GET /v1/alerts)."""
    deadline = time.monotonic() + timeout
    while True:
        r = c.http.get(c.url + "/v1/alerts", params={"status": "all", "limit": 500},
                       headers=c.auth("investigator"))
        assert r.status_code == 200, r.text[:300]
        for a in r.json()["alerts"]:
            if a["alert_id"] == alert_id:
                c.exchanges.append(Exchange("GET /v1/alerts (the clean alert)", r))
                return int(a["case_id"])
        assert time.monotonic() < deadline, f"alert {alert_id} never reached the case store"
        time.sleep(0.5)


def plant_through_console(c: Caller) -> str:
    """The console's sign-in, actions and pages (see the module doc); returns the txn_id
    labelled through the console."""
    customer = f"C-console-{uuid.uuid4().hex[:6]}"
    clean = alert(customer, f"card-tok-{customer}", 4, tag="console")
    producer = Producer(producer_config(c.settings))
    producer.produce(ALERTS, orjson.dumps(clean), clean["alert_id"])
    assert producer.flush(10) == 0
    case_id = _wait_for_alert(c, clean["alert_id"])
    txn = clean["evidence_txn_ids"][0]

    browser = ConsoleSession(c)
    for form, value in forms().items():
        r = browser.sign_in(f"sign-in sub={form}", _sub_token(c, value))
        assert r.status_code in (400, 401), (form, r.status_code, r.text[:300])
    assert "kestrel_console" not in browser.cookies
    r = browser.sign_in("sign-in", mint_token(c.settings, "investigator", "acme",
                                              subject="ana"))
    assert r.status_code == 303 and "kestrel_console" in browser.cookies, r.text[:300]

    for form, value in forms().items():  # the URL: refused at the edge (serving/screen.py)
        for what, path in (("queue filter", f"/console/?assignee={value}"),
                           ("case page query", f"/console/cases/{case_id}?txn={value}"),
                           ("SAR path", f"/console/cases/{value}/sar")):
            r = browser.request(f"{what}={form}", "GET", path)
            assert r.status_code == 400, (what, form, r.status_code, r.text[:300])
    _, before = browser.form_of(case_id)
    for form, value in forms().items():
        refusals = (("note", "note", {"body": value}, (400,)),
                    ("label reason", "label",
                     {"txn_id": txn, "verdict": "fraud", "reason": value}, (400,)),
                    ("label txn_id", "label",
                     {"txn_id": value, "verdict": "fraud", "reason": "checked"}, (400, 404)),
                    ("close outcome", "close", {"outcome": value}, (400, 404)))
        for what, action, fields, statuses in refusals:
            r = browser.act(f"{what}={form}", case_id, action, **fields)
            assert r.status_code in statuses, (what, form, r.status_code, r.text[:300])
    _, after = browser.form_of(case_id)
    assert after == before, "a refused action changed the case"

    r = browser.act("a clean note", case_id, "note", body=CLEAN_NOTE,
                    next="/console/?rule=" + forms()["spaces"])
    assert r.status_code == 303, r.text[:300]
    r = browser.act("a clean label", case_id, "label", txn_id=txn, verdict="fraud",
                    reason=CLEAN_REASON)
    assert r.status_code == 303, r.text[:300]
    case_page = browser.page("the case page", f"/console/cases/{case_id}")
    assert CLEAN_NOTE in case_page.text
    sar = browser.page("the SAR draft", f"/console/cases/{case_id}/sar")
    md = browser.page("the SAR draft (Markdown)", f"/console/cases/{case_id}/sar.md")
    assert CLEAN_NOTE in md.text and clean["alert_id"] in sar.text
    r = browser.act("close", case_id, "close", outcome="confirmed_fraud")
    assert r.status_code == 303, r.text[:300]
    for status in ("open", "closed", "all"):
        browser.page(f"the queue ({status})", f"/console/?status={status}")
    browser.page("the report", "/console/report")
    browser.page("the closed case", f"/console/cases/{case_id}")
    wait_for_label(c.settings, txn)
    return txn


def wait_for_label(settings: Settings, txn_id: str, timeout: float = 30) -> None:
    """Until the console's label is on `labels` (the relay published the outbox row)."""
    deadline = time.monotonic() + timeout
    while True:
        for m in _read_topic(settings, LABELS):
            try:
                doc = orjson.loads(m.value())
            except orjson.JSONDecodeError:
                continue
            if isinstance(doc, dict) and doc.get("txn_id") == txn_id:
                assert doc.get("reason") == CLEAN_REASON and doc.get("is_fraud") is True, doc
                return
        assert time.monotonic() < deadline, f"the console's label of {txn_id} never " \
                                             "reached `labels`"
        time.sleep(0.5)


# --- the case store ------------------------------------------------------------------------

def case_store_of(var: Path) -> Path:
    return var / "cases" / "cases.db"


def check_case_store(var: Path, txn_id: str) -> None:
    """The case store the scan reads holds what the console wrote (so a clean scan of it
    means something): the clean note, the label's outbox row, published."""
    db = sqlite3.connect(f"file:{case_store_of(var)}?mode=ro", uri=True)
    try:
        notes = [b for (b,) in db.execute("SELECT body FROM case_notes")]
        outbox = db.execute("SELECT published_at FROM label_outbox WHERE txn_id = ?",
                            (txn_id,)).fetchall()
        sessions = db.execute("SELECT count(*) FROM console_sessions").fetchone()[0]
    finally:
        db.close()
    assert CLEAN_NOTE in notes, notes
    assert len(outbox) == 1 and outbox[0][0] is not None, outbox
    assert sessions >= 1


def plant_case_store_control(var: Path) -> dict[str, str]:
    """A copy of the case store with one note holding the PAN (dashes): the scan must find
    it in the case store's own table. Returns location prefix → what it shows."""
    copy = var / CONTROL_DIR / "cases-copy.db"
    copy.parent.mkdir(exist_ok=True)
    source = sqlite3.connect(f"file:{case_store_of(var)}?mode=ro", uri=True)
    target = sqlite3.connect(copy)
    source.backup(target)
    source.close()
    (case_id,) = target.execute("SELECT min(id) FROM cases").fetchone()
    rows = target.execute("SELECT count(*) FROM case_notes").fetchone()[0]
    target.execute("INSERT INTO case_notes (case_id, author, body, created_at) "
                   "VALUES (?, 'ana', ?, '2026-12-07 20:00:00.000000')",
                   (case_id, f"card {forms()['dashes']} on the phone"))
    target.commit()
    target.close()
    return {f"file:{CONTROL_DIR}/cases-copy.db table case_notes row {rows}":
            "a case-store table (a note), through a query"}
