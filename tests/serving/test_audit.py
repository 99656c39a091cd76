"""The tamper-evident audit log (serving/audit.py, serving/audit_chain.py) on real files:
writers in separate processes, every kind of tampering the chain and the anchor must show,
what a crash leaves, and the access records of refused calls."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from kestrel.settings import Settings, get_settings
from serving.audit import AuditLog
from serving.audit_chain import FileReport, Status, genesis, record_head, verify, verify_file
from tests.conftest import env_for

ROOT_DIR = Path(__file__).resolve().parents[2]

# a writer in its own process; ``go`` lets two of them start writing together
WRITER = """
import os, sys, time
from pathlib import Path
from serving.audit import AuditLog
root, tag, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
log = AuditLog(root, 10, os.environ["AUDIT_TEST_KEY"].encode())
deadline = time.monotonic() + 60
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.005)
for batch in range(20):
    log.record_many("access", [{"writer": tag, "n": batch * 10 + i} for i in range(10)])
    time.sleep(0.005)
log.close()
"""

# a writer killed between writing records and anchoring them: 5 anchored, 3 only written
CRASH = """
import os, sys, time
from pathlib import Path
from serving.audit import AuditLog
root = Path(sys.argv[1])
log = AuditLog(root, 60_000, os.environ["AUDIT_TEST_KEY"].encode())
for n in range(1, 6):
    log.record("access", {"n": n, "note": "anchored"})
log.flush()
for n in range(6, 9):
    log.record("access", {"n": n, "note": "written"})
path = next((root / "access").glob("*.jsonl"))
while path.read_bytes().count(b"\\n") < 8:
    time.sleep(0.005)
