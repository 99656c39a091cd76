"""The `transactions` event contract, declared once.

Each field of a transaction event is one :class:`Rule`: its JSON type, whether it must be
present, whether it may be null, and the values it takes (bounds, lengths, characters, a set
of allowed values, no card number in it). Three readers apply it:

- :mod:`kestrel.events` — the pydantic models (HTTP, archiver, tests): the reference, which
  also gives every field error;
- :mod:`pipelines.stream.records` — the per-record quick check of the stream;
- :mod:`pipelines.stream.batch_decode` — the stream's batch decoder (a msgspec struct, then
  column checks).

They take their constants (the field set, bounds, lengths, alphabets, allowed values) from
here. Their checks are code, so ``tests/kestrel/test_contract.py`` holds each one against
this table: the field set, types, required / nullable, bounds and allowed values of the
pydantic model and of the msgspec struct, and, on values generated from each rule (its
edges and random ones), that every reader accepts exactly what the rule accepts. A fast
reader may send a valid record it is unsure about to pydantic; it may never accept one the
contract refuses.

Event time: an ISO 8601 time *with* a timezone, kept in UTC (it must be a UTC time a
``datetime`` holds: years 1 to 9999). Which times a consumer takes is the deployment's
(:class:`kestrel.events.TimeBounds`: settings ``event_time_earliest`` and
``event_time_ahead_seconds``); outside them a record goes to the dead-letter topic.

``docs/events.md`` shows this table (:func:`table`; a test keeps the two equal).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, get_args

from kestrel.iso import COUNTRIES, CURRENCIES

SchemaVersion = Literal[1]
SCHEMA_VERSION: SchemaVersion = 1
Channel = Literal["pos", "ecom", "atm"]
CHANNELS: tuple[Channel, ...] = get_args(Channel)
MAX_AMOUNT = 1_000_000.0

ID_CLASS = r"[A-Za-z0-9_.:\-]"
"""An identifier's characters, as a regex character class."""
ID_PATTERN = f"^{ID_CLASS}+$"
ID_ALPHABET = "".join(c for c in map(chr, range(128)) if re.fullmatch(ID_CLASS, c))
"""The same characters spelled out (all ASCII), for ``bytes.translate`` and set checks."""
ID_MAX_LENGTH = 64
MCC_LENGTH = 4
MCC_PATTERN = rf"^[0-9]{{{MCC_LENGTH}}}$"

JsonType = Literal["string", "number", "integer"]


@dataclass(frozen=True)
class Rule:
    """One field: its JSON type and the values it takes.

    ``strip`` / ``upper``: the reference (pydantic) strips whitespace / upper-cases the value
    before checking it (a fast reader may leave such values to it). ``pan_free``: a value
    holding a run of 12 or more digits (:func:`kestrel.pan.pan_like`) is refused, and the
    error never echoes it. ``time``: an ISO 8601 time with a timezone (see the module)."""

    name: str
    type: JsonType
    doc: str = ""
    required: bool = True
    nullable: bool = False
    default: Any = None
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    choices: tuple[Any, ...] | None = None
    strip: bool = False
    upper: bool = False
    pan_free: bool = False
    time: bool = False

    def bounds(self) -> dict[str, float]:
        """The number bounds that are set, by their name (gt, ge, le)."""
        return {k: v for k, v in (("gt", self.gt), ("ge", self.ge), ("le", self.le))
                if v is not None}

    def bound(self, which: Literal["gt", "ge", "le"]) -> float:
        """The bound ``which``, for a reader that relies on it (raises if it is not set)."""
        value = self.bounds().get(which)
        if value is None:
            raise LookupError(f"the contract's {self.name} has no {which} bound; change the "
                              "reader that relies on one")
        return value

    def allowed(self) -> frozenset[str]:
        """The allowed strings, for a reader that relies on them (raises if there are none)."""
        if self.choices is None or not all(isinstance(c, str) for c in self.choices):
            raise LookupError(f"the contract's {self.name} has no set of allowed strings; "
                              "change the reader that relies on one")
        return frozenset(self.choices)

    def json_schema(self) -> dict[str, Any]:
        """The rule as JSON Schema keywords (the checks a schema can state; ``strip``,
        ``upper``, ``pan_free`` and the timezone are not among them)."""
        out: dict[str, Any] = {"type": self.type}
        names = {"gt": "exclusiveMinimum", "ge": "minimum", "le": "maximum",
                 "min_length": "minLength", "max_length": "maxLength", "pattern": "pattern"}
        for attr, keyword in names.items():
            if getattr(self, attr) is not None:
                out[keyword] = getattr(self, attr)
        if self.choices is not None:
            out["enum"] = sorted(self.choices)
        if self.time:
            out["format"] = "date-time"
        return out


