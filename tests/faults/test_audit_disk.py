"""Threads that must not die, 1: the audit writer.

The audit disk fills up for real: the audit root is a small tmpfs this module mounts (the
tests run as root here; without the right to mount they are skipped, saying why), so writes
fail with the kernel's own ENOSPC, not a mock. What must hold: the writer survives, cuts a
failed write back out of its file (the chain verifies throughout), holds what it had taken,
refuses new records while it cannot write (``/v1/score`` then says ``audited: false``,
ingest and labels answer 503, ``/v1/ready`` fails), and writes again by itself once the disk
has room. The queue is bounded.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from kestrel.services import BROKER, REDIS, free_port, start_broker, start_redis, stop
from kestrel.settings import Settings
from serving import audit as audit_module
from serving.audit import AuditLog, AuditUnavailable
from serving.audit_chain import Status, verify
from serving.auth import mint_token
from serving.fixtures import register_tiny_model, transaction, write_features
from serving.process import running_service
from tests.conftest import make_settings
from tests.faults.probes import counter, http_metric, wait_for

pytestmark = [pytest.mark.faults]




@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the block: a disk that really fills up."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                           str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up ({done.stderr.strip()}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, leave: int = 0) -> Path:
    """Fill the filesystem of ``path`` with a file there, up to ENOSPC; then give back
    ``leave`` bytes. Its path (remove it to make room)."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        if leave:
            f.truncate(max(0, f.tell() - leave))
    return filler


