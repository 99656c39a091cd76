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
republished by its successor, and a worker that starts also adopts the free slots that still
hold records (the service restarted with fewer workers) and republishes those first. At
shutdown whatever librdkafka still holds after ``KESTREL_PUBLISH_TIMEOUT_MS`` is purged into
the retry log, so it survives the restart. Each slot's depth is written to its
``depth.json`` (at most every ``SYNC_SECONDS``): `/v1/ready` and ``kestrel_spool_*`` sum them,
so any worker answers for all of them.

A record the broker refuses for good (too large, invalid) cannot be helped by sending it
again: it is counted as lost and logged, and does not hold up the records behind it.
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
from kestrel.producer import producer_broken
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
# the broker refuses the record itself: sending it again cannot help (counted as lost)
_PERMANENT = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE,
                        KafkaError.INVALID_RECORD, KafkaError.INVALID_MSG})


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


def adopt_slots(root: Path, own: Path) -> list[tuple[Path, int]]:
    """Slots no live process holds that still hold segments (their worker is gone and none
    took its place, e.g. the service restarted with fewer workers), locked for this process."""
    out = []
    for slot in sorted(root.glob("worker-*")):
        if slot == own or not any(slot.glob("*/*.seg")):
            continue
        fd = os.open(slot / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        out.append((slot, fd))
    return out


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


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(doc))
    os.replace(tmp, path)


