"""The label relay: the case store's label outbox → topic `labels`, each label exactly once.

A console label is one SQL transaction (cases/store.py ``CaseStore.label``): the case's
action and a ``label_outbox`` row. This relay, a supervised daemon thread in every service
worker, publishes the rows in id order — key ``txn_id``, value the LabelEvent JSON (the same
record ``POST /v1/labels`` publishes), a header ``kestrel-outbox-id: <id>`` — waits for the
broker's acknowledgement and then stamps ``published_at``. When nothing is pending it sleeps
``IDLE_S`` (or until :meth:`LabelRelay.wake`).

**Exactly once.** Two windows would publish a row twice:

- *acknowledged, not stamped*: the worker dies (or the database fails) after the broker took
  the record and before ``published_at`` is written. Before publishing, the relay reads
  `labels` from where it last read up to the end of each partition (the first time: from
  the oldest pending row's ``created_at`` minus ``SCAN_MARGIN_S``, by ``offsets_for_times``)
  and collects the outbox ids in the headers; a pending row found there is stamped, not
  published again. The read runs before every batch, not only at start: another worker's
  relay may have died between the two steps a moment ago. It costs one fetch per partition
  (labels are made by people: the tail read is a few records).
- *two relays at once*: every worker runs one. Only one publishes at a time, in id order,
  holding a lock for its batch that the database (or the kernel) drops if the relay dies:
  PostgreSQL's ``pg_try_advisory_xact_lock`` (the batch's transaction), MySQL's and TiDB's
  ``GET_LOCK`` (the session; TiDB does not implement ``SKIP LOCKED``, so row claims are not
  an option there), and on SQLite an exclusive ``flock`` on ``<database>.label-relay.lock``
  (a transaction would hold SQLite's single write lock through a broker round trip, every
  console edit and intake write waiting on it; SQLite is on one host, so a file lock does).
  A relay that does not get the lock waits for its next turn. Rows stay unlocked: a console
  label (an insert) never waits on a relay.

What is left: a produce request that had reached the broker when its relay was killed, but
that the broker appended only after another relay's read of the topic (the window is the
time between the kill and the next relay's claim; the record still carries its outbox id,
so a consumer can drop the second copy; a LabelEvent's latest per ``txn_id`` wins anyway).

**Failures.** Broker or store down, a record not acknowledged within
``KESTREL_PUBLISH_TIMEOUT_MS``: the rows stay pending, the relay's Kafka clients are closed
and new ones made after a capped exponential backoff (``BACKOFF_S``); ``healthy`` is False
from the failure until a batch goes through again. A row that is not a valid LabelEvent
stops the relay (rows are published in order) with an error naming it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from pydantic import ValidationError
from sqlalchemy import Connection, Engine, func, select, update

from cases.models import LabelOutbox, utcnow
from cases.store import CaseStore
from kestrel.errors import ServiceError, ServiceUnavailable
from kestrel.events import LabelEvent
from kestrel.kafka import consumer_config, producer_config
from kestrel.settings import Settings
from kestrel.topics import LABELS

log = logging.getLogger("kestrel.serving.label_relay")

HEADER = "kestrel-outbox-id"
BATCH = 500
IDLE_S = 0.5
SCAN_MARGIN_S = 300.0  # clock skew between the database's writer and the broker's clock
PG_LOCK = 310002  # pg_try_advisory_xact_lock key (cases/engine.py's migration lock is 310001)
MYSQL_LOCK = "kestrel_label_relay"
_MEMORY_LOCK = threading.Lock()  # an in-memory SQLite database: this process only


@dataclass(frozen=True)
class Row:
    id: int
    payload: dict[str, Any]
    created_at: datetime


def label_producer(settings: Settings) -> Producer:
    """The relay's own idempotent acks=all producer: it waits for each acknowledgement and
    sends headers, which the worker's shared EventProducer does not."""
    return Producer(producer_config(settings, **{
        "linger.ms": 5, "message.timeout.ms": settings.publish_timeout_ms,
        "logger": log}))


def label_reader(settings: Settings) -> Consumer:
    """A consumer of `labels` that joins no group (partitions are assigned by hand)."""
    return Consumer(consumer_config(settings, "kestrel-label-relay", **{
        "enable.partition.eof": True, "fetch.wait.max.ms": 10, "queued.min.messages": 1000,
        "logger": log}))


