"""The case intake: topics `alerts` and `decisions` → the case store, exactly once.

One intake per service worker (a daemon thread inside `kestrel serve`), all in the consumer
group ``kestrel-case-intake``: the workers split the partitions. Per batch:

1. **parse** each record (cases.records: ``flag_of_alert`` for `alerts`, keyed by alert_id;
   ``flag_of_decision`` for `decisions`, keyed by txn_id). A record that is not valid — not
   JSON, an id missing or card-number-like — goes to the DLQ (redacted, kestrel.dlq) and the
   intake goes on;
2. **skip** the decisions the policy does not flag (cases.policy: ``allow`` never, declines
   by default, challenges at or above ``KESTREL_CASE_CHALLENGE_MIN_SCORE``);
3. **upsert** every flag (``CaseStore.add_flag``: idempotent on (kind, key), so a record
   delivered twice — a replay, a rebalance, a restart before the commit — is one alert in
   one case);
4. **commit** the offsets, only once the store has written the whole batch.

**The store down** (CaseStoreUnavailable: connection refused or lost, a lock wait timed out):
the batch is kept and written again after a backoff (``STORE_BACKOFF_S``: 1 s doubling to
30 s) until the store answers; nothing is committed meanwhile, and ``healthy`` is False
(``/v1/ready``: ``checks.case_intake: false``). Once it answers the intake catches up from its
committed offsets: nothing lost, nothing twice.

After a batch that opened or joined cases, the insight cache key of each customer concerned
is deleted (best effort), so the insights' ``open_alerts`` shows the new case at once. Every
``KESTREL_CASE_PRUNE_INTERVAL_SECONDS`` the intake prunes the store (``CaseStore.prune``).

It must not end for good (as the alert consumer it replaces): a failed commit is counted and
ridden out (the records come again; the upsert ignores them); anything else that ends the
loop (a fatal Kafka error, a bug) is caught by a supervisor that closes the consumer and
starts a new one after a capped exponential backoff (``BACKOFF_S``), counted in
``kestrel_case_intake_restarts_total``. The kernel's ConsumerApp is not used: it logs a fatal
consumer error and polls on, where the intake must replace the consumer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy.exc import SQLAlchemyError

from cases.policy import DecisionPolicy
from cases.records import Flag, flag_of_alert, flag_of_decision
from cases.store import CaseStore
from kestrel.dlq import dead_letter
from kestrel.errors import CaseStoreUnavailable, Conflict, EventValidationError, FieldError
from kestrel.producer import EventProducer
from kestrel.settings import Settings
from kestrel.topics import ALERTS, DECISIONS, TRANSACTIONS_DLQ
from serving import metrics

log = logging.getLogger("kestrel.serving.case_intake")
GROUP = "kestrel-case-intake"

def kafka_consumer(settings: Settings) -> Any:
    """The intake's consumer of the group ``kestrel-case-intake``, subscribed."""
    from confluent_kafka import Consumer

    consumer = Consumer({
        "bootstrap.servers": settings.kafka_bootstrap, "group.id": GROUP,
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.consumer_session_timeout_ms,
        "fetch.wait.max.ms": 100, "logger": log,
    })
    consumer.subscribe([ALERTS, DECISIONS])
    return consumer


