"""A circuit breaker in front of Redis: one per Redis per worker process.

Why: the routes call Redis synchronously on the event loop (a decision is ~1 ms of CPU, and
the hop to a worker thread cost as much again). A Redis that is frozen (SIGSTOP, a stalled
host, a full network path) refuses nothing and answers nothing, so every call waited its
whole socket timeout and the event loop with it: ~2 s per ``/v1/score``. With the breaker:

* closed (Redis answers): a call costs one attribute check and one clock read more;
* a call that cannot connect opens it at once; calls that time out open it once they have
  waited ``TRIP_AFTER_S`` in all without an answer in between. One short wait alone does not:
  the rate limiter's 10 ms timeout, or a decision with 2 ms of budget left, can expire on a
  Redis that is only busy (two limiter timeouts in a row do open it);
* open: every call fails at once with :class:`RedisUnavailable`, without touching Redis —
  ``/v1/score`` decides by rules alone (degraded, cause ``features``), the rate limiter lets
  calls through, insights, alerts and ``/v1/ready`` answer 503 with Retry-After — and each
  refusal is counted (``kestrel_redis_fast_failures_total{caller}``);
* a probe thread PINGs Redis (timeout ``PROBE_TIMEOUT_S``) as soon as the breaker opens and
  then every ``PROBE_INTERVAL_S`` while it stays open; the first answer closes it. After a
  SIGCONT the breaker closes within ``PROBE_INTERVAL_S`` plus one round trip (at once when a
  PING is waiting at that moment). Requests never serve as the trial call: while open, no
  request waits on Redis.

The state is one boolean read without a lock on the hot path; transitions take a lock. The
count of time lost to timeouts is updated without one: concurrent callers (the event loop,
batch and readiness threads) may blur it by a call, which only moves the trip by a call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar
from urllib.parse import urlparse

import bentoml
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from kestrel.errors import ServiceUnavailable

log = logging.getLogger("kestrel.serving.redis")
P = ParamSpec("P")
T = TypeVar("T")

# calls that timed out open the breaker once they have waited this long in all, with no
# answer in between (a failed connection opens it at once)
TRIP_AFTER_S = 0.02
# while open: PING with this timeout, and wait this long after a PING that failed
PROBE_TIMEOUT_S = 0.2
PROBE_INTERVAL_S = 0.15
# socket timeout of the client for the calls made on the event loop outside the decision's
# budget (insights, alerts, readiness): a loopback read takes well under a millisecond, a
# Redis busy with a stream commit tens of milliseconds
INTERACTIVE_TIMEOUT_S = 0.1

CIRCUIT_OPEN = bentoml.metrics.Gauge(
    name="kestrel_redis_circuit_open",
    documentation="1 while a worker's Redis circuit breaker is open (calls fail at once)",
    multiprocess_mode="livemax")
TRIPS = bentoml.metrics.Counter(
    name="kestrel_redis_circuit_trips_total",
    documentation="Times the Redis circuit breaker opened, by what opened it "
                  "(timeout, connection)", labelnames=["reason"])
FAST_FAILURES = bentoml.metrics.Counter(
    name="kestrel_redis_fast_failures_total",
    documentation="Redis calls refused without touching Redis while the breaker was open, "
                  "by caller (features, ratelimit, insights, alerts, ready)",
    labelnames=["caller"])

# what a Redis that is down looks like to a caller: redis-py's connection and timeout errors,
# and the socket's own (kestrel.resp.roundtrip reads the socket directly)
_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
_TIMEOUTS = (RedisTimeoutError, TimeoutError)


class RedisUnavailable(ServiceUnavailable, RedisError):
    """Redis did not answer, or the breaker is open and the call was not made. HTTP answers
    503 with Retry-After (a ServiceUnavailable); scoring degrades and the rate limiter lets
    the call through (both catch it, as any RedisError). ``timed_out``: the call waited and
    got no answer (as opposed to a refused connection or an open breaker)."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


