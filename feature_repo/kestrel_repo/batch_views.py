"""Daily aggregates computed by the Spark batch jobs over the lake (and labels).

These views define the contract the batch jobs (pipelines/batch/jobs.py) write to:
``<var_dir>/features/batch/<view>/run_date=YYYY-MM-DD/*.parquet``, one row per entity per
daily run, stamped with the run's cut-off time (the end of the day, UTC).
``kestrel features materialize`` copies the latest row per entity to Redis. The windows are
defined once, in kestrel.windows (``BATCH_WINDOWS``).
"""

from __future__ import annotations

from datetime import timedelta

from feast import FeatureView, Field, FileSource
from feast.data_format import ParquetFormat
from feast.types import FeastType, Float64, Int64, String

from kestrel.windows import (
    ENTITY_KEYS,
    Entity,
    batch_feature_names,
    batch_view_name,
    batch_windows_for,
)
from kestrel_repo.common import OWNER, batch_table_dir, settings, tags
from kestrel_repo.entities import customer, terminal

# A daily job: a row older than two days means a run was missed; serve nothing rather than it.
BATCH_TTL = timedelta(days=2)

CUSTOMER_BATCH_VIEW = batch_view_name("customer")
TERMINAL_BATCH_VIEW = batch_view_name("terminal")


def _dtype(entity: Entity, name: str) -> FeastType:
    """Counts are Int64; averages, risks and locations Float64."""
    for window in batch_windows_for(entity):
        if window.name == name:
            return Int64 if window.aggregation == "count" else Float64
    return Float64


def _fields(entity: Entity) -> list[Field]:
    return [Field(name=ENTITY_KEYS[entity], dtype=String),
            *(Field(name=n, dtype=_dtype(entity, n)) for n in batch_feature_names(entity))]


def _source(view: str, entity: str, about: str) -> FileSource:
    return FileSource(
        name=f"{view}_table",
        path=str(batch_table_dir(settings(), view)),
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
        description=f"Spark batch output: {about}, one row per {entity} per daily run.",
        owner=OWNER,
        tags=tags("batch", entity=entity, storage="parquet"),
    )


customer_batch_features = FeatureView(
    name=CUSTOMER_BATCH_VIEW,
    entities=[customer],
    ttl=BATCH_TTL,
    schema=_fields("customer"),
    source=_source(CUSTOMER_BATCH_VIEW, "customer", "spending habits and home location"),
    online=True,
    description=("Per customer, from the lake as of the last completed daily run: number and "
                 "average amount of transactions over 1, 7 and 30 days (None when there was "
                 "none), and the home location: the mean lat/lon of the customer's "
                 "transactions over 30 days (where the customer usually pays)."),
    owner=OWNER,
    tags=tags("batch", entity="customer", freshness="daily"),
)

terminal_batch_features = FeatureView(
    name=TERMINAL_BATCH_VIEW,
    entities=[terminal],
    ttl=BATCH_TTL,
    schema=_fields("terminal"),
    source=_source(TERMINAL_BATCH_VIEW, "terminal", "volume and fraud risk"),
    online=True,
    description=("Per terminal, as of the last completed daily run: number of transactions "
                 "over 1, 7 and 30 days, and the fraud risk over 1, 7 and 30 days: the share "
                 "labelled fraud of the transactions of the N days that end a label delay "
                 "(KESTREL_LABEL_DELAY_DAYS, rounded up to days) before the run, counting "
                 "only labels known before the run's cut-off, so training cannot peek ahead "
                 "(None when the terminal had no transaction then)."),
    owner=OWNER,
    tags=tags("batch", entity="terminal", freshness="daily"),
)
