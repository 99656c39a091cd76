"""The transaction contract (kestrel/contract.py) against its three readers: the pydantic
models (kestrel/events.py), the stream's per-record check (pipelines/stream/records.py) and
its batch decoder (pipelines/stream/batch_decode.py).

Two kinds of check. The structure: the field set, JSON types, required / nullable, bounds,
lengths, patterns and allowed values the pydantic model and the msgspec struct state (their
JSON Schemas) equal the contract's, except the checks a reader makes in code, listed here
with where they are made. The behaviour: values generated from each rule (its edges, every
allowed value, random strings) are accepted by every reader exactly when the rule accepts
them, and the batch decoder takes the canonical ones itself, without the per-record path.
A failure names the field, the difference and the file to edit.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path
from typing import Any

import msgspec
import orjson

from kestrel import contract
from kestrel.contract import FIELDS, TRANSACTION, Rule
from kestrel.errors import EventValidationError
from kestrel.events import TransactionEvent, decode_transaction
from kestrel.pan import pan_like
from pipelines.stream import batch_decode, records
from tests.pipelines.events_factory import make_event

CONTRACT = "kestrel/contract.py"
EVENTS = "kestrel/events.py"
RECORDS = "pipelines/stream/records.py"
BATCH = "pipelines/stream/batch_decode.py"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "events.md"

# Checks a reader makes in code rather than in its schema: (field, JSON Schema keyword).
IN_PYDANTIC_VALIDATORS = {("currency", "enum"), ("country", "enum")}  # _currency, _country
IN_BATCH_COLUMN_CHECKS = (  # batch_decode._valid and event_time.exact_times_us
    {(rule.name, "pattern") for rule in TRANSACTION if rule.pattern is not None}
    | {("mcc", "minLength"), ("mcc", "maxLength")}  # the pattern's length, in the struct
    | {(rule.name, "format") for rule in TRANSACTION if rule.time})


# --- structure ------------------------------------------------------------------------------

def _declared() -> dict[str, dict[str, Any]]:
    return {rule.name: {**rule.json_schema(), "required": rule.required,
                        "nullable": rule.nullable} for rule in TRANSACTION}


def _normalized(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """An object's JSON Schema (pydantic's or msgspec's) as {field: keywords}, the way
    _declared writes them."""
    out = {}
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        nullable = False
        if "anyOf" in prop:
            kinds = prop.pop("anyOf")
            nullable = {"type": "null"} in kinds
            [prop_type] = [k for k in kinds if k != {"type": "null"}]
            prop.update(prop_type)
        if "const" in prop:
            prop["enum"] = [prop.pop("const")]
        if "enum" in prop:
            prop["enum"] = sorted(prop["enum"])
            prop.setdefault("type", "string" if isinstance(prop["enum"][0], str) else "integer")
        for noise in ("title", "description", "default"):
            prop.pop(noise, None)
        out[name] = {**prop, "required": name in schema.get("required", ()),
                     "nullable": nullable}
    return out


def _differences(actual: dict[str, dict[str, Any]], path: str,
                 in_code: set[tuple[str, str]]) -> list[str]:
    declared = _declared()
    out = [f"{path}: has no field {name!r}, which the contract declares; add it"
           for name in declared.keys() - actual.keys()]
    out += [f"{path}: has a field {name!r} the contract does not declare; add it to "
            f"{CONTRACT} or remove it" for name in actual.keys() - declared.keys()]
    for name in sorted(declared.keys() & actual.keys()):
        want, got = declared[name], actual[name]
        for key in sorted(want.keys() | got.keys()):
            if (name, key) in in_code or want.get(key) == got.get(key):
                continue
            if key == "enum" and key in want and key in got:
                missing, extra = set(want[key]) - set(got[key]), set(got[key]) - set(want[key])
                what = f"allowed values lack {sorted(missing)} and add {sorted(extra)}"
            else:
                what = f"{key} is {got.get(key)!r} where the contract says {want.get(key)!r}"
            out.append(f"{path}: {name}: {what}; edit {path} (or {CONTRACT})")
    return out


def test_the_pydantic_model_states_the_contract() -> None:
    actual = _normalized(TransactionEvent.model_json_schema())
    differences = _differences(actual, EVENTS, IN_PYDANTIC_VALIDATORS)
    assert not differences, "\n".join(differences)


def test_the_batch_decoder_struct_states_the_contract() -> None:
    schema = msgspec.json.schema(batch_decode.Record)
    actual = _normalized(schema["$defs"][batch_decode.Record.__name__])
    differences = _differences(actual, BATCH, IN_BATCH_COLUMN_CHECKS)
    assert not differences, "\n".join(differences)


def test_the_structure_check_sees_a_difference() -> None:
    """The check above is not blind: a struct with a looser bound and a field too many."""
    class Loose(msgspec.Struct):
        amount: float
        tip: float

    actual = _normalized(msgspec.json.schema(Loose)["$defs"]["Loose"])
    found = "\n".join(_differences(actual, BATCH, set()))
    assert "amount: exclusiveMinimum is None where the contract says 0" in found
    assert "a field 'tip' the contract does not declare" in found
    assert "has no field 'txn_id'" in found


def test_the_docs_show_the_contract() -> None:
    text = DOCS.read_text()
    assert contract.table() in text, (
        f"docs/events.md does not hold the contract's table; paste kestrel.contract.table() "
        f"there:\n{contract.table()}")


# --- behaviour ------------------------------------------------------------------------------

MISSING = object()
PAN_FORMS = ("4111111111111111", "4111-1111-1111-1111", "T411111111111x", "c-4111-1111-1111",
             "".join(chr(0x660 + int(d)) for d in "4111111111111111"))
# An event time's meaning (the rule's `time`), written out: (value, valid, canonical).
TIMES = (("2018-04-01T00:00:09.118047Z", True, True), ("2018-04-01T00:00:09Z", True, True),
         ("0001-01-01T00:00:00Z", True, True), ("9999-12-31T23:59:59Z", True, True),
         ("2018-04-01T10:00:00.250+02:00", True, False), ("2018-04-01 10:00:00Z", True, False),
         ("2018-04-01T00:00:09.000000Z", True, False), (1522540800, True, False),
         ("2018-04-01T10:00:00", False, False), ("2018-04-01", False, False),
         ("2018-02-30T00:00:00Z", False, False), ("0001-01-01T00:00:00+01:00", False, False),
         ("9999-12-31T23:59:59-01:00", False, False), ("soon", False, False))


def _string_ok(rule: Rule, value: str) -> bool:
    if rule.strip:
        value = value.strip()
    if rule.upper:
        value = value.upper()
    if rule.min_length is not None and len(value) < rule.min_length:
        return False
    if rule.max_length is not None and len(value) > rule.max_length:
        return False
    if rule.pattern is not None and not re.fullmatch(rule.pattern, value):
        return False
    if rule.choices is not None and value not in rule.choices:
        return False
    return not (rule.pan_free and pan_like(value))


def _number_ok(rule: Rule, value: float) -> bool:
    return ((rule.gt is None or value > rule.gt) and (rule.ge is None or value >= rule.ge)
            and (rule.le is None or value <= rule.le))


def _accepts(rule: Rule, value: Any) -> bool:
    """The rule's verdict on a value that is present (the contract, read literally, with
    the reference's lax reading of numbers: a number written as a string or a boolean)."""
    if value is None:
        return rule.nullable
    if rule.type == "string":
        return isinstance(value, str) and _string_ok(rule, value)
    if rule.type == "integer":
        return isinstance(value, int | float) and value in (rule.choices or ())
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return False
    return isinstance(value, int | float) and math.isfinite(value) and _number_ok(rule, value)