class Publisher:
    """One worker's publisher of scored transactions and decisions (module docstring)."""

    def __init__(self, settings: Settings, root: Path | None = None, **overrides: Any):
        self.settings = settings
        self.timeout_s = settings.publish_timeout_ms / 1000
        self.slot, self._slot_fd = claim_slot(root or settings.spool_dir)
        self.quota = Quota(settings.spool_max_bytes)
        self.retry = Spool(self.slot / "retry", self.quota)
        self.spool = Spool(self.slot / "main", self.quota)
        # slots left by workers that are gone: older records, so republished first; their
        # depth is counted in this slot's from now on
        self._adopted = adopt_slots(root or settings.spool_dir, self.slot)
        self._lanes: list[Spool] = []
        for slot, _ in self._adopted:
            (slot / DEPTH_FILE).unlink(missing_ok=True)
            unbounded = Quota(1 << 62)  # holds what it holds; nothing is added to it
            self._lanes += [Spool(slot / "retry", unbounded), Spool(slot / "main", unbounded)]
        self._lanes += [self.retry, self.spool]
        linger = settings.decision_publish_linger_ms
        conf = producer_config(settings, **{
            "linger.ms": linger,
            "message.timeout.ms": max(settings.publish_timeout_ms, linger + 1000),
            **overrides})
        conf["delivery.report.only.error"] = True
        conf["on_delivery"] = self._on_failure
        conf["error_cb"] = self._on_error
        self._conf = conf
        self._fatal: str | None = None
        self.producer = Producer(conf)
        self._lock = threading.Lock()
        self.spooling = any(lane.records for lane in self._lanes)
        self.broker_ok = True  # until a probe says otherwise
        self.comebacks = 0  # times the broker answered again after a miss or a failed window
        self._fresh_for = 0  # the comeback the current producer was made for
        self.dropped = 0
        self._drop_said = -1e9  # when a loss was last logged
        self._failed: list[Record] = []  # reported by librdkafka, not yet in the retry log
        self._draining = False  # failures now are of a republished window, already spooled
        self._drain_failures = 0
        self._window: tuple[Spool, Batch] | None = None  # republished, not yet acknowledged
        self._depth_written: tuple[int, ...] = ()
        self._stop = threading.Event()
        if self.spooling:
            log.warning("spool %s holds %d records from before this process (%d slots "
                        "adopted); republishing them first", self.slot,
                        sum(lane.records for lane in self._lanes), len(self._adopted))
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
                except (BufferError, KafkaException):  # full, or fatal: being replaced
                    return [(topic, k, v) for k, v in recs[r:]] + [
                        (t, k, v) for t, rs in batches[b + 1:] for k, v in rs]
        return []

    @property
    def adopted(self) -> tuple[Path, ...]:
        """The slots of workers that are gone, whose records this publisher republishes."""
        return tuple(slot for slot, _ in self._adopted)

    @property
    def lanes(self) -> tuple[Spool, ...]:
        """The spool logs in the order they are republished: each adopted slot's retry and
        main log, then this slot's (``retry``, ``spool``)."""
        return tuple(self._lanes)

    def depth(self) -> dict[str, Any]:
        return {"records": sum(lane.records for lane in self._lanes),
                "bytes": sum(lane.pending_bytes for lane in self._lanes),
                "disk_bytes": self.quota.used, "max_bytes": self.quota.max_bytes,
                "spooling": self.spooling, "broker_ok": self.broker_ok,
                "dropped": self.dropped}

    # --- librdkafka's side (the background thread) ----------------------------------------

    def _on_failure(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        if producer_broken(err):  # nothing gets in again: the thread replaces the producer
            self._fatal = str(err)
        if err.code() in _PERMANENT:
            log.error("the broker refused a record for good (%s): topic %s key %r", err,
                      msg.topic(), msg.key())
            self._count_dropped([(msg.topic() or "", None, None)], "refused by the broker")
            return
        if self._draining:
            self._drain_failures += 1
            return
        if not self.spooling:
            log.warning("the broker did not take a record (%s); spooling from now on", err)
        self.spooling = True  # from now on new records queue behind this one
        self._failed.append((msg.topic() or "", msg.key(), msg.value() or b""))

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's client-level errors; a fatal one (the idempotent producer lost its
        sequence, e.g. to a broker restarted empty) makes the thread replace the producer."""
        if err.fatal():
            self._fatal = str(err)
        else:
            log.info("broker client: %s", err)

    def _renew(self) -> None:
        """A new producer for a fatally failed one: what the old one held fails into the
        retry log (or, for a window being republished, is sent again)."""
        log.warning("decision producer replaced by a new one (a new producer id): %s",
                    self._fatal)
        self.spooling = True
        old = self.producer
        self.producer = Producer(self._conf)
        old.purge()
        old.flush(1.0)  # serves the purged records' reports (_on_failure)
        self._fatal = None
        self._keep_failed()

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

    def _count_dropped(self, records: Iterable[tuple[str, Any, Any]],
                       why: str = "the spool is full") -> None:
        """Count records lost (the metric, ``dropped``); logged at most every 10 s."""
        by_topic = Counter(topic for topic, _, _ in records)
        n = sum(by_topic.values())
        with self._lock:
            self.dropped += n
            now = time.monotonic()
            say = now - self._drop_said >= 10.0
            if say:
                self._drop_said = now
        for topic, count in by_topic.items():
            metrics.PUBLISH_DROPPED.labels(topic).inc(count)
        if say:
            log.error("%d records lost: %s (KESTREL_SPOOL_MAX_BYTES=%d); %d lost in all so "
                      "far (kestrel_publish_dropped_total)", n, why, self.quota.max_bytes,
                      self.dropped)

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
                if self._fatal is not None:
                    self._renew()
                self._keep_failed()
                now = time.monotonic()
                if now >= next_probe:
                    ok = self._probe()
                    next_probe = time.monotonic() + PROBE_SECONDS
                    misses = 0 if ok else misses + 1
                    if ok != self.broker_ok:
                        log.warning("the broker %s", "answers again" if ok else
                                    "does not answer a metadata request")
                        self.comebacks += ok
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
        if self._fresh_for != self.comebacks:
            # the broker is back after a miss or a failed window: it may be a new one (a
            # restart; memory storage) that does not know this producer's id, or one that
            # fenced the epoch librdkafka bumped when records timed out (measured on the
            # local broker: records then fail, or time out, for good). The old producer holds
            # nothing now, so a new one (a new producer id) costs no duplicate.
            self._fresh_for = self.comebacks
            self.producer = Producer(self._conf)
        with self._lock:
            lane = next((lane for lane in self._lanes if lane.records), self.spool)
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
            except KafkaException as exc:  # refused by the client itself: cannot succeed
                if exc.args[0].fatal():
                    break
                log.error("a spooled record cannot be published (%s): topic %s key %r", exc,
                          topic, key)
                self._count_dropped([(topic, key, value)], "refused by the client")
            sent += 1
        deadline = time.monotonic() + self.timeout_s + 2.0
        while len(self.producer) and time.monotonic() < deadline and not self._stop.is_set() \
                and self._fatal is None:
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
            for lane in self._lanes:
                lane.sync()
        self._write_depth()

    def _write_depth(self) -> None:
        d = self.depth()
        key = (d["records"], d["bytes"], d["disk_bytes"], d["spooling"], d["broker_ok"])
        if key == self._depth_written:
            return
        _write_json(self.slot / DEPTH_FILE, {**d, "pid": os.getpid()})
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
            for lane in self._lanes:
                lane.close()
            # each adopted slot's depth back in its own file, for whoever takes it next
            for n, (slot, _) in enumerate(self._adopted):
                retry, main = self._lanes[2 * n:2 * n + 2]
                _write_json(slot / DEPTH_FILE, {
                    "records": retry.records + main.records,
                    "bytes": retry.pending_bytes + main.pending_bytes,
                    "disk_bytes": retry.quota.used, "max_bytes": self.quota.max_bytes})
            self._lanes = self._lanes[2 * len(self._adopted):]
            self._depth_written = ()
            self._write_depth()
        left = sum(lane.records for lane in self._lanes)
        for _, fd in self._adopted:
            os.close(fd)
        os.close(self._slot_fd)
        if left:
            log.warning("%d records left in the spool %s: republished when the service "
                        "starts again", left, self.slot)
