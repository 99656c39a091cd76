"""Customer insights for assistants and apps: composed from what the platform already keeps.

Sources (each optional — a missing one leaves its part empty, listed in ``sources``):
- the batch insight doc ``kestrel:insights:customer:{id}`` (daily spend per category for the
  last 35 days up to ``as_of``, monthly totals with month-over-month change), written by
  `kestrel features materialize`;
- the stream's list of recent transactions ``kestrel:recent:{id}`` (newest first, 20 kept);
  days after the doc's ``as_of`` are counted from it, so they are complete only as far as
  those 20 transactions reach;
- the case store (cases/): the alerts of the customer's open case, newest first — one
  indexed SQL query; ``risk_level`` is ``high`` while the customer has an open case. When the
  store does not answer the insights are answered without them (``sources.cases:
  "unavailable"``) and not cached; for a second after a failure the store is not asked again
  (the route runs on the event loop).

"Today" is the latest day any source knows of for the customer (the simulated data lives in
2018, so the wall clock would say nothing). The composed document is cached at
``insight:user:{id}:v{schema}`` for ``KESTREL_INSIGHT_CACHE_TTL_SECONDS``; the stream deletes
that key in the commit that changes the customer, so a hit is never older than the last
committed transaction.

Every Redis call goes through the worker's circuit breaker (serving/redis_guard.py): while
Redis is frozen or gone the routes answer 503 with Retry-After at once instead of waiting.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import suppress
from datetime import date, timedelta
from typing import Any, Literal, cast

import orjson
from redis import Redis

from cases.store import CaseStore
from kestrel.errors import CaseStoreUnavailable
from kestrel.mcc import category_of as mcc_category
from kestrel.redis_keys import insight_cache_key, insight_doc_key, recent_key, top_spenders_key
from kestrel.resp import resp_command, roundtrip
from serving.redis_guard import RedisGuard, RedisUnavailable

CASES_PAUSE_S = 1.0  # after the case store failed, the insights do not ask it for this long
Cases = Literal["ok", "unavailable"]

FIELDS = ("as_of", "today", "spend_today", "spend_7d", "spend_30d", "trend", "top_categories",
          "recent_transactions", "open_alerts", "risk_level", "sources")


def _pct(now: float, before: float) -> float | None:
    return None if before <= 0 else round((now - before) / before, 4)


def compose(customer_id: str, doc: dict[str, Any] | None, recent: list[dict[str, Any]],
            alerts: list[dict[str, Any]], cases: Cases = "ok") -> dict[str, Any] | None:
    """The insights document, or None when no source knows the customer. ``alerts``: those
    of the customer's open case (``cases``: whether the case store could be read)."""
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
                      "alerts": bool(alerts), "cases": cases}
    return out


class Insights:
    """Reads (and caches) insights; Redis errors raise RedisUnavailable (HTTP 503)."""

    def __init__(self, redis: Redis, cases: Callable[[], CaseStore], schema: int,
                 ttl_seconds: int, guard: RedisGuard):
        self.redis = redis
        self.cases = cases
        self.schema = schema
        self.ttl = ttl_seconds
        self.guard = guard
        self._cases_down_until = 0.0  # time.monotonic(): the store failed, not asked till then

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
        alerts, cases = self.open_alerts(customer_id)
        result = compose(customer_id, doc, recent, alerts, cases)
        if result is None:
            if cases == "unavailable":  # the case store might know the customer: say so
                raise CaseStoreUnavailable("the customer is in no insight source that answers "
                                           "and the case store is unreachable; retry shortly")
            return None
        body = orjson.dumps(result, option=orjson.OPT_UTC_Z)
        if cases == "unavailable":  # incomplete: the next call composes it again
            return body
        # the answer is composed: a cache it cannot write only costs the next call a rebuild
        with suppress(RedisUnavailable):  # (the breaker logs the outage)
            self.guard.call("insights", self.redis.set,
                            insight_cache_key(customer_id, self.schema), body, ex=self.ttl)
        return body

    def open_alerts(self, customer_id: str) -> tuple[list[dict[str, Any]], Cases]:
        """The alerts of the customer's open case, and whether the case store answered."""
        if time.monotonic() < self._cases_down_until:
            return [], "unavailable"
        try:
            listed = self.cases().open_alerts(customer_id)
        except CaseStoreUnavailable:
            self._cases_down_until = time.monotonic() + CASES_PAUSE_S
            return [], "unavailable"
        return [a.as_dict() for a in listed], "ok"

    def top_spenders(self, day: str, n: int) -> list[dict[str, Any]] | None:
        raw: Any = self.guard.call("insights", self.redis.get, top_spenders_key(day))
        if raw is None:
            return None
        rows: list[dict[str, Any]] = orjson.loads(raw)
        return rows[:n]
