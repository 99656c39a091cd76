"""The views the stream processor writes: one per entity, named and shaped by kestrel.windows.

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

from kestrel.windows import ENTITY_KEYS, Entity, feature_names, stream_view_name, windows_for
from kestrel_repo.common import OWNER, feature_log_dir, settings, tags
from kestrel_repo.entities import ENTITIES

# No ttl (0 = unlimited in Feast): online reads never apply a ttl, so an offline join that
# dropped old rows would hand training a None where scoring saw the entity's last row — a
# train/serve skew the parity check would catch. Staleness is a feature instead
# (seconds since the card's last transaction).
STREAM_TTL = timedelta(0)

EVENT_TIMESTAMP = "event_timestamp"
CREATED = "created"


def _dtype(entity: Entity, name: str) -> FeastType:
    """Counts and distinct counts are Int64, sums Float64; per-event extras by their unit."""
    for window in windows_for(entity):
        if window.name == name:
            return Float64 if window.aggregation == "sum" else Int64
    if name.endswith("_time_us"):
        return Int64
    if name.endswith(("_lat", "_lon")):
        return Float64
    raise ValueError(f"no Feast type known for stream feature {name!r}; add it to _dtype")


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
                *(Field(name=f, dtype=_dtype(entity, f)) for f in feature_names(entity))],
        source=push,
        online=True,
        description=(f"Event-time window aggregates per {entity} as of its latest event, "
                     "written by the stream processor (kestrel.windows defines them)."),
        owner=OWNER,
        tags=tags("stream", entity=entity, freshness="seconds"),
    )


card_stream_features = _stream_view("card")
customer_stream_features = _stream_view("customer")
terminal_stream_features = _stream_view("terminal")
