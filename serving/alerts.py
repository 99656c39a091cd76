"""The alert store: topic `alerts` → Redis, for the investigator queue and insights.

Layout (all keys under ``kestrel:alerts:``): ``doc:{alert_id}`` → the alert as the stream
emitted it (pipelines/stream/rules.py); sorted sets ``open``, ``closed`` and ``all`` scored
by the alert's last evidence time (µs), and ``customer:{customer_id}`` (all of a customer's
alert ids). The first write of an alert id wins (``SET NX``): a replayed alert — the stream
re-emits the same id after a crash — changes nothing, and a closed alert stays closed.

The reads (the queue, a customer's alerts) and ``close`` (the labels route) go through the
worker's Redis circuit breaker (serving/redis_guard.py): while Redis is frozen or gone they
fail at once with RedisUnavailable (HTTP 503 with Retry-After) instead of waiting on the
event loop. ``add`` (the consumer's thread, which retries until Redis is back) does not.

The consumer runs as a daemon thread inside `kestrel serve` (one consumer group
``kestrel-alert-store``: replicas split the partitions, dedup makes overlaps harmless); it
commits offsets only after the Redis writes, so an alert is never lost.

It must not end for good. A failed commit (``KafkaException``: a rebalance under way, the
broker gone) is counted and ridden out in place: the batch's alerts are stored, they come
again to whoever owns the partition next, and ``SET NX`` ignores them; restarting on it
would leave and rejoin the group, a rebalance that fails the other members' commits in turn
(every instance restarting, and unready, at once). Anything else that ends the loop (a fatal
Kafka error, a bug) is caught by a supervisor that closes the consumer and starts a new one
after a capped exponential backoff (``BACKOFF_S``; back to its start once a batch has been
committed), counted in ``kestrel_alert_consumer_restarts_total``; ``healthy`` is False from
the failure until the new consumer has subscribed, and ``/v1/ready`` says so.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import TypeAdapter, ValidationError
from redis import Redis
from redis.exceptions import RedisError

from kestrel.dlq import dead_letter
from kestrel.errors import EventValidationError, FieldError
from kestrel.events import Identifier, field_errors
from kestrel.producer import EventProducer
from kestrel.settings import Settings
from kestrel.topics import ALERTS, TRANSACTIONS_DLQ
from serving import metrics
from serving.redis_guard import RedisGuard

log = logging.getLogger("kestrel.serving.alerts")
PREFIX = "kestrel:alerts:"
STATUSES = ("open", "closed")

# KEYS: doc, open, all, customer. ARGV: json, score, id. Returns 1 when new.
_STORE_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3])
  return 1
end
return 0
"""


def _score(alert: dict[str, Any]) -> int:
    raw = str(alert.get("last_event_time") or alert.get("emitted_at") or "")
    try:
        return int(datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp() * 1_000_000)
    except (ValueError, OverflowError):
        return 0


_ALERT_IDS = TypeAdapter(dict[Literal["alert_id", "customer_id", "card_id"], Identifier])


def alert_of(raw: bytes | None) -> dict[str, Any]:
    """An `alerts` record as the store keeps it; EventValidationError (the record goes to the
    DLQ) unless it is a JSON object whose ids are valid identifiers — never a card number."""
    try:
        alert = orjson.loads(raw or b"")
    except orjson.JSONDecodeError as exc:
        raise EventValidationError([FieldError("$", f"not valid JSON ({exc.msg})")]) from None
    if not isinstance(alert, dict):
        raise EventValidationError([FieldError("$", "must be a JSON object")])
    try:
        _ALERT_IDS.validate_python({k: alert.get(k) for k in ("alert_id", "customer_id",
                                                              "card_id")})
    except ValidationError as exc:
        raise EventValidationError(field_errors(exc)) from None
    return alert


class AlertStore:
    def __init__(self, redis: Redis, guard: RedisGuard):
        self.redis = redis
        self.guard = guard
        self._store = redis.register_script(_STORE_LUA)

    def add(self, alert: dict[str, Any]) -> bool:
        alert_id = str(alert["alert_id"])
        doc = {k: v for k, v in alert.items() if k != "status"}
        return bool(self._store(
            keys=[f"{PREFIX}doc:{alert_id}", f"{PREFIX}open", f"{PREFIX}all",
                  f"{PREFIX}customer:{alert.get('customer_id', '')}"],
            args=[orjson.dumps(doc), _score(alert), alert_id]))

    def close(self, alert_id: str) -> bool:
        score: Any = self.guard.call("alerts", self.redis.zscore, f"{PREFIX}all", alert_id)
        if score is None:
            return False
        pipe = self.redis.pipeline()
        pipe.zrem(f"{PREFIX}open", alert_id)
        pipe.zadd(f"{PREFIX}closed", {alert_id: score})
        self.guard.call("alerts", pipe.execute)
        return True

    def _docs(self, ids: list[bytes]) -> list[dict[str, Any]]:
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        pipe.mget([f"{PREFIX}doc:{i.decode()}" for i in ids])
        for i in ids:
            pipe.zscore(f"{PREFIX}open", i)
        raw, *open_scores = self.guard.call("alerts", pipe.execute)
        out = []
        for doc, is_open in zip(raw, open_scores, strict=True):
            if doc is not None:
                alert = orjson.loads(doc)
                alert["status"] = "open" if is_open is not None else "closed"
                out.append(alert)
        return out

    def page(self, status: str | None, offset: int, limit: int) -> tuple[list[dict[str, Any]],
                                                                          int]:
        """Newest first; returns (alerts, total)."""
        key = f"{PREFIX}{status or 'all'}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrevrange(key, offset, offset + limit - 1)
        pipe.zcard(key)
        ids, total = self.guard.call("alerts", pipe.execute)
        return self._docs(ids), int(total)

    def for_customer(self, customer_id: str, status: str = "open") -> list[dict[str, Any]]:
        ids: Any = self.guard.call("alerts", self.redis.zrevrange,
                                   f"{PREFIX}customer:{customer_id}", 0, 99)
        return [a for a in self._docs(ids) if a["status"] == status]


