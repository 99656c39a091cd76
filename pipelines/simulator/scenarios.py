"""The five fraud scenarios: which transactions are fraud, and the fraud that is added.

(1)–(3) follow the handbook and mark (and for 3, change) ordinary transactions; (4) card testing
and (5) account takeover add transactions of their own. They run in that order and a later
scenario overrides an earlier one's id, like the handbook.

Which terminals and customers are compromised, and from when, is drawn up front: row k of the
schedule comes from the generator of (seed, day k), so day d needs only rows ≤ d and a day
generated alone equals the same day of a full run.
"""

from __future__ import annotations

import numpy as np

from pipelines.simulator import geography
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.profiles import ECOM, Population
from pipelines.simulator.txns import Txns

DAY_US = 86_400_000_000
SECOND_US = 1_000_000
HIGH_AMOUNT = 220.0  # (1)
TERMINALS_PER_DAY, TERMINAL_DAYS = 2, 28  # (2)
CUSTOMERS_PER_DAY, CUSTOMER_DAYS, CUSTOMER_SHARE, CUSTOMER_FACTOR = 3, 14, 1 / 3, 5.0  # (3)
CARD_TESTS_PER_DAY, CARD_TEST_SIZES, CARD_TEST_COUNTRIES = 1.5, (5, 8), 3  # (4)
CARD_TEST_SPAN_US = 240 * SECOND_US
TAKEOVERS_PER_DAY, TAKEOVER_SIZES, TAKEOVER_FACTOR = 1.0, (1, 3), (5.0, 10.0)  # (5)
TAKEOVER_SPAN_US = 3600 * SECOND_US
# Stream ids of the per-day generators: np.random.default_rng([seed, day, stream]).
TERMINAL_STREAM, CUSTOMER_STREAM, CUSTOMER_PICK_STREAM = 2, 3, 13
CARD_TEST_STREAM, TAKEOVER_STREAM = 4, 5


def day_rng(seed: int, day: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, day, stream])