def records_in(root: Path, kind: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted((root / kind).glob("*.jsonl")):
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{path.name} ends in a partial line"
        out += [orjson.loads(line) for line in data.splitlines()]
    return out


# --- the audit writer ---------------------------------------------------------------------------

def test_a_full_audit_disk_fails_the_writer_keeps_the_chain_and_it_recovers(
    settings: Settings, tmp_path: Path
) -> None:
    key = settings.secret("audit_key")
    with small_tmpfs(tmp_path / "audit", "256k") as root:
        log = AuditLog(root, 0, key, max_queued=10_000)
        try:
            for i in range(20):
                assert log.record("decisions", {"n": i, "pad": "x" * 200})
            assert log.flush() and log.healthy
            filler = fill(root)
            t0 = time.monotonic()
            taken = 20
            # what the writer holds when the disk fills: taken, written later
            while log.healthy and time.monotonic() - t0 < 10:
                taken += log.record("decisions", {"n": taken, "pad": "x" * 200})
                time.sleep(0.001)
            to_fail = time.monotonic() - t0
            assert not log.healthy, "the writer never noticed the full disk"
            status = log.status()
            assert status["writer_alive"] and "No space left" in (status["error"] or "")
            # refused while failed: nothing queues up behind a disk that does not write
            assert not log.admits("decisions", 1)
            assert not log.record("decisions", {"n": -1})
            with pytest.raises(AuditUnavailable, match="cannot write"):
                log.check("ingest")
            # the failed write was cut back out of the file: the chain verifies as it is
            assert all(r.status is Status.ok for r in verify(root, key)), verify(root, key)
            # make room: the writer tries again by itself and writes what it held
            filler.unlink()
            t1 = time.monotonic()
            to_recover = wait_for(lambda: log.healthy, 10)
            assert log.flush()
            log.check("ingest")
            assert log.record("decisions", {"n": taken})
            assert log.flush()
        finally:
            log.close()
        reports = verify(root, key)
        assert reports and all(r.status is Status.ok for r in reports), reports
        got = [r["n"] for r in records_in(root, "decisions")]
        assert got == list(range(taken + 1)), "a record taken was lost, or one refused kept"
        assert log.lost == 0
        print(f"\nfull tmpfs: writer failed {to_fail * 1000:.0f} ms after the disk filled "
              f"({taken - 20} records taken meanwhile, written later); healthy "
              f"{to_recover:.2f} s after room was made (retry every {audit_module.RETRY_S} s)"
              f"; {time.monotonic() - t1:.2f} s to all written")


def test_the_audit_queue_is_bounded(settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                    tmp_path: Path) -> None:
    gate = threading.Event()

    class SlowDisk:
        """The os module as serving/audit.py sees it, on a disk that takes its time: nothing
        is written until the gate opens."""

        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def write(fd: int, data: bytes) -> int:
            gate.wait(30)
            return os.write(fd, data)

    monkeypatch.setattr(audit_module, "os", SlowDisk())
    refused = counter("kestrel_audit_refused_total", kind="access")
    log = AuditLog(tmp_path / "audit", 0, settings.secret("audit_key"), max_queued=10)
    try:
        accepted = [log.record("access", {"n": i}) for i in range(15)]
        assert accepted == [True] * 10 + [False] * 5
        assert log.healthy  # slow, not failed: readiness stays up
        with pytest.raises(AuditUnavailable, match="queue is full"):
            log.check("labels")
        assert counter("kestrel_audit_refused_total", kind="access") - refused == 5
        assert log.status()["queued"] == 10
        gate.set()
        assert log.flush()
        assert log.status()["queued"] == 0
        assert log.record("access", {"n": 10})
    finally:
        gate.set()
        log.close()
    assert [r["n"] for r in records_in(tmp_path / "audit", "access")] == list(range(11))


def test_a_batch_larger_than_the_bound_is_taken_when_nothing_waits(
    settings: Settings, tmp_path: Path
) -> None:
    log = AuditLog(tmp_path / "audit", 0, settings.secret("audit_key"), max_queued=5)
    try:
        assert log.admits("decisions", 50)
        assert log.record_many("decisions", [{"n": i} for i in range(50)], admitted=True)
        assert log.flush()
    finally:
        log.close()
    assert len(records_in(tmp_path / "audit", "decisions")) == 50


def test_a_closed_writer_refuses_records(settings: Settings, tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit", 0, settings.secret("audit_key"))
    log.close()
    assert not log.healthy
    assert not log.record("access", {"n": 1})
    with pytest.raises(AuditUnavailable):
        log.check("ingest")


# --- the alert consumer's supervisor -----------------------------------------------------------


# --- over HTTP: `kestrel serve` with its audit root on a tmpfs that fills up --------------------

@pytest.mark.integration
@pytest.mark.slow
def test_a_full_audit_disk_keeps_scoring_unaudited_and_refuses_ingest_and_labels(
    tmp_path: Path,
) -> None:
    var = tmp_path / "var"
    settings = make_settings(var, kafka_bootstrap=f"127.0.0.1:{free_port()}",
                             redis_url=f"redis://127.0.0.1:{free_port()}/0",
                             model_poll_seconds=1.0)
    assert not settings.redis_url.startswith("redis://127.0.0.1:6379/")
    key = settings.secret("audit_key")
    start_redis(settings)
    start_broker(settings)
    answered: dict[str, bool] = {}  # txn_id -> audited, as answered
    try:
        register_tiny_model(settings, seed=0)
        write_features(settings, settings.redis_url, {
            f"card-{i:04d}": {"card_txn_count_1h": i % 7} for i in range(50)})
        with small_tmpfs(var / "audit", "4m") as root:
            with running_service(settings, free_port(), tmp_path / "serve.log",
                                 timeout=180) as url:
                auth = {role: {"authorization": f"Bearer {mint_token(settings, role, 'acme')}"}
                        for role in ("scorer", "investigator")}
                n = iter(range(1_000_000))

                def score() -> dict[str, Any]:
                    # a new connection each time: the calls spread over both workers
                    r = httpx.post(url + "/v1/score", content=orjson.dumps(transaction(next(n))),
                                   headers=auth["scorer"], timeout=10)
                    assert r.status_code == 200, r.text
                    d = r.json()
                    answered[d["txn_id"]] = d["audited"]
                    return d

                def ready() -> httpx.Response:
                    return httpx.get(url + "/v1/ready", timeout=10)

                def steadily(what: Callable[[], bool], times: int = 10) -> Callable[[], bool]:
                    return lambda: all(what() for _ in range(times))

                wait_for(steadily(lambda: ready().status_code == 200), 120, 0.2)
                assert score()["audited"] is True

                filler = fill(root)
                t0 = time.monotonic()
                to_unaudited = wait_for(steadily(lambda: score()["audited"] is False), 30, 0)
                wait_for(steadily(lambda: ready().status_code == 503), 30, 0.05)
                doc = ready().json()
                assert doc["checks"]["audit"] is False and doc["audit"]["healthy"] is False
                assert "No space left" in doc["audit"]["error"]
                # still deciding, on the model (not degraded), and saying it is not audited
                t1 = time.perf_counter()
                d = score()
                took = time.perf_counter() - t1
                assert d["audited"] is False and d["degraded"] is False
                r = httpx.post(url + "/v1/events/transactions",
                               content=orjson.dumps(transaction(900_000)),
                               headers=auth["scorer"], timeout=10)
                assert r.status_code == 503 and r.headers["retry-after"], r.text
                assert "audit log cannot write" in r.json()["message"]
                r = httpx.post(url + "/v1/labels", json={"txn_id": "score-000001",
                                                         "is_fraud": False},
                               headers=auth["investigator"], timeout=10)
                assert r.status_code == 503 and r.headers["retry-after"], r.text
                assert http_metric(url, "kestrel_unaudited_decisions_total") > 0
                assert http_metric(url, "kestrel_audit_write_errors_total") > 0
                assert http_metric(url, "kestrel_audit_refused_total") > 0
                down = time.monotonic() - t0

                filler.unlink()  # room again: each worker finds out at its next try
                t2 = time.monotonic()
                to_audited = wait_for(steadily(lambda: score()["audited"] is True), 30, 0.05)
                to_ready = wait_for(steadily(lambda: ready().status_code == 200), 30, 0.05)
                r = httpx.post(url + "/v1/events/transactions",
                               content=orjson.dumps(transaction(900_001)),
                               headers=auth["scorer"], timeout=10)
                assert r.status_code == 202, r.text
                print(f"\nfull audit disk over HTTP: every decision unaudited "
                      f"{to_unaudited:.2f} s after the disk filled; /v1/score answered in "
                      f"{took * 1000:.1f} ms while full ({down:.1f} s full); after room was "
                      f"made, audited again in {to_audited:.2f} s, /v1/ready 200 in "
                      f"{time.monotonic() - t2:.2f} s ({to_ready:.2f} s after audited)")
            # the service closed its files: every chain verifies, and the log holds exactly
            # the decisions answered `audited: true`
            reports = verify(root, key)
            assert reports and all(r.status is Status.ok for r in reports), reports
            logged = [r["txn_id"] for r in records_in(root, "decisions")]
            assert len(logged) == len(set(logged))
            assert set(logged) == {t for t, audited in answered.items() if audited}
            assert any(not audited for audited in answered.values())
    finally:
        stop(settings, BROKER)
        stop(settings, REDIS)