def identifier(name: str, doc: str = "", required: bool = True) -> Rule:
    """An id: 1 to 64 letters, digits and ``_.:-``, never PAN-like. Other producers' tokens
    (``card-x-…``, ``card_…``) are fine; what looks like a card number is refused. Optional
    ids may be null."""
    return Rule(name, "string", doc, required=required, nullable=not required,
                min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN, strip=True,
                pan_free=True)


TRANSACTION: tuple[Rule, ...] = (
    Rule("schema_version", "integer", "The contract's version; a reader refuses one it "
         "does not know.", required=False, default=SCHEMA_VERSION, choices=(SCHEMA_VERSION,)),
    identifier("txn_id", "Unique id; the idempotency key."),
    Rule("event_time", "string", "When the payment happened (with timezone).", time=True),
    identifier("customer_id", "The customer; the stream's partition key."),
    identifier("account_id", "The account the card draws on."),
    identifier("card_id", "Card token (never a raw card number)."),
    identifier("terminal_id", "The merchant's terminal."),
    Rule("mcc", "string", "Merchant category code, four digits.", pattern=MCC_PATTERN),
    Rule("amount", "number", "Positive, finite, at most 1,000,000.", gt=0, le=MAX_AMOUNT),
    Rule("currency", "string", "ISO 4217 code, e.g. EUR.", choices=tuple(sorted(CURRENCIES)),
         strip=True, upper=True),
    Rule("country", "string", "ISO 3166-1 alpha-2 code, e.g. FR.",
         choices=tuple(sorted(COUNTRIES)), strip=True, upper=True),
    Rule("lat", "number", "Latitude in degrees.", ge=-90, le=90),
    Rule("lon", "number", "Longitude in degrees.", ge=-180, le=180),
    Rule("channel", "string", "Where the card was used.", choices=CHANNELS),
    identifier("device_id", "The customer's device, when known.", required=False),
)
"""The fields of a `transactions` event. No other field is allowed."""

FIELDS: dict[str, Rule] = {rule.name: rule for rule in TRANSACTION}
REQUIRED: frozenset[str] = frozenset(rule.name for rule in TRANSACTION if rule.required)
ALLOWED: frozenset[str] = frozenset(FIELDS)
IDENTIFIERS: tuple[str, ...] = tuple(rule.name for rule in TRANSACTION if rule.pan_free)


def _values(rule: Rule) -> str:
    parts = []
    if rule.choices is not None:
        parts.append(", ".join(f"`{c}`" for c in rule.choices) if len(rule.choices) <= 5
                     else f"one of {len(rule.choices)} codes")
    ops = {"gt": ">", "ge": "≥", "le": "≤"}
    parts += [f"{ops[k]} {v:,.10g}" for k, v in rule.bounds().items()]
    if rule.min_length is not None or rule.max_length is not None:
        parts.append(f"{rule.min_length or 0}–{rule.max_length} characters")
    if rule.pattern is not None:
        parts.append(f"`{rule.pattern}`")
    if rule.pan_free:
        parts.append("not PAN-like")
    if rule.time:
        parts.append("ISO 8601 with timezone, UTC years 1–9999")
    if rule.upper:
        parts.append("case-insensitive")
    return "; ".join(parts)


def table() -> str:
    """The contract as a Markdown table (``docs/events.md`` holds it)."""
    lines = ["| field | type | required | values | meaning |", "|---|---|---|---|---|"]
    for rule in TRANSACTION:
        kind = rule.type + (" or null" if rule.nullable else "")
        default = "null" if rule.default is None else rule.default
        required = "yes" if rule.required else f"no (default {default})"
        lines.append(f"| `{rule.name}` | {kind} | {required} | {_values(rule)} | {rule.doc} |")
    return "\n".join(lines) + "\n"

