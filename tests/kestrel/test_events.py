from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from kestrel.errors import EventValidationError, UnsupportedSchemaVersion
from kestrel.events import (
    LabelEvent,
    TransactionEvent,
    TransactionIn,
    decode_label,
    decode_transaction,
)
from kestrel.pan import CardTokenizer

VALID = {
    "txn_id": "tx-1", "event_time": "2018-04-01T10:00:00.250+02:00", "customer_id": "C00001",
    "account_id": "A00001", "card_id": "card_abc", "terminal_id": "T00001", "mcc": "5411",
    "amount": 42.5, "currency": "eur", "country": "fr", "lat": 48.85, "lon": 2.35,
    "channel": "pos",
}
PAN = "4111 1111 1111 1111"


def test_round_trip_normalizes_time_and_codes() -> None:
    ev = decode_transaction(orjson.dumps(VALID))
    assert ev.event_time == datetime(2018, 4, 1, 8, 0, 0, 250000, tzinfo=UTC)
    assert (ev.currency, ev.country, ev.schema_version) == ("EUR", "FR", 1)
    raw = ev.to_json()
    assert b'"event_time":"2018-04-01T08:00:00.250000Z"' in raw
    assert decode_transaction(raw) == ev


@pytest.mark.parametrize("over", [
    {}, {"device_id": "dev-9"}, {"amount": 0.1 + 0.2, "lat": -0.0, "lon": -179.999999},
    {"amount": 999_999.99999, "event_time": "2018-12-31T23:59:59.999999-11:00"},
    {"amount": 1e-05, "event_time": "2018-04-01T00:00:00Z"}])
def test_to_json_writes_what_pydantic_writes(over: dict[str, object]) -> None:
    """to_json encodes with orjson for speed; the bytes must stay pydantic's."""
    ev = TransactionEvent.model_validate({**VALID, **over})
    assert ev.to_json() == ev.model_dump_json().encode()


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("amount", 0, "greater than 0"),
        ("amount", -3, "greater than 0"),
        ("amount", 1_000_000.01, "less than or equal to 1000000"),
        ("currency", "EUX", "ISO 4217"),
        ("country", "XX", "ISO 3166"),
        ("channel", "phone", "'pos', 'ecom' or 'atm'"),
        ("mcc", "54", "pattern"),
        ("lat", 91, "less than or equal to 90"),
        ("event_time", "2018-04-01T10:00:00", "timezone"),
        ("txn_id", "", "at least 1 character"),
    ],
)
def test_field_errors_carry_path_and_reason(field: str, value: object, reason: str) -> None:
    with pytest.raises(EventValidationError) as info:
        decode_transaction(orjson.dumps({**VALID, field: value}))
    [err] = info.value.errors
    assert err.path == field
    assert reason in err.reason


def test_non_finite_amount_rejected() -> None:
    body = orjson.dumps(VALID).replace(b"42.5", b"NaN")
    with pytest.raises(EventValidationError) as info:
        decode_transaction(body)
    assert info.value.errors[0].path == "$"  # NaN is not JSON


def test_every_error_reported_at_once() -> None:
    bad = {**VALID, "amount": -1, "country": "ZZ"}
    del bad["customer_id"]
    with pytest.raises(EventValidationError) as info:
        decode_transaction(orjson.dumps(bad))
    assert {e.path for e in info.value.errors} == {"amount", "country", "customer_id"}


def test_unknown_schema_version_is_its_own_error() -> None:
    with pytest.raises(UnsupportedSchemaVersion, match="unsupported schema_version 2"):
        decode_transaction(orjson.dumps({**VALID, "schema_version": 2}))


def test_garbage_is_a_validation_error_not_a_crash() -> None:
    for raw in (b"", b"{", b"[1,2]", b"\xff\xfe"):
        with pytest.raises(EventValidationError):
            decode_transaction(raw)


def test_card_number_is_not_part_of_the_event_contract() -> None:
    with pytest.raises(EventValidationError) as info:
        decode_transaction(orjson.dumps({**VALID, "card_number": PAN}))
    assert info.value.errors[0].path == "card_number"
    assert "4111" not in str(info.value)


def test_transaction_in_tokenizes_and_hides_the_card_number() -> None:
    data = {**VALID, "card_number": PAN}
    del data["card_id"]
    incoming = TransactionIn.model_validate(data)
    assert "4111" not in repr(incoming)
    tok = CardTokenizer(b"k" * 32)
    raw = incoming.to_wire(tok.token)
    event = decode_transaction(raw)
    assert event.card_id == tok.token(PAN)
    assert "4111" not in raw.decode() and "card_number" not in raw.decode()
    assert event == decode_transaction(orjson.dumps({**VALID, "card_id": tok.token(PAN)}))


