"""`kestrel training-set`: a point-in-time training set of one feature service and a date
range, written to Parquet with a summary, without training anything.

The rows are the ones ``kestrel train`` builds (training.pipeline.feature_rows: the same
registry, the same join, the same coverage check), for any declared service version, so a
new version's set can be inspected, or handed to another tool, before a model is trained on
it. The registry is applied first when it differs from feature_repo/ (the join reads the
registry's service definition).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np

from kestrel.lake import write_parquet_durable
from kestrel.settings import Settings
from training.dataset import Engine
from training.errors import TrainingError

Progress = Callable[[str], None]


@dataclass
class TrainingSetSummary:
    service: str
    first: date
    last: date
    path: Path
    rows: int
    labelled: int
    frauds: int
    coverage: dict[str, float] = field(default_factory=dict)
    enforced: set[str] = field(default_factory=set)  # features the threshold applies to
    seconds: float = 0.0

    @property
    def label_rate(self) -> float:
        """Frauds among labelled rows (NaN without labels)."""
        return self.frauds / self.labelled if self.labelled else float("nan")

    def lines(self) -> list[str]:
        out = [f"training set {self.service} {self.first} … {self.last}: {self.rows:,} rows, "
               f"{self.labelled:,} labelled, {self.frauds:,} frauds (label rate "
               f"{self.label_rate:.4%}) → {self.path} ({self.seconds:.1f} s)",
               "coverage (share of rows with a value where one is due; * checked against "
               "KESTREL_TRAINING_MIN_COVERAGE):"]
        width = max((len(n) for n in self.coverage), default=0)
        out += [f"  {name:<{width}}  {share:7.2%}{' *' if name in self.enforced else ''}"
                for name, share in self.coverage.items()]
        return out


def write_training_set(settings: Settings, service: str, start: date | None, end: date | None,
                       out: Path, engine: Engine = "asof", prepare: bool = False,
                       progress: Progress | None = None) -> TrainingSetSummary:
    """Build ``service``'s rows for the lake's transactions of ``start`` … ``end`` (default:
    the whole lake) and write them to ``out`` (Parquet: the transaction's columns, one
    float64 column per feature, ``truth``: the latest label, null when none).
    ``prepare`` first backfills missing stream-view days and runs the batch views, as
    ``kestrel train`` does."""
    from kestrel.features import STREAM_INPUTS
    from pipelines.features.store import ensure_applied
    from training.pipeline import feature_rows, lake_days
    from training.run import TrainReport, prepare_features

    say = progress or (lambda _line: None)
    began = time.perf_counter()
    if service not in STREAM_INPUTS:
        raise TrainingError(f"no fraud feature service {service!r} (declared: "
                            f"{', '.join(STREAM_INPUTS)}); pass one with --service")
    first_day, last_day = lake_days(settings)
    first, last = max(start or first_day, first_day), min(end or last_day, last_day)
    if first > last:
        raise TrainingError(f"no lake days between {start} and {end} (the lake holds "
                            f"{first_day} … {last_day}); pick dates inside it")
    ensure_applied(settings, echo=say)
    if prepare:
        prepare_features(settings, first, last, say, TrainReport())
    rows = feature_rows(settings, first, last, engine, say, service=service)
    frame = rows.frame
    out.parent.mkdir(parents=True, exist_ok=True)
    import pyarrow as pa

    write_parquet_durable(pa.Table.from_pandas(frame, preserve_index=False), out)
    truth = frame["truth"].to_numpy()
    return TrainingSetSummary(
        service, first, last, out, len(frame), int(np.isfinite(truth).sum()),
        int(np.nansum(truth)), {n: c.share for n, c in rows.coverage.items()},
        {n for n, c in rows.coverage.items() if c.enforced}, time.perf_counter() - began)
