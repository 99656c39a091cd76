"""Labels out exactly once (issue 31 item 3): the label outbox → `labels` through the relay
(serving/label_relay.py), on a real broker and a real SQLite / PostgreSQL / MariaDB case store.

- A: the process that wrote console labels (CaseStore.label) is killed with SIGKILL before
  any relay published them; a relay started afterwards publishes each exactly once.
- B: a relay process is killed with SIGKILL after the broker acknowledged its records and
  before it stamped them; the relay that starts next finds them on the topic (by their
  ``kestrel-outbox-id`` header) and stamps them without publishing them again.
- C: two relays at once (two service workers) never publish the same row.
- D: while the broker is down the labels stay in the outbox and the relay is unhealthy; it
  publishes them once a broker answers again.
- E: a row that is not a valid LabelEvent stops the relay there (rows go out in order), with
  an error naming it.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from sqlalchemy import insert

from cases.models import LabelOutbox
from cases.store import CaseStore
from kestrel.errors import ServiceError
from kestrel.services import BROKER, start_broker, stop
from kestrel.settings import Settings
from kestrel.topics import LABELS
from serving.label_relay import HEADER, LabelRelay, oldest_pending_age
from tests.cases.conftest import new_database
from tests.conftest import make_settings

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]
LABELLED = 12
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(params=("sqlite", "postgresql", "mysql"))
def case_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from new_database(request.param, tmp_path)


def _settings(var_dir: str, bootstrap: str) -> Settings:
    return make_settings(Path(var_dir), kafka_bootstrap=bootstrap, publish_timeout_ms=3000)


# --- child processes (spawned: they import this module, nothing runs at import) -----------
def write_labels(url: str, n: int, ready: str) -> None:
    """Open n cases and label one transaction of each through the console's store call,
    then wait to be killed."""
    store = CaseStore(url, busy_timeout_ms=30_000)
    for i in range(n):
        got = store.add_alert({"alert_id": f"a{i}", "customer_id": f"cust_{i}",
                               "card_id": f"card_{i}", "rule": "velocity",
                               "evidence_txn_ids": [f"txn_{i}"]})
        case = store.get(got.case_id)
        store.label(case.id, f"txn_{i}", i % 3 != 0, f"reason {i}", version=case.version,
                    actor="analyst_1")
    Path(ready).write_text("written")
    time.sleep(600)


class DiesAfterAck(LabelRelay):
    """A relay that is SIGKILLed once the broker has acknowledged its first records."""

    def acknowledged(self, ids: list[int]) -> None:
        if ids:
            os.kill(os.getpid(), signal.SIGKILL)


def relay_then_die(url: str, var_dir: str, bootstrap: str) -> None:
    store = CaseStore(url, busy_timeout_ms=30_000)
    DiesAfterAck(_settings(var_dir, bootstrap), lambda: store).run_once()


def _spawn(target: Callable[..., None], *args: str | int) -> multiprocessing.process.BaseProcess:
    p = SPAWN.Process(target=target, args=args, daemon=True)
    p.start()
    return p


# --- reading the topic -------------------------------------------------------------------
def on_topic(settings: Settings) -> list[tuple[int, str, dict[str, object]]]:
    """Every record on `labels`, from the beginning: (outbox id, key, value)."""
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "t",
                  "enable.partition.eof": True, "enable.auto.commit": False})
    try:
        parts = sorted(c.list_topics(LABELS, timeout=10).topics[LABELS].partitions)
        c.assign([TopicPartition(LABELS, p, 0) for p in parts])
        left, out, deadline = set(parts), [], time.monotonic() + 30
        while left and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            err = m.error()
            if err is not None:
                # librdkafka names its local codes with a leading underscore: public all the same
                assert err.code() == KafkaError._PARTITION_EOF, err  # noqa: SLF001
                left.discard(m.partition() or 0)
                continue
            headers = dict(m.headers() or [])
            out.append((int(headers[HEADER] or b""), (m.key() or b"").decode(),
                        orjson.loads(m.value() or b"")))
        assert not left, f"partitions {left} not read to their end"
        return out
    finally:
        c.close()


def _kill(p: multiprocessing.process.BaseProcess) -> None:
    assert p.pid is not None
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    assert p.exitcode == -signal.SIGKILL


def _wait(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _labels_written(url: str, tmp_path: Path) -> None:
    """Scenario A's first half: a writer SIGKILLed after its labels, before any relay."""
    ready = tmp_path / "ready"
    writer = _spawn(write_labels, url, LABELLED, str(ready))
    _wait(ready.exists, "the writer's labels")
    _kill(writer)


def _exactly_once(settings: Settings, store: CaseStore) -> None:
    records = on_topic(settings)
    pending = store.unpublished_labels()
    assert pending == [], f"rows left unpublished: {[i for i, _ in pending]}"
    times = Counter(i for i, _, _ in records)
    assert sorted(times) == list(range(1, LABELLED + 1))
    assert set(times.values()) == {1}, f"published more than once: {times}"
    for outbox_id, key, value in records:  # the LabelEvent the console wrote, keyed by txn
        i = outbox_id - 1
        assert key == f"txn_{i}" == value["txn_id"]
        assert value["is_fraud"] is (i % 3 != 0)
        assert (value["source"], value["analyst_id"], value["reason"]) == (
            "investigator", "analyst_1", f"reason {i}")


