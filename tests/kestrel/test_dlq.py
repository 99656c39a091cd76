"""Dead-letter records keep no card number: payload, reason and error paths all redacted."""

from __future__ import annotations

import orjson
import pytest

from kestrel.dlq import MAX_PAYLOAD_CHARS, dead_letter
from kestrel.errors import EventValidationError, FieldError
from kestrel.pan import REDACTED, pan_like

ARABIC_PAN = "".join(chr(0x660 + int(d)) for d in "4111111111111111")


def _texts(doc: object) -> list[str]:
    """Every string (keys included) of a decoded JSON document."""
    if isinstance(doc, str):
        return [doc]
    if isinstance(doc, dict):
        return [t for k, v in doc.items() for t in (k, *_texts(v))]
    if isinstance(doc, list):
        return [t for v in doc for t in _texts(v)]
    return []


@pytest.mark.parametrize("pan", ["4111111111111111", "4111-1111-1111-1111",
                                 "4111 1111 1111 1111", "4111\u20131111\u20131111\u20131111",
                                 ARABIC_PAN])
def test_a_pan_across_the_cut_leaves_no_digits_of_it(pan: str) -> None:
    for before in range(MAX_PAYLOAD_CHARS - len(pan), MAX_PAYLOAD_CHARS):
        raw = ("x" * before + pan + "y" * 50).encode()
        _, value = dead_letter("transactions", 0, 1, raw, EventValidationError(
            [FieldError("$", "not valid JSON")]), "test")
        payload = orjson.loads(value)["payload"]
        assert len(payload) <= MAX_PAYLOAD_CHARS
        assert payload[before:] == (REDACTED + "y" * 50)[:MAX_PAYLOAD_CHARS - before], before
        assert not any(ch.isdigit() for ch in payload), before


def test_reason_and_error_paths_are_redacted() -> None:
    error = EventValidationError([
        FieldError("4111111111111111", "Extra inputs are not permitted"),
        FieldError("schema_version", "unsupported schema_version 4111-1111-1111-1111"),
        FieldError(f"a.{ARABIC_PAN}", f"bad {ARABIC_PAN}")])
    raw = b'{"4111111111111111": 1, "schema_version": "4111-1111-1111-1111"}'
    _, value = dead_letter("transactions", 2, 3, raw, error, "test")
    doc = orjson.loads(value)
    texts = _texts(doc)
    assert not any(pan_like(t) for t in texts)
    assert [e["path"] for e in doc["errors"]] == [REDACTED, "schema_version",
                                                   f"a.{REDACTED}"]
    assert REDACTED in doc["reason"] and REDACTED in doc["payload"]
    # the scan does see a card number where there is one (positive control)
    assert any(pan_like(t) for t in [*texts, raw.decode()])
