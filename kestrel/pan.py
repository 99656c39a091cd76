"""Card numbers (PANs): how one is recognised, tokenized and redacted — one definition.

A raw card number never leaves the ingest process. It is replaced by a keyed HMAC token
(``card_id``): the same card always gets the same token, so per-card features work, but the
token cannot be reversed or brute-forced without the key (``KESTREL_PAN_TOKEN_KEY``).

What counts as a card number is decided once, by :func:`canonical`: the text is put in NFKC
form, every decimal digit character (Unicode category Nd: ASCII, Arabic-Indic, Devanagari,
full-width …) becomes its ASCII digit, and every space or dash character (categories Zs, Pd:
the en dash, the no-break space …) becomes a separator. A **PAN-like** value is one holding a
run of at least 12 digits once separators are removed (a run longer than 19 still contains
one of 12–19). Three users of that one definition:

- :func:`pan_like` refuses such values in identifiers and free text at every entry point
  (no Luhn check: a mistyped card number is still a card number);
- :meth:`CardTokenizer.token` gives one token per card, however its digits were written;
- :func:`redact_pans` replaces every such run in text that must be kept (logs, dead-letter
  payloads and reasons).

Kestrel's own tokens are ``card_`` plus 32 letters (the HMAC's hex digits spelled with the
letters g–p), so no token is ever PAN-like itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata

TOKEN_PREFIX = "card_"
REDACTED = "[PAN REDACTED]"
MIN_RUN = 12
MAX_PAN_DIGITS = 19
# On canonical text: a digit, then 11 or more digits each after any number of separators.
_RUN = re.compile(rf"[0-9](?:[ \-]*[0-9]){{{MIN_RUN - 1},}}")
_NOT_DIGIT_OR_SEPARATOR = re.compile(r"[^0-9 \-]")
# ascii_pan_like: separators deleted and every digit made "0", a run is 12 "0"s in a row
_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_ZERO_RUN = b"0" * MIN_RUN
_HEX_AS_LETTERS = str.maketrans("0123456789abcdef", "ghijklmnopabcdef")


def _canonical_char(ch: str) -> str:
    """One character of NFKC text, as :func:`canonical` maps it."""
    if ch.isascii():
        return ch
    category = unicodedata.category(ch)
    if category == "Nd":
        return chr(48 + unicodedata.decimal(ch))
    if category in ("Zs", "Pd"):
        return " "
    return ch


def canonical(text: str) -> str:
    """``text`` in NFKC form with every decimal digit as ASCII and every space or dash
    character as a space (ASCII ``-`` stays): the form every PAN check reads."""
    if text.isascii():  # NFKC leaves ASCII as it is; the common case costs one call
        return text
    return "".join(map(_canonical_char, unicodedata.normalize("NFKC", text)))


def pan_like(text: str) -> bool:
    """Whether ``text`` holds a run of 12 or more digits, separators removed."""
    return _RUN.search(canonical(text)) is not None


def ascii_pan_like(text: bytes) -> bool:
    """:func:`pan_like` for ASCII text given as bytes (:func:`canonical` leaves ASCII as it
    is), at C speed: one ``bytes.translate`` and one substring search, where the regex
    backtracks on every short digit run (identifiers are full of them: ~40 ns per character
    against ~2). For many values at once, join them with a byte that is neither a digit nor
    a separator (NUL): the whole holds a run only if one of them does. A non-ASCII byte
    breaks a run here, so text that may not be ASCII needs :func:`pan_like`."""
    return _ZERO_RUN in text.translate(_DIGITS_AS_ZERO, b" -")


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
    """The card number's ASCII digits; raises ValueError (never echoing the number) when it
    is not one: 12 to 19 digits in any script, spaces and dashes of any kind allowed."""
    text = canonical(pan).strip()
    if _NOT_DIGIT_OR_SEPARATOR.search(text):
        raise ValueError("card_number must be 12 to 19 digits (spaces and dashes allowed)")
    digits = text.replace(" ", "").replace("-", "")
    if not MIN_RUN <= len(digits) <= MAX_PAN_DIGITS:
        raise ValueError("card_number must be 12 to 19 digits (spaces and dashes allowed)")
    if not luhn_valid(digits):
        raise ValueError("card_number fails the Luhn check")
    return digits


def hex_as_letters(hexdigest: str) -> str:
    """A hex digest spelled with letters only (digits 0–9 as g–p): ids made from digests
    (card tokens, alert ids) can then never look like a card number."""
    return hexdigest.translate(_HEX_AS_LETTERS)


class CardTokenizer:
    """Turns card numbers into stable, irreversible ``card_…`` tokens with one key."""

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ValueError("the tokenization key must be at least 16 bytes")
        self._key = key

    def token(self, pan: str) -> str:
        digits = normalize_pan(pan)
        mac = hmac.new(self._key, digits.encode(), hashlib.sha256).hexdigest()
        return TOKEN_PREFIX + hex_as_letters(mac[:32])


def redact_pans(text: str) -> str:
    """``text`` (in canonical form) with every PAN-like run replaced by a marker. Redact
    whole texts: a payload cut first could end inside a card number and keep its start."""
    out = canonical(text)
    return _RUN.sub(REDACTED, out) if _RUN.search(out) else out
