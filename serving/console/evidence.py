"""A case's evidence transactions with the details their records carried.

The case store keeps each alert and flagged decision as received (``AlertView.payload``):
a stream alert lists its evidence (``evidence: [{txn_id, event_time, amount, country, lat,
lon, terminal_id}]``), a decision its one transaction (``transaction: {amount, currency,
country, lat, lon, terminal_id, event_time, …}``). Records from before those fields existed
lack them: the details are then None and the pages say "not recorded". A transaction named
by several records is listed once, each detail taken from the first record that has it.

Every value is checked on the way out: a number that is not finite, a coordinate off the
globe or a value of the wrong type counts as not recorded, and text passes through
kestrel.pan.redact_pans (the payload is kept as received; no card number reaches a page).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

from cases.views import AlertView, CaseView
from kestrel.pan import redact_pans
from serving.console.geo import MapPoint
from serving.console.narrative import money, stamp


@dataclass(frozen=True)
class Txn:
    txn_id: str
    event_time: datetime | None
    amount: float | None
    currency: str | None
    country: str | None
    lat: float | None
    lon: float | None
    terminal_id: str | None
    card_id: str | None
    source: str  # "alert:<rule>" | "decision"


def transactions_of(case: CaseView) -> list[Txn]:
    """Every evidence transaction of the case, once per txn_id, oldest first (those without
    a time last, in the order they came)."""
    found: dict[str, Txn] = {}
    for alert in case.alerts:
        for txn in _of_alert(alert):
            seen = found.get(txn.txn_id)
            found[txn.txn_id] = txn if seen is None else _fill(seen, txn)
    order = {t: i for i, t in enumerate(found)}
    return sorted(found.values(), key=lambda t: (t.event_time is None,
                                                 t.event_time or datetime.min.replace(tzinfo=UTC),
                                                 order[t.txn_id]))


def map_points(txns: Sequence[Txn], *, flagged: bool = True) -> list[MapPoint]:
    """The transactions with a known position as map points, labelled with their id,
    amount, country and time."""
    return [MapPoint(t.lat, t.lon, label_of(t), flagged) for t in txns
            if t.lat is not None and t.lon is not None]


def label_of(t: Txn) -> str:
    parts = [t.txn_id]
    if t.amount is not None:
        parts.append(money(t.amount, t.currency))
    if t.country:
        parts.append(t.country)
    if t.event_time is not None:
        parts.append(stamp(t.event_time))
    return " · ".join(parts)


def _of_alert(alert: AlertView) -> list[Txn]:
    payload = alert.payload or {}
    if alert.kind == "decision":
        details = payload.get("transaction")
        d: Mapping[str, Any] = details if isinstance(details, Mapping) else {}
        return [_txn(alert.key, {**d, "event_time": d.get("event_time")
                                 or payload.get("event_time")},
                     card_id=alert.card_id, source="decision")]
    listed = payload.get("evidence")
    entries = {e.get("txn_id"): e for e in listed
               if isinstance(e, Mapping)} if isinstance(listed, list) else {}
    source = f"alert:{alert.rule or 'unnamed'}"
    return [_txn(t, entries.get(t, {}), card_id=alert.card_id, source=source)
            for t in alert.evidence_txn_ids]


def _txn(txn_id: str, d: Mapping[str, Any], *, card_id: str | None, source: str) -> Txn:
    lat, lon = _number(d.get("lat")), _number(d.get("lon"))
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        lat = lon = None
    return Txn(txn_id=txn_id, event_time=_time(d.get("event_time")),
               amount=_number(d.get("amount")), currency=_text(d.get("currency")),
               country=_text(d.get("country")), lat=lat, lon=lon,
               terminal_id=_text(d.get("terminal_id")), card_id=card_id, source=source)


def _fill(first: Txn, later: Txn) -> Txn:
    """``first`` with the details it lacks taken from ``later`` (a position is both
    coordinates or neither, so it comes whole from one record)."""
    gaps = {f.name: getattr(later, f.name) for f in fields(Txn)
            if getattr(first, f.name) is None and getattr(later, f.name) is not None}
    return replace(first, **gaps) if gaps else first


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _text(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return redact_pans(value.strip())


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)
