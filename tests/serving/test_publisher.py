"""The publisher of scored transactions and decisions without a broker (serving/publisher.py):
what librdkafka cannot deliver lands in the spool in order, new records queue behind it, a
full spool is said and counted, a restart keeps it all. With a broker: tests/faults."""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson
import pytest

from kestrel.settings import Settings
from kestrel.topics import DECISIONS, TRANSACTIONS
from serving.publisher import DROPPED, LIVE, SPOOLED, Publisher, claim_slot, spool_depth
from tests.conftest import make_settings


def _settings(tmp_path: Path, **kw: object) -> Settings:
    # nothing listens on port 1: every record times out after message.timeout.ms (1 s)
    return make_settings(tmp_path / "var", kafka_bootstrap="127.0.0.1:1",
                         decision_publish_linger_ms=0, publish_timeout_ms=200, **kw)


def _batch(i: int, n: int = 1) -> list[tuple[str, list[tuple[str, bytes]]]]:
    return [(TRANSACTIONS, [(f"C{j % 3}", b'{"txn_id":"t%d"}' % j) for j in range(i, i + n)]),
            (DECISIONS, [(f"t{j}", b'{"txn_id":"t%d","d":1}' % j) for j in range(i, i + n)])]


def _wait(cond: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _spooled(pub: Publisher) -> list[tuple[str, bytes | None, bytes]]:
    out = []
    for lane in (pub.retry, pub.spool):
        out += lane.read(1_000_000, 1 << 40).records
    return out


@pytest.mark.slow
def test_undelivered_records_are_spooled_in_order_and_survive_a_restart(
        tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    pub = Publisher(settings)
    assert pub.route() == LIVE and not pub.spooling
    for i in range(0, 10, 2):
        pub.publish(LIVE, _batch(i, 2))  # into librdkafka: fails after 1 s
    _wait(lambda: pub.retry.records == 20)
    assert pub.spooling and pub.route() == SPOOLED
    pub.publish(pub.route(), _batch(10, 3))  # behind the failed ones, in the main log
    pub.publish(LIVE, _batch(13))  # routed live a moment too late: kept all the same
    assert pub.spool.records == 8
    got = _spooled(pub)
    for topic in (TRANSACTIONS, DECISIONS):  # per topic (so per key) in the order sent
        sent = [v for i in range(0, 10, 2) for t, recs in _batch(i, 2) if t == topic
                for _, v in recs]
        assert [v for t, _, v in got[:20] if t == topic] == sent
    assert [v for _, _, v in got[20:]] == [v for _, recs in _batch(10, 3) + _batch(13)
                                           for _, v in recs]
    _wait(lambda: spool_depth(settings.spool_dir)["records"] == 28)
    pub.close(1.0)
    again = Publisher(settings)  # a restarted worker takes the free slot, and its records
    assert again.slot == pub.slot and again.spooling and again.route() == SPOOLED
    assert _spooled(again) == got
    again.close(1.0)


@pytest.mark.slow
def test_a_full_spool_drops_says_so_and_counts(tmp_path: Path) -> None:
    settings = _settings(tmp_path, spool_max_bytes=1024 * 1024)
    pub = Publisher(settings)
    try:
        _wait(lambda: pub.spooling)  # two missed probes: spooling before any failure
        big = [(DECISIONS, [(f"t{i}", b"x" * 60_000) for i in range(20)])]
        assert pub.route() == SPOOLED
        pub.publish(SPOOLED, big)  # admitted: kept whole, past the bound
        assert pub.spool.records == 20 and pub.quota.used > 1024 * 1024
        assert pub.route() == DROPPED
        pub.publish(DROPPED, _batch(0))
        assert pub.dropped == 2 and pub.spool.records == 20
        assert spool_depth(settings.spool_dir)["records"] in (0, 20)  # written each second
        _wait(lambda: spool_depth(settings.spool_dir)["over_half"] == ["worker-0"])
    finally:
        pub.close(0.5)


def test_each_process_holds_its_own_slot(tmp_path: Path) -> None:
    a, fd_a = claim_slot(tmp_path)
    b, fd_b = claim_slot(tmp_path)
    assert a.name == "worker-0" and b.name == "worker-1"
    os.close(fd_a)
    c, fd_c = claim_slot(tmp_path)
    assert c == a  # freed by its owner: the next process takes it
    os.close(fd_b)
    os.close(fd_c)


@pytest.mark.slow
def test_a_slot_no_worker_took_back_is_adopted_and_republished_first(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    live, fd = claim_slot(settings.spool_dir)  # a live worker holds worker-0
    gone = Publisher(settings)  # a worker that spools, then is gone for good
    assert gone.slot.name == "worker-1"
    _wait(lambda: gone.spooling)
    gone.publish(SPOOLED, _batch(0, 4))
    gone.close(0.5)
    os.close(fd)  # worker-0 free (and empty), worker-1 free with 8 records
    pub = Publisher(settings)
    try:
        assert pub.slot == live and [s.name for s in pub.adopted] == ["worker-1"]
        lanes = [lane.read(1000, 1 << 30).records for lane in pub.lanes]
        assert [r for recs in lanes for r in recs] == [
            (t, k.encode(), v) for t, recs in _batch(0, 4) for k, v in recs]
        assert pub.spooling and pub.depth()["records"] == 8
        assert pub.route() == SPOOLED  # new records queue behind the adopted ones
        _wait(lambda: spool_depth(settings.spool_dir)["records"] == 8)  # counted once
    finally:
        pub.close(0.5)
    # closed: each slot's depth file counts its own records again
    assert orjson.loads((settings.spool_dir / "worker-1" / "depth.json").read_bytes())[
        "records"] == 8
    assert orjson.loads((settings.spool_dir / "worker-0" / "depth.json").read_bytes())[
        "records"] == 0