os._exit(0)
"""


def _run(code: str, key: bytes, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "AUDIT_TEST_KEY": key.decode(), "PYTHONPATH": str(ROOT_DIR)}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=ROOT_DIR)


@pytest.fixture
def key(settings: Settings) -> bytes:
    return settings.secret("audit_key")


@pytest.fixture
def root(settings: Settings) -> Path:
    return settings.var_dir / "audit"


def write_closed(root: Path, key: bytes, n: int = 10, kind: str = "access") -> Path:
    """A file of ``n`` records ``{"n": i}`` whose writer closed it; its path."""
    log = AuditLog(root, 0, key)
    for i in range(1, n + 1):
        log.record(kind, {"n": i, "note": f"record {i}"})
    log.close()
    [path] = (root / kind).glob("*.jsonl")
    return path


def name_of(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def rewrite(path: Path, new: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in new))


def forged_line(path: Path, seq: int, prev_line: bytes | None) -> bytes:
    """A record chained exactly as a writer chains it: anyone can compute this, no key."""
    prev = (hashlib.sha256(prev_line).hexdigest().encode() if prev_line is not None
            else genesis(name_of(path)))
    return record_head(seq, prev) + b',"n":99,"note":"forged"}'


def only(reports: list[FileReport]) -> FileReport:
    [report] = reports
    return report


def test_two_writer_processes_on_one_day_each_write_one_chain(root: Path, key: bytes) -> None:
    root.parent.mkdir(parents=True)
    go = root.parent / "go"
    writers = [_run(WRITER, key, str(root), tag, str(go)) for tag in ("a", "b")]
    time.sleep(1.0)  # both import and create their AuditLog before either writes
    go.touch()
    assert [w.wait(60) for w in writers] == [0, 0]
    reports = verify(root, key)
    assert len(reports) == 2, [r.text() for r in reports]
    assert {r.status for r in reports} == {Status.ok}
    assert all(r.records == r.anchored == 200 and "closed" in r.reason for r in reports)
    days = {r.name.split("/")[1].split("_")[0] for r in reports}
    assert len(days) == 1  # one day, two files: one per writer process
    for report in reports:
        docs = [orjson.loads(line) for line in lines(root / report.name)]
        assert [d["seq"] for d in docs] == list(range(1, 201))
        assert len({d["writer"] for d in docs}) == 1  # one writer per file
        assert [d["n"] for d in docs] == list(range(200))


def test_a_closed_file_verifies_and_its_lines_stay_plain_json(root: Path, key: bytes) -> None:
    path = write_closed(root, key)
    report = only(verify(root, key))
    assert report.status is Status.ok and report.records == 10 and "closed" in report.reason
    docs = [orjson.loads(line) for line in lines(path)]
    assert [(d["seq"], d["n"]) for d in docs] == [(i, i) for i in range(1, 11)]
    assert docs[0]["prev"] == genesis(name_of(path)).decode()
    # a record's own "seq" does not clash with the chain's
    log = AuditLog(root, 0, key)
    log.record("decisions", {"seq": "mine", "prev": 1, "x": 2})
    log.close()
    [doc] = [orjson.loads(line) for f in (root / "decisions").glob("*.jsonl")
             for line in lines(f)]
    assert doc["seq"] == 1 and doc["doc_seq"] == "mine" and doc["doc_prev"] == 1
    assert {r.status for r in verify(root, key)} == {Status.ok}


Tamper = Callable[[Path], None]


def _edit_field(n: int) -> Tamper:
    def tamper(path: Path) -> None:
        new = lines(path)
        new[n - 1] = new[n - 1].replace(b'"n":%d,' % n, b'"n":%d,' % (n + 100))
        assert new != lines(path)
        rewrite(path, new)
    return tamper


def _delete(n: int) -> Tamper:
    def tamper(path: Path) -> None:
        new = lines(path)
        del new[n - 1]
        rewrite(path, new)
    return tamper


def _swap(n: int) -> Tamper:
    def tamper(path: Path) -> None:
        new = lines(path)
        new[n - 1], new[n] = new[n], new[n - 1]
        rewrite(path, new)
    return tamper


def _truncate(keep: int) -> Tamper:
    def tamper(path: Path) -> None:
        rewrite(path, lines(path)[:keep])
    return tamper


def _append_forged(path: Path) -> None:
    old = lines(path)
    rewrite(path, [*old, forged_line(path, len(old) + 1, old[-1])])


def _rewrite_chain(path: Path) -> None:
    """Every record rewritten and re-chained (record 3 changed): consistent, but not the
    chain the anchor signed."""
    new: list[bytes] = []
    for i, line in enumerate(lines(path), 1):
        body = line[line.index(b',"n"'):].replace(b'"n":3,', b'"n":33,')
        prev = (hashlib.sha256(new[-1]).hexdigest().encode() if new
                else genesis(name_of(path)))
        new.append(record_head(i, prev) + body)
    rewrite(path, new)


def _rename(path: Path) -> None:
    path.rename(path.with_name(path.name.replace("_", "_x", 1)))
    path.with_suffix(".anchor").rename(path.with_name(
        path.name.replace("_", "_x", 1)).with_suffix(".anchor"))


@pytest.mark.parametrize(("tamper", "record", "why"), [
    (_edit_field(4), 4, "record 4 was edited"),
    (_edit_field(1), 1, "record 1 was edited"),
    (_edit_field(10), 10, "hash is not the anchor's"),  # the last one: only the anchor shows it
    (_delete(5), 5, "seq is 6 where 5 was expected"),
    (_swap(3), 3, "seq is 4 where 3 was expected"),
    (_truncate(8), 9, "records 9-10 were cut off"),
    (_truncate(0), 1, "records 1-10 were cut off"),
    (_append_forged, 11, "after the closing anchor"),
    (_rewrite_chain, 10, "hash is not the anchor's"),
    (lambda p: p.with_suffix(".anchor").unlink(), 1, "anchor file is missing"),
    (_rename, 1, "not this file's genesis"),
], ids=["edit-middle", "edit-first", "edit-last", "delete-middle", "reorder", "truncate-tail",
        "truncate-all", "append-forged", "rewrite-chain", "anchor-deleted", "renamed"])
def test_tampering_is_detected_at_the_first_broken_record(
        root: Path, key: bytes, tamper: Tamper, record: int, why: str) -> None:
    path = write_closed(root, key)
    assert only(verify(root, key)).status is Status.ok
    tamper(path)
    report = only(verify(root, key))
    assert report.status is Status.broken, report.text()
    assert (report.record, report.line) == (record, record), report.text()
    assert why in report.reason, report.text()
    assert f"broken at record {record} line {record}: " in report.text()


def test_a_wrong_key_fails_every_file(root: Path, key: bytes) -> None:
    write_closed(root, key)
    write_closed(root, key, 3, kind="decisions")
    reports = verify(root, b"another-key-0123456789abcdef-0123456789")
    assert [(r.status, r.record) for r in reports] == [(Status.broken, 10), (Status.broken, 3)]
    assert all("MAC does not verify" in r.reason for r in reports)


def test_a_crash_leaves_an_unanchored_tail_not_a_broken_chain(root: Path, key: bytes) -> None:
    assert _run(CRASH, key, str(root)).wait(60) == 0
    report = only(verify(root, key))
    assert report.status is Status.unanchored, report.text()
    assert (report.record, report.records, report.anchored) == (6, 8, 5)
    assert "3 well-chained records after the last anchor (5 records" in report.reason
    assert "unanchored at record 6 line 6: " in report.text()
    # a machine crash may also tear the last line: still a crash's tail, and said so
    [path] = (root / "access").glob("*.jsonl")
    with open(path, "ab") as f:
        f.write(b'{"seq":9,"pr')
    report = only(verify(root, key))
    assert report.status is Status.unanchored and "torn last line" in report.reason
    # tampering inside the anchored part of a crashed file is still tampering
    rewrite(path, lines(path)[:-1])  # drop the torn line
    _edit_field(2)(path)
    assert only(verify(root, key)).status is Status.broken


def test_a_running_writer_has_records_pending_and_a_forged_one_breaks_its_chain(
        root: Path, key: bytes) -> None:
    log = AuditLog(root, 60_000, key)
    try:
        for n in range(1, 4):
            log.record("access", {"n": n})
        log.flush()
        report = only(verify(root, key))
        assert report.status is Status.ok and "writer running" in report.reason
        log.record("access", {"n": 4})
        [path] = (root / "access").glob("*.jsonl")
        deadline = time.monotonic() + 10
        while len(lines(path)) < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        report = only(verify(root, key))
        assert report.status is Status.ok and "1 more not yet anchored" in report.reason
        # a record appended while the writer runs: the writer's next record does not
        # chain to it, and the next anchor names the forged one
        old = lines(path)
        with open(path, "ab") as f:
            f.write(forged_line(path, 5, old[-1]) + b"\n")
        log.record("access", {"n": 5})
        log.flush()
    finally:
        log.close()
    report = only(verify(root, key))
    assert (report.status, report.record) == (Status.broken, 5), report.text()
    assert "hash is not the anchor's" in report.reason


def test_stray_files_fail(root: Path, key: bytes) -> None:
    path = write_closed(root, key, 2)
    (root / "access" / "2024-01-01.jsonl").write_bytes(b'{"at":"old"}\n')
    moved = path.with_name("2024-01-02_h_1_t.jsonl")
    path.with_suffix(".anchor").rename(moved.with_suffix(".anchor"))  # anchor without data
    reports = {r.name: r for r in verify(root, key)}
    assert reports["access/2024-01-01.jsonl"].status is Status.broken
    assert "not a chained audit file" in reports["access/2024-01-01.jsonl"].reason
    assert "data file is missing; its anchor says 2" in reports[name_of(moved)].reason
    assert reports[name_of(path)].status is Status.broken  # and its own anchor is gone
    assert [r.name for r in verify(root, key, day="2024-01-01")] == ["access/2024-01-01.jsonl"]
    assert verify_file(root, name_of(moved), key).status is Status.broken


# --- the access audit of refused calls --------------------------------------------------------

@pytest.fixture
def service_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The process-wide settings are ``settings``, as in the service (its AuditLog takes the
    audit key from them)."""
    for name, value in env_for(settings).items():
        if name.startswith("KESTREL_"):
            monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def test_401_and_403_answers_are_audited_without_the_token(service_settings: Settings) -> None:
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.auth import mint_token

    settings = service_settings
    app = create_app(settings)
    client = TestClient(app)
    forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.c2lnbmF0dXJl"
    token = mint_token(settings, "investigator", "acme")
    assert client.get("/v1/alerts").status_code == 401
    assert client.get("/v1/alerts", headers={"authorization": f"Bearer {forged}"}
                      ).status_code == 401
    assert client.post("/v1/score", content=b"{}",  # a direct route
                       headers={"authorization": f"Bearer {token}"}).status_code == 403
    runtime = app.state.runtime()
    runtime.audit.flush()
    root = settings.var_dir / "audit"
    docs = [orjson.loads(line) for f in (root / "access").glob("*.jsonl") for line in lines(f)]
    runtime.audit.close()
    assert [(d["status"], d["method"], d["path"]) for d in docs] == [
        (401, "GET", "/v1/alerts"), (401, "GET", "/v1/alerts"), (403, "POST", "/v1/score")]
    assert all(d["sub"] is None and d["role"] is None and d["client"] is None
               for d in docs[:2])
    assert docs[2]["role"] == "investigator" and docs[2]["client"] == "acme"
    assert docs[2]["sub"].startswith("investigator") and docs[2]["route"] == "/v1/score"
    raw = b"".join(f.read_bytes() for f in root.rglob("*") if f.is_file())
    assert forged.encode() not in raw and token.encode() not in raw
    assert b"Bearer" not in raw and b"authorization" not in raw.lower()
    assert {r.status for r in verify(root, settings.secret("audit_key"))} == {Status.ok}
