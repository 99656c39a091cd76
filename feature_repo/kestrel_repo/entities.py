"""The three things Kestrel keeps features about; join keys come from kestrel.windows."""

from __future__ import annotations

from feast import Entity, ValueType

from kestrel.windows import ENTITY_KEYS
from kestrel_repo.common import OWNER, tags

customer = Entity(
    name="customer",
    join_keys=[ENTITY_KEYS["customer"]],
    value_type=ValueType.STRING,
    description="A bank customer; owns accounts and cards. Pseudonymous id, no PII.",
    owner=OWNER,
    tags=tags("entity", identifier="pseudonymous"),
)

card = Entity(
    name="card",
    join_keys=[ENTITY_KEYS["card"]],
    value_type=ValueType.STRING,
    description="A payment card, identified by its token (a raw card number never gets here).",
    owner=OWNER,
    tags=tags("entity", identifier="token"),
)

terminal = Entity(
    name="terminal",
    join_keys=[ENTITY_KEYS["terminal"]],
    value_type=ValueType.STRING,
    description="A point-of-sale or e-commerce terminal that accepts card payments.",
    owner=OWNER,
    tags=tags("entity", identifier="merchant-terminal"),
)

ENTITIES: dict[str, Entity] = {"customer": customer, "card": card, "terminal": terminal}
