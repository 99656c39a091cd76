"""Daily aggregates computed by the Spark batch jobs over the lake (and labels).

The tables may not exist yet: these views define the contract the batch jobs write to
(``<var_dir>/features/batch/<view>/``, one row per entity per completed run, stamped with the
run's cut-off time), and ``feast materialize`` copies the latest row per entity to Redis.
"""

from __future__ import annotations

from datetime import timedelta

from feast import FeatureView, Field, FileSource
from feast.data_format import ParquetFormat
from feast.types import Float64, Int64, String

from kestrel.windows import ENTITY_KEYS
from kestrel_repo.common import OWNER, batch_table_dir, settings, tags
from kestrel_repo.entities import customer, terminal

# A daily job: a row older than two days means a run was missed; serve nothing rather than it.
BATCH_TTL = timedelta(days=2)
BATCH_DAYS = (1, 7, 30)

CUSTOMER_BATCH_VIEW = "customer_batch_features"
TERMINAL_BATCH_VIEW = "terminal_batch_features"


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
    schema=[
        Field(name=ENTITY_KEYS["customer"], dtype=String),
        *(Field(name=f"customer_txn_count_{d}d", dtype=Int64) for d in BATCH_DAYS),
        *(Field(name=f"customer_avg_amount_{d}d", dtype=Float64) for d in BATCH_DAYS),
        Field(name="customer_home_lat", dtype=Float64),
        Field(name="customer_home_lon", dtype=Float64),
    ],
    source=_source(CUSTOMER_BATCH_VIEW, "customer", "spending habits and home location"),
    online=True,
    description=("Per customer, from the lake as of the last completed daily run: number and "
                 "average amount of transactions over 1, 7 and 30 days, and the home "
                 "location (where the customer usually pays)."),
    owner=OWNER,
    tags=tags("batch", entity="customer", freshness="daily"),
)

terminal_batch_features = FeatureView(
    name=TERMINAL_BATCH_VIEW,
    entities=[terminal],
    ttl=BATCH_TTL,
    schema=[
        Field(name=ENTITY_KEYS["terminal"], dtype=String),
        *(Field(name=f"terminal_txn_count_{d}d", dtype=Int64) for d in BATCH_DAYS),
        *(Field(name=f"terminal_fraud_risk_{d}d", dtype=Float64) for d in BATCH_DAYS),
    ],
    source=_source(TERMINAL_BATCH_VIEW, "terminal", "volume and fraud risk"),
    online=True,
    description=("Per terminal, as of the last completed daily run: number of transactions "
                 "over 1, 7 and 30 days and the share of them labelled fraud, counting only "
                 "labels known by then (the label delay), so training cannot peek ahead."),
    owner=OWNER,
    tags=tags("batch", entity="terminal", freshness="daily"),
)
