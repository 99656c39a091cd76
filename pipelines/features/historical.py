"""The offline builder's view of the stream features: Feast's point-in-time join.

Asked at ``T − 1 µs``: Feast's join includes rows stamped exactly T, and the row the stream
wrote for transaction T itself is stamped T — it must not reach T's own vector (DESIGN.md,
the point-in-time contract). Where several versions of a row share a timestamp (a late event
re-emitted later rows), Feast takes the newest ``created``, as the online store did.
"""

from __future__ import annotations

import pandas as pd

from kestrel.settings import Settings
from kestrel.windows import ENTITIES, ENTITY_KEYS, feature_names, stream_view_name
from pipelines.features.store import feature_store

JUST_BEFORE = pd.Timedelta(microseconds=1)


def stream_feature_refs() -> list[str]:
    return [f"{stream_view_name(e)}:{n}" for e in ENTITIES for n in feature_names(e)]


def stream_features_before(settings: Settings, entities: pd.DataFrame) -> pd.DataFrame:
    """For each row (txn_id, card_id, customer_id, terminal_id, event_timestamp), the
    stream-view features as the online store held them strictly before event_timestamp.

    One join per entity, merged on txn_id: Feast 0.67's file offline store drops an entity
    row outright when every feature row of its key is newer than the row's timestamp (its
    ttl filter runs after the left merge), which would also lose the other views' values
    for that transaction. Per entity, a dropped row simply means "no row yet" (None).
    """
    store = feature_store(settings)
    frame = entities.copy()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True) - JUST_BEFORE
    out = entities[["txn_id"]].copy()
    for entity in ENTITIES:
        key = ENTITY_KEYS[entity]
        refs = [f"{stream_view_name(entity)}:{n}" for n in feature_names(entity)]
        joined = store.get_historical_features(
            entity_df=frame[["txn_id", key, "event_timestamp"]], features=refs).to_df()
        out = out.merge(joined[["txn_id", *feature_names(entity)]], on="txn_id", how="left")
    return out.merge(entities, on="txn_id", how="left")
