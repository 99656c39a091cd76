"""Everything the HTTP routes share, built once per worker process.

Redis clients: ``scoring`` with a socket timeout equal to the score budget (a decision waits
at most what is left of its budget), ``batch`` and ``redis`` for the rest (a short timeout:
insights and alerts read on the event loop). None retries: an unreachable Redis answers at
once with an error, and each caller knows what to do with it (score degraded, rate limiter
fails open, insights answer 503). All of them share one circuit breaker (``redis_guard``,
serving/redis_guard.py): once Redis is frozen or gone, calls fail at once until it answers.

The case store, its intake and its label relay are one collaborator, ``cases``
(serving/case_services.py): the store is opened on first use (:meth:`Runtime.case_store`), so a
database that is down when the service starts does not stop it — scoring never needs it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cases.store import CaseStore
from kestrel.errors import ServiceUnavailable
from kestrel.events import TimeBounds
from kestrel.kafka import broker_answers
from kestrel.pan import CardTokenizer
from kestrel.producer import EventProducer
from kestrel.redis_keys import insight_cache_key
from kestrel.settings import Settings
from serving import metrics
from serving.audit import AuditLog
from serving.case_services import CaseServices
from serving.decisions import Decider
from serving.features import OnlineFeatures
from serving.ingest import Ingestor
from serving.insights import Insights
from serving.model import ModelHolder
from serving.publisher import Publisher, spool_depth
from serving.ratelimit import RateLimiter
from serving.redis_guard import INTERACTIVE_TIMEOUT_S, RedisGuard
from serving.rules import RulesEngine

log = logging.getLogger("kestrel.serving")


def _redis(url: str, timeout: float) -> Redis:
    # no CLIENT SETINFO on connect (driver_info=None): to a frozen Redis a new connection
    # would wait for those replies with the client's timeout, not the call's
    return Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=min(timeout, 0.5),
                          retry=Retry(NoBackoff(), 0), health_check_interval=0,
                          driver_info=None)


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.redis_guard = RedisGuard(settings.redis_url)
        self.redis = _redis(settings.redis_url, INTERACTIVE_TIMEOUT_S)
        self.scoring_redis = _redis(settings.redis_url, max(settings.score_budget_ms / 1000,
                                                            0.005))
        self.batch_redis = _redis(settings.redis_url, 10.0)
        self.tokenizer = CardTokenizer(settings.secret("pan_token_key"))
        self.audit = AuditLog(settings.var_dir / "audit", settings.audit_fsync_ms,
                              key=settings.secret("audit_key"),
                              max_queued=settings.audit_queue_records)
        self.rules = RulesEngine.from_file(settings.rules_path)
        self.cases = CaseServices(settings, self.producer, self.invalidate_insights)
        self.insights = Insights(self.redis, self.case_store, settings.insight_schema_version,
                                 settings.insight_cache_ttl_seconds, self.redis_guard)
        self.limiter = RateLimiter(settings, self.redis, self.redis_guard)
        self._producer: EventProducer | None = None  # acknowledged sends: ingest, labels
        # fire and forget: scored transactions and decisions, spooled when the broker
        # does not take them (serving/publisher.py)
        self._publisher: Publisher | None = None
        self._ingestor: Ingestor | None = None
        self._lock = threading.Lock()
        self.features = OnlineFeatures(settings, self.scoring_redis, self.redis_guard)
        self.batch_features = OnlineFeatures(settings, self.batch_redis, self.redis_guard)
        # a version is refused unless its feature_service tag names a service that provides
        # every input of its signature (serving/model.py)
        self.model = ModelHolder(settings, self.features.service_names)
        self.decider = Decider(settings, self.features, self.model, self.rules, None, self.audit)
        self.batch_decider = Decider(settings, self.batch_features, self.model, self.rules,
                                     None, self.audit)
        self.batch_decider.budget_s = float("inf")  # a batch is throughput, not latency
        self.started = False

    def case_store(self) -> CaseStore:
        """The case store (CaseStoreUnavailable while its database does not answer)."""
        return self.cases.store()

    def invalidate_insights(self, customer_id: str) -> None:
        """Drop the customer's cached insights (the case intake opened or joined a case)."""
        self.redis.delete(insight_cache_key(customer_id, self.settings.insight_schema_version))

    def start(self) -> None:
        """Load the model, start the poll, the case intake and the label relay
        (idempotent)."""
        with self._lock:
            if self.started:
                return
            self.started = True
        self.model.start()
        self.producer()
        # the scored transactions and decisions: no caller waits for their acknowledgement,
        # so they batch for longer (KESTREL_DECISION_PUBLISH_LINGER_MS); what the broker
        # does not take goes to the local spool; shutdown flushes them (stop)
        self._publisher = Publisher(self.settings)
        self.decider.publisher = self._publisher
        self.batch_decider.publisher = self._publisher
        metrics.watch_spool(lambda: spool_depth(self.settings.spool_dir))
        self.cases.start()

    def producer(self) -> EventProducer:
        with self._lock:
            if self._producer is None:
                timeout = max(self.settings.publish_timeout_ms,
                              self.settings.producer_linger_ms + 1000)
                self._producer = EventProducer(self.settings, confirm_each=True,
                                               **{"message.timeout.ms": timeout})
            return self._producer

    def ingestor(self) -> Ingestor:
        if self._ingestor is None:
            self._ingestor = Ingestor(self.producer(), self.tokenizer,
                                      self.settings.max_batch_events,
                                      TimeBounds.from_settings(self.settings),
                                      self.settings.publish_timeout_ms / 1000,
                                      self.broker_ok, self.broker_comebacks)
        return self._ingestor

    def broker_ok(self) -> bool:
        """The publisher's last probe (every second); True before it starts."""
        return self._publisher is None or self._publisher.broker_ok

    def broker_comebacks(self) -> int:
        return 0 if self._publisher is None else self._publisher.comebacks

    def readiness(self) -> dict[str, Any]:
        redis_ok = self.redis_guard.answers(self.redis)  # False at once while the breaker is open
        model = self.model.current
        broker = (self._publisher.broker_ok if self._publisher is not None
                  else broker_answers(self.settings, 2.0))
        spool = spool_depth(self.settings.spool_dir)  # every worker's, from disk
        checks = {"redis": redis_ok, "broker": broker, "model": model is not None,
                  "spool": not spool["over_half"]}
        # this worker's threads: the audit writer can write, the case intake and the label
        # relay are not down waiting to restart (serving/audit.py, serving/case_services.py);
        # the case store unreachable is reported, not a check: scoring does not need it
        case_checks, case_details = self.cases.readiness()
        checks["audit"] = self.audit.healthy
        checks.update(case_checks)
        return {"ready": all(checks.values()), "checks": checks,
                "audit": self.audit.status(), **case_details,
                "spool": {k: spool[k] for k in ("records", "bytes", "over_half")},
                "model_version": model.version if model else None,
                "model_error": self.model.last_error, "redis_error": self.redis_guard.reason}

    def stop(self) -> None:
        self.model.stop()
        self.redis_guard.close()
        self.cases.stop()
        if self._publisher is not None:  # what the broker does not take stays spooled
            self._publisher.close(10.0)
        for producer in (self._producer,):
            if producer is not None:
                try:
                    producer.flush(10.0)
                except ServiceUnavailable as exc:  # nothing left to retry with: say so
                    log.error("records not published at shutdown: %s", exc)
        self.audit.close()
