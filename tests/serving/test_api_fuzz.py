"""The API fuzz test (issue 27, item 10): schemathesis against the running service.

The service runs as `kestrel serve` (a process) with a real broker, a private Redis and a tiny
registered model, started here like in test_decisioning_http.py. The spec is read from the live
``/openapi.json``; schemathesis generates requests for every operation in it, valid ones and
invalid ones (schema-violating bodies, parameters and headers), and sends them with an admin
token. Every answer must be no 5xx, have a status, content type and headers the spec states for
that operation, and, when it is an error, the one error body of serving/http_errors.py: the
spec's ``ErrorBody`` (``{error, message, errors[{path, reason}]}``, nothing else), 400 with its
field errors (never FastAPI's 422), 401 with ``WWW-Authenticate: Bearer``, 429/503 with
``Retry-After``, no card number echoed. 2xx bodies are not checked against the spec (several
have no schema yet).

A few hundred requests in all (``EXAMPLES`` per operation and generation mode), derandomized so
that a run is repeatable; Hypothesis keeps no example database. The run does not stop at the
first failure: every distinct failure is listed at the end with a curl command that reproduces
it (the token filtered out), with the wall and CPU time of the run (this process and the
service's). ``pytest -s`` shows that summary on success too.
"""

from __future__ import annotations

import collections
import contextlib
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import hypothesis
import orjson
import psutil
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    status_code_conformance,
)

from kestrel.pan import pan_like
from kestrel.services import BROKER, REDIS, free_port, start_broker, start_redis, stop
from kestrel.settings import Settings
from serving.auth import mint_token
from serving.fixtures import register_tiny_model, write_features
from serving.http_errors import ErrorBody
from serving.process import running_service
from tests.conftest import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# generated requests per operation and generation mode (positive, negative): 8 operations ->
# about 14 x 30 + 2 (GET /v1/ready has no input to vary) ~ 420 requests, ~10-20 s of fuzzing
EXAMPLES = 30
# schemathesis' own checks: no 5xx; status, content type and headers as the spec states them
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance]
ERROR_KEYS = {"error", "message", "errors"}
PROBLEM_KEYS = {"path", "reason"}


@dataclass
class Live:
    settings: Settings
    url: str
    token: str
    port: int

    def service_processes(self) -> list[psutil.Process]:
        """`kestrel serve` (a child of this process, `bentoml serve` once it has started)
        and its workers."""
        for child in psutil.Process().children():
            try:
                cmd = child.cmdline()
                if "serve" in cmd and cmd[cmd.index("--port") + 1] == str(self.port):
                    return [child, *child.children(recursive=True)]
            except (psutil.Error, ValueError, IndexError):
                continue
        return []


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    var = tmp_path_factory.mktemp("fuzz-var")
    # a limit no fuzz run reaches: a 429 would hide what the request itself gets
    settings = make_settings(var, kafka_bootstrap=f"127.0.0.1:{free_port()}",
                             redis_url=f"redis://127.0.0.1:{free_port()}/0",
                             rate_limit_per_second=1e6, rate_limit_burst=1e6, serve_workers=1)
    start_redis(settings)
    start_broker(settings)  # POST /v1/events/transactions and /v1/labels publish to it
    try:
        register_tiny_model(settings, seed=0)
        write_features(settings, settings.redis_url,
                       {"card-0001": {"card_txn_count_1h": 6, "card_txn_count_10m": 5}},
                       customers={"C0001": {"customer_txn_count_24h": 3}})
        port = free_port()
        with running_service(settings, port, var / "serve.log", timeout=180) as url:
            yield Live(settings, url, mint_token(settings, "admin", "fuzz"), port)
    finally:
        stop(settings, BROKER)
        stop(settings, REDIS)


# --- the spec ----------------------------------------------------------------------------------

