"""No card number anywhere (issue 27, item 3): one PAN is planted through every entry point in
every form, then every store is scanned **decoded** — Kafka records through a consumer, Redis
keys and values, Parquet through pyarrow, SQL stores through queries, JSON lines and logs as
text — together with every HTTP response received. The scan is shown to find what it looks
for: one PAN is planted on purpose in each kind of store (positive controls), and the
records the test itself produces straight to `transactions` and `labels` (the inputs) must be
found too; everything else must be clean.

Entry points and forms:

- ``POST /v1/score``, ``/v1/score/batch``, ``/v1/events/transactions`` (one event and a
  batch): the PAN as every identifier (card_id, customer_id, account_id, device_id, txn_id,
  terminal_id) in every form (plain, dashes, spaces, en dash, no-break space, Arabic-Indic and
  full-width digits, embedded in a longer id) is refused, 400 with the field's path; as
  ``card_number`` it is tokenized (one token whatever the form); as an unknown field's name or
  value, as ``schema_version``/``amount``, or as the whole body it is refused; in request
  headers it is ignored.
- ``POST /v1/labels``: the PAN as txn_id, reason, alert_id, as an unknown field, and as the
  token's ``sub``/``client`` claims (and a bot's customer claim on insights); a bearer token
  that is the PAN itself.
- the URL: path (``/v1/users/<PAN>/insights``, an unknown route) and query (a value and a
  name, on several routes).
- records produced straight to Kafka `transactions` and `labels` (the PAN in every field and
  form, as the key, as garbage): `kestrel stream`, `kestrel archive` and `kestrel labels
  intake` (run as the commands) must send the invalid ones to the DLQ, redacted.
- records produced straight to `alerts` and `decisions` (the PAN as every id, in the evidence
  details, in a decision's transaction and reasons): the service's case intake must send them
  to the DLQ, redacted; and the investigator console: sign-in with the PAN as ``sub``, notes,
  label reasons and close outcomes holding it (refused), clean ones accepted, then the queue,
  the case page, the report and the SAR drafts (tests/security/plant_cases.py).

The scanner (what it reads, which decodings) is tests/security/pan_scan.py.

SQL: every SQLite file under the var dir is scanned through queries: the case store
(`var/cases/cases.db`: cases, alerts, notes, the action log, the label outbox, the console's
sessions) and MLflow's registry; a control copy of the case store with a PAN in a note shows
the scan finds one in a case-store table.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic
from redis import Redis

from kestrel.kafka import admin, producer_config
from kestrel.pan import REDACTED, CardTokenizer
from kestrel.services import BROKER, REDIS, free_port, start_broker, start_redis, stop
from kestrel.settings import Settings
from kestrel.topics import ALERTS, DECISIONS, LABELS, TRANSACTIONS, TRANSACTIONS_DLQ
from serving.auth import mint_token
from serving.fixtures import register_tiny_model, transaction
from serving.process import running_service
from tests.conftest import TEST_SECRET, env_for, make_settings
from tests.security.pan_scan import (
    AMEX,
    CONTROL_DIR,
    CONTROL_TOPIC,
    IDS,
    LUHN_BAD,
    PAN,
    Exchange,
    Scan,
    db_url,
    forms,
    scan_files,
    scan_http,
    scan_kafka,
    scan_redis,
)
from tests.security.plant_cases import (
    CASE_GROUP,
    check_case_store,
    plant_case_records,
    plant_case_store_control,
    plant_through_console,
    wait_for_case_dlq,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# --- the stack -----------------------------------------------------------------------------

class Client:
    """HTTP calls to the service; every answer is kept for the scan."""

    def __init__(self, settings: Settings, url: str):
        self.settings, self.url = settings, url
        self.exchanges: list[Exchange] = []
        self.http = httpx.Client(timeout=60)

    def auth(self, role: str = "scorer", **claims: Any) -> dict[str, str]:
        if claims:  # a token the tests sign themselves: mint_token refuses PAN-like claims
            now = int(time.time())
            doc = {"sub": f"{role}-test", "role": role, "client": "acme", "iss": "kestrel",
                   "iat": now, "exp": now + 300, **claims}
            token = jwt.encode(doc, self.settings.secret("jwt_secret"), algorithm="HS256")
        else:
            token = mint_token(self.settings, role, "acme",
                               customer="C0001" if role == "bot" else None)
        return {"authorization": f"Bearer {token}"}

    def call(self, label: str, method: str, path: str, doc: Any = None, *,
             role: str = "scorer", headers: dict[str, str] | None = None,
             params: Any = None, content: bytes | None = None) -> httpx.Response:
        body = content if content is not None else (
            orjson.dumps(doc) if doc is not None else None)
        r = self.http.request(method, self.url + path, content=body, params=params,
                              headers={**self.auth(role), **(headers or {})})
        self.exchanges.append(Exchange(f"{label} ({method} {path})", r))
        return r

    def refused(self, label: str, method: str, path: str, doc: Any = None, *,
                where: str | None, **kw: Any) -> None:
        """The call is refused with 400 and (when given) the field's path."""
        r = self.call(label, method, path, doc, **kw)
        assert r.status_code == 400, (label, r.status_code, r.text[:300])
        if where is not None:
            paths = [e["path"] for e in r.json().get("errors") or []]
            assert where in paths, (label, paths)