def kafka_consumer(settings: Settings) -> Any:
    """The alert store's consumer of the group ``kestrel-alert-store``, subscribed."""
    from confluent_kafka import Consumer

    consumer = Consumer({
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": "kestrel-alert-store", "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.consumer_session_timeout_ms,
        "fetch.wait.max.ms": 100, "logger": log,
    })
    consumer.subscribe([ALERTS])
    return consumer


class AlertConsumer:
    """Topic `alerts` → AlertStore, in a supervised daemon thread; a record that is not a
    valid alert goes to the DLQ (redacted) through ``producer``. ``consumer_factory`` makes a
    subscribed consumer (tests give their own)."""

    BACKOFF_S = (0.5, 30.0)  # the first restart's delay, doubled up to the second

    def __init__(self, settings: Settings, store: AlertStore, producer: EventProducer,
                 consumer_factory: Callable[[Settings], Any] = kafka_consumer):
        self.settings = settings
        self.store = store
        self.producer = producer
        self.stored = 0
        self.restarts = 0
        self.commit_failures = 0
        self.state = "starting"  # running | restarting (down, in backoff) | stopped
        self.error: str | None = None  # what ended the last consumer
        self._factory = consumer_factory
        self._committed = False  # a batch committed by the current consumer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-consumer", daemon=True)

    @property
    def healthy(self) -> bool:
        """The thread runs and has a consumer (not failed and waiting to restart)."""
        return self._thread.is_alive() and self.state in ("starting", "running")

    def status(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "state": self.state, "restarts": self.restarts,
                "commit_failures": self.commit_failures, "stored": self.stored,
                "error": self.error}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        """The supervisor: a new consumer after each failure, with capped backoff."""
        delay = self.BACKOFF_S[0]
        while not self._stop.is_set():
            self._committed = False
            try:
                self._consume()
                break  # stopped
            except Exception as exc:
                self.state, self.error = "restarting", f"{type(exc).__name__}: {exc}"
                self.restarts += 1
                metrics.ALERT_CONSUMER_RESTARTS.inc()
                if self._committed:  # it worked for a while: a fresh failure
                    delay = self.BACKOFF_S[0]
                log.exception("alert consumer failed; a new one in %.1f s", delay)
            self._stop.wait(delay)
            delay = min(delay * 2, self.BACKOFF_S[1])
        self.state = "stopped"

    def _consume(self) -> None:
        """One consumer's life: until stopped (returns) or failed (raises)."""
        from confluent_kafka import KafkaException

        consumer = self._factory(self.settings)
        self.state = "running"
        try:
            while not self._stop.is_set():
                msgs = consumer.consume(500, 0.5)
                good = []
                for m in msgs:
                    err = m.error()
                    if err is None:
                        good.append(m)
                    elif err.fatal():  # this consumer is done for: the supervisor's turn
                        raise KafkaException(err)
                if not good:
                    continue
                while not self._stop.is_set():
                    try:
                        for m in good:
                            try:
                                alert = alert_of(m.value())
                            except EventValidationError as exc:
                                self._dead_letter(m, exc)
                                continue
                            self.stored += self.store.add(alert)
                        break
                    except RedisError as exc:  # keep the batch; retry until Redis is back
                        log.warning("alert store unavailable (%s); retrying", exc)
                        self._stop.wait(1.0)
                try:
                    consumer.commit(asynchronous=False)
                    self._committed = True
                except KafkaException as exc:
                    if exc.args and getattr(exc.args[0], "fatal", lambda: False)():
                        raise
                    # stored already: the records come again, the store ignores them
                    self.commit_failures += 1
                    metrics.ALERT_CONSUMER_COMMIT_FAILURES.inc()
                    log.warning("alert offsets not committed (%s); the alerts are stored and "
                                "come again", exc)
        finally:
            try:
                consumer.close()
            except Exception:
                log.exception("alert consumer did not close cleanly")

    def _dead_letter(self, m: Any, error: EventValidationError) -> None:
        log.warning("alert record %s:%s:%s to the DLQ: %s", m.topic(), m.partition(),
                    m.offset(), error)
        key, value = dead_letter(ALERTS, m.partition() or 0, m.offset() or 0, m.value(), error,
                                 "kestrel-alert-store")
        self.producer.produce(TRANSACTIONS_DLQ, key, value)