def test_spec_states_the_error_shape_and_the_bearer_scheme(live: Live) -> None:
    spec = httpx.get(live.url + "/openapi.json", timeout=30).json()
    schemas = spec["components"]["schemas"]
    assert set(schemas["ErrorBody"]["required"]) == {"error", "message"}
    assert set(schemas["ErrorBody"]["properties"]) == ERROR_KEYS
    assert schemas["ErrorBody"]["properties"]["errors"]["type"] == "array"  # absent, not null
    assert set(schemas["FieldProblem"]["required"]) == PROBLEM_KEYS
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert spec["components"]["securitySchemes"]["bearer"] == {
        **spec["components"]["securitySchemes"]["bearer"], "type": "http", "scheme": "bearer"}
    operations = [(path, method, op) for path, ops in spec["paths"].items()
                  for method, op in ops.items()]
    assert {(m.upper(), p) for p, m, _ in operations} >= {
        ("GET", "/v1/ready"), ("POST", "/v1/events/transactions"), ("POST", "/v1/score"),
        ("POST", "/v1/score/batch"), ("GET", "/v1/users/{customer_id}/insights"),
        ("GET", "/v1/insights/top-spenders"), ("GET", "/v1/alerts"), ("POST", "/v1/labels")}
    for path, method, op in operations:
        where = f"{method.upper()} {path}"
        responses = op["responses"]
        assert "422" not in responses, where
        assert "400" in responses, where
        for status, answer in responses.items():
            if (path, status) == ("/v1/ready", "503"):
                continue  # not ready: the readiness document itself, naming the failed checks
            if status.startswith(("4", "5")):
                assert answer["content"] == {"application/json": {"schema": {
                    "$ref": "#/components/schemas/ErrorBody"}}}, (where, status)
        if path == "/v1/ready":
            assert "security" not in op, where
            continue
        assert op["security"] == [{"bearer": []}], where
        assert {"401", "403", "429"} <= set(responses), where
        assert responses["401"]["headers"]["WWW-Authenticate"]["required"] is True, where
        for status in {"429", "503"} & set(responses):
            assert responses[status]["headers"]["Retry-After"]["required"] is True, where


# --- the fuzz run ------------------------------------------------------------------------------

@dataclass
class Finding:
    operation: str
    status: int | None
    what: str
    detail: str
    reproduce: str
    count: int = 1


@dataclass
class Run:
    """What the run saw: statuses per operation and mode, and every distinct failure."""

    statuses: collections.Counter[tuple[str, str, int]] = field(
        default_factory=collections.Counter)
    findings: dict[tuple[str, int | None, str], Finding] = field(default_factory=dict)
    examples: int = 0

    def found(self, operation: str, status: int | None, what: str, detail: str,
              reproduce: str) -> None:
        key = (operation, status, what)
        if key in self.findings:
            self.findings[key].count += 1
        else:
            self.findings[key] = Finding(operation, status, what, detail, reproduce)

    def report(self, timing: str) -> str:
        lines = [f"API fuzz: {self.examples} requests, {timing}"]
        by_op: dict[str, list[str]] = collections.defaultdict(list)
        for (op, mode, status), n in sorted(self.statuses.items()):
            by_op[op].append(f"{mode} {status}x{n}")
        lines += [f"  {op}: {', '.join(counts)}" for op, counts in by_op.items()]
        for f in self.findings.values():
            lines.append(f"\nFAILURE {f.operation} -> {f.status}: {f.what} ({f.count}x)\n"
                         f"{f.detail}\n  reproduce: {f.reproduce}")
        return "\n".join(lines)


