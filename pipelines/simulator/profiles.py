"""Who pays and where: customer, card and terminal profiles of one simulation.

Following the handbook, a customer has a home on the grid, a mean amount (std = mean / 2) and
a mean number of transactions per day, and pays at the terminals within radius 5 of home.
Kestrel adds what its features need: ids, a home country and currency, one or two cards, a
usual device for online payments; and for terminals an MCC, a channel and a country.
Profiles are drawn once per run from the seed; every daily batch reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from kestrel.contract import CHANNELS
from kestrel.mcc import CASH_MCC
from pipelines.simulator import geography
from pipelines.simulator.cards import card_tokens
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.reach import terminals_within

RADIUS = 5.0
SECOND_CARD_SHARE = 0.3  # of customers
POS, ECOM, ATM = 0, 1, 2
CHANNEL_WEIGHTS = (0.85, 0.10, 0.05)
# (mcc, weight) of card-present and online terminals; ATMs are always CASH_MCC.
POS_MCCS: tuple[tuple[str, float], ...] = (
    ("5411", 0.24), ("5812", 0.12), ("5814", 0.10), ("5541", 0.10), ("5912", 0.06),
    ("5311", 0.06), ("5651", 0.05), ("5732", 0.04), ("4111", 0.06), ("4121", 0.04),
    ("7011", 0.03), ("5999", 0.10),
)
ECOM_MCCS: tuple[tuple[str, float], ...] = (
    ("5999", 0.25), ("5732", 0.15), ("5651", 0.15), ("5815", 0.15), ("5311", 0.10),
    ("7011", 0.08), ("4111", 0.07), ("5814", 0.05),
)
# Stream ids of the per-run random generators, one per kind of profile.
_CUSTOMER_STREAM, _TERMINAL_STREAM, _CARD_STREAM = 101, 102, 103


@dataclass(frozen=True)
class Customers:
    x: np.ndarray
    y: np.ndarray
    mean_amount: np.ndarray
    std_amount: np.ndarray
    mean_per_day: np.ndarray
    country: np.ndarray  # home, index into geography.COUNTRIES
    second_card: np.ndarray  # card index, or -1 when the customer has one card
    reach_offsets: np.ndarray  # CSR over Terminals
    reach: np.ndarray
    ids: pa.Array  # "C00000"
    accounts: pa.Array  # "A00000"
    devices: pa.Array  # "D00000", the usual device for online payments

    def __len__(self) -> int:
        return len(self.x)

    @property
    def reach_counts(self) -> np.ndarray:
        return np.diff(self.reach_offsets)

    @property
    def home_countries(self) -> np.ndarray:
        return np.asarray(geography.COUNTRIES)[self.country]

    @property
    def home_currencies(self) -> np.ndarray:
        return np.asarray(geography.CURRENCIES)[self.country]


@dataclass(frozen=True)
class Terminals:
    x: np.ndarray
    y: np.ndarray
    channel: np.ndarray  # index into CHANNELS
    country: np.ndarray  # index into geography.COUNTRIES
    ids: pa.Array  # "T00000"
    mccs: pa.Array
    countries: pa.Array
    currencies: pa.Array
    lat: np.ndarray
    lon: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class Population:
    customers: Customers
    terminals: Terminals
    card_owner: np.ndarray  # customer index of each card; card i < len(customers) is i's first
    card_ids: pa.Array  # tokens

    @property
    def cards(self) -> int:
        return len(self.card_owner)


def _ids(prefix: str, count: int) -> pa.Array:
    width = max(5, len(str(count - 1)))
    return pa.array([f"{prefix}{i:0{width}d}" for i in range(count)], pa.string())


def _weighted(rng: np.random.Generator, table: tuple[tuple[str, float], ...], n: int) -> np.ndarray:
    codes = np.array([code for code, _ in table])
    weights = np.array([w for _, w in table])
    return codes[rng.choice(len(codes), size=n, p=weights / weights.sum())]


def build_terminals(config: SimulationConfig) -> Terminals:
    rng = np.random.default_rng([config.seed, _TERMINAL_STREAM])
    n = config.terminals
    x, y = rng.uniform(0, 100, n), rng.uniform(0, 100, n)
    channel = rng.choice(len(CHANNELS), size=n, p=CHANNEL_WEIGHTS).astype(np.int8)
    mcc = np.where(channel == ECOM, _weighted(rng, ECOM_MCCS, n), _weighted(rng, POS_MCCS, n))
    mcc[channel == ATM] = CASH_MCC
    return Terminals(
        x=x, y=y, channel=channel, country=geography.country_index(x, y),
        ids=_ids("T", n), mccs=pa.array(mcc, pa.string()),
        countries=pa.array(geography.countries(x, y), pa.string()),
        currencies=pa.array(geography.currencies(x, y), pa.string()),
        lat=geography.latitude(y), lon=geography.longitude(x),
    )


def build_population(config: SimulationConfig, tokenize: Callable[[str], str]) -> Population:
    """Every profile of the run; ``tokenize`` turns each synthetic card number into its id."""
    terminals = build_terminals(config)
    rng = np.random.default_rng([config.seed, _CUSTOMER_STREAM])
    n = config.customers
    x, y = rng.uniform(0, 100, n), rng.uniform(0, 100, n)
    mean_amount = rng.uniform(5, 100, n)
    mean_per_day = rng.uniform(0, 4, n)
    has_second = rng.random(n) < SECOND_CARD_SHARE
    second_card = np.full(n, -1, dtype=np.int64)
    second_card[has_second] = n + np.arange(int(has_second.sum()))
    card_owner = np.concatenate([np.arange(n), np.flatnonzero(has_second)])
    offsets, reach = terminals_within(x, y, terminals.x, terminals.y, RADIUS)
    customers = Customers(
        x=x, y=y, mean_amount=mean_amount, std_amount=mean_amount / 2,
        mean_per_day=mean_per_day, country=geography.country_index(x, y),
        second_card=second_card, reach_offsets=offsets, reach=reach,
        ids=_ids("C", n), accounts=_ids("A", n), devices=_ids("D", n),
    )
    card_rng = np.random.default_rng([config.seed, _CARD_STREAM])
    tokens = card_tokens(len(card_owner), card_rng, tokenize)
    return Population(customers, terminals, card_owner, pa.array(tokens, pa.string()))