def _probes(rule: Rule, rng: random.Random) -> list[tuple[Any, bool, bool]]:
    """(value, valid, canonical) for one field: canonical values are valid ones the batch
    decoder must take itself."""
    if rule.time:
        return [*TIMES, (None, False, False), (MISSING, False, False)]
    out: list[tuple[Any, bool, bool]] = [(MISSING, not rule.required, not rule.required),
                                         (None, rule.nullable, rule.nullable),
                                         ([], False, False), ({"a": 1}, False, False)]
    plain: list[Any] = []
    if rule.type == "string":
        plain += [7, "", " ", "ZZ9", *PAN_FORMS]
        for choice in rule.choices or ():
            out.append((choice, True, True))
            plain += [choice.lower(), f" {choice} ", choice + "X"]
        if rule.max_length is not None and rule.pattern == contract.ID_PATTERN:
            out += [(f"a{c}", True, True) for c in contract.ID_ALPHABET]
            out += [("x" * rule.max_length, True, True), ("T41111111111x", True, True)]
            plain += ["x" * (rule.max_length + 1), " a", "a b", "é", "a/b", "a\n"]
        if rule.pattern == contract.MCC_PATTERN:
            out += [("5411", True, True), ("0000", True, True)]
            plain += ["541", "54111", "54a1", " 5411", "٥٤١١", 5411]
        pool = "0123456789-. a_é٥:Z"
        plain += ["".join(rng.choice(pool) for _ in range(rng.randint(0, 20)))
                  for _ in range(40)]
    elif rule.type == "number":
        edges = [(rule.gt, math.inf, False), (rule.ge, -math.inf, True),
                 (rule.le, math.inf, True)]
        for bound, away, valid in edges:
            if bound is not None:
                out.append((float(bound), valid, valid))
                plain.append(math.nextafter(bound, away))
        middle = ((rule.gt or rule.ge or 0.0) + (rule.le or 1.0)) / 2
        out.append((middle, True, True))
        plain += [int(middle), str(middle), True, "north", "NaN"]
        plain += [rng.uniform((rule.gt or rule.ge or 0) - 10, (rule.le or 0) + 10)
                  for _ in range(20)]
    else:
        out += [(choice, True, True) for choice in rule.choices or ()]
        plain += [2, "1", 1.0, 0]
    return out + [(value, _accepts(rule, value), False) for value in plain]


