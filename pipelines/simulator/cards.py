"""Synthetic card numbers, turned into card tokens the moment they exist.

The simulator must exercise the same path as a real payment: a card has a 16-digit,
Luhn-valid number, and what travels is its token (``card_id``). The numbers are made here,
handed to ``tokenize`` once per card and dropped; no output of the simulator holds one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# A fixed six-digit issuer prefix; the rest is a per-card account number and the check digit.
ISSUER_PREFIX = "499273"
_ACCOUNT_DIGITS = 9
_ACCOUNT_SPACE = 10**_ACCOUNT_DIGITS


def luhn_check_digits(payload: np.ndarray) -> np.ndarray:
    """The Luhn check digit for each row of a (cards × digits) array of payload digits."""
    digits = payload.astype(np.int64)
    from_right = np.arange(digits.shape[1])[::-1]
    doubled = from_right % 2 == 0  # the digit next to the check digit is doubled
    values = np.where(doubled, digits * 2, digits)
    values = np.where(values > 9, values - 9, values)
    return (10 - values.sum(axis=1) % 10) % 10


def synthetic_pans(count: int, rng: np.random.Generator) -> list[str]:
    """``count`` distinct, Luhn-valid 16-digit card numbers."""
    if count > _ACCOUNT_SPACE:
        raise ValueError(f"at most {_ACCOUNT_SPACE} cards can be simulated")
    # i -> (a + i·m) mod 10^9 is a bijection when m is coprime with 10, so numbers never repeat.
    a = int(rng.integers(_ACCOUNT_SPACE))
    m = int(rng.choice([1, 3, 7, 9])) + 10 * int(rng.integers(1, _ACCOUNT_SPACE // 10))
    accounts = (a + np.arange(count, dtype=np.int64) * m) % _ACCOUNT_SPACE
    powers = 10 ** np.arange(_ACCOUNT_DIGITS - 1, -1, -1, dtype=np.int64)
    account_digits = accounts[:, None] // powers % 10
    prefix = np.array([int(ch) for ch in ISSUER_PREFIX], dtype=np.int64)
    payload = np.hstack([np.broadcast_to(prefix, (count, len(prefix))), account_digits])
    check = luhn_check_digits(payload)
    rows = np.hstack([payload, check[:, None]]).astype(np.uint8) + ord("0")
    return [bytes(row).decode() for row in rows]


def card_tokens(count: int, rng: np.random.Generator, tokenize: Callable[[str], str]) -> list[str]:
    """One token per synthetic card, in card order; the numbers themselves are not kept."""
    return [tokenize(pan) for pan in synthetic_pans(count, rng)]
