"""Where the simulated grid is: (x, y) ∈ [0, 100]² mapped onto Europe.

The handbook places customers and terminals on an abstract square. Kestrel's features and rules
need real places (countries, currencies, latitude / longitude for "one card in three countries
within minutes"), so the square is cut into 5 × 5 blocks of 20 × 20, each a real European
country, laid out roughly as on a map: south-west PT, ES … north-east SE, FI.
lat ≈ 36 + 0.2·y (36–56 °N), lon ≈ −9 + 0.35·x (9 °W–26 °E).

Currencies are those of the simulated period, except HR, which uses EUR because HRK is no
longer an ISO 4217 code that event validation accepts.
"""

from __future__ import annotations

import numpy as np

BLOCK = 20.0
# Rows from south (y < 20) to north, columns from west (x < 20) to east.
COUNTRY_GRID: tuple[tuple[str, ...], ...] = (
    ("PT", "ES", "IT", "MT", "GR"),
    ("AD", "FR", "SI", "HR", "BG"),
    ("BE", "CH", "AT", "HU", "RO"),
    ("GB", "NL", "DE", "CZ", "PL"),
    ("IE", "NO", "DK", "SE", "FI"),
)
COUNTRIES: tuple[str, ...] = tuple(code for row in COUNTRY_GRID for code in row)

CURRENCY_OF: dict[str, str] = {
    **{code: "EUR" for code in COUNTRIES},
    "BG": "BGN",
    "CH": "CHF",
    "HU": "HUF",
    "RO": "RON",
    "GB": "GBP",
    "CZ": "CZK",
    "PL": "PLN",
    "NO": "NOK",
    "DK": "DKK",
    "SE": "SEK",
}
CURRENCIES: tuple[str, ...] = tuple(CURRENCY_OF[code] for code in COUNTRIES)

_COUNTRY_CODES = np.array(COUNTRIES)
_CURRENCY_CODES = np.array(CURRENCIES)


def country_index(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Index into COUNTRIES of each point (points on the edge 100 belong to the last block)."""
    n = len(COUNTRY_GRID)
    col = np.clip(np.floor_divide(np.asarray(x, dtype=float), BLOCK), 0, n - 1).astype(np.int8)
    row = np.clip(np.floor_divide(np.asarray(y, dtype=float), BLOCK), 0, n - 1).astype(np.int8)
    return row * n + col


def countries(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ISO 3166-1 alpha-2 code of each point."""
    return _COUNTRY_CODES[country_index(x, y)]


def currencies(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ISO 4217 code of the currency used at each point."""
    return _CURRENCY_CODES[country_index(x, y)]


def latitude(y: np.ndarray) -> np.ndarray:
    return 36.0 + 0.2 * np.asarray(y, dtype=float)


def longitude(x: np.ndarray) -> np.ndarray:
    return -9.0 + 0.35 * np.asarray(x, dtype=float)