def error_body_problems(status: int, headers: Mapping[str, Any], content: bytes) -> list[str]:
    """How an error answer breaks the error contract of serving/http_errors.py (empty: it
    keeps it). Independent of the spec, so a spec that drifted with the code still fails."""
    headers = {k.lower(): v[0] if isinstance(v, list) else v for k, v in headers.items()}
    problems = []
    if status == 422:
        problems.append("FastAPI's 422: invalid input must be 400")
    media = headers.get("content-type", "").split(";")[0].strip()
    if media != "application/json":
        return [*problems, f"content type {media!r}, not application/json"]
    try:
        doc = orjson.loads(content)
    except orjson.JSONDecodeError:
        return [*problems, "body is not JSON"]
    if not isinstance(doc, dict):
        return [*problems, "body is not an object"]
    if set(doc) - ERROR_KEYS:
        problems.append(f"keys {sorted(set(doc) - ERROR_KEYS)} besides error/message/errors")
    try:
        ErrorBody.model_validate(doc, strict=True)
    except ValueError as exc:
        problems.append(f"not an ErrorBody: {str(exc).splitlines()[0]}")
        return problems
    errors = doc.get("errors")
    if errors is not None:
        for e in errors:
            if set(e) != PROBLEM_KEYS:
                problems.append(f"field error with keys {sorted(e)}, not path/reason")
    if status == 400 and not errors:
        problems.append("400 without its field errors")
    texts = [doc["error"], doc["message"], *(v for e in errors or () for v in e.values())]
    if any(pan_like(t) for t in texts):
        problems.append("the error body repeats a card number from the request")
    if status == 401 and headers.get("www-authenticate") != "Bearer":
        problems.append("401 without WWW-Authenticate: Bearer")
    if status in (429, 503) and not re.fullmatch(r"\d+", headers.get("retry-after", "")):
        problems.append(f"{status} without Retry-After")
    return problems


CURRENCIES = st.sampled_from(["EUR", "USD", "GBP", "JPY"])
COUNTRIES = st.sampled_from(["FR", "US", "DE", "JP", "KP"])


@st.composite
def plausible(draw: st.DrawFn, case: Any) -> Any:
    """``case`` with what the spec does not state yet made valid: ISO currency and country
    codes, an event_time in the accepted window, a card_id and no card_number, no field next
    to a batch's events, a well-formed customer id. Otherwise nearly every decision request
    valid by the spec is a 400, and the decision path is never fuzzed."""
    body = case.body
    events = body.get("events") if isinstance(body, dict) else None
    if isinstance(events, list):  # the batch object allows no other field
        case.body = body = {"events": events}
    for ev in events if isinstance(events, list) else [body]:
        if isinstance(ev, dict) and "currency" in ev:
            ev["currency"], ev["country"] = draw(CURRENCIES), draw(COUNTRIES)
            ago = draw(st.integers(0, 30 * 24 * 3600))
            ev["event_time"] = (datetime.now(UTC) - timedelta(seconds=ago)).isoformat()
            ev.pop("card_number", None)  # exactly one of card_id and card_number
            ev["card_id"] = ev.get("card_id") or draw(st.sampled_from(["card-0001", "card-x"]))
    if case.path_parameters and "customer_id" in case.path_parameters:
        case.path_parameters["customer_id"] = draw(st.sampled_from(["C0001", "C0002"]))
    return case


