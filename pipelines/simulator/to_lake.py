"""Write a whole simulation into the raw-event lake, the way the archiver would have.

Transactions land in their event-date partition as ``simulated.parquet``; labels land in the
partition of the date they become known, as ``simulated-from-<transaction date>.parquet``. The
names are fixed per day, so running the simulation again replaces its files instead of adding
duplicates (and label files a previous run left in other partitions, e.g. with another delay,
are removed); a file whose content would not change is left untouched, so the batch jobs see
unchanged inputs. Transactions the archiver already wrote to a partition (the same simulation
streamed through Kafka) are left out, so the lake holds every txn_id once. Every file is
written atomically (kestrel.lake).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kestrel.lake import partition_dir, table_dir, write_parquet_if_changed
from pipelines.simulator.config import FRAUD_SCENARIOS, SCENARIO_NAMES, SimulationConfig
from pipelines.simulator.generator import DayBatch, Simulator
from pipelines.simulator.labels import labels_for

TRANSACTIONS_FILE = "simulated.parquet"
LABELS_FILE = "simulated-from-{day}.parquet"
_LABELS_FILE_RE = re.compile(r"^simulated-from-(\d{4}-\d{2}-\d{2})\.parquet$")
_DAY_US = 86_400 * 10**6

Progress = Callable[[int, int, int], None]


@dataclass
class SimulationSummary:
    """What a run wrote: sizes, fraud by scenario, files, time taken."""

    days: int = 0
    transactions: int = 0
    frauds: int = 0
    frauds_per_scenario: dict[str, int] = field(default_factory=dict)
    customers: int = 0
    terminals: int = 0
    cards: int = 0
    files_written: int = 0
    already_in_lake: int = 0
    seconds: float = 0.0

    @property
    def fraud_rate(self) -> float:
        return self.frauds / self.transactions if self.transactions else 0.0


def _write_labels(batch: DayBatch, labels: pa.Table, lake_dir: Path) -> list[Path]:
    """Split ``labels`` by the date they are known on; one file per labelled_date partition."""
    known_day = labels["labelled_at"].combine_chunks().cast(pa.int64()).to_numpy() // _DAY_US
    paths = []
    for epoch_day in np.unique(known_day):
        when = date.fromordinal(date(1970, 1, 1).toordinal() + int(epoch_day))
        rows = labels.filter(pa.array(known_day == epoch_day))
        path = partition_dir(lake_dir, "labels", when) / LABELS_FILE.format(day=batch.day)
        write_parquet_if_changed(rows, path)
        paths.append(path)
    return paths


def _archived_ids(folder: Path) -> pa.Array | None:
    """txn_ids that other writers (the archiver) already put in this partition."""
    others = [f for f in folder.glob("*.parquet")
              if f.name != TRANSACTIONS_FILE and not f.name.startswith((".", "_"))]
    if not others:
        return None
    return pa.concat_arrays([pq.read_table(f, columns=["txn_id"]).column(0).combine_chunks()
                             for f in others])


def _remove_stale_labels(lake_dir: Path, days: set[date], written: set[Path]) -> None:
    """Delete label files of the simulated days that this run did not (re)write."""
    root = table_dir(lake_dir, "labels")
    if not root.exists():
        return
    for path in root.glob("labelled_date=*/simulated-from-*.parquet"):
        match = _LABELS_FILE_RE.match(path.name)
        if match and date.fromisoformat(match.group(1)) in days and path not in written:
            path.unlink()


def write_to_lake(
    config: SimulationConfig,
    lake_dir: Path,
    tokenize: Callable[[str], str],
    progress: Progress | None = None,
) -> SimulationSummary:
    """Simulate every day of ``config`` into ``lake_dir``; ``progress(days, total, rows)``."""
    started = time.perf_counter()
    lake_dir = Path(lake_dir)
    simulator = Simulator(config, tokenize)
    population = simulator.population
    by_scenario = np.zeros(max(SCENARIO_NAMES) + 1, dtype=np.int64)
    summary = SimulationSummary(
        customers=len(population.customers), terminals=len(population.terminals),
        cards=population.cards,
    )
    written: set[Path] = set()
    for batch in simulator:
        path = partition_dir(lake_dir, "transactions", batch.day) / TRANSACTIONS_FILE
        transactions = batch.transactions
        archived = _archived_ids(path.parent)
        if archived is not None:  # the same events came through Kafka: keep one copy
            fresh = pc.invert(pc.is_in(transactions["txn_id"], value_set=archived))
            kept = transactions.filter(fresh)
            summary.already_in_lake += transactions.num_rows - kept.num_rows
            transactions = kept
        write_parquet_if_changed(transactions, path)
        written.add(path)
        written.update(_write_labels(batch, labels_for(batch, config.label_delay_days), lake_dir))
        scenario = batch.truth["scenario"].to_numpy()
        by_scenario += np.bincount(scenario, minlength=len(by_scenario))[: len(by_scenario)]
        summary.days += 1
        summary.transactions += batch.transactions.num_rows
        if progress is not None:
            progress(summary.days, config.days, summary.transactions)
    _remove_stale_labels(lake_dir, {config.day(i) for i in range(config.days)}, written)
    summary.frauds = int(by_scenario[1:].sum())
    summary.frauds_per_scenario = {
        SCENARIO_NAMES[k]: int(by_scenario[k]) for k in sorted(FRAUD_SCENARIOS)
    }
    summary.files_written = len(written)
    summary.seconds = time.perf_counter() - started
    return summary