def _run_command(settings: Settings, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "cli", *args],
                                env=env_for(settings), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


# --- what goes in --------------------------------------------------------------------------

def plant_over_http(c: Client) -> list[str]:
    """Every HTTP entry point, every field, every form; returns the txn_ids accepted with a
    card_number (to check their one token)."""
    txns = ("/v1/score", "/v1/events/transactions")
    n = iter(range(1000, 10_000))
    for fld in IDS:
        for form, value in forms().items():
            ev = transaction(next(n), **{fld: value})
            label = f"{fld}={form}"
            for route in txns:
                c.refused(label, "POST", route, ev, where=fld)
                c.refused(label, "POST", route if route != "/v1/score" else "/v1/score/batch",
                          {"events": [transaction(next(n)), ev]}, where=f"events[1].{fld}")
    # card_number: tokenized in every form that is a card number, refused otherwise
    accepted = []
    for number in (PAN, AMEX):
        for form, value in forms(number).items():
            base = {k: v for k, v in transaction(next(n)).items() if k != "card_id"}
            label = f"card_number={form}"
            for route in ("/v1/score", "/v1/score/batch", "/v1/events/transactions"):
                i = next(n)
                ev = {**base, "txn_id": f"cn-{i}", "card_number": value}
                doc = {"events": [ev]} if route.endswith("batch") else ev
                if form == "embedded":
                    c.refused(label, "POST", route, doc, where="events[0].card_number"
                              if route.endswith("batch") else "card_number")
                    continue
                r = c.call(label, "POST", route, doc)
                assert r.status_code in (200, 202), (label, route, r.text[:300])
                if number == PAN:
                    accepted.append(ev["txn_id"])
    ev = {k: v for k, v in transaction(next(n)).items() if k != "card_id"}
    c.refused("card_number fails Luhn", "POST", "/v1/score", {**ev, "card_number": LUHN_BAD},
              where="card_number")
    c.refused("card_number fails Luhn", "POST", "/v1/events/transactions",
              {"events": [{**ev, "card_number": forms(LUHN_BAD)["spaces"]}]},
              where="events[0].card_number")
    # other places in a body
    for route in ("/v1/score", "/v1/events/transactions"):
        ev = transaction(next(n))
        c.refused("PAN as an unknown field's name", "POST", route, {**ev, PAN: "x"}, where=None)
        c.refused("PAN as an unknown field's value", "POST", route, {**ev, "note": PAN},
                  where="note")
        c.refused("PAN next to events", "POST", route.replace("/v1/score", "/v1/score/batch"),
                  {"events": [ev], forms()["dashes"]: 1}, where=None)
        c.refused("PAN as schema_version", "POST", route, {**ev, "schema_version": int(PAN)},
                  where="schema_version")
        c.refused("PAN as amount", "POST", route, {**ev, "amount": int(PAN)}, where="amount")
        c.refused("PAN as the body", "POST", route, content=PAN.encode(), where=None)
        c.refused("PAN in broken JSON", "POST", route,
                  content=b'{"txn_id": "' + forms()["spaces"].encode() + b'", ', where="$")
    # headers are ignored, never stored
    r = c.call("PAN in request headers", "POST", "/v1/score", transaction(next(n)),
               headers={"user-agent": PAN, "x-request-id": forms()["dashes"],
                        "referer": f"https://shop.example/pay?card={PAN}"})
    assert r.status_code == 200, r.text[:300]

    # labels: body fields, token claims
    for form, value in forms().items():
        for fld in ("txn_id", "reason", "alert_id"):
            doc = {"txn_id": "lbl-1", "is_fraud": True, fld: value}
            c.refused(f"label {fld}={form}", "POST", "/v1/labels", doc, role="investigator",
                      where=fld)
        ok = {"txn_id": "lbl-1", "is_fraud": True}
        for claim in ("sub", "client"):
            c.refused(f"JWT {claim}={form}", "POST", "/v1/labels", ok, role="investigator",
                      where=f"authorization.{claim}",
                      headers=c.auth("investigator", **{claim: value}))
        c.refused(f"bot customer claim={form}", "GET", "/v1/users/C0001/insights",
                  role="bot", where="authorization.customer",
                  headers=c.auth("bot", customer_id=value))
    c.refused("label: PAN as an unknown field", "POST", "/v1/labels",
              {"txn_id": "lbl-1", "is_fraud": True, PAN: True}, role="investigator", where=None)
    c.refused("label: PAN as is_fraud", "POST", "/v1/labels",
              {"txn_id": "lbl-1", "is_fraud": PAN}, role="investigator", where="is_fraud")
    r = c.call("bearer token = PAN", "POST", "/v1/labels", {"txn_id": "lbl-1", "is_fraud": True},
               headers={"authorization": f"Bearer {PAN}"})
    assert r.status_code == 401, r.text[:300]
    r = c.call("a valid label", "POST", "/v1/labels",
               {"txn_id": "lbl-ok", "is_fraud": True, "reason": "confirmed by the customer"},
               role="investigator")
    assert r.status_code == 202, r.text[:300]

    # the URL: path and query, on several routes
    for form, value in forms().items():
        c.refused(f"URL path {form}", "GET", f"/v1/users/{value}/insights", role="investigator",
                  where="path")
        c.refused(f"URL query value {form}", "GET", "/v1/alerts", role="investigator",
                  params={"status": value}, where="query.status")
    c.refused("URL query name", "GET", "/v1/alerts", role="investigator",
              params={PAN: "open"}, where="query")
    c.refused("URL query date", "GET", "/v1/insights/top-spenders", role="investigator",
              params={"date": forms()["dashes"]}, where="query.date")
    c.refused("URL query on score", "POST", "/v1/score/batch", {"events": [transaction(1)]},
              params={"reasons": PAN}, where="query.reasons")
    # a route nobody serves: BentoML's own router answers 404 before the app sees it; it
    # must not echo or log the number either (the scan checks)
    r = c.call("unknown route", "GET", f"/v1/cards/{PAN}", role="investigator")
    assert r.status_code in (400, 404), r.text[:300]
    c.refused("metrics query", "GET", "/metrics", params={"card": PAN}, where="query.card")
    c.call("health query", "GET", "/healthz", params={"card": PAN})  # BentoML's: no echo
    return accepted


