"""Alert rules evaluated in the stream on each card's events.

- ``multi_country``: one card with ≥ 3 distinct countries and ≥ 5 transactions within
  5 minutes (card testing);
- ``velocity``: ≥ KESTREL_ALERT_VELOCITY_COUNT transactions within 10 minutes.

An alert is raised once per card and window: a rule fires again only for evidence that
starts after the last alert's evidence ended (remembered in the card's state, which is
committed atomically with the offsets). The alert id is derived from the card, the rule and
the first evidence txn_id, so a replay after a crash re-emits the same id and consumers can
deduplicate.

The alert record (topic `alerts`, key card_id; its fields are listed in docs/events.md) is
built here only, by :func:`evaluate`. ``evidence`` carries each evidence transaction as the
card's state holds it (txn_id, event_time, amount, country, lat, lon, terminal_id): the case
store keeps the record as received, and an investigator's case page reads them from it.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kestrel.pan import hex_as_letters
from pipelines.stream.state import AMOUNT, COUNTRY, LAT, LON, TERMINAL, TIME, TXN, Event, EventLog

FIVE_MIN_US = 5 * 60 * 1_000_000
TEN_MIN_US = 10 * 60 * 1_000_000


@dataclass(frozen=True)
class Rule:
    name: str
    window_us: int
    min_count: int
    min_countries: int = 0

    @property
    def window_label(self) -> str:
        return f"{self.window_us // 60_000_000}m"


def rules(velocity_count: int) -> tuple[Rule, ...]:
    return (Rule("multi_country", FIVE_MIN_US, 5, 3), Rule("velocity", TEN_MIN_US, velocity_count))


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat().replace("+00:00", "Z")


def _evidence(e: Event) -> dict[str, Any]:
    return {"txn_id": e[TXN], "event_time": _iso(e[TIME]), "amount": e[AMOUNT],
            "country": e[COUNTRY], "lat": e[LAT], "lon": e[LON], "terminal_id": e[TERMINAL]}


def evaluate(card_id: str, customer_id: str, log: EventLog, rule: Rule,
             now: datetime) -> dict[str, Any] | None:
    """The alert this card's latest state raises for ``rule``, if any."""
    times, events = log.times, log.events
    t_last = times[-1]
    chunk = events[bisect_right(times, t_last - rule.window_us):]
    if len(chunk) < rule.min_count:
        return None
    if rule.min_countries and len({e[COUNTRY] for e in chunk}) < rule.min_countries:
        return None
    previous_end = log.marks.get(rule.name)
    if previous_end is not None and chunk[0][TIME] <= previous_end:
        return None  # same window as an alert already raised
    log.marks[rule.name] = chunk[-1][TIME]
    first = chunk[0][TXN]
    alert_id = hex_as_letters(
        hashlib.sha256(f"{card_id}|{rule.name}|{first}".encode()).hexdigest()[:24])
    return {
        "alert_id": alert_id, "card_id": card_id, "customer_id": customer_id,
        "rule": rule.name, "window": rule.window_label,
        "evidence_txn_ids": [e[TXN] for e in chunk],
        "evidence": [_evidence(e) for e in chunk],
        "countries": sorted({e[COUNTRY] for e in chunk}),
        "first_event_time": _iso(chunk[0][TIME]), "last_event_time": _iso(chunk[-1][TIME]),
        "emitted_at": now.isoformat().replace("+00:00", "Z"), "status": "open",
    }
