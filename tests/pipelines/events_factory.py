"""Hand-made valid transaction events for tests that do not need the simulator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

START = datetime(2018, 4, 1, tzinfo=UTC)


def make_event(i: int, day: int = 0, prefix: str = "tx") -> dict[str, Any]:
    return {
        "schema_version": 1,
        "txn_id": f"{prefix}-{i:07d}",
        "event_time": (START + timedelta(days=day, seconds=(i * 7) % 86_000)).isoformat()
        .replace("+00:00", "Z"),
        "customer_id": f"C{i % 500:05d}",
        "account_id": f"A{i % 500:05d}",
        "card_id": f"card_{'k' * 26}{i % 700:06x}",
        "terminal_id": f"T{i % 900:05d}",
        "mcc": "5411",
        "amount": round(1 + (i % 997) * 0.37, 2),
        "currency": "EUR",
        "country": "FR",
        "lat": 48.0,
        "lon": 2.0,
        "channel": "pos",
        "device_id": None,
    }


def encode(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)
