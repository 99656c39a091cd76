"""Publishing scored transactions and decisions: never blocking a decision, never losing one.

``POST /v1/score`` hands its records (the scored transaction to `transactions`, the decision
to `decisions`) to :meth:`Publisher.publish` and answers at once; nobody waits for their
acknowledgement. When the broker is stalled or gone they go to the local spool
(serving/spool.py) and are republished, in order, once it answers again.

How, in one worker process:
- **direct** (the spool is empty): records are produced to librdkafka without blocking
  (linger ``KESTREL_DECISION_PUBLISH_LINGER_MS``); only failures are reported (no Python call
  per delivered record). A record not delivered within ``KESTREL_PUBLISH_TIMEOUT_MS``
  (``message.timeout.ms``) is reported failed and written to the *retry* log; a full local
  queue (``BufferError``) sends the record to the *main* log. Either switches to spooling.
- **spooling** (the spool is not empty, or the broker missed two probes in a row): every new
  record goes to the main log, so nothing overtakes what is spooled. The background thread
  probes the broker (metadata, every ``PROBE_SECONDS``) and, once it answers and lists both
  topics and librdkafka holds nothing more (each record produced directly has been delivered
  or has failed into the retry log), republishes the retry log, then the main log, in
  windows: a window is acknowledged (the cursor moves) only when all of it was delivered,
  otherwise it is sent again later. When both logs are empty it goes back to direct.

Order: per log, records leave in the order they came; every record of the retry log was
produced directly before the switch to spooling, so before every record of the main log.
Per key (a partition) the order of the decisions is therefore kept, with one exception: a
record that times out while the broker comes back in that very instant may be overtaken by
a later one produced directly before the switch.

Delivery is at least once: a record the broker took but did not acknowledge in time (a
stalled broker that persists a request when it resumes), or a window sent again after part
of it was delivered, appears twice on its topic, never zero times. Consumers key on
``txn_id`` (the idempotency key).

Spooled, not lost: the spool of one worker is bounded (``KESTREL_SPOOL_MAX_BYTES``); a
decision made while it is full says ``"unpublished": {"transactions": "dropped",
"decisions": "dropped"}`` and the loss is counted (``kestrel_publish_dropped_total``); one made
while spooling says ``"spooled"``. A record produced directly that later fails when the spool
is full is counted and logged with its key; its decision had already been answered.

Each worker owns one slot directory under ``<var_dir>/spool`` (``worker-<n>``, held with an
exclusive ``flock``); a restarted worker takes a free slot, so what a stopped worker spooled is
republished by its successor. At shutdown whatever librdkafka still holds after
``KESTREL_PUBLISH_TIMEOUT_MS`` is purged into the retry log, so it survives the restart.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from kestrel.errors import ServiceError
from kestrel.kafka import producer_config
from kestrel.settings import Settings
from kestrel.topics import DECISIONS, TRANSACTIONS
from serving import metrics
from serving.spool import SYNC_SECONDS, Batch, Quota, Record, Spool, frame

log = logging.getLogger("kestrel.serving.publisher")

Route = Literal["live", "spooled", "dropped"]
LIVE: Route = "live"
SPOOLED: Route = "spooled"
DROPPED: Route = "dropped"
Records = Sequence[tuple[str, Sequence[tuple[str | bytes | None, bytes]]]]

PROBE_SECONDS = 1.0
PROBE_TIMEOUT_S = 1.5
WINDOW_RECORDS = 5000
WINDOW_BYTES = 4 * 1024 * 1024
DEPTH_FILE = "depth.json"


def claim_slot(root: Path) -> tuple[Path, int]:
    """The first slot directory no live process holds, locked for this process's life."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(4096):
        slot = root / f"worker-{i}"
        slot.mkdir(exist_ok=True)
        fd = os.open(slot / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return slot, fd
    raise ServiceError(f"no free spool slot under {root}")


def spool_depth(root: Path) -> dict[str, Any]:
    """What every worker's spool holds (as each last wrote it, at most ~1 s old): records and
    bytes summed, and the slots holding more than half their bound."""
    records = nbytes = 0
    over: list[str] = []
    slots = 0
    for path in sorted(root.glob(f"worker-*/{DEPTH_FILE}")):
        try:
            doc = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        slots += 1
        records += int(doc.get("records", 0))
        nbytes += int(doc.get("bytes", 0))
        if int(doc.get("disk_bytes", 0)) * 2 > int(doc.get("max_bytes", 1 << 62)):
            over.append(path.parent.name)
    return {"records": records, "bytes": nbytes, "slots": slots, "over_half": over}


class Publisher:
    """One worker's publisher of scored transactions and decisions (module docstring)."""

    def __init__(self, settings: Settings, root: Path | None = None, **overrides: Any):
        self.settings = settings
        self.timeout_s = settings.publish_timeout_ms / 1000
        self.slot, self._slot_fd = claim_slot(root or settings.spool_dir)
        self.quota = Quota(settings.spool_max_bytes)
        self.retry = Spool(self.slot / "retry", self.quota)
        self.spool = Spool(self.slot / "main", self.quota)
        linger = settings.decision_publish_linger_ms
        conf = producer_config(settings, **{
            "linger.ms": linger,
            "message.timeout.ms": max(settings.publish_timeout_ms, linger + 1000),
            **overrides})
        conf["delivery.report.only.error"] = True
        conf["on_delivery"] = self._on_failure
        self.producer = Producer(conf)
        self._lock = threading.Lock()
        self.spooling = bool(self.retry.records or self.spool.records)
        self.broker_ok = True  # until a probe says otherwise
        self.dropped = 0
        self._failed: list[Record] = []  # reported by librdkafka, not yet in the retry log
        self._draining = False  # failures now are of a republished window, already spooled
        self._drain_failures = 0
        self._window: tuple[Spool, Batch] | None = None  # republished, not yet acknowledged
        self._depth_written: tuple[int, ...] = ()
        self._stop = threading.Event()
        if self.spooling:
            log.warning("spool %s holds %d records from before this process; republishing "
                        "them first", self.slot, self.retry.records + self.spool.records)
        self._write_depth()
        self._thread = threading.Thread(target=self._run, name="kestrel-publisher",
                                        daemon=True)
        self._thread.start()

    # --- the callers' side ----------------------------------------------------------------

    def route(self) -> Route:
        """Where the records of a decision made now go: decided before the decision is
        encoded, so the decision can say it."""
        if not self.spooling:
            return LIVE
        return SPOOLED if self.quota.room() else DROPPED

    def publish(self, route: Route, batches: Records) -> None:
        """Publish ``(topic, [(key, value), ...])`` batches in order, as ``route`` said.
        Never waits for the broker; the lock is held only for a spool write."""
        if route == DROPPED:
            self._count_dropped((topic, key, value) for topic, recs in batches
                                for key, value in recs)
            return
        if route == LIVE and not self.spooling:
            # no lock: librdkafka is thread-safe, and a batch's 20,000 produce calls must not
            # hold up the event loop's next decision
            rest = self._produce(batches)
            if not rest:
                return
            log.warning("librdkafka's queue is full; spooling from now on")
        else:
            rest = [(topic, key, value) for topic, recs in batches for key, value in recs]
        frames = [frame(topic, key, value) for topic, key, value in rest]  # before the lock
        with self._lock:
            self.spooling = True
            self.spool.append_frames(frames, force=True)  # routed here with room: kept
        for topic, n in Counter(topic for topic, _, _ in rest).items():
            metrics.SPOOLED.labels(topic).inc(n)

    def _produce(self, batches: Records) -> list[tuple[str, Any, bytes]]:
        """Produce without waiting; returns the records librdkafka had no room for."""
        produce = self.producer.produce
        for b, (topic, recs) in enumerate(batches):
            for r, (key, value) in enumerate(recs):
                try:
                    produce(topic, value, key)
                except BufferError:
                    return [(topic, k, v) for k, v in recs[r:]] + [
                        (t, k, v) for t, rs in batches[b + 1:] for k, v in rs]
        return []

    def depth(self) -> dict[str, Any]:
        return {"records": self.retry.records + self.spool.records,
                "bytes": self.retry.pending_bytes + self.spool.pending_bytes,
                "disk_bytes": self.quota.used, "max_bytes": self.quota.max_bytes,
                "spooling": self.spooling, "broker_ok": self.broker_ok,
                "dropped": self.dropped}

    # --- librdkafka's side (the background thread) ----------------------------------------

    def _on_failure(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        if self._draining:
            self._drain_failures += 1
            return
        if not self.spooling:
            log.warning("the broker did not take a record (%s); spooling from now on", err)
        self.spooling = True  # from now on new records queue behind this one
        self._failed.append((msg.topic() or "", msg.key(), msg.value() or b""))

    def _keep_failed(self) -> None:
        """Write the records librdkafka reported failed to the retry log."""
        if not self._failed:
            return
        failed, self._failed = self._failed, []
        frames = [frame(*r) for r in failed]
        with self._lock:
            kept = self.retry.append_frames(frames)
        for topic, n in Counter(t for t, _, _ in failed[:kept]).items():
            metrics.SPOOLED.labels(topic).inc(n)
        if kept < len(failed):
            self._count_dropped(failed[kept:])

    def _count_dropped(self, records: Iterable[tuple[str, Any, Any]]) -> None:
        by_topic = Counter(topic for topic, _, _ in records)
        n = sum(by_topic.values())
        with self._lock:
            self.dropped += n
        for topic, count in by_topic.items():
            metrics.PUBLISH_DROPPED.labels(topic).inc(count)
        log.error("spool full (KESTREL_SPOOL_MAX_BYTES=%d): %d records lost (%s)",
                  self.quota.max_bytes, n, dict(by_topic))

    def _probe(self) -> bool:
        """The broker answers a metadata request and lists both topics (a broker restarted
        empty has none until they are created again, e.g. by `kestrel up`)."""
        try:
            md = self.producer.list_topics(timeout=PROBE_TIMEOUT_S)
        except KafkaException:
            return False
        return all(t in md.topics and md.topics[t].error is None
                   for t in (TRANSACTIONS, DECISIONS))

    def _run(self) -> None:
        next_probe = 0.0
        next_sync = time.monotonic() + SYNC_SECONDS
        misses = 0
        while not self._stop.is_set():
            try:
                self.producer.poll(0.05 if self.spooling else 0.2)
                self._keep_failed()
                now = time.monotonic()
                if now >= next_probe:
                    ok = self._probe()
                    next_probe = time.monotonic() + PROBE_SECONDS
                    misses = 0 if ok else misses + 1
                    if ok != self.broker_ok:
                        log.warning("the broker %s", "answers again" if ok else
                                    "does not answer a metadata request")
                    self.broker_ok = ok
                    if misses >= 2 and not self.spooling:
                        self.spooling = True
                if self.spooling and self.broker_ok and not self._drain_once():
                    next_probe = 0.0  # a window failed: probe again before the next one
                if now >= next_sync:
                    self._sync()
                    next_sync = now + SYNC_SECONDS
            except Exception:  # the thread must outlive any one failure
                log.exception("publisher loop failed; going on in 1 s")
                self._stop.wait(1.0)

    def _drain_once(self) -> bool:
        """Republish one window; False when it was not all delivered."""
        if len(self.producer) or self._failed:
            return True  # records produced directly are still in librdkafka's hands
        self._draining = False
        with self._lock:
            lane = self.retry if self.retry.records else self.spool
            batch = lane.read(WINDOW_RECORDS, WINDOW_BYTES)
            if not batch:
                self.spooling = False  # nothing spooled, nothing in flight: direct again
                log.warning("spool empty: publishing directly again")
                self._write_depth()
                return True
        self._draining = True
        self._drain_failures = 0
        self._window = (lane, batch)
        sent = 0
        for topic, key, value in batch.records:
            try:
                self.producer.produce(topic, value, key)
            except BufferError:
                break
            sent += 1
        deadline = time.monotonic() + self.timeout_s + 2.0
        while len(self.producer) and time.monotonic() < deadline and not self._stop.is_set():
            self.producer.poll(0.05)
        if sent < len(batch):
            self._window = None
        if self._ack_window():
            return True
        log.warning("republishing %d spooled records failed (%d not delivered); trying again "
                    "once the broker answers", len(batch), self._drain_failures or len(batch))
        self.broker_ok = False
        return False

    def _ack_window(self) -> bool:
        """Acknowledge the window in flight when all of it was delivered."""
        if self._window is None or self._drain_failures or len(self.producer):
            return False
        (lane, batch), self._window = self._window, None
        with self._lock:
            lane.ack(batch)
        for topic, n in Counter(t for t, _, _ in batch.records).items():
            metrics.REPUBLISHED.labels(topic).inc(n)
        return True

    def _sync(self) -> None:
        with self._lock:
            for lane in (self.retry, self.spool):
                lane.sync()
        self._write_depth()

    def _write_depth(self) -> None:
        d = self.depth()
        key = (d["records"], d["bytes"], d["disk_bytes"], d["spooling"], d["broker_ok"])
        if key == self._depth_written:
            return
        tmp = self.slot / (DEPTH_FILE + ".tmp")
        tmp.write_bytes(orjson.dumps({**d, "pid": os.getpid()}))
        os.replace(tmp, self.slot / DEPTH_FILE)
        self._depth_written = key

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread; give librdkafka up to the publish timeout to deliver what it
        holds, then purge the rest into the retry log (republished after a restart)."""
        self._stop.set()
        self._thread.join(PROBE_TIMEOUT_S + self.timeout_s + 3.0)
        remaining = self.producer.flush(min(timeout, self.timeout_s))
        if remaining:
            self.producer.purge()
            self.producer.flush(1.0)  # serves the purged records' reports
        self._ack_window()  # a window the thread stopped waiting for may have made it
        self._keep_failed()
        with self._lock:
            self._write_depth()
            for lane in (self.retry, self.spool):
                lane.close()
        os.close(self._slot_fd)
        if self.retry.records or self.spool.records:
            log.warning("%d records left in the spool %s: republished when the service "
                        "starts again", self.retry.records + self.spool.records, self.slot)
