from __future__ import annotations

import pytest

from kestrel.pan import REDACTED, CardTokenizer, luhn_valid, normalize_pan, redact_pans


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("5500005555555559")
    assert not luhn_valid("4111111111111112")


def test_tokens_are_stable_keyed_and_irreversible() -> None:
    a, b = CardTokenizer(b"a" * 32), CardTokenizer(b"b" * 32)
    t1 = a.token("4111 1111 1111 1111")
    assert t1 == a.token("4111-1111-1111-1111") == a.token("4111111111111111")
    assert t1 != b.token("4111111111111111")
    assert t1.startswith("card_") and len(t1) == 37
    assert "4111" not in t1


@pytest.mark.parametrize("bad", ["4111", "4111111111111112", "abcd efgh ijkl mnop", ""])
def test_normalize_rejects_non_pans_without_echoing(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        normalize_pan(bad)
    assert bad not in str(info.value) or bad == ""


def test_short_keys_refused() -> None:
    with pytest.raises(ValueError):
        CardTokenizer(b"short")


def test_redaction() -> None:
    text = 'payload {"card_number": "4111 1111 1111 1111", "amount": 12, "ts": 1522576800123}'
    out = redact_pans(text)
    assert "4111" not in out and REDACTED in out
    assert "1522576800123" in out  # not Luhn-valid: left alone
    assert redact_pans("5500-0055-5555-5559") == REDACTED


def test_redaction_leaves_ids_alone() -> None:
    for text in ("tx-42-0000-000018", "tx-1-0001-000123", "order 2018-04-01-000001"):
        assert redact_pans(text) == text
    assert redact_pans("pan=378282246310005") == f"pan={REDACTED}"  # 15-digit Amex
    assert redact_pans("3782 822463 10005") == REDACTED
