"""`kestrel lake`: what the lake holds, per partition and in total."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from kestrel.lake import list_files, list_partitions, partition_dir, read_table
from kestrel.settings import Settings


@dataclass(frozen=True)
class LakeTotals:
    partitions: int
    files: int
    transactions: int
    labels: int
    fraud_labels: int
    first_day: str | None
    last_day: str | None


def lake_totals(settings: Settings) -> LakeTotals:
    lake = settings.lake_dir
    days = list_partitions(lake, "transactions")
    files = list_files(lake, "transactions")
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    labels = fraud = 0
    if list_files(lake, "labels"):
        table = read_table(lake, "labels", columns=["is_fraud"])
        labels = table.num_rows
        fraud = int(pc.sum(table.column("is_fraud")).as_py() or 0)
    return LakeTotals(len(days), len(files), rows, labels, fraud,
                      days[0] if days else None, days[-1] if days else None)


def print_summary(settings: Settings, max_rows: int = 10) -> LakeTotals:
    console = Console()
    lake = settings.lake_dir
    totals = lake_totals(settings)
    table = Table(title=f"lake at {lake}")
    for col in ("event_date", "files", "transactions"):
        table.add_column(col, justify="right")
    days = list_partitions(lake, "transactions")
    shown = days if len(days) <= max_rows else [*days[:max_rows // 2], "…", *days[-max_rows // 2:]]
    for day in shown:
        if day == "…":
            table.add_row("…", "", "")
            continue
        files = [f for f in partition_dir(lake, "transactions", day).glob("*.parquet")
                 if not f.name.startswith((".", "_"))]
        n = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        table.add_row(day, str(len(files)), f"{n:,}")
    console.print(table)
    line = (f"{totals.transactions:,} transactions in {totals.partitions} partitions "
            f"({totals.first_day} … {totals.last_day}), {totals.files} files")
    if totals.labels:
        line += f"; {totals.labels:,} labels, {totals.fraud_labels:,} fraud"
    console.print(line)
    return totals