class RedisGuard:
    """The breaker of one Redis (see the module's docstring). ``ping`` is the probe (default:
    PING on a private client of ``url`` with a ``probe_timeout_s`` socket timeout)."""

    def __init__(self, url: str, ping: Callable[[], object] | None = None, *,
                 trip_after_s: float = TRIP_AFTER_S, probe_interval_s: float = PROBE_INTERVAL_S,
                 probe_timeout_s: float = PROBE_TIMEOUT_S):
        parsed = urlparse(url)
        self.where = f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 6379}"
        self.trip_after_s = trip_after_s
        self.probe_interval_s = probe_interval_s
        self.open = False  # read on every call, without the lock
        self.cause = ""
        self.opened_at = 0.0
        self.trips = 0
        self.fast_failures = 0
        self._lost = 0.0  # seconds waited by calls that timed out since the last answer
        if ping is None:
            ping = Redis.from_url(url, socket_timeout=probe_timeout_s,
                                  socket_connect_timeout=probe_timeout_s,
                                  retry=Retry(NoBackoff(), 0), health_check_interval=0,
                                  driver_info=None).ping
        self._ping = ping
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        CIRCUIT_OPEN.set(0)

    # --- the callers' side ----------------------------------------------------------------

    def call(self, caller: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)``, a call to Redis, unless the breaker is open. Raises
        RedisUnavailable at once while open (counted under ``caller``), or when the call could
        not connect or timed out (which may open the breaker); other errors (a ResponseError)
        pass as they are."""
        if self.open:
            raise self.refuse(caller)
        started = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
        except _DOWN as exc:
            raise self.failed(exc, time.perf_counter() - started) from exc
        if self._lost:
            self._lost = 0.0
        return result

    def check(self, caller: str) -> None:
        """Raise RedisUnavailable (counted) when the breaker is open: for a caller that must
        not start what it could not finish without Redis."""
        if self.open:
            raise self.refuse(caller)

    def refuse(self, caller: str) -> RedisUnavailable:
        """The error of a call not made because the breaker is open (counted)."""
        self.fast_failures += 1
        FAST_FAILURES.labels(caller).inc()
        return RedisUnavailable(f"Redis is not answering (for {self.down_for():.1f} s, "
                                f"after {self.cause}); retry after 1 s")

    def failed(self, exc: BaseException, waited: float) -> RedisUnavailable:
        """A call that could not connect (opens the breaker) or waited ``waited`` seconds
        without an answer (opens it once the waits add up to ``trip_after_s``)."""
        if isinstance(exc, _TIMEOUTS):
            self._lost += waited
            if self._lost >= self.trip_after_s:
                self.trip("timeout", f"no answer in {self._lost * 1000:.0f} ms")
            return RedisUnavailable(f"Redis did not answer within {waited * 1000:.0f} ms; "
                                    "retry after 1 s", timed_out=True)
        self.trip("connection", f"{type(exc).__name__}: {exc}")
        return RedisUnavailable(f"Redis connection failed ({type(exc).__name__}); retry "
                                "after 1 s")

    def answers(self, redis: Redis) -> bool:
        """Readiness: False at once while open; otherwise a PING on ``redis`` (a failure
        counts as any call's)."""
        try:
            return bool(self.call("ready", redis.ping))
        except RedisError:
            return False

    @property
    def reason(self) -> str | None:
        """Why Redis counts as down (None while the breaker is closed)."""
        if not self.open:
            return None
        return f"not answering for {self.down_for():.1f} s ({self.cause}); circuit open"

    def down_for(self) -> float:
        return time.monotonic() - self.opened_at if self.open else 0.0

    # --- opening and closing --------------------------------------------------------------

    def trip(self, kind: str, cause: str) -> None:
        """Open the breaker (no-op when open) and wake the probe."""
        with self._lock:
            if self.open:
                return
            self.cause = cause
            self.opened_at = time.monotonic()
            self.open = True
            self.trips += 1
            self._wake.set()
            if self._thread is None and not self._stopped.is_set():
                self._thread = threading.Thread(target=self._probe, name="redis-probe",
                                                daemon=True)
                self._thread.start()
        CIRCUIT_OPEN.set(1)
        TRIPS.labels(kind).inc()
        log.warning("Redis at %s is not answering (%s): circuit open, Redis calls fail at once "
                    "(scores degrade, rate limits are not enforced, insights and alerts answer "
                    "503) until a PING answers; probing every %.2f s", self.where, cause,
                    self.probe_interval_s)

    def _close(self) -> None:
        with self._lock:
            down = self.down_for()
            self._lost = 0.0
            self.open = False
        CIRCUIT_OPEN.set(0)
        log.warning("Redis at %s answers again after %.2f s: circuit closed", self.where, down)

    def _probe(self) -> None:
        """While open: PING until an answer closes the breaker; asleep while closed."""
        unexpected_logged = False
        while not self._stopped.is_set():
            self._wake.wait()
            self._wake.clear()  # before reading ``open``: a trip after this wakes us again
            while self.open and not self._stopped.is_set():
                try:
                    self._ping()
                except (RedisError, OSError):
                    self._stopped.wait(self.probe_interval_s)
                    continue
                except Exception:  # a bug must not leave the breaker open for good: say so
                    if not unexpected_logged:
                        log.exception("Redis probe failed unexpectedly; probing on")
                        unexpected_logged = True
                    self._stopped.wait(self.probe_interval_s)
                    continue
                self._close()

    def close(self) -> None:
        """Stop the probe thread (at shutdown). A breaker open at that point stays open."""
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(PROBE_TIMEOUT_S + 1.0)