class TopicIndex:
    """The outbox ids already on `labels`: reads each partition from where it last stopped to
    its end (the first time from a time, by offsets_for_times)."""

    def __init__(self, consumer: Consumer, timeout_s: float):
        self.consumer = consumer
        self.timeout_s = timeout_s
        self.positions: dict[int, int] = {}
        self.seen: set[int] = set()

    def catch_up(self, since: datetime) -> None:
        if not self.positions:
            self._start(since)
        deadline = time.monotonic() + self.timeout_s
        self.consumer.assign([TopicPartition(LABELS, p, o) for p, o in self.positions.items()])
        left = set(self.positions)
        while left:
            if time.monotonic() > deadline:
                raise ServiceUnavailable(
                    f"the `{LABELS}` topic could not be read to its end within "
                    f"{self.timeout_s:g} s (partitions {sorted(left)}); the labels stay in "
                    "the outbox until the broker answers")
            msg = self.consumer.poll(0.1)
            if msg is not None:
                self._take(msg, left)

    def _take(self, msg: Message, left: set[int]) -> None:
        err = msg.error()
        partition = msg.partition() or 0
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                self.positions[partition] = msg.offset() or 0
                left.discard(partition)
            elif err.fatal():
                raise KafkaException(err)
            return
        self.positions[partition] = (msg.offset() or 0) + 1
        headers: list[tuple[str, bytes | None]] = list(msg.headers() or [])  # type: ignore[arg-type]
        self.seen.update(int(v) for k, v in headers if k == HEADER and v is not None)

    def _start(self, since: datetime) -> None:
        topic = self.consumer.list_topics(LABELS, timeout=self.timeout_s).topics.get(LABELS)
        if topic is None or topic.error is not None or not topic.partitions:
            raise ServiceUnavailable(f"the broker does not list the `{LABELS}` topic; create "
                                     "it (`kestrel services up` creates every topic)")
        ms = int((since.timestamp() - SCAN_MARGIN_S) * 1000)
        found = self.consumer.offsets_for_times(
            [TopicPartition(LABELS, p, ms) for p in sorted(topic.partitions)],
            timeout=self.timeout_s)
        for tp in found:
            if tp.error is not None:
                raise KafkaException(tp.error)
            if tp.offset < 0:  # no record since then: from the end
                tp.offset = self.consumer.get_watermark_offsets(
                    TopicPartition(LABELS, tp.partition), timeout=self.timeout_s)[1]
            self.positions[tp.partition] = tp.offset

    def forget_below(self, outbox_id: int) -> None:
        """Drop the ids below the oldest pending row: they are stamped for good."""
        self.seen = {i for i in self.seen if i >= outbox_id}


class LabelRelay:
    """The label outbox → `labels`, in a supervised daemon thread (see the module doc)."""

    BACKOFF_S = (0.5, 30.0)  # the first retry's delay, doubled up to the second

    def __init__(self, settings: Settings, store: Callable[[], CaseStore],
                 producer_factory: Callable[[Settings], Producer] = label_producer,
                 reader_factory: Callable[[Settings], Consumer] = label_reader):
        self.settings = settings
        self.timeout_s = settings.publish_timeout_ms / 1000
        self.published = 0  # rows this relay published
        self.deduplicated = 0  # rows found on `labels` already: stamped, not published
        self.restarts = 0
        self.pending = 0  # rows in the last claim
        self.state = "starting"  # running | failing (in backoff) | stopped
        self.error: str | None = None
        self.store = store
        self.producer_factory = producer_factory
        self.reader_factory = reader_factory
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="label-relay", daemon=True)

    @property
    def healthy(self) -> bool:
        return self._thread.is_alive() and self.state in ("starting", "running")

    def status(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "state": self.state, "published": self.published,
                "deduplicated": self.deduplicated, "pending": self.pending,
                "restarts": self.restarts, "error": self.error}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(self.timeout_s + 10)

    def wake(self) -> None:
        """Publish now rather than after the idle sleep (the runtime calls it after a label)."""
        self._wake.set()

    def acknowledged(self, ids: list[int]) -> None:
        """Called once the broker acknowledged ``ids``, before they are stamped (a no-op:
        the crash tests override it to die in that window)."""

    def run_once(self) -> int:
        """One life's worth of work in the caller's thread, until nothing is pending; the
        rows handled (tests and ``kestrel`` commands; the thread uses the same cycle)."""
        life = _Life(self)
        try:
            total = 0
            while (n := life.cycle()) > 0:
                total += n
            return total
        finally:
            life.close()

    # --- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        delay = self.BACKOFF_S[0]
        while not self._stop.is_set():
            life: _Life | None = None
            try:
                life = _Life(self)
                while not self._stop.is_set():
                    n = life.cycle()
                    self.state, self.error = "running", None
                    delay = self.BACKOFF_S[0]
                    if n < BATCH:
                        self._wake.wait(IDLE_S)
                        self._wake.clear()
                break
            except Exception as exc:
                self.state, self.error = "failing", f"{type(exc).__name__}: {exc}"
                self.restarts += 1
                log.warning("label relay failed (%s); the labels stay in the outbox, retry "
                            "in %.1f s", self.error, delay)
            finally:
                if life is not None:
                    life.close()
            self._stop.wait(delay)
            delay = min(delay * 2, self.BACKOFF_S[1])
        self.state = "stopped"


