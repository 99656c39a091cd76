"""Crash recovery (issue 28, part 4): ``kill -9`` of the stream and of the archiver mid-batch,
restart, drain — and everything they produced equals a clean run's.

Two runs of the same simulated input, each with its own broker, its own var dir and its own
databases on a private `redis-server` this module starts on a free port (only processes
this module started are ever signalled; never the machine's Redis on 6379):

- the clean run: `kestrel stream` and `kestrel archive` run once each until idle;
- the crashed run: both run side by side and are killed with SIGKILL twice each while they
  work through the backlog, each once its own committed offsets pass a mark: in round 1 as
  soon as its next batch has staged its files (killed between staging and the batch's
  commit point, what the staging folder left behind shows), in round 2 80 ms later,
  wherever it is; then restarted and drained.

Each run also feeds its `alerts` topic into a case store (serving/case_intake.py, in this
process, as `kestrel serve` does; SQLite in the run's var dir), running through the crashes.
Compared: the online store (every Redis key the stream wrote, and the state its snapshots and
changelogs rebuild), the offline feature log, the case store (each customer's cases and their
alerts as received but for ``emitted_at``, the wall-clock time the stream sent the alert)
and the lake (every row).

tests/stream/test_processor.py and tests/pipelines/test_archive.py kill each process alone
(the stream three times against an in-process clean run, the archiver three times against
the input); this test kills them together and adds the case store and the lake compared
with a clean run's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import pandas as pd
import psutil
import pytest
import redis

from cases.store import CaseStore
from kestrel.lake import read_table
from kestrel.lake_commit import CommitLog
from kestrel.pan import CardTokenizer
from kestrel.producer import EventProducer
from kestrel.services import (
    BROKER,
    REDIS,
    free_port,
    read_launched,
    start_broker,
    start_redis,
    stop,
)
from kestrel.settings import Settings
from kestrel.topics import ALERTS, TRANSACTIONS
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.to_kafka import stream_to_kafka
from pipelines.stream.offline_log import log_dir
from pipelines.stream.processor import offsets_key
from serving.case_intake import CaseIntake
from tests.conftest import TEST_SECRET, env_for, make_settings
from tests.pipelines.test_archive import read_topic
from tests.stream.test_processor import _snapshot

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.faults]
CONFIG = SimulationConfig(customers=2000, terminals=4000, days=3)
KILL_STREAM_AT = (2_500, 4_000)  # transactions committed by the stream when it is killed
KILL_ARCHIVE_AT = (2_000, 5_000)  # transactions in the lake when the archiver is killed
BATCHES = {"KESTREL_STREAM_BATCH_RECORDS": "500", "KESTREL_ARCHIVE_BATCH_RECORDS": "1000"}
# after the mark, round 1 kills as soon as a batch has staged its files (between staging and
# its commit point: at most 1 s later), round 2 80 ms later (wherever the process is then)
KILL_DELAY_S = (1.0, 0.08)


@pytest.fixture(scope="module")
def redis_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free port: ``redis://127.0.0.1:<port>``."""
    settings = make_settings(tmp_path_factory.mktemp("crash-redis"),
                             redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert not settings.redis_url.startswith("redis://127.0.0.1:6379/")
    start_redis(settings)
    rec = read_launched(settings, REDIS)
    assert rec is not None and "redis-server" in psutil.Process(rec.pid).name()
    try:
        yield settings.redis_url.rsplit("/", 1)[0]
    finally:
        stop(settings, REDIS)


@dataclass
class Run:
    """One run's broker, var dir, online-store db and case store."""

    settings: Settings
    cases: CaseStore
    logs: Path
    consumer: CaseIntake | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    outs: list[IO[bytes]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return env_for(self.settings) | BATCHES

    def spawn(self, what: str, *args: str) -> subprocess.Popen[bytes]:
        out = open(self.logs / f"{what}-{len(self.outs)}.log", "wb")  # noqa: SIM115
        self.outs.append(out)
        proc = subprocess.Popen([sys.executable, "-m", "cli", what, *args],
                                env=self.env(), stdout=out, stderr=out)
        self.procs[what] = proc
        return proc

    def log_tail(self, what: str) -> str:
        last = sorted(self.logs.glob(f"{what}-*.log"), key=lambda p: p.stat().st_mtime)[-1]
        return last.read_text(errors="replace")[-3000:]

    def stream_done(self, client: Any) -> int:
        return sum(int(v) for k, v in client.hgetall(offsets_key("kestrel-stream")).items()
                   if k.startswith(f"o:{TRANSACTIONS}:".encode()))

    def archive_done(self) -> int:
        return sum(CommitLog(self.settings.lake_dir, TRANSACTIONS).checkpoint().offsets.values())

    def drain(self) -> None:
        """Both processes again, until idle; both must end cleanly."""
        for what in ("stream", "archive"):
            self.spawn(what, "--idle-seconds", "3")
        for what, proc in self.procs.items():
            assert proc.wait(300) == 0, self.log_tail(what)


def new_run(tmp_path: Path, name: str, redis_base: str, db: int) -> Run:
    var = tmp_path / name
    settings = make_settings(var, kafka_bootstrap=f"127.0.0.1:{free_port()}",
                             redis_url=f"{redis_base}/{db}", stream_batch_ms=100,
                             archive_batch_seconds=0.5)
    run = Run(settings, CaseStore(f"sqlite:///{var / 'cases.db'}"), var)
    redis.Redis.from_url(settings.redis_url).flushdb()  # our own server, our own db
    start_broker(settings)
    stream_to_kafka(CONFIG, settings, CardTokenizer(TEST_SECRET.encode()).token,
                    with_labels=False)
    # the case store, fed as `kestrel serve` feeds it, through whatever happens
    run.consumer = CaseIntake(settings, lambda: run.cases, EventProducer(settings))
    run.consumer.start()
    return run


def finish(run: Run) -> tuple[int, int]:
    """Wait until the case store holds every alert of the topic, then stop its intake;
    the topic's records and distinct alerts."""
    records = [orjson.loads(m.value())["alert_id"] for m in read_topic(run.settings, ALERTS, 1)]
    alerts = set(records)
    assert alerts, "the input raises no alerts: nothing to compare"
    deadline = time.monotonic() + 60
    while run.cases.alerts("all").total < len(alerts) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert run.consumer is not None
    run.consumer.stop()
    assert run.consumer.restarts == 0, run.consumer.error
    for out in run.outs:
        out.close()
    return len(records), len(alerts)


def case_store(store: CaseStore) -> dict[str, Any]:
    """Per customer, their cases (status, rules) and each case's alerts as received, without
    ``emitted_at`` (wall-clock) and the store's own ids and times."""
    out: dict[str, Any] = {}
    page = store.queue(limit=100_000)
    assert page.total == len(page.cases)
    for summary in page.cases:
        case = store.get(summary.id)
        alerts = sorted(({k: v for k, v in a.payload.items() if k != "emitted_at"}
                         | {"evidence": list(a.evidence_txn_ids)} for a in case.alerts),
                        key=lambda a: a["alert_id"])
        out.setdefault(case.customer_id, []).append(
            {"status": case.status, "rules": sorted(case.rules), "alerts": alerts})
    return out


def lake(settings: Settings) -> list[dict[str, Any]]:
    rows = read_table(settings.lake_dir, "transactions").to_pylist()
    return sorted(rows, key=lambda r: r["txn_id"])


def test_kill_9_of_stream_and_archiver_mid_batch_ends_as_a_clean_run(
    redis_base: str, tmp_path: Path
) -> None:
    clean = new_run(tmp_path, "clean", redis_base, db=1)
    crashed = new_run(tmp_path, "crashed", redis_base, db=3)
    try:
        clean.drain()
        finish(clean)

        client = redis.Redis.from_url(crashed.settings.redis_url)
        total = sum(1 for _ in lake(clean.settings))
        kills: list[str] = []
        for round_, (stream_at, archive_at) in enumerate(zip(KILL_STREAM_AT, KILL_ARCHIVE_AT,
                                                             strict=True)):
            marks = {"stream": stream_at, "archive": archive_at}
            done = {"stream": lambda: crashed.stream_done(client),
                    "archive": crashed.archive_done}
            # a batch interrupted between staging its files and its commit point leaves them
            staging = {"stream": log_dir(crashed.settings.var_dir) / "_staging",
                       "archive": crashed.settings.lake_dir / "_staging"}
            for what in marks:
                crashed.spawn(what)
            alive = set(marks)
            due: dict[str, float] = {}
            deadline = time.monotonic() + 180
            while alive and time.monotonic() < deadline:
                for what in list(alive):
                    proc = crashed.procs[what]
                    assert proc.poll() is None, f"{what} ended:\n{crashed.log_tail(what)}"
                    if what not in due and done[what]() >= marks[what]:
                        due[what] = time.monotonic() + KILL_DELAY_S[round_]
                    staged_now = round_ == 0 and what in due and staging[what].is_dir() \
                        and any(staging[what].iterdir())
                    if what in due and (staged_now or time.monotonic() >= due[what]):
                        os.kill(proc.pid, signal.SIGKILL)  # only the pid this test started
                        proc.wait()
                        alive.discard(what)
                        staged = sum(1 for _ in staging[what].glob("*")) \
                            if staging[what].is_dir() else 0
                        kills.append(f"{what} round {round_ + 1} at {done[what]()} "
                                     f"({staged} staged batch folders left)")
                time.sleep(0.005)
            assert not alive, f"{alive} never reached their marks"
        assert crashed.stream_done(client) < total and crashed.archive_done() < total, (
            "killed too late: nothing was left to recover")
        crashed.drain()
        sent, distinct = finish(crashed)
        print(f"\n{total} transactions; killed: " + "; ".join(kills) + f"; {sent} alert "
              f"records for {distinct} alerts after the crashes")

        # the online store and the offline feature log
        crashed_store, crashed_logs = _snapshot(crashed.settings, "kestrel-stream")
        clean_store, clean_logs = _snapshot(clean.settings, "kestrel-stream")
        assert crashed_store.keys() == clean_store.keys()
        assert crashed_store == clean_store
        for entity in clean_logs:
            pd.testing.assert_frame_equal(crashed_logs[entity], clean_logs[entity])
        # the case store
        clean_cases = case_store(clean.cases)
        assert clean_cases
        assert case_store(crashed.cases) == clean_cases
        # the lake: every row once, the same rows
        crashed_lake = lake(crashed.settings)
        assert len({r["txn_id"] for r in crashed_lake}) == len(crashed_lake) == total
        assert crashed_lake == lake(clean.settings)
        assert not list(crashed.settings.lake_dir.rglob(".*.tmp"))
    finally:
        for run in (clean, crashed):
            for proc in run.procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if run.consumer is not None:
                run.consumer.stop()
            stop(run.settings, BROKER)
