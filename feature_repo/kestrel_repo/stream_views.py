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

# No ttl (0 = unlimited in Feast): online reads never apply a ttl, so an offline join that
# dropped old rows would hand training a None where scoring saw the entity's last row — a
# train/serve skew the parity check would catch. Staleness is a feature instead
# (seconds since the card's last transaction).
STREAM_TTL = timedelta(0)

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
