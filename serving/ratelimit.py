"""Per-client token buckets in Redis: one Lua script, atomic across workers and replicas.

Each client (the token's ``client`` claim) has a bucket of ``burst`` tokens refilled at
``rate`` tokens per second (``KESTREL_RATE_LIMIT_PER_SECOND`` / ``KESTREL_RATE_LIMIT_BURST``;
per-client overrides in ``KESTREL_RATE_LIMIT_CLIENTS`` as ``client=rate:burst,...``). A call
costs one token; a batch costs in proportion to its size (:meth:`RateLimiter.batch_cost`).
The script reads Redis' own clock (TIME), so replicas with skewed clocks agree. A request
that finds the bucket empty gets 429 with ``Retry-After`` (seconds until one token is back).
If Redis is unreachable the limiter lets the call through (fail open) and counts it: scoring
must not stop because the limiter's store is down.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import RedisError

from kestrel.errors import ConfigError, KestrelError
from kestrel.settings import Settings

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


class RateLimited(KestrelError):
    """The client's bucket is empty (HTTP 429)."""

    def __init__(self, client: str, retry_after: int):
        super().__init__(f"client {client!r} is over its request rate; retry after "
                         f"{retry_after} s")
        self.client = client
        self.retry_after = retry_after


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
    def __init__(self, settings: Settings, redis: Redis):
        self.default = Limit(settings.rate_limit_per_second, settings.rate_limit_burst)
        self.overrides = parse_overrides(settings.rate_limit_clients)
        self.event_cost = settings.rate_limit_event_cost
        self.explain_factor = settings.rate_limit_explain_factor
        self.redis = redis
        self._script = redis.register_script(_LUA)
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
            allowed, wait_ms = self._script(keys=[f"kestrel:ratelimit:{client}"],
                                            args=[limit.rate, limit.burst, cost])
        except RedisError as exc:
            self.failed_open += 1
            if self.failed_open == 1 or self.failed_open % 1000 == 0:
                log.warning("rate limiter store unavailable, letting calls through: %s", exc)
            return
        if not allowed:
            raise RateLimited(client, max(1, math.ceil(int(wait_ms) / 1000)))
