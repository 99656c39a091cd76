"""Daily batches of simulated transactions with their ground truth.

Each day is generated on its own, whole columns at a time: per customer a Poisson number of
payments, times around noon, amounts around the customer's mean, a terminal among the
reachable ones (the handbook's model), then the fraud scenarios. Every random draw of day d
comes from generators seeded with (seed, d, stream), so a day can be regenerated alone and
turning one scenario off leaves the others' draws unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kestrel.events import MAX_AMOUNT, SCHEMA_VERSION
from kestrel.lake import TRANSACTION_SCHEMA
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.profiles import CHANNELS, ECOM, Population, build_population
from pipelines.simulator.scenarios import Scenarios, day_rng
from pipelines.simulator.txns import NO_DEVICE, Txns, concat

TRUTH_SCHEMA = pa.schema(
    [("txn_id", pa.string()), ("is_fraud", pa.bool_()), ("scenario", pa.int8())]
)
MEAN_TIME_S, STD_TIME_S = 43_200.0, 20_000.0
SECOND_CARD_USE = 0.3  # share of a two-card customer's payments made with the second card
BASE_STREAM = 0
_CHANNEL_NAMES = pa.array(CHANNELS, pa.string())


@dataclass(frozen=True)
class DayBatch:
    """One simulated day: transactions in the lake's schema and what really happened."""

    day: date
    transactions: pa.Table  # kestrel.lake.TRANSACTION_SCHEMA, sorted by event_time
    truth: pa.Table  # TRUTH_SCHEMA, row for row with ``transactions``


def ordinary_transactions(population: Population, seed: int, day: int) -> Txns:
    """The day's legitimate payments, per the handbook's customer model."""
    customers, terminals = population.customers, population.terminals
    rng = day_rng(seed, day, BASE_STREAM)
    reach = customers.reach_counts
    counts = rng.poisson(customers.mean_per_day)
    counts[reach == 0] = 0
    who = np.repeat(np.arange(len(customers)), counts)
    n = len(who)
    seconds = rng.normal(MEAN_TIME_S, STD_TIME_S, n)
    mean = customers.mean_amount[who]
    amount = rng.normal(mean, customers.std_amount[who])
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean[negative])
    pick, card_draw = rng.random(n), rng.random(n)

    keep = (seconds >= 0) & (seconds < 86_400)
    who, seconds, amount = who[keep], seconds[keep], amount[keep]
    pick, card_draw = pick[keep], card_draw[keep]
    slot = customers.reach_offsets[who] + (pick * reach[who]).astype(np.int64)
    terminal = customers.reach[slot].astype(np.int64)
    second = customers.second_card[who]
    card = np.where((second >= 0) & (card_draw < SECOND_CARD_USE), second, who)
    device = np.where(terminals.channel[terminal] == ECOM, who, NO_DEVICE)
    return Txns(
        time_us=np.floor(seconds * 1e6).astype(np.int64),
        customer=who, card=card, terminal=terminal,
        amount=np.clip(np.round(amount, 2), 0.01, MAX_AMOUNT),
        device=device, scenario=np.zeros(len(who), dtype=np.int8),
    )


def _tables(txns: Txns, population: Population, id_prefix: str,
            day: date) -> tuple[pa.Table, pa.Table]:
    customers, terminals = population.customers, population.terminals
    n = len(txns)
    midnight_us = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 10**6
    numbers = pc.utf8_lpad(pa.array(np.arange(n)).cast(pa.string()), width=6, padding="0")
    txn_id = pc.binary_join_element_wise(f"{id_prefix}.{day:%Y%m%d}.", numbers, "")
    devices = pa.concat_arrays([customers.devices, pa.array(txns.new_devices, pa.string())])
    device_index = pa.array(txns.device, mask=txns.device == NO_DEVICE)
    terminal = pa.array(txns.terminal)
    columns = {
        "txn_id": txn_id,
        "event_time": pa.array(txns.time_us + midnight_us, pa.int64()).cast(
            TRANSACTION_SCHEMA.field("event_time").type),
        "customer_id": customers.ids.take(pa.array(txns.customer)),
        "account_id": customers.accounts.take(pa.array(txns.customer)),
        "card_id": population.card_ids.take(pa.array(txns.card)),
        "terminal_id": terminals.ids.take(terminal),
        "mcc": terminals.mccs.take(terminal),
        "amount": pa.array(txns.amount, pa.float64()),
        "currency": terminals.currencies.take(terminal),
        "country": terminals.countries.take(terminal),
        "lat": pa.array(terminals.lat[txns.terminal], pa.float64()),
        "lon": pa.array(terminals.lon[txns.terminal], pa.float64()),
        "channel": _CHANNEL_NAMES.take(pa.array(terminals.channel[txns.terminal])),
        "device_id": devices.take(device_index),
        "schema_version": pa.array(np.full(n, SCHEMA_VERSION, dtype=np.int16)),
    }
    transactions = pa.Table.from_pydict(columns, schema=TRANSACTION_SCHEMA)
    truth = pa.Table.from_pydict(
        {"txn_id": txn_id, "is_fraud": pa.array(txns.scenario > 0),
         "scenario": pa.array(txns.scenario, pa.int8())},
        schema=TRUTH_SCHEMA,
    )
    return transactions, truth


class Simulator:
    """The population and fraud schedule of one config; generates any day on request."""

    def __init__(self, config: SimulationConfig, tokenize: Callable[[str], str]):
        self.config = config
        self.population = build_population(config, tokenize)
        self.scenarios = Scenarios(config, self.population)

    def day(self, index: int) -> DayBatch:
        """Day ``index`` (0 = config.start), identical whether or not other days were made."""
        if not 0 <= index < self.config.days:
            raise ValueError(f"day index must be in [0, {self.config.days}), got {index}")
        seed = self.config.seed
        ordinary = ordinary_transactions(self.population, seed, index)
        txns = concat(self.scenarios.apply(index, ordinary), len(self.population.customers))
        txns = txns.take(np.argsort(txns.time_us, kind="stable"))
        day = self.config.day(index)
        transactions, truth = _tables(txns, self.population, self.config.txn_id_prefix, day)
        return DayBatch(day, transactions, truth)

    def __iter__(self) -> Iterator[DayBatch]:
        return (self.day(i) for i in range(self.config.days))


def iter_days(config: SimulationConfig, tokenize: Callable[[str], str]) -> Iterator[DayBatch]:
    """Every day of ``config`` in order; ``tokenize`` is usually ``CardTokenizer(key).token``."""
    yield from Simulator(config, tokenize)