class CaseIntake:
    """`alerts` and `decisions` → the case store in a supervised daemon thread (see the
    module doc). ``store`` gives the store (Runtime.case_store: CaseStoreUnavailable while
    the database does not answer); ``invalidate(customer_id)`` drops a customer's insight
    cache; ``consumer_factory`` makes a subscribed consumer (tests give their own)."""

    BACKOFF_S = (0.5, 30.0)  # the first consumer restart's delay, doubled up to the second
    STORE_BACKOFF_S = (1.0, 30.0)  # the store down: the first retry's delay, doubled up to

    def __init__(self, settings: Settings, store: Callable[[], CaseStore],
                 producer: EventProducer, invalidate: Callable[[str], None] | None = None,
                 consumer_factory: Callable[[Settings], Any] = kafka_consumer):
        self.settings = settings
        self.policy = DecisionPolicy.from_settings(settings)
        self.store = store
        self.producer = producer
        self.invalidate = invalidate
        self.counts = {"stored": 0, "duplicate": 0, "skipped": 0, "dead_lettered": 0}
        self.restarts = 0
        self.commit_failures = 0
        self.store_retries = 0
        self.pruned_at: float | None = None  # time.time() of the last prune
        self.state = "starting"  # running | waiting_for_store | restarting | stopped
        self.error: str | None = None  # what ended the last consumer, or the store's error
        self._factory = consumer_factory
        self._committed = False  # a batch committed by the current consumer
        self._next_prune = 0.0  # time.monotonic() of the next prune: at the first batch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="case-intake", daemon=True)

    @property
    def healthy(self) -> bool:
        """The thread runs with a consumer and the store answers (not waiting for it, nor
        failed and waiting to restart)."""
        return self._thread.is_alive() and self.state in ("starting", "running")

    @property
    def stored(self) -> int:
        return self.counts["stored"]

    def status(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "state": self.state, "restarts": self.restarts,
                "commit_failures": self.commit_failures, "store_retries": self.store_retries,
                **self.counts, "error": self.error}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    # --- the supervisor --------------------------------------------------------------------
    def _run(self) -> None:
        """A new consumer after each failure, with capped backoff."""
        delay = self.BACKOFF_S[0]
        while not self._stop.is_set():
            self._committed = False
            try:
                self._consume()
                break  # stopped
            except Exception as exc:
                self.state, self.error = "restarting", f"{type(exc).__name__}: {exc}"
                self.restarts += 1
                metrics.CASE_INTAKE_RESTARTS.inc()
                if self._committed:  # it worked for a while: a fresh failure
                    delay = self.BACKOFF_S[0]
                log.exception("case intake failed; a new consumer in %.1f s", delay)
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
                if good and self._write(self._flags(good)):
                    self._commit(consumer)
                self._prune_if_due()
        finally:
            try:
                consumer.close()
            except Exception:
                log.exception("case intake consumer did not close cleanly")

    def _commit(self, consumer: Any) -> None:
        from confluent_kafka import KafkaException

        try:
            consumer.commit(asynchronous=False)
            self._committed = True
        except KafkaException as exc:
            if exc.args and getattr(exc.args[0], "fatal", lambda: False)():
                raise
            # stored already: the records come again, the store ignores them
            self.commit_failures += 1
            metrics.CASE_INTAKE_COMMIT_FAILURES.inc()
            log.warning("case intake offsets not committed (%s); the batch is stored and "
                        "comes again", exc)

    # --- a batch ---------------------------------------------------------------------------
    def _flags(self, msgs: list[Any]) -> list[tuple[Any, Flag]]:
        """The batch's flags with their records; invalid records to the DLQ, unflagged
        decisions skipped."""
        flags = []
        for m in msgs:
            try:
                flag = self._flag_of(m.topic(), m.value())
            except EventValidationError as exc:
                self._dead_letter(m, exc)
                continue
            if flag is None:
                self._count("skipped")
            else:
                flags.append((m, flag))
        return flags

    def _flag_of(self, topic: str, raw: bytes | None) -> Flag | None:
        try:
            doc = orjson.loads(raw or b"")
        except orjson.JSONDecodeError as exc:
            raise EventValidationError([FieldError("$", f"not valid JSON ({exc.msg})")]) \
                from None
        if not isinstance(doc, dict):
            raise EventValidationError([FieldError("$", "must be a JSON object")])
        if topic == DECISIONS and not self.policy.flags(doc):
            return None
        try:
            return flag_of_alert(doc) if topic == ALERTS else flag_of_decision(doc)
        except EventValidationError:
            raise
        except Exception as exc:  # a field of the wrong shape the parser did not foresee
            raise EventValidationError([FieldError(
                "$", f"not a valid {topic} record ({type(exc).__name__})")]) from None

    def _write(self, flags: list[tuple[Any, Flag]]) -> bool:
        """Store every flag; while the store does not answer, keep the batch and try again
        with backoff. False when stopped before the batch was written (not committed). A
        record the database itself refuses (not a connection error: a value it cannot
        take) goes to the DLQ like an invalid one."""
        delay = self.STORE_BACKOFF_S[0]
        written: set[int] = set()  # indices stored (or refused) in an earlier try
        touched: set[str] = set()
        while not self._stop.is_set():
            try:
                store = self.store()
                for i, (m, flag) in enumerate(flags):
                    if i in written:
                        continue
                    try:
                        intake = store.add_flag(flag)
                    except SQLAlchemyError as exc:  # connection errors are translated
                        self._dead_letter(m, EventValidationError([FieldError(
                            "$", f"the case store refused it ({type(exc).__name__})")]))
                    else:
                        if intake.created:
                            touched.add(flag.customer_id)
                        self._count("stored" if intake.created else "duplicate")
                    written.add(i)
            except (CaseStoreUnavailable, Conflict) as exc:
                self.store_retries += 1
                metrics.CASE_INTAKE_STORE_RETRIES.inc()
                if isinstance(exc, CaseStoreUnavailable):
                    self.state, self.error = "waiting_for_store", str(exc)
                log.warning("case store write failed (%s); the batch of %d is kept and "
                            "written again in %.0f s", exc, len(flags), delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.STORE_BACKOFF_S[1])
                continue
            if self.state == "waiting_for_store":
                log.info("case store answers again; the intake catches up")
                self.state, self.error = "running", None
            self._invalidate(touched)
            return True
        return False

    def _invalidate(self, customers: set[str]) -> None:
        if self.invalidate is None:
            return
        for customer_id in customers:
            try:
                self.invalidate(customer_id)
            except Exception as exc:  # best effort: the cache expires by itself
                log.debug("insight cache of %s not invalidated: %s", customer_id, exc)

    def _prune_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_prune or self.state != "running":
            return
        interval = self.settings.case_prune_interval_seconds
        try:
            pruned = self.store().prune()
        except CaseStoreUnavailable as exc:
            self._next_prune = now + min(interval, 60)
            log.warning("case store not pruned (%s); trying again later", exc)
            return
        self._next_prune, self.pruned_at = now + interval, time.time()
        if pruned.cases or pruned.outbox_rows:
            log.info("pruned %d closed cases and %d published label outbox rows past "
                     "retention", pruned.cases, pruned.outbox_rows)

    def _count(self, result: str) -> None:
        self.counts[result] += 1
        metrics.CASE_INTAKE_RECORDS.labels(result).inc()

    def _dead_letter(self, m: Any, error: EventValidationError) -> None:
        log.warning("%s record %s:%s to the DLQ: %s", m.topic(), m.partition(), m.offset(),
                    error)
        key, value = dead_letter(m.topic(), m.partition() or 0, m.offset() or 0, m.value(),
                                 error, GROUP)
        self.producer.produce(TRANSACTIONS_DLQ, key, value)
        self._count("dead_lettered")