class _Life:
    """One relay's Kafka clients, from a start (or a failure) to the next failure."""

    def __init__(self, relay: LabelRelay):
        self.relay = relay
        self.producer = relay.producer_factory(relay.settings)
        self.index = TopicIndex(relay.reader_factory(relay.settings), relay.timeout_s)

    def close(self) -> None:
        self.producer.purge()
        self.producer.flush(0)
        try:
            self.index.consumer.close()
        except Exception:
            log.exception("the label relay's reader did not close cleanly")

    def cycle(self) -> int:
        relay = self.relay
        store = relay.store()
        with _claim(store.engine) as claim:
            relay.pending = len(claim.rows)
            if not claim.rows:
                return 0
            self.index.catch_up(min(r.created_at for r in claim.rows))
            on_topic = [r.id for r in claim.rows if r.id in self.index.seen]
            fresh = [r for r in claim.rows if r.id not in self.index.seen]
            if on_topic:
                log.warning("outbox rows %s are on `%s` already (published, not stamped): "
                            "stamped now, not published again", on_topic, LABELS)
            self._publish(fresh)
            relay.acknowledged([r.id for r in fresh])
            claim.stamp([r.id for r in claim.rows])
            self.index.forget_below(claim.rows[-1].id + 1)
        relay.published += len(fresh)
        relay.deduplicated += len(on_topic)
        return len(claim.rows)

    def _publish(self, rows: list[Row]) -> None:
        failed: list[str] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failed.append(str(err))

        for row in rows:
            value = _label_of(row)
            self.producer.produce(LABELS, value, row.payload["txn_id"],
                                  headers=[(HEADER, str(row.id).encode())],
                                  on_delivery=delivered)
        left = self.producer.flush(self.relay.timeout_s)
        if left or failed:
            raise ServiceUnavailable(
                f"the broker acknowledged {len(rows) - left - len(failed)} of {len(rows)} "
                f"labels within {self.relay.timeout_s:g} s ({failed[:1] or 'timed out'}); "
                "they stay in the outbox and are published once it answers")


def _label_of(row: Row) -> bytes:
    try:
        return LabelEvent.model_validate(row.payload).to_json()
    except ValidationError as exc:
        raise ServiceError(
            f"label outbox row {row.id} is not a valid LabelEvent ({exc.errors()[:1]}); the "
            "relay publishes in order and stops here: correct or delete the row") from None


# --- claiming rows ---------------------------------------------------------------------------
class _Claim:
    def __init__(self, conn: Connection | None, engine: Engine, rows: list[Row]):
        self.conn = conn
        self.engine = engine
        self.rows = rows

    def stamp(self, ids: list[int]) -> None:
        stmt = (update(LabelOutbox).where(LabelOutbox.id.in_(ids),
                                          LabelOutbox.published_at.is_(None))
                .values(published_at=utcnow()))
        if self.conn is not None:
            self.conn.execute(stmt)
        else:
            with self.engine.begin() as conn:
                conn.execute(stmt)


_PENDING = (select(LabelOutbox.id, LabelOutbox.payload, LabelOutbox.created_at)
            .where(LabelOutbox.published_at.is_(None)).order_by(LabelOutbox.id).limit(BATCH))


def _rows(result: Any) -> list[Row]:
    return [Row(int(i), dict(p), c) for i, p, c in result]


@contextmanager
def _claim(engine: Engine) -> Iterator[_Claim]:
    """The oldest pending rows, held by this relay alone until the block ends (see the
    module doc); no rows when another relay holds them."""
    if engine.dialect.name == "sqlite":
        with _file_lock(engine) as held:
            if not held:
                yield _Claim(None, engine, [])
                return
            with engine.connect() as conn:
                rows = _rows(conn.execute(_PENDING))
                conn.rollback()
            yield _Claim(None, engine, rows)
        return
    with engine.connect() as conn, conn.begin():
        held = _server_lock(conn, engine.dialect.name)
        try:
            yield _Claim(conn, engine, _rows(conn.execute(_PENDING)) if held else [])
        finally:
            if held and engine.dialect.name != "postgresql":  # GET_LOCK is the session's
                conn.exec_driver_sql(f"SELECT RELEASE_LOCK('{MYSQL_LOCK}')")


def _server_lock(conn: Connection, dialect: str) -> bool:
    """The relays' lock on a database server, without waiting: PostgreSQL's advisory lock
    of the transaction, MySQL's (and TiDB's) named lock of the session. Either goes with
    the connection of a relay that dies."""
    if dialect == "postgresql":
        return bool(conn.exec_driver_sql(f"SELECT pg_try_advisory_xact_lock({PG_LOCK})")
                    .scalar())
    return conn.exec_driver_sql(f"SELECT GET_LOCK('{MYSQL_LOCK}', 0)").scalar() == 1


@contextmanager
def _file_lock(engine: Engine) -> Iterator[bool]:
    database = engine.url.database
    if not database or database == ":memory:":
        got = _MEMORY_LOCK.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                _MEMORY_LOCK.release()
        return
    path = Path(database).with_name(Path(database).name + ".label-relay.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor drops the lock


def oldest_pending_age(store: CaseStore, now: datetime | None = None) -> timedelta | None:
    """How long the oldest unpublished label has waited (None: none waits)."""
    with store.engine.connect() as conn:
        oldest = conn.scalar(select(func.min(LabelOutbox.created_at))
                             .where(LabelOutbox.published_at.is_(None)))
        conn.rollback()
    return None if oldest is None else (now or utcnow()) - oldest
