"""Benchmark input: simulated events from the default population, tokenized with a fixed key."""

from __future__ import annotations

import pyarrow as pa

from kestrel.pan import CardTokenizer
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.generator import iter_days

TOKEN_KEY = b"bench-key-not-a-secret-0123456789"


def tokenize(pan: str) -> str:
    return CardTokenizer(TOKEN_KEY).token(pan)


def simulated_events(n: int, config: SimulationConfig | None = None) -> pa.Table:
    """The first ``n`` transactions of a simulation (the default set unless given)."""
    tables, rows = [], 0
    for batch in iter_days(config or SimulationConfig(), tokenize):
        tables.append(batch.transactions)
        rows += batch.transactions.num_rows
        if rows >= n:
            break
    return pa.concat_tables(tables).slice(0, n)