def _record(i: int, name: str, value: Any) -> bytes:
    event = make_event(i)
    if value is MISSING:
        event.pop(name, None)
    else:
        event[name] = value
    return orjson.dumps(event)


def _cases() -> list[tuple[str, Any, bool, bool, bytes]]:
    rng = random.Random(30)
    cases = [(rule.name, value, valid, canonical, b"")
             for rule in TRANSACTION for value, valid, canonical in _probes(rule, rng)]
    cases.append(("surprise", 1, False, False, b""))  # a field the contract does not have
    return [(name, value, valid, canonical, _record(i, name, value))
            for i, (name, value, valid, canonical, _) in enumerate(cases)]


def _verdict(decode: Any, raw: bytes) -> bool:
    try:
        decode(raw)
    except EventValidationError:
        return False
    return True


def test_every_reader_accepts_exactly_what_the_contract_accepts() -> None:
    cases = _cases()
    cols = batch_decode.decode_batch([raw for *_, raw in cases])
    wrong = []
    for i, (name, value, valid, _, raw) in enumerate(cases):
        verdicts = {EVENTS: _verdict(decode_transaction, raw),
                    RECORDS: _verdict(records.decode, raw), BATCH: i not in cols.errors}
        wrong += [f"{path}: {name}={value!r} is {'accepted' if got else 'refused'}; the "
                  f"contract ({CONTRACT}) {'accepts' if valid else 'refuses'} it: edit {path}"
                  for path, got in verdicts.items() if got != valid]
    assert not wrong, f"{len(wrong)} differences:\n" + "\n".join(wrong[:30])
    assert len(cases) > 800 and 0.2 < len(cols.errors) / len(cases) < 0.8


def test_the_batch_decoder_takes_canonical_records_itself() -> None:
    """A valid record in the stream's own form never needs the per-record path: the
    struct or the column checks are not stricter than the contract."""
    canonical = [(name, value, raw) for name, value, _, is_canonical, raw in _cases()
                 if is_canonical]
    if batch_decode.decode_batch([raw for *_, raw in canonical]).slow == 0:
        return
    slow = [f"{BATCH}: {name}={value!r} took the per-record path; the contract accepts it"
            for name, value, raw in canonical if batch_decode.decode_batch([raw]).slow]
    assert not slow, "\n".join(slow)


def test_the_constants_are_the_contracts() -> None:
    assert set(contract.ID_ALPHABET) == {c for c in map(chr, range(0x250))
                                         if re.fullmatch(contract.ID_PATTERN, c)}
    assert FIELDS["amount"].bound("le") == contract.MAX_AMOUNT
    assert contract.REQUIRED | {"schema_version", "device_id"} == contract.ALLOWED
