"""Operator metrics of the stream processor: its run's counters (StreamStats), Prometheus,
plus a summary in Redis.

Prometheus (``/metrics`` on ``KESTREL_STREAM_METRICS_PORT``): events by outcome, alerts by
rule, online rows written, batches, the freshness histogram (event produced → its features
committed to the online store), events/s, lag per partition, and the state's size: entities
and events held per entity type (bounded by the spec: docs/feature-state.md; a count that
only grows means entities are not being expired).

Lag: the local broker reports wrong high watermarks (DESIGN.md), so end offsets cannot be
had from it. Lag is therefore given from what the app itself tracks: per partition, the age
of the newest record applied (now − its produce timestamp) — a time lag, which is what an
operator watching freshness wants — and the next offset to read.

Each instance also keeps a short summary in Redis (``kestrel:stream:<group>:metrics:<id>``,
expiring after a minute) so `kestrel status` can show every live instance.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from kestrel.features.event import Entity

log = logging.getLogger("kestrel.stream")


@dataclass
class StreamStats:
    """One run's counters; every collaborator of the processor counts into the same one."""

    applied: int = 0
    duplicates: int = 0
    late: int = 0
    invalid: int = 0
    alerts: int = 0
    terminal_applied: int = 0
    late_for_entity: int = 0
    expired: int = 0  # entities dropped from the state (EntityArrays.expire)
    rebuilt: int = 0  # events a restore loaded from the lake for a longer span (rebuild.py)
    batches: int = 0
    started: float = field(default_factory=time.monotonic)
    first_record_at: float | None = None
    last_commit_at: float | None = None
    freshness_ms: list[float] = field(default_factory=list)
    stage_ms: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def counts(self) -> dict[str, int]:
        """The events by outcome so far (a batch's outcomes are the difference)."""
        return {"applied": self.applied, "duplicate": self.duplicates, "late": self.late,
                "invalid": self.invalid}
FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SUMMARY_TTL_S = 60


class BatchHistogram(Collector):
    """A Prometheus histogram fed a whole batch of observations at once (numpy), instead of
    one ``Histogram.observe`` call — two lock-protected increments — per event."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]):
        self.name, self.documentation = name, documentation
        self.bounds = np.array(buckets, dtype=np.float64)
        self.counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # last: above every bound
        self.total = 0.0

    def observe_many(self, values: list[float]) -> None:
        if not values:
            return
        arr = np.asarray(values, dtype=np.float64)
        self.counts += np.bincount(np.searchsorted(self.bounds, arr, side="left"),
                                   minlength=len(self.counts))
        self.total += float(arr.sum())

    def collect(self) -> list[HistogramMetricFamily]:
        cumulative = np.cumsum(self.counts).tolist()
        buckets = [(repr(float(b)), c) for b, c in zip(self.bounds.tolist(), cumulative,
                                                         strict=False)]
        buckets.append(("+Inf", cumulative[-1]))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], buckets, self.total)
        return [family]


def metrics_key_prefix(group_id: str) -> str:
    return f"kestrel:stream:{group_id}:metrics:"


class StreamMetrics:
    def __init__(self, group_id: str, port: int | None = None):
        self.group_id = group_id
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{id(self) % 10_000}"
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("kestrel_stream_events", "Transactions by outcome",
                              ["outcome"], registry=r)
        self.alerts = Counter("kestrel_stream_alerts", "Alerts emitted by rule", ["rule"],
                              registry=r)
        self.rows = Counter("kestrel_stream_online_rows", "Feature rows written online",
                            registry=r)
        self.batches = Counter("kestrel_stream_batches", "Committed batches", registry=r)
        self.freshness = BatchHistogram("kestrel_stream_freshness_seconds",
                                        "Event produced → features readable online",
                                        FRESHNESS_BUCKETS)
        r.register(self.freshness)
        self.rate = Gauge("kestrel_stream_events_per_second", "Applied events/s (last 10 s)",
                          registry=r)
        self.lag = Gauge("kestrel_stream_lag_seconds",
                         "Age of the newest applied record per partition", ["partition"],
                         registry=r)
        self.entities = Gauge("kestrel_stream_state_entities",
                              "Entities held in the stream state, per entity type",
                              ["entity"], registry=r)
        self.events_held = Gauge("kestrel_stream_state_events",
                                 "Events held in the stream state, per entity type",
                                 ["entity"], registry=r)
        self.port = port
        if port:
            try:
                start_http_server(port, addr="127.0.0.1", registry=r)
            except OSError as exc:  # the stream matters more than its metrics endpoint
                log.warning("cannot serve /metrics on 127.0.0.1:%s (%s); set "
                            "KESTREL_STREAM_METRICS_PORT to a free port", port, exc)
                self.port = None
        self._recent: deque[tuple[float, int]] = deque(maxlen=200)
        self._fresh: deque[float] = deque(maxlen=5000)
        self._totals: dict[str, int] = {}
        self._lag: dict[str, float] = {}
        self._state: dict[str, list[int]] = {}

    def observe_batch(self, outcomes: dict[str, int], alerts: dict[str, int], rows: int,
                      freshness_s: list[float], newest_ts_ms: dict[str, int]) -> None:
        now = time.time()
        for outcome, n in outcomes.items():
            if n:
                self.events.labels(outcome).inc(n)
                self._totals[outcome] = self._totals.get(outcome, 0) + n
        for rule, n in alerts.items():
            self.alerts.labels(rule).inc(n)
            self._totals["alerts"] = self._totals.get("alerts", 0) + n
        self.rows.inc(rows)
        self.batches.inc()
        self.freshness.observe_many(freshness_s)
        self._fresh.extend(freshness_s)
        for part, ts in newest_ts_ms.items():
            lag = max(0.0, now - ts / 1000)
            self.lag.labels(part).set(lag)
            self._lag[part] = round(lag, 3)
        self._recent.append((now, outcomes.get("applied", 0)))
        window = [(t, n) for t, n in self._recent if now - t <= 10]
        span = now - window[0][0] if len(window) > 1 else 0
        rate = sum(n for _, n in window[1:]) / span if span > 0 else 0.0
        self.rate.set(rate)
        self._rate = rate

    def observe_state(self, sizes: Mapping[Entity, tuple[int, int]]) -> None:
        """The state's size after a batch: per entity type, (entities, events) held."""
        for entity, (entities, events) in sizes.items():
            self.entities.labels(entity).set(entities)
            self.events_held.labels(entity).set(events)
            self._state[entity] = [entities, events]

    def summary(self) -> dict[str, Any]:
        fresh = sorted(self._fresh)

        def pct(q: float) -> float | None:
            return round(fresh[min(len(fresh) - 1, int(q * len(fresh)))] * 1000, 1) \
                if fresh else None

        return {"instance": self.instance, "at": time.time(), "totals": self._totals,
                "events_per_s": round(getattr(self, "_rate", 0.0), 1),
                "freshness_p50_ms": pct(0.5), "freshness_p99_ms": pct(0.99),
                "lag_seconds": self._lag, "metrics_port": self.port,
                "state": dict(self._state)}

    def publish(self, client: redis.Redis) -> None:
        client.set(metrics_key_prefix(self.group_id) + self.instance,
                   orjson.dumps(self.summary()), ex=SUMMARY_TTL_S)


def read_summaries(client: redis.Redis, group_id: str) -> list[dict[str, Any]]:
    keys = list(client.scan_iter(match=metrics_key_prefix(group_id) + "*", count=100))
    values = client.mget(keys) if keys else []
    return [orjson.loads(v) for v in values if v]  # type: ignore[union-attr]
