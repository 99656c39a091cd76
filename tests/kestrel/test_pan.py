from __future__ import annotations

import pytest

from kestrel.pan import (
    REDACTED,
    CardTokenizer,
    canonical,
    luhn_valid,
    normalize_pan,
    pan_like,
    redact_pans,
)

# One card, written as people and systems write it: every form must tokenize to one token,
# be refused as an identifier, and be redacted from text.
PAN = "4111111111111111"
FORMS = [
    PAN,
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "4111\u20131111\u20131111\u20131111",  # en dash (Pd)
    "4111\u00a01111\u00a01111\u00a01111",  # no-break space (Zs)
    "".join(chr(0xFF10 + int(d)) for d in PAN),  # full width (NFKC maps them)
    "".join(chr(0x0660 + int(d)) for d in PAN),  # Arabic-Indic digits (NFKC keeps them)
    "".join(chr(0x0966 + int(d)) for d in PAN),  # Devanagari digits
    " ".join(["".join(chr(0x06F0 + int(d)) for d in PAN[i:i + 4]) for i in range(0, 16, 4)]),
]


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("5500005555555559")
    assert not luhn_valid("4111111111111112")


@pytest.mark.parametrize("form", FORMS)
def test_every_form_is_one_card(form: str) -> None:
    tok = CardTokenizer(b"a" * 32)
    assert normalize_pan(form) == PAN
    assert tok.token(form) == tok.token(PAN)
    assert pan_like(form) and pan_like(f"id-{form}-x")
    assert redact_pans(f"card {form} paid") == f"card {REDACTED} paid"


def test_canonical_maps_digits_and_separators_only() -> None:
    assert canonical("\u0664\u2013\u00a0ab") == "4  ab"  # digit, en dash, no-break space
    assert canonical("plain ascii-text") == "plain ascii-text"


def test_tokens_are_stable_keyed_irreversible_and_never_pan_like() -> None:
    a, b = CardTokenizer(b"a" * 32), CardTokenizer(b"b" * 32)
    t1 = a.token(PAN)
    assert t1 != b.token(PAN)
    assert t1.startswith("card_") and len(t1) == 37
    assert not any(ch.isdigit() for ch in t1)
    pans = [f"4{i:014d}" for i in range(2000)]
    pans = [p + str(next(d for d in range(10) if luhn_valid(p + str(d)))) for p in pans]
    assert not any(pan_like(a.token(p)) for p in pans)


@pytest.mark.parametrize("bad", ["4111", "4111111111111112", "abcd efgh ijkl mnop", "",
                                 "4111111111111111x", "41111111111111111111"])
def test_normalize_rejects_non_pans_without_echoing(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        normalize_pan(bad)
    assert bad not in str(info.value) or bad == ""


def test_short_keys_refused() -> None:
    with pytest.raises(ValueError):
        CardTokenizer(b"short")


@pytest.mark.parametrize("value", [
    "card-x-1234", "card_abcdef0123456789abcdef", "tx-1a2b3c4d.20180401.000123", "C00042",
    "12345678901",  # 11 digits
    "2018-04-01T10:00:00Z", "auth0|5f1c", "a@bank.com",
])
def test_ordinary_values_are_not_pan_like(value: str) -> None:
    assert not pan_like(value)
    assert redact_pans(value) == value


@pytest.mark.parametrize("value", [
    "123456789012",  # 12 digits, no Luhn check: a mistyped card is still a card
    "tx-42-0000-000018",  # 12 digits once the dashes go
    "order 2018-04-01-000001",
    "pan=378282246310005",  # 15-digit Amex
    "3782 822463 10005",
    "41111111111111111234",  # longer than 19 still holds a card number
])
def test_pan_like_values(value: str) -> None:
    assert pan_like(value)
    assert REDACTED in redact_pans(value)
    assert not any(ch.isdigit() for ch in redact_pans(value).replace("pan=", "")
                   .replace("order ", ""))


def test_redaction_of_text() -> None:
    text = 'payload {"card_number": "4111 1111 1111 1111", "amount": 12, "ts": 15225768}'
    out = redact_pans(text)
    assert "4111" not in out and REDACTED in out and "15225768" in out