def test_to_wire_with_a_token_round_trips() -> None:
    incoming = TransactionIn.model_validate(VALID)
    assert decode_transaction(incoming.to_wire(str)) == TransactionEvent.model_validate(VALID)


def test_transaction_in_needs_exactly_one_card_reference() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        TransactionIn.model_validate({**VALID, "card_number": PAN})
    data = dict(VALID)
    del data["card_id"]
    with pytest.raises(ValueError, match="exactly one"):
        TransactionIn.model_validate(data)


def test_invalid_card_number_error_does_not_echo_it() -> None:
    data = {**VALID, "card_number": "4111 1111 1111 1112"}
    del data["card_id"]
    incoming = TransactionIn.model_validate(data)
    with pytest.raises(EventValidationError) as info:
        incoming.to_wire(CardTokenizer(b"k" * 32).token)
    assert info.value.errors[0].path == "card_number"
    assert "Luhn" in info.value.errors[0].reason
    assert "1112" not in str(info.value)


def test_label_contract() -> None:
    label = decode_label(orjson.dumps({
        "txn_id": "tx-1", "is_fraud": True, "source": "investigator", "analyst_id": "an-7",
        "reason": "customer confirmed", "labelled_at": "2018-04-08T10:00:00Z"}))
    assert isinstance(label, LabelEvent)
    assert decode_label(label.to_json()) == label
    with pytest.raises(EventValidationError, match="analyst_id"):
        decode_label(orjson.dumps({"txn_id": "t", "is_fraud": False, "source": "investigator",
                                   "labelled_at": "2018-04-08T10:00:00Z"}))
    with pytest.raises(EventValidationError) as info:
        decode_label(orjson.dumps({"txn_id": "t", "is_fraud": "yes", "source": "simulator",
                                   "labelled_at": "2018-04-08T10:00:00Z"}))
    assert info.value.errors[0].path == "is_fraud"


def test_event_is_immutable() -> None:
    ev = TransactionEvent.model_validate(VALID)
    with pytest.raises(ValueError):
        ev.amount = 1.0  # type: ignore[misc]


# --- request bodies: the client contract and the scoring fast path -------------------------

def test_parse_events_fast_path_gives_what_the_client_contract_gives() -> None:
    from serving.ingest import parse_events, parse_transactions

    tokenizer = CardTokenizer(b"k" * 32)
    docs = [{**VALID, "txn_id": f"tx-{i}", "amount": 10.0 + i} for i in range(3)]
    body = orjson.dumps({"events": docs})
    events, prefix = parse_events(body, 10, tokenizer.token)  # card tokens: the fast path
    incoming, _ = parse_transactions(body, 10)
    assert prefix == "events"
    assert [e.to_json() for e in events] == [i.to_wire(tokenizer.token) for i in incoming]
    one, prefix = parse_events(orjson.dumps(VALID), 1, tokenizer.token)
    assert prefix == "" and one == [TransactionEvent.model_validate(VALID)]


def test_parse_events_tokenizes_and_reports_in_the_client_contract_words() -> None:
    from serving.ingest import parse_events

    tokenizer = CardTokenizer(b"k" * 32)
    with_pan = {k: v for k, v in VALID.items() if k != "card_id"} | {"card_number": PAN}
    [ev], _ = parse_events(orjson.dumps(with_pan), 1, tokenizer.token)
    assert ev.card_id == tokenizer.token(PAN) and "4111" not in ev.to_json().decode()
    neither = {k: v for k, v in VALID.items() if k != "card_id"}
    bad_luhn = {**with_pan, "txn_id": "tx-2", "card_number": "4111 1111 1111 1112"}
    for docs, path, reason in (
            ([VALID, neither], "events[1]", "exactly one"),  # fast path fails: same words
            ([{**VALID, "amount": -1}], "events[0].amount", "greater than 0"),
            ([VALID, bad_luhn], "events[1].card_number", "Luhn")):
        with pytest.raises(EventValidationError) as info:
            parse_events(orjson.dumps({"events": docs}), 10, tokenizer.token)
        [err] = info.value.errors
        assert err.path == path and reason in err.reason
        assert "4111" not in err.reason
