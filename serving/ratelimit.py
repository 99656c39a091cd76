"""Per-client token buckets in Redis: one Lua script, atomic across workers and replicas.

Each client (the token's ``client`` claim) has a bucket of ``burst`` tokens refilled at
``rate`` tokens per second (``KESTREL_RATE_LIMIT_PER_SECOND`` / ``KESTREL_RATE_LIMIT_BURST``;
per-client overrides in ``KESTREL_RATE_LIMIT_CLIENTS`` as ``client=rate:burst,...``). A call
costs one token; a batch costs in proportion to its size (:meth:`RateLimiter.batch_cost`).
The script reads Redis' own clock (TIME), so replicas with skewed clocks agree. A request
that finds the bucket empty gets 429 with ``Retry-After`` (seconds until one token is back).
If Redis is unreachable the limiter lets the call through (fail open) and counts it
(``kestrel_rate_limit_failed_open_total``): scoring must not stop because the limiter's store
is down. It waits for Redis ``LIMITER_TIMEOUT_S`` at most (or the decision's whole budget,
when that is shorter), on the event loop, and not at all while the worker's Redis circuit
breaker is open (serving/redis_guard.py); two such timeouts in a row open the breaker.
The script is sent as EVALSHA on a pooled connection without redis-py's command layer
(kestrel.resp.roundtrip: that layer cost more than the script), EVAL when Redis does not
know it yet.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import bentoml
from redis import Redis
from redis.exceptions import RedisError, ResponseError

from kestrel.errors import ConfigError, RateLimited
from kestrel.resp import resp_command, roundtrip
from kestrel.settings import Settings
from serving.redis_guard import RedisGuard

log = logging.getLogger("kestrel.serving.ratelimit")

# KEYS[1] bucket. ARGV: rate (tokens/s), burst, cost. Returns {allowed, retry_after_ms}.
_LUA = """
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(b[1]), tonumber(b[2])
if tokens == nil then tokens, ts = burst, now end
tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
local allowed, wait = 0, 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait}
"""
_SHA = hashlib.sha1(_LUA.encode()).hexdigest().encode()
# the longest a call waits for the limiter's answer before it is let through
LIMITER_TIMEOUT_S = 0.01

FAILED_OPEN = bentoml.metrics.Counter(
    name="kestrel_rate_limit_failed_open_total",
    documentation="Calls let through unchecked because the rate limiter's Redis did not "
                  "answer (or its circuit breaker was open)")


@dataclass(frozen=True)
class Limit:
    rate: float
    burst: float


def parse_overrides(text: str | None) -> dict[str, Limit]:
    out: dict[str, Limit] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        try:
            client, spec = part.split("=", 1)
            rate, burst = spec.split(":", 1)
            out[client.strip()] = Limit(float(rate), float(burst))
        except ValueError:
            raise ConfigError(f"KESTREL_RATE_LIMIT_CLIENTS: {part!r} is not client=rate:burst"
                              ) from None
    return out


class RateLimiter:
    def __init__(self, settings: Settings, redis: Redis, guard: RedisGuard):
        self.default = Limit(settings.rate_limit_per_second, settings.rate_limit_burst)
        self.overrides = parse_overrides(settings.rate_limit_clients)
        self.event_cost = settings.rate_limit_event_cost
        self.explain_factor = settings.rate_limit_explain_factor
        self.redis = redis
        self.guard = guard
        self.timeout = min(LIMITER_TIMEOUT_S, settings.score_budget_ms / 1000)
        self.failed_open = 0

    def batch_cost(self, client: str, events: int, explain_all: bool = False) -> float:
        """What a batch of ``events`` costs beyond the call's first token: ``events`` times
        KESTREL_RATE_LIMIT_EVENT_COST (times KESTREL_RATE_LIMIT_EXPLAIN_FACTOR when every
        decision is explained), at most the client's burst, so a batch can always pass."""
        limit = self.overrides.get(client, self.default)
        cost = events * self.event_cost * (self.explain_factor if explain_all else 1.0)
        return max(0.0, min(limit.burst, cost) - 1.0)

    def check(self, client: str, cost: float = 1) -> None:
        limit = self.overrides.get(client, self.default)
        if limit.rate <= 0 or cost <= 0:
            return
        try:
            allowed, wait_ms = self.guard.call("ratelimit", self._take, client, limit, cost)
        except RedisError as exc:  # RedisUnavailable included: no answer, or breaker open
            self.failed_open += 1
            FAILED_OPEN.inc()
            if self.failed_open == 1 or self.failed_open % 1000 == 0:
                log.warning("rate limiter store unavailable, letting calls through (%d so "
                            "far): %s", self.failed_open, exc)
            return
        if not allowed:
            raise RateLimited(client, max(1, math.ceil(int(wait_ms) / 1000)))

    def _take(self, client: str, limit: Limit, cost: float) -> Any:
        """Run the bucket script: [allowed, retry_after_ms]. Waits ``self.timeout`` in all."""
        deadline = time.perf_counter() + self.timeout
        args = (1, f"kestrel:ratelimit:{client}", limit.rate, limit.burst, cost)
        try:
            return roundtrip(self.redis, resp_command(b"EVALSHA", _SHA, *args), 1,
                             self.timeout)[0]
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        left = deadline - time.perf_counter()  # Redis restarted or flushed its scripts
        if left <= 0:
            raise TimeoutError("no time left to load the rate-limit script")
        return roundtrip(self.redis, resp_command(b"EVAL", _LUA, *args), 1, left)[0]
