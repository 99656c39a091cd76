"""What a stream feature is computed from: the entities, and an event as every engine sees it.

The reference engine holds an event as a tuple (``Event``, fields at the indices below); the
array engine as one numpy column per field index; Spark as a row of the lake's transactions
(``SPARK_COLUMNS`` names the column of each field). ``is_night`` is the one definition of
"night" — the stream's filters and the request-time ``txn_is_night`` flag both use it.
"""

from __future__ import annotations

from typing import Final, Literal

Entity = Literal["card", "customer", "terminal"]
ENTITIES: tuple[Entity, ...] = ("card", "customer", "terminal")
ENTITY_KEYS: dict[Entity, str] = {"card": "card_id", "customer": "customer_id",
                                  "terminal": "terminal_id"}

# An event as the state keeps it: (txn_id, time_us, amount, country, terminal_id, mcc, lat, lon)
Event = tuple[str, int, float, str, str, str, float, float]
TXN: Final = 0
TIME: Final = 1
AMOUNT: Final = 2
COUNTRY: Final = 3
TERMINAL: Final = 4
MCC: Final = 5
LAT: Final = 6
LON: Final = 7
VALUES: Final = (AMOUNT, COUNTRY, TERMINAL, MCC, LAT, LON)  # the fields after txn_id and time
FLOAT_FIELDS: Final = (AMOUNT, LAT, LON)

# The lake's column for each event field (pipelines/batch/backfill.py reads these).
SPARK_COLUMNS: Final[dict[int, str]] = {
    TXN: "txn_id", TIME: "t", AMOUNT: "amount", COUNTRY: "country", TERMINAL: "terminal_id",
    MCC: "mcc", LAT: "lat", LON: "lon"}

HOUR_US: Final = 3_600_000_000
NIGHT_STARTS, NIGHT_ENDS = 22, 6  # night is 22:00–05:59 UTC


def hour_of(time_us: int) -> int:
    """The UTC hour of day of an event time in µs since the epoch."""
    return time_us // HOUR_US % 24


def is_night(time_us: int) -> bool:
    """Whether an event time falls in the night: UTC hour ≥ NIGHT_STARTS or < NIGHT_ENDS."""
    hour = hour_of(time_us)
    return hour >= NIGHT_STARTS or hour < NIGHT_ENDS