# --- the scenarios -----------------------------------------------------------------------
def test_labels_of_a_killed_writer_are_published_once(services: Settings, case_url: str,
                                                      tmp_path: Path) -> None:
    _labels_written(case_url, tmp_path)
    store = CaseStore(case_url)
    try:
        assert len(store.unpublished_labels()) == LABELLED
        assert on_topic(services) == []  # nothing published before the relay
        waited = oldest_pending_age(store)
        assert waited is not None and waited > timedelta(0)
        relay = LabelRelay(services, lambda: store)
        relay.start()
        try:
            _wait(lambda: relay.published == LABELLED, "the relay")
            time.sleep(1.5)  # a few more idle cycles: nothing goes out again
            assert relay.status()["healthy"] is True
        finally:
            relay.stop()
        _exactly_once(services, store)
        assert (relay.published, relay.deduplicated) == (LABELLED, 0)
        assert oldest_pending_age(store) is None
    finally:
        store.dispose()


def test_relay_killed_between_ack_and_stamp_publishes_once(services: Settings, case_url: str,
                                                          tmp_path: Path) -> None:
    _labels_written(case_url, tmp_path)
    dying = _spawn(relay_then_die, case_url, str(services.var_dir), services.kafka_bootstrap)
    dying.join(60)
    assert dying.exitcode == -signal.SIGKILL, "the relay did not reach its crash point"
    store = CaseStore(case_url)
    try:
        # the window: every label is on the topic, none is stamped
        assert sorted(i for i, _, _ in on_topic(services)) == list(range(1, LABELLED + 1))
        assert len(store.unpublished_labels()) == LABELLED
        relay = LabelRelay(services, lambda: store)
        assert relay.run_once() == LABELLED
        _exactly_once(services, store)
        assert (relay.published, relay.deduplicated) == (0, LABELLED)
    finally:
        store.dispose()


def test_two_relays_never_publish_a_row_twice(services: Settings, case_url: str,
                                              tmp_path: Path) -> None:
    _labels_written(case_url, tmp_path)
    stores = [CaseStore(case_url), CaseStore(case_url)]  # two workers, two pools
    relays = [LabelRelay(services, lambda s=s: s) for s in stores]  # type: ignore[misc]
    try:
        for r in relays:
            r.start()
        _wait(lambda: not stores[0].unpublished_labels(), "the relays")
        time.sleep(1.5)
        for r in relays:
            r.stop()
        _exactly_once(services, stores[0])
        assert sum(r.published for r in relays) == LABELLED
    finally:
        for r in relays:
            r.stop()
        for s in stores:
            s.dispose()


def test_broker_down_keeps_the_labels_until_it_answers(case_url: str, tmp_path: Path,
                                                       services: Settings) -> None:
    _labels_written(case_url, tmp_path)
    stop(services, BROKER)
    store = CaseStore(case_url)
    relay = LabelRelay(services, lambda: store)
    try:
        relay.start()
        _wait(lambda: relay.status()["state"] == "failing", "the relay to fail", 30)
        assert relay.healthy is False
        assert len(store.unpublished_labels()) == LABELLED
        start_broker(services)  # a new, empty broker on the same address
        _wait(lambda: relay.published == LABELLED, "the relay to catch up", 90)
        _wait(lambda: relay.healthy, "the relay to be healthy again", 30)
        _exactly_once(services, store)
    finally:
        relay.stop()
        store.dispose()


def test_a_row_that_is_no_label_stops_the_relay_in_order(services: Settings,
                                                          tmp_path: Path) -> None:
    store = CaseStore(f"sqlite:///{tmp_path / 'cases.db'}")
    try:
        now = datetime.now(UTC)
        with store.engine.begin() as conn:  # a row no console wrote: is_fraud is no boolean
            conn.execute(insert(LabelOutbox), [
                {"txn_id": "txn_bad", "created_at": now, "payload": {
                    "txn_id": "txn_bad", "is_fraud": "maybe", "source": "investigator",
                    "analyst_id": "analyst_1", "labelled_at": now.isoformat()}},
                {"txn_id": "txn_ok", "created_at": now, "payload": {
                    "txn_id": "txn_ok", "is_fraud": True, "source": "investigator",
                    "analyst_id": "analyst_1", "labelled_at": now.isoformat()}}])
        relay = LabelRelay(services, lambda: store)
        with pytest.raises(ServiceError, match="label outbox row 1 is not a valid LabelEvent"):
            relay.run_once()
        assert [i for i, _ in store.unpublished_labels()] == [1, 2]  # nothing overtook it
        assert on_topic(services) == []
    finally:
        store.dispose()
