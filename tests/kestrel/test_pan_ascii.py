"""kestrel.pan.ascii_pan_like: pan_like's answer on ASCII text, for vectorised checks."""

from __future__ import annotations

import random

from kestrel.pan import ascii_pan_like, pan_like


def test_ascii_pan_like_agrees_with_pan_like_on_random_ascii_text() -> None:
    rng = random.Random(27)
    alphabet = "0123456789" * 3 + " -" * 2 + "a.:_\x00"
    flagged = 0
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert ascii_pan_like(text.encode()) == pan_like(text), repr(text)
        flagged += pan_like(text)
    assert 1_000 < flagged < 19_000  # both answers were met often


def test_ascii_pan_like_on_identifiers_joined() -> None:
    ids = ["tx-19f22931.20180401.000000", "C02418", "card_fegannhbojlaognpbfjonlbbdjhihgbe",
           "T-1234-5678", "A00001"]
    assert not ascii_pan_like("\x00".join(ids).encode())
    for pan in ("4111111111111111", "4111-1111-1111-1111", "4111 1111 1111 1111",
                "c-411111111111", "x41111111-11111y"):
        assert ascii_pan_like("\x00".join([*ids, pan]).encode()), pan
    # a run never spans two values: the NUL between them is no separator
    assert not ascii_pan_like("\x00".join(["id-411111", "111111-x"]).encode())
    assert pan_like("id-411111" + "111111-x")
