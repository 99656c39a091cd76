"""Realistic records for the console's tests: a stream alert (pipelines/stream/rules.py's
shape, with its evidence details) and a declined decision (the `decisions` record with its
reasons, rules, transaction and feature vector, serving/decisions.py's shape)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
PLACES = [("DE", 52.52, 13.40), ("FR", 48.86, 2.35), ("ES", 40.42, -3.70),
          ("IT", 41.90, 12.50), ("NL", 52.37, 4.90), ("BE", 50.85, 4.35)]


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def alert(customer: str, card: str, n: int = 5, *, start: datetime = T0,
          rule: str = "multi_country", tag: str = "a") -> dict[str, Any]:
    """A ``multi_country`` alert: ``n`` payments in ``n`` countries within minutes."""
    evidence = []
    for i in range(n):
        country, lat, lon = PLACES[i % len(PLACES)]
        evidence.append({"txn_id": f"{tag}-{customer}-t{i}", "event_time": iso(
            start + timedelta(seconds=50 * i)), "amount": 120.0 + 35.5 * i,
            "country": country, "lat": lat, "lon": lon, "terminal_id": f"term-{country}-{i}"})
    return {
        "alert_id": f"al-{tag}-{customer}", "card_id": card, "customer_id": customer,
        "rule": rule, "window": "10m",
        "evidence_txn_ids": [e["txn_id"] for e in evidence], "evidence": evidence,
        "countries": sorted({e["country"] for e in evidence}),
        "first_event_time": evidence[0]["event_time"],
        "last_event_time": evidence[-1]["event_time"]}


def decision(customer: str, card: str, txn: str, score: float = 0.97, *,
             at: datetime = T0, action: str = "decline") -> dict[str, Any]:
    """A declined decision, as the service publishes it to `decisions`."""
    features = {"card_txn_count_1h": 6.0, "card_txn_count_10m": 5.0,
                "card_distinct_countries_1h": 4.0, "amount_zscore_30d": 3.2,
                "customer_txn_count_24h": 3.0, "card_km_from_last": 1054.7,
                "card_seconds_since_last": 48.0,
                "km_from_home": -1.0, "seconds_since_last_txn": -1.0}  # the sentinels
    return {
        "txn_id": txn, "customer_id": customer, "card_id": card, "event_time": iso(at),
        "score": score, "action": action,
        "reasons": [
            {"feature": "card_txn_count_1h", "value": 6.0, "contribution": 1.21,
             "text": "6 payments on this card in the last hour"},
            {"feature": "card_km_from_last", "value": 1054.7, "contribution": 0.64,
             "text": "1,055 km from the card's last payment"},
            {"feature": "customer_txn_count_24h", "value": 3.0, "contribution": -0.18,
             "text": "3 payments by the customer in the last day"}],
        "rules": [{"rule": "velocity_decline", "action": "decline",
                   "text": "more than 5 payments in 10 minutes"}],
        "explanation": "Declined: the fraud score 0.97 is above the decline threshold; the "
                       "strongest risk signal is 6 payments on this card in the last hour.",
        "model_version": "3", "degraded": False, "latency_ms": 4.2,
        "transaction": {"amount": 950.0, "currency": "EUR", "country": "IT", "lat": 45.46,
                        "lon": 9.19, "mcc": "5732", "terminal_id": "term-IT-9",
                        "channel": "pos", "event_time": iso(at)},
        "features": features, "decided_at": iso(at + timedelta(milliseconds=5))}
