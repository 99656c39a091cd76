"""What a simulation run is: one frozen, validated set of parameters.

The parameters fully determine the output (same config, same bytes), so a run can be
reproduced from its config alone and any day can be regenerated without the others.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import date, timedelta

SCENARIO_NAMES: dict[int, str] = {
    0: "legit",
    1: "high_amount",
    2: "compromised_terminal",
    3: "compromised_customer",
    4: "card_testing",
    5: "account_takeover",
}
FRAUD_SCENARIOS: frozenset[int] = frozenset(k for k in SCENARIO_NAMES if k > 0)


@dataclass(frozen=True)
class SimulationConfig:
    """Population sizes, period, seed, enabled fraud scenarios and label delay."""

    customers: int = 5000
    terminals: int = 10000
    days: int = 183
    start: date = date(2018, 4, 1)
    seed: int = 42
    scenarios: frozenset[int] = field(default_factory=lambda: FRAUD_SCENARIOS)
    label_delay_days: float = 7.0

    def __post_init__(self) -> None:
        for name in ("customers", "terminals", "days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.start, date):
            raise ValueError(f"start must be a date, got {self.start!r}")
        scenarios = frozenset(self.scenarios)
        unknown = scenarios - FRAUD_SCENARIOS
        if unknown:
            raise ValueError(
                f"unknown fraud scenarios {sorted(unknown)}; choose from "
                f"{sorted(FRAUD_SCENARIOS)} ("
                + ", ".join(f"{k}={SCENARIO_NAMES[k]}" for k in sorted(FRAUD_SCENARIOS))
                + ")"
            )
        object.__setattr__(self, "scenarios", scenarios)
        delay = self.label_delay_days
        if not isinstance(delay, int | float) or not math.isfinite(delay) or delay < 0:
            raise ValueError(f"label_delay_days must be a finite number >= 0, got {delay!r}")

    @property
    def txn_id_prefix(self) -> str:
        """``tx-<fingerprint>``: the fingerprint covers every parameter that changes the
        transactions, so two different simulations never reuse a txn_id (the lake and the
        stream deduplicate by txn_id) while the same one always does."""
        key = (f"{self.seed}|{self.customers}|{self.terminals}|{self.start}|"
               f"{sorted(self.scenarios)}")
        return "tx-" + hashlib.sha256(key.encode()).hexdigest()[:8]

    def day(self, index: int) -> date:
        """The calendar date of day ``index`` (0 = ``start``)."""
        return self.start + timedelta(days=index)