def _label(txn: str, **over: Any) -> dict[str, Any]:
    return {"schema_version": 1, "txn_id": txn, "is_fraud": True, "source": "investigator",
            "analyst_id": "a-7", "reason": "checked", "labelled_at": "2024-05-01T12:00:00Z",
            **over}


def plant_in_kafka(settings: Settings) -> dict[tuple[str, int, int], str]:
    """Records produced straight to `transactions` and `labels`, bypassing every check;
    returns (topic, partition, offset) → what each plants."""
    records: list[tuple[str, str, bytes | str, bytes]] = []  # topic, label, key, value
    n = iter(range(20_000, 30_000))
    for form, value in forms().items():
        for fld in IDS:
            ev = transaction(next(n), **{fld: value})
            records.append((TRANSACTIONS, f"{fld}={form}", ev["customer_id"], orjson.dumps(ev)))
        base = {k: v for k, v in transaction(next(n)).items() if k != "card_id"}
        records.append((TRANSACTIONS, f"card_number={form}", base["customer_id"],
                        orjson.dumps({**base, "card_number": value})))
        for fld in ("txn_id", "analyst_id", "reason", "source"):
            records.append((LABELS, f"label {fld}={form}", "lbl-k",
                            orjson.dumps(_label(f"lbl-{next(n)}", **{fld: value}))))
        records.append((LABELS, f"label key={form}", value.encode(),
                        orjson.dumps({**_label(value), "is_fraud": "maybe"})))
    for topic, maker in ((TRANSACTIONS, lambda: transaction(next(n))),
                         (LABELS, lambda: _label(f"lbl-{next(n)}"))):
        records += [
            (topic, "garbage", "k", f"not json {PAN}".encode()),
            (topic, "bare number", "k", PAN.encode()),
            (topic, "schema_version", "k", orjson.dumps({**maker(), "schema_version": int(PAN)})),
            (topic, "unknown field name", "k", orjson.dumps({**maker(), PAN: 1})),
            (topic, "unknown field value", "k", orjson.dumps({**maker(), "note": AMEX})),
            (topic, "long payload", "k", orjson.dumps({**maker(), "note": "x" * 70_000 + PAN})),
            (topic, "invalid UTF-8", "k", b"\xff\xfe" + forms()["spaces"].encode()),
        ]
    # a valid transaction whose key is the PAN: consumed, the key must go nowhere
    ev = transaction(next(n))
    records.append((TRANSACTIONS, "key only", PAN, orjson.dumps(ev)))

    placed: dict[tuple[str, int, int], str] = {}
    failures: list[str] = []

    def delivered(label: str) -> Callable[[Any, Any], None]:
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(f"{label}: {err}")
            else:
                placed[(msg.topic(), msg.partition(), msg.offset())] = label
        return cb

    producer = Producer(producer_config(settings))
    for topic, what, key, raw in records:
        producer.produce(topic, raw, key, on_delivery=delivered(f"{topic} {what}"))
    assert producer.flush(30) == 0 and not failures, failures
    assert len(placed) == len(records)
    return placed


