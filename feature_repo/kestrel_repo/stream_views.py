"""The views the stream processor writes: one per entity, named by kestrel.windows, shaped
by the declared features (kestrel/features/definitions.py).

Each row is an entity's window aggregates as of its latest event, stamped with that event's
time (the point-in-time contract in DESIGN.md). Online, the stream writes Redis directly
(pipelines.features.online_writer); offline, it appends the same rows to the feature log, a
Parquet folder per view that is the batch source of the view's PushSource, so a training set
joins exactly the values that were served.
"""

from __future__ import annotations

from datetime import timedelta

from feast import FeatureView, Field, FileSource, PushSource
from feast.data_format import ParquetFormat
from feast.types import FeastType, Float64, Int64, String

from kestrel.features import features_for
from kestrel.windows import ENTITY_KEYS, Entity, stream_view_name
from kestrel_repo.common import OWNER, feature_log_dir, settings, tags
from kestrel_repo.entities import ENTITIES

# The feature retention (KESTREL_FEATURE_RETENTION_DAYS, 30 days by default): a bound on
# what is kept, not a feature semantic. Online reads apply no ttl, but the entity's Redis
# key expires after the same retention (pipelines/features/store.py: online_key_ttl_seconds),
# so an offline join limited to it keeps training and serving equal for entities seen within
# the retention (docs/feature-state.md); staleness within it is a feature (seconds since the
# card's last transaction). `kestrel features apply` refuses, in prod, a key TTL shorter.
STREAM_TTL = timedelta(days=settings().feature_retention_days)

EVENT_TIMESTAMP = "event_timestamp"
CREATED = "created"


_FEAST_TYPES: dict[str, FeastType] = {"int64": Int64, "float64": Float64}


def _stream_view(entity: Entity) -> FeatureView:
    name = stream_view_name(entity)
    log = FileSource(
        name=f"{name}_log",
        path=str(feature_log_dir(settings(), name)),
        file_format=ParquetFormat(),
        timestamp_field=EVENT_TIMESTAMP,
        created_timestamp_column=CREATED,
        description=f"Offline feature log of {name}: every row the stream wrote online.",
        owner=OWNER,
        tags=tags("stream", entity=entity, storage="parquet"),
    )
    push = PushSource(
        name=f"{name}_push",
        batch_source=log,
        description=f"Where the stream processor's rows for {name} enter Feast.",
        owner=OWNER,
        tags=tags("stream", entity=entity),
    )
    return FeatureView(
        name=name,
        entities=[ENTITIES[entity]],
        ttl=STREAM_TTL,
        schema=[Field(name=ENTITY_KEYS[entity], dtype=String),
                *(Field(name=f.name, dtype=_FEAST_TYPES[f.dtype],
                        description=f.summary)
                  for f in features_for(entity))],
        source=push,
        online=True,
        description=(f"Event-time window aggregates per {entity} as of its latest event, "
                     "written by the stream processor (declared in "
                     "kestrel/features/definitions.py)."),
        owner=OWNER,
        tags=tags("stream", entity=entity, freshness="seconds"),
    )


card_stream_features = _stream_view("card")
customer_stream_features = _stream_view("customer")
terminal_stream_features = _stream_view("terminal")
