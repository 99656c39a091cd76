"""Card numbers (PANs): tokenization and redaction.

A raw card number never leaves the ingest process. It is replaced by a keyed HMAC token
(``card_id``): the same card always gets the same token, so per-card features work, but the
token cannot be reversed or brute-forced without the key (``KESTREL_PAN_TOKEN_KEY``).
``redact_pans`` scrubs anything that looks like a card number out of text we must keep
(dead-letter payloads, log lines).
"""

from __future__ import annotations

import hashlib
import hmac
import re

TOKEN_PREFIX = "card_"
_SEPARATORS = re.compile(r"[ -]")
# A card number as people write it: 12–19 digits in a row, or in the usual groups
# (4-4-4-4[-3], 4-6-5) separated by one space or dash. Ids like "tx-42-0000-000018" are not.
_PAN_LIKE = re.compile(
    r"(?<![0-9])(?:[0-9]{12,19}"
    r"|[0-9]{4}(?:[ -][0-9]{4}){2,3}(?:[ -]?[0-9]{1,3})?"
    r"|[0-9]{4}[ -][0-9]{6}[ -][0-9]{4,5})(?![0-9])"
)
REDACTED = "[PAN REDACTED]"


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check every card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def normalize_pan(pan: str) -> str:
    """Digits only; raises ValueError (never echoing the number) when it is not a PAN."""
    digits = _SEPARATORS.sub("", pan.strip())
    if not digits.isdigit() or not 12 <= len(digits) <= 19:
        raise ValueError("card_number must be 12 to 19 digits (spaces and dashes allowed)")
    if not luhn_valid(digits):
        raise ValueError("card_number fails the Luhn check")
    return digits


class CardTokenizer:
    """Turns card numbers into stable, irreversible ``card_…`` tokens with one key."""

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ValueError("the tokenization key must be at least 16 bytes")
        self._key = key

    def token(self, pan: str) -> str:
        digits = normalize_pan(pan)
        mac = hmac.new(self._key, digits.encode(), hashlib.sha256).hexdigest()
        return TOKEN_PREFIX + mac[:32]


def redact_pans(text: str) -> str:
    """Replace every Luhn-valid card-number-shaped digit run by a marker."""

    def _sub(m: re.Match[str]) -> str:
        digits = _SEPARATORS.sub("", m.group(0))
        return REDACTED if luhn_valid(digits) else m.group(0)

    return _PAN_LIKE.sub(_sub, text)
