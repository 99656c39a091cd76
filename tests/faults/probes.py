"""Probes the fault tests read state through: a Prometheus counter of this process, a metric
on a service's /metrics, and a bounded wait for a condition."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families


def counter(name: str, **labels: str) -> float:
    """A counter's value in this process (the metrics are process-wide: compare deltas).
    Read from the default registry, not ``metrics.exposition()``: BentoML may have set
    PROMETHEUS_MULTIPROC_DIR in the test process, and exposition then reads only the
    multiprocess files."""
    for family in text_string_to_metric_families(
            prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_for(what: Callable[[], bool], timeout: float, step: float = 0.02) -> float:
    """Seconds until ``what()`` holds; fails the test past ``timeout``."""
    t0 = time.monotonic()
    while not what():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"not within {timeout} s")
        time.sleep(step)
    return time.monotonic() - t0



def http_metric(url: str, name: str) -> float:
    """The sum of a metric's samples (any labels) on the service's /metrics (0 if none)."""
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total