def plant_controls(settings: Settings, var: Path) -> tuple[dict[str, str], list[Exchange]]:
    """One PAN in each kind of store, on purpose; returns location prefix → what it shows,
    and an HTTP answer holding one."""
    expected: dict[str, str] = {}
    # Kafka: a scratch topic; the PAN in the value (full-width), the key, a header
    client = admin(settings)
    for fut in client.create_topics([NewTopic(CONTROL_TOPIC, 1, 1)]).values():
        fut.result(10)
    producer = Producer(producer_config(settings))
    producer.produce(CONTROL_TOPIC, orjson.dumps({"note": forms()["full-width"]}),
                     forms(AMEX)["dashes"], headers=[("trace", forms(LUHN_BAD)["spaces"])])
    assert producer.flush(10) == 0
    expected |= {f"kafka:{CONTROL_TOPIC}[0]@0 value": "Kafka value (full-width digits)",
                 f"kafka:{CONTROL_TOPIC}[0]@0 key": "Kafka key (Amex, dashes)",
                 f"kafka:{CONTROL_TOPIC}[0]@0 header trace": "Kafka header (Luhn-bad, spaces)"}
    # Redis: a string, a hash value, a list element, a key name, in two databases
    redis0 = Redis.from_url(settings.redis_url)
    redis0.set("pan-control:string", forms()["arabic-indic"].encode())
    redis0.hset("pan-control:hash", "card", forms()["en dash"])
    redis0.rpush("pan-control:list", b"x", f"card {PAN}".encode())
    redis5 = Redis.from_url(db_url(settings.redis_url, 5))
    redis5.set(f"pan-control:key:{PAN}", b"1")
    expected |= {"redis:db0:pan-control:string": "Redis string (Arabic-Indic digits)",
                 "redis:db0:pan-control:hash[card]": "Redis hash value (en dash)",
                 "redis:db0:pan-control:list[1]": "Redis list element",
                 f"redis:db5:pan-control:key:{PAN} (key)": "Redis key name, another db"}
    # files: Parquet (an int64 column and a string column), JSON lines with \u escapes,
    # a log line holding a JWT whose sub is the PAN and a percent-encoded URL, a SQL table
    folder = var / CONTROL_DIR
    folder.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "n": [1, int(PAN)],
                             "s": ["ok", forms()["spaces"]]}), folder / "control.parquet",
                   compression="zstd")
    lines = [orjson.dumps({"ok": 1}), json.dumps(
        {"card": forms()["arabic-indic"]}, ensure_ascii=True).encode()]
    (folder / "control.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    token = jwt.encode({"sub": PAN}, "k" * 32, algorithm="HS256")
    path = "/v1/users/" + "".join(f"%{b:02X}" for b in forms()["full-width"].encode())
    query = "status=" + "+".join(forms()["spaces"].split())
    (folder / "control.log").write_text(
        f"ok\nauthorization: Bearer {token}\nGET {path}\nGET /v1/alerts?{query}\n")
    db = sqlite3.connect(folder / "control.db")
    db.execute("CREATE TABLE cards (id INTEGER, number TEXT)")
    db.execute("INSERT INTO cards VALUES (1, 'none'), (2, ?)", (forms()["dashes"],))
    db.commit()
    db.close()
    expected |= {
        f"file:{CONTROL_DIR}/control.parquet column n row 1": "Parquet int64 column",
        f"file:{CONTROL_DIR}/control.parquet column s row 1": "Parquet string column (zstd)",
        f"file:{CONTROL_DIR}/control.jsonl:2": "JSON lines, \\u-escaped Arabic-Indic digits",
        f"file:{CONTROL_DIR}/control.log:2": "a log line with a JWT whose sub is the PAN",
        f"file:{CONTROL_DIR}/control.log:3": "a log line with a percent-encoded URL",
        f"file:{CONTROL_DIR}/control.log:4": "a log line with a query, `+` for spaces",
        f"file:{CONTROL_DIR}/control.db table cards row 1": "SQLite table, through a query",
    }
    # HTTP: an answer that echoes the PAN in a header and in its body
    echo = httpx.Response(400, headers={"x-echo": forms()["dashes"]},
                          json={"errors": [{"path": PAN, "reason": "bad"}]})
    expected |= {"http:control -> 400 header x-echo": "HTTP header",
                 "http:control -> 400 body": "HTTP body"}
    return expected, [Exchange("control", echo)]


# --- the test ------------------------------------------------------------------------------

def test_no_card_number_in_any_store_or_answer(tmp_path: Path) -> None:
    var = tmp_path / "var"
    settings = make_settings(
        var, kafka_bootstrap=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0", serve_workers=1,
        model_poll_seconds=1.0, archive_batch_seconds=0.5, stream_batch_ms=100)
    logs = var / "log"
    started: list[str] = []
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        start_redis(settings)
        started.append(REDIS)
        start_broker(settings)
        started.append(BROKER)
        register_tiny_model(settings, seed=0)

        # 1. every HTTP entry point, every form
        with running_service(settings, free_port(), logs / "serve.log", timeout=180) as url:
            client = Client(settings, url)
            accepted = plant_over_http(client)
            # 2. straight into Kafka, while the service's alert consumer runs
            inputs = plant_in_kafka(settings)
            # … and to `alerts` and `decisions` (the case intake), then the console
            inputs |= plant_case_records(settings)
            labelled = plant_through_console(client)
            wait_for_case_dlq(settings, inputs)
            # 3. the consumers, as the commands they are
            for name, args in (("stream", ["stream", "--idle-seconds", "3"]),
                               ("archive", ["archive", "--idle-seconds", "3"]),
                               ("labels-intake", ["labels", "intake", "--idle-seconds", "3"])):
                procs[name] = _run_command(settings, args, logs / f"{name}.out")
            for name, proc in procs.items():
                code = proc.wait(150)
                assert code == 0, f"kestrel {name} exited {code}; see {logs / name}.out"
            client.http.close()
        # the service has stopped: its queued decisions are published, its audit closed

        # 4. the positive controls, then one scan of everything
        controls, echo = plant_controls(settings, var)
        check_case_store(var, labelled)  # what the console wrote, before the scan reads it
        controls |= plant_case_store_control(var)
        scan = Scan()
        records = scan_kafka(scan, settings)
        scan_redis(scan, settings.redis_url)
        scan_http(scan, [*client.exchanges, *echo])
    finally:
        for proc in procs.values():  # only when the test failed before they ended
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for name in reversed(started):
            stop(settings, name)
    scan_files(scan, var)  # after the services stopped: their logs are complete
    print("scanned:", scan.looked_at, "topics:", {t: len(r) for t, r in records.items()})

    # the scanner finds every control, in every kind of store …
    missed = {where: what for where, what in controls.items() if not scan.at(where)}
    assert not missed, f"the scan missed planted controls: {missed}"
    # … and every record the test produced straight to `transactions` and `labels`
    found_inputs = {f.where.rsplit(" ", 1)[0] for f in scan.findings}
    unseen = {k: v for k, v in inputs.items() if f"kafka:{k[0]}[{k[1]}]@{k[2]}" not in found_inputs}
    assert not unseen, f"the scan missed the planted Kafka inputs: {unseen}"

    # the scan did read every kind of store it names
    for kind in ("kafka", "redis", "parquet", "sql", "text", "http"):
        assert scan.looked_at.get(kind), f"nothing of kind {kind} was scanned"

    # the invalid direct records reached the DLQ from each consumer, redacted
    dlq = [orjson.loads(m.value()) for m in records[TRANSACTIONS_DLQ]]
    sources = {(d["consumer"], d["source"]["topic"], d["source"]["offset"],
                d["source"]["partition"]) for d in dlq}
    consumers = {(TRANSACTIONS, "kestrel-stream"), (TRANSACTIONS, "kestrel-archiver"),
                 (LABELS, "kestrel-labels"), (ALERTS, CASE_GROUP), (DECISIONS, CASE_GROUP)}
    for (topic, part, off), label in inputs.items():
        if label.endswith(" key only"):
            continue
        for source, group in consumers:
            if source == topic:
                assert (group, topic, off, part) in sources, \
                    f"{label} ({topic}[{part}]@{off}) is not in the DLQ from {group}"
    assert any(REDACTED in d["payload"] for d in dlq)
    assert any(REDACTED in d["payload"] for d in dlq if d["consumer"] == CASE_GROUP)

    # one token per card, whatever the form it was sent in
    token = CardTokenizer(TEST_SECRET.encode()).token(PAN)
    cards = {}
    for m in records[TRANSACTIONS]:
        try:
            doc = orjson.loads(m.value())
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict) and doc.get("txn_id") in accepted:
            cards[doc["txn_id"]] = doc.get("card_id")
    assert set(cards) == set(accepted) and set(cards.values()) == {token}

    # nothing else holds a card number (last: the checks above say more about a failure)
    known = {f"kafka:{t}[{p}]@{o}" for t, p, o in inputs}
    leaks = [f for f in scan.findings
             if not any(f.where.startswith(w) for w in controls)
             and f.where.rsplit(" ", 1)[0] not in known]
    assert not leaks, "card numbers found:\n" + "\n".join(map(str, leaks))