def fuzz(url: str, token: str, examples: int = EXAMPLES,
         processes: Callable[[], list[psutil.Process]] = list) -> tuple[Run, str]:
    """Every operation of the live spec, ``examples`` requests per generation mode."""
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    schema.config.update(base_url=url)
    auth = {"Authorization": f"Bearer {token}"}
    run = Run()
    settings = hypothesis.settings(
        max_examples=examples, database=None, derandomize=True, deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: every failure is recorded
        suppress_health_check=list(HealthCheck), verbosity=hypothesis.Verbosity.quiet)

    def service_cpu() -> float:
        total = 0.0
        for proc in processes():
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def operation_test(op: Any, mode: GenerationMode) -> Callable[[], None]:
        strategy = op.as_strategy(generation_mode=mode)
        if mode is GenerationMode.POSITIVE:  # half as generated, half made plausible
            strategy = st.one_of(strategy, strategy.flatmap(plausible))

        @settings
        @hypothesis.given(case=strategy)
        def one(case: Any) -> None:
            run.examples += 1
            reproduce = case.as_curl_command(headers=auth)
            try:
                response = case.call(headers=auth, timeout=60)
            except Exception as exc:  # the service did not answer
                run.found(op.label, None, type(exc).__name__, str(exc)[:500], reproduce)
                return
            status = response.status_code
            run.statuses[(op.label, mode.value, status)] += 1
            try:
                case.validate_response(response, checks=CHECKS)
                if status >= 400:  # the error body as the spec states it
                    op.validate_response(response, case=case)
            except (AssertionError, BaseExceptionGroup) as exc:
                for failure in getattr(exc, "exceptions", [exc]):
                    title = getattr(failure, "title", type(failure).__name__)
                    run.found(op.label, status, title, _indent(str(failure)), reproduce)
            for problem in error_body_problems(status, response.headers,
                                               response.content) if status >= 400 else ():
                run.found(op.label, status, problem, _indent(response.text[:500]), reproduce)

        return one

    wall, cpu, svc = time.perf_counter(), time.process_time(), service_cpu()
    for result in schema.get_all_operations():
        if not hasattr(result, "ok"):  # an operation schemathesis cannot read
            error = result.err()
            run.found(f"{error.method} {error.path}", None, "invalid operation in the spec",
                      _indent(str(error)), url + "/openapi.json")
            continue
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # Unsatisfiable: nothing to make invalid (GET /v1/ready has no input)
            with contextlib.suppress(hypothesis.errors.Unsatisfiable):
                operation_test(op, mode)()
    timing = (f"wall {time.perf_counter() - wall:.1f} s, CPU {time.process_time() - cpu:.1f} s "
              f"in the test process + {service_cpu() - svc:.1f} s in the service")
    return run, timing


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines())


def test_fuzz_every_route_against_the_spec(live: Live) -> None:
    run, timing = fuzz(live.url, live.token, processes=live.service_processes)
    report = run.report(timing)
    print("\n" + report)
    assert run.examples >= 7 * EXAMPLES, report  # every operation was exercised
    assert not run.findings, report


# --- found while fuzzing, pinned ------------------------------------------------------------------

PAN = "4111111111111111"


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/score/batch", {"events": [], PAN: 1}),  # an unknown field next to events
    ("/v1/score", {PAN: 1}),  # an unknown field of a transaction
    ("/v1/labels", {"txn_id": "t-1", "is_fraud": True, f"x{PAN}": 1}),
])
def test_error_answers_do_not_repeat_a_card_number(live: Live, path: str,
                                                   body: dict[str, Any]) -> None:
    r = httpx.post(live.url + path, content=orjson.dumps(body), timeout=30,
                   headers={"authorization": f"Bearer {live.token}"})
    assert r.status_code == 400, r.text
    assert not error_body_problems(r.status_code, r.headers, r.content), r.text
    assert "1111" not in r.text and any(e["path"] for e in r.json()["errors"])


@pytest.mark.parametrize("path", [
    "/v1/users/C%0A1/insights",  # a newline: BentoML's mount pattern does not match it
    "/v1/no-such-route",  # no route of the app matches: BentoML answers it itself
])
def test_a_path_the_app_does_not_route_answers_the_error_body(live: Live, path: str) -> None:
    r = httpx.get(live.url + path, timeout=30,
                  headers={"authorization": f"Bearer {live.token}"})
    assert r.status_code in (400, 404)
    assert not error_body_problems(r.status_code, r.headers, r.content), r.text


def test_unsupported_method_answers_the_error_body(live: Live) -> None:
    r = httpx.delete(live.url + "/v1/alerts", timeout=30,
                     headers={"authorization": f"Bearer {live.token}"})
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    assert not error_body_problems(r.status_code, r.headers, r.content), r.text