class Scenarios:
    """Applies the enabled scenarios of ``config`` to one day's ordinary transactions."""

    def __init__(self, config: SimulationConfig, population: Population):
        self.config, self.population = config, population
        customers, terminals = population.customers, population.terminals
        days, seed = config.days, config.seed
        n_t = min(TERMINALS_PER_DAY, len(terminals))
        n_c = min(CUSTOMERS_PER_DAY, len(customers))
        # row k: drawn on day k, compromised on days k .. k + TERMINAL_DAYS - 1
        self.terminal_schedule = np.array(
            [day_rng(seed, k, TERMINAL_STREAM).choice(len(terminals), n_t, replace=False)
             for k in range(days)], dtype=np.int64).reshape(days, n_t)
        self.customer_schedule = np.array(
            [day_rng(seed, k, CUSTOMER_STREAM).choice(len(customers), n_c, replace=False)
             for k in range(days)], dtype=np.int64).reshape(days, n_c)
        self.ecom = np.flatnonzero(terminals.channel == ECOM)
        by_country = np.argsort(terminals.country[self.ecom], kind="stable")
        self.ecom_by_country = self.ecom[by_country]
        counts = np.bincount(terminals.country[self.ecom], minlength=len(geography.COUNTRIES))
        self.ecom_offsets = np.concatenate([[0], np.cumsum(counts)])
        self.ecom_countries = np.flatnonzero(counts)
        self.active_customers = np.flatnonzero(customers.reach_counts > 0)
        if 4 in config.scenarios and len(self.ecom_countries) < CARD_TEST_COUNTRIES:
            raise ValueError(
                "scenario 4 (card_testing) needs online terminals in at least "
                f"{CARD_TEST_COUNTRIES} countries, this population has them in "
                f"{len(self.ecom_countries)}; simulate more terminals or disable scenario 4"
            )
        if 5 in config.scenarios and len(self.ecom) == 0:
            raise ValueError("scenario 5 (account_takeover) needs online terminals; simulate "
                             "more terminals or disable scenario 5")

    def compromised_terminals(self, day: int) -> np.ndarray:
        return np.unique(self.terminal_schedule[max(0, day - TERMINAL_DAYS + 1): day + 1])

    def compromised_customers(self, day: int) -> np.ndarray:
        return np.unique(self.customer_schedule[max(0, day - CUSTOMER_DAYS + 1): day + 1])

    def apply(self, day: int, txns: Txns) -> list[Txns]:
        """Mark ``txns`` in place; return them followed by the day's added fraud."""
        enabled, seed = self.config.scenarios, self.config.seed
        if 1 in enabled:
            txns.scenario[txns.amount > HIGH_AMOUNT] = 1
        if 2 in enabled:
            txns.scenario[np.isin(txns.terminal, self.compromised_terminals(day))] = 2
        if 3 in enabled:
            pick = day_rng(seed, day, CUSTOMER_PICK_STREAM).random(len(txns)) < CUSTOMER_SHARE
            hit = pick & np.isin(txns.customer, self.compromised_customers(day))
            txns.amount[hit] = np.round(txns.amount[hit] * CUSTOMER_FACTOR, 2)
            txns.scenario[hit] = 3
        parts = [txns]
        if 4 in enabled:
            parts.extend(self._card_tests(day))
        if 5 in enabled:
            parts.extend(self._takeovers(day))
        return parts

    def _card_tests(self, day: int) -> list[Txns]:
        """Bursts of small online payments on one card, in ≥3 countries within 4 minutes."""
        rng = day_rng(self.config.seed, day, CARD_TEST_STREAM)
        pop, out = self.population, list[Txns]()
        for burst in range(rng.poisson(CARD_TESTS_PER_DAY)):
            card = int(rng.integers(pop.cards))
            size = int(rng.integers(CARD_TEST_SIZES[0], CARD_TEST_SIZES[1] + 1))
            chosen = rng.choice(self.ecom_countries, CARD_TEST_COUNTRIES, replace=False)
            country = np.concatenate([chosen, rng.choice(chosen, size - len(chosen))])
            rng.shuffle(country)
            start, end = self.ecom_offsets[country], self.ecom_offsets[country + 1]
            terminal = self.ecom_by_country[start + (rng.random(size) * (end - start)).astype(int)]
            first = int(rng.integers(DAY_US - CARD_TEST_SPAN_US))
            time_us = first + np.sort(rng.integers(CARD_TEST_SPAN_US, size=size))
            amount = np.round(rng.uniform(1, 10, size), 2)
            out.append(self._added(time_us, int(pop.card_owner[card]), card, terminal, amount,
                                   4, f"D-ct-{day:04d}-{burst:02d}"))
        return out

    def _takeovers(self, day: int) -> list[Txns]:
        """A customer's account used from a device never seen before, for large amounts."""
        rng = day_rng(self.config.seed, day, TAKEOVER_STREAM)
        pop, out = self.population, list[Txns]()
        if len(self.active_customers) == 0:
            return out
        for event in range(rng.poisson(TAKEOVERS_PER_DAY)):
            customer = int(rng.choice(self.active_customers))
            size = int(rng.integers(TAKEOVER_SIZES[0], TAKEOVER_SIZES[1] + 1))
            terminal = self.ecom[rng.integers(len(self.ecom), size=size)]
            factor = rng.uniform(*TAKEOVER_FACTOR, size)
            amount = np.round(pop.customers.mean_amount[customer] * factor, 2)
            first = int(rng.integers(DAY_US - TAKEOVER_SPAN_US))
            time_us = first + np.sort(rng.integers(TAKEOVER_SPAN_US, size=size))
            out.append(self._added(time_us, customer, customer, terminal, amount, 5,
                                   f"D-ato-{day:04d}-{event:02d}"))
        return out

    def _added(self, time_us: np.ndarray, customer: int, card: int, terminal: np.ndarray,
               amount: np.ndarray, scenario: int, device: str) -> Txns:
        n = len(time_us)
        return Txns(
            time_us=time_us.astype(np.int64), customer=np.full(n, customer, dtype=np.int64),
            card=np.full(n, card, dtype=np.int64), terminal=terminal.astype(np.int64),
            amount=np.maximum(amount, 0.01), device=np.full(n, len(self.population.customers)),
            scenario=np.full(n, scenario, dtype=np.int8), new_devices=[device],
        )
