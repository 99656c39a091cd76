"""Prometheus metrics of the HTTP service, exported at ``/metrics`` (serving/app.py).

``bentoml.metrics`` is prometheus_client on its default registry, in multiprocess mode in
BentoML's workers (BentoML sets PROMETHEUS_MULTIPROC_DIR), so :func:`exposition` sums the
numbers of every worker. BentoML's own ``/metrics`` and generic traffic metrics are off
(serving/service.py says why); ``kestrel_request_seconds`` covers every route. Cache hit
ratio:
``sum(rate(kestrel_insight_cache_total{result="hit"}[5m])) /
sum(rate(kestrel_insight_cache_total[5m]))``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import bentoml
import prometheus_client
from prometheus_client import multiprocess
from prometheus_client.core import GaugeMetricFamily

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

REQUEST_SECONDS = bentoml.metrics.Histogram(
    name="kestrel_request_seconds", documentation="HTTP request latency by route and status",
    labelnames=["route", "method", "status"], buckets=_BUCKETS)
STAGE_SECONDS = bentoml.metrics.Histogram(
    name="kestrel_score_stage_seconds",
    documentation="Scoring latency per stage (features, model, rules) per request",
    labelnames=["stage"], buckets=_BUCKETS)
DECISIONS = bentoml.metrics.Counter(
    name="kestrel_decisions_total", documentation="Decisions by action and degraded flag",
    labelnames=["action", "degraded"])
DEGRADED = bentoml.metrics.Counter(
    name="kestrel_degraded_decisions_total",
    documentation="Decisions taken by rules alone, by cause", labelnames=["cause"])
INSIGHT_CACHE = bentoml.metrics.Counter(
    name="kestrel_insight_cache_total",
    documentation="Insight cache lookups: hit, miss, bypass (fresh=true)",
    labelnames=["result"])
RATE_LIMITED = bentoml.metrics.Counter(
    name="kestrel_rate_limited_total", documentation="Requests refused with 429, by client",
    labelnames=["client"])
# the broker stalled or gone (serving/publisher.py): records kept in the local spool, sent
# again from it, and lost because it was full; its depth is read from disk at each scrape
SPOOLED = bentoml.metrics.Counter(
    name="kestrel_spooled_total", documentation="Records the broker did not take, kept in "
    "the local spool, by topic", labelnames=["topic"])
REPUBLISHED = bentoml.metrics.Counter(
    name="kestrel_republished_total", documentation="Spooled records published once the "
    "broker answered again, by topic", labelnames=["topic"])
PUBLISH_DROPPED = bentoml.metrics.Counter(
    name="kestrel_publish_dropped_total", documentation="Records lost because the local spool "
    "was full (each decision concerned says so), by topic", labelnames=["topic"])
# threads that must not die (issue 28, part 3): the case intake, restarted with backoff
# (serving/case_intake.py), and the audit writer, failed while its disk is full
# (serving/audit.py)
CASE_INTAKE_RESTARTS = bentoml.metrics.Counter(
    name="kestrel_case_intake_restarts_total", documentation="Restarts of the case intake's "
    "consumer after it failed (restarted with capped exponential backoff)")
CASE_INTAKE_COMMIT_FAILURES = bentoml.metrics.Counter(
    name="kestrel_case_intake_commit_failures_total", documentation="Offset commits of the "
    "case intake that failed (a rebalance, the broker gone): its records come again, the "
    "store ignores them")
CASE_INTAKE_STORE_RETRIES = bentoml.metrics.Counter(
    name="kestrel_case_intake_store_retries_total", documentation="Batches the case intake "
    "had to write again because the case store did not answer")
CASE_INTAKE_RECORDS = bentoml.metrics.Counter(
    name="kestrel_case_intake_records_total", documentation="Records the case intake read, "
    "by what became of them: stored, duplicate, skipped (a decision the policy does not "
    "flag), dead_lettered", labelnames=["result"])
AUDIT_WRITE_ERRORS = bentoml.metrics.Counter(
    name="kestrel_audit_write_errors_total", documentation="Writes, fsyncs or anchors of the "
    "audit log that failed (a full or failing disk); the writer holds its records and tries "
    "again")
AUDIT_REFUSED = bentoml.metrics.Counter(
    name="kestrel_audit_refused_total", documentation="Audit records not taken because the "
    "audit log could not write or its queue was full, by kind", labelnames=["kind"])
AUDIT_LOST = bentoml.metrics.Counter(
    name="kestrel_audit_lost_total", documentation="Audit records taken but never written "
    "(held at shutdown while the disk still failed)")
UNAUDITED_DECISIONS = bentoml.metrics.Counter(
    name="kestrel_unaudited_decisions_total", documentation="Decisions answered with "
    "`audited: false`: the audit log could not take their records")
_spool_depth: Callable[[], dict[str, Any]] | None = None


def watch_spool(depth: Callable[[], dict[str, Any]]) -> None:
    """Export ``depth()`` (records and bytes in every worker's spool) at each scrape."""
    global _spool_depth
    _spool_depth = depth


class _SpoolGauges:
    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = _spool_depth() if _spool_depth is not None else {"records": 0, "bytes": 0}
        yield GaugeMetricFamily("kestrel_spool_records", "Records waiting in the local spools "
                                "of every worker", value=depth["records"])
        yield GaugeMetricFamily("kestrel_spool_bytes", "Bytes waiting in the local spools of "
                                "every worker", value=depth["bytes"])


def exposition() -> bytes:
    """The Prometheus text format of every worker's metrics (this process's alone when it
    is not a BentoML worker, as in-process tests), and the spools' depth."""
    gauges = prometheus_client.CollectorRegistry(auto_describe=False)
    gauges.register(_SpoolGauges())
    spool = prometheus_client.generate_latest(gauges)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return prometheus_client.generate_latest(registry) + spool
    return prometheus_client.generate_latest() + spool


CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
