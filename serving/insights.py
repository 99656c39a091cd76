"""Customer insights for assistants and apps: composed from what the platform already keeps.

Sources (each optional — a missing one leaves its part empty, listed in ``sources``):
- the batch insight doc ``kestrel:insights:customer:{id}`` (daily spend per category for the
  last 35 days up to ``as_of``, monthly totals with month-over-month change), written by
  `kestrel features materialize`;
- the stream's list of recent transactions ``kestrel:recent:{id}`` (newest first, 20 kept);
  days after the doc's ``as_of`` are counted from it, so they are complete only as far as
  those 20 transactions reach;
- the alert store (open alerts of the customer).

"Today" is the latest day any source knows of for the customer (the simulated data lives in
2018, so the wall clock would say nothing). The composed document is cached at
``insight:user:{id}:v{schema}`` for ``KESTREL_INSIGHT_CACHE_TTL_SECONDS``; the stream deletes
that key in the commit that changes the customer, so a hit is never older than the last
committed transaction.

Every Redis call goes through the worker's circuit breaker (serving/redis_guard.py): while
Redis is frozen or gone the routes answer 503 with Retry-After at once instead of waiting.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import suppress
from datetime import date, timedelta
from typing import Any, cast

import orjson
from redis import Redis

from kestrel.mcc import category_of as mcc_category
from kestrel.redis_keys import insight_cache_key, insight_doc_key, recent_key, top_spenders_key
from kestrel.resp import resp_command, roundtrip
from serving.alerts import AlertStore
from serving.redis_guard import RedisGuard, RedisUnavailable

FIELDS = ("as_of", "today", "spend_today", "spend_7d", "spend_30d", "trend", "top_categories",
          "recent_transactions", "open_alerts", "risk_level", "sources")


def _pct(now: float, before: float) -> float | None:
    return None if before <= 0 else round((now - before) / before, 4)


def compose(customer_id: str, doc: dict[str, Any] | None, recent: list[dict[str, Any]],
            alerts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The insights document, or None when no source knows the customer."""
    if doc is None and not recent and not alerts:
        return None
    by_day: dict[str, float] = defaultdict(float)
    by_day_cat: dict[tuple[str, str], float] = defaultdict(float)
    last_doc_day = ""
    for row in (doc or {}).get("daily", []):
        by_day[row["date"]] += float(row["amount"])
        by_day_cat[(row["date"], row["category"])] += float(row["amount"])
        last_doc_day = max(last_doc_day, row["date"])
    last_doc_day = max(last_doc_day, str((doc or {}).get("as_of") or ""))
    for txn in recent:
        day = str(txn.get("event_time", ""))[:10]
        if day > last_doc_day:
            amount = float(txn.get("amount") or 0.0)
            by_day[day] += amount
            by_day_cat[(day, mcc_category(str(txn.get("mcc", ""))))] += amount
    days = [d for d in by_day if d]
    today_s = max([*days, last_doc_day]) if (days or last_doc_day) else None
    out: dict[str, Any] = {"customer_id": customer_id, "as_of": (doc or {}).get("as_of"),
                           "today": today_s}
    if today_s:
        today = date.fromisoformat(today_s)

        def spend(first: int, last: int) -> float:  # days back, inclusive
            return round(sum(by_day.get((today - timedelta(days=k)).isoformat(), 0.0)
                             for k in range(first, last + 1)), 2)

        out["spend_today"] = spend(0, 0)
        out["spend_7d"] = spend(0, 6)
        out["spend_30d"] = spend(0, 29)
        prev_7 = spend(7, 13)
        monthly = (doc or {}).get("monthly") or []
        out["trend"] = {"vs_previous_7d": _pct(out["spend_7d"], prev_7),
                        "previous_7d": prev_7,
                        "month_over_month": monthly[-1].get("mom_change") if monthly else None}
        since = (today - timedelta(days=29)).isoformat()
        cats: dict[str, float] = defaultdict(float)
        for (day, cat), amount in by_day_cat.items():
            if day >= since:
                cats[cat] += amount
        out["top_categories"] = [{"category": c, "amount": round(a, 2)} for c, a in
                                 sorted(cats.items(), key=lambda kv: (-kv[1], kv[0]))[:5]]
    else:
        out.update(spend_today=0.0, spend_7d=0.0, spend_30d=0.0, trend=None, top_categories=[])
    out["recent_transactions"] = recent[:10]
    out["open_alerts"] = alerts
    ratio = (out["trend"] or {}).get("vs_previous_7d") if out.get("trend") else None
    out["risk_level"] = ("high" if alerts else
                         "elevated" if ratio is not None and ratio > 1.0 else "normal")
    out["sources"] = {"insight_doc": doc is not None, "recent_transactions": bool(recent),
                      "alerts": bool(alerts)}
    return out


class Insights:
    """Reads (and caches) insights; Redis errors raise RedisUnavailable (HTTP 503)."""

    def __init__(self, redis: Redis, alerts: AlertStore, schema: int, ttl_seconds: int,
                 guard: RedisGuard):
        self.redis = redis
        self.alerts = alerts
        self.schema = schema
        self.ttl = ttl_seconds
        self.guard = guard

    def cached(self, customer_id: str) -> bytes | None:
        """The cached body, by a GET on a pooled connection without redis-py's command
        layer (kestrel.resp.roundtrip): the whole of a cache hit's Redis cost."""
        key = insight_cache_key(customer_id, self.schema)
        value: Any = self.guard.call("insights", roundtrip, self.redis,
                                     resp_command(b"GET", key), 1)[0]
        return cast(bytes | None, value)

    def build(self, customer_id: str) -> bytes | None:
        """Compose from the sources and fill the cache; None for an unknown customer."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(insight_doc_key(customer_id))
        pipe.lrange(recent_key(customer_id), 0, 19)
        raw_doc, raw_recent = self.guard.call("insights", pipe.execute)
        doc = orjson.loads(raw_doc) if raw_doc else None
        recent = [orjson.loads(r) for r in raw_recent]
        result = compose(customer_id, doc, recent, self.alerts.for_customer(customer_id))
        if result is None:
            return None
        body = orjson.dumps(result)
        # the answer is composed: a cache it cannot write only costs the next call a rebuild
        with suppress(RedisUnavailable):  # (the breaker logs the outage)
            self.guard.call("insights", self.redis.set,
                            insight_cache_key(customer_id, self.schema), body, ex=self.ttl)
        return body

    def top_spenders(self, day: str, n: int) -> list[dict[str, Any]] | None:
        raw: Any = self.guard.call("insights", self.redis.get, top_spenders_key(day))
        if raw is None:
            return None
        rows: list[dict[str, Any]] = orjson.loads(raw)
        return rows[:n]
