"""The offline builder's view of the stream features: Feast's point-in-time join.

Asked at ``T − 1 µs``: Feast's join includes rows stamped exactly T, and the row the stream
wrote for transaction T itself is stamped T — it must not reach T's own vector (DESIGN.md,
the point-in-time contract). Where several versions of a row share a timestamp (a late event
re-emitted later rows), Feast takes the newest ``created``, as the online store did.
"""

from __future__ import annotations

import pandas as pd

from kestrel.settings import Settings
from kestrel.windows import ENTITIES, feature_names, stream_view_name
from pipelines.features.store import feature_store

JUST_BEFORE = pd.Timedelta(microseconds=1)


def stream_feature_refs() -> list[str]:
    return [f"{stream_view_name(e)}:{n}" for e in ENTITIES for n in feature_names(e)]


def stream_features_before(settings: Settings, entities: pd.DataFrame) -> pd.DataFrame:
    """For each row (txn_id, card_id, customer_id, terminal_id, event_timestamp), the
    stream-view features as the online store held them strictly before event_timestamp."""
    frame = entities.copy()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True) - JUST_BEFORE
    job = feature_store(settings).get_historical_features(entity_df=frame,
                                                          features=stream_feature_refs())
    out = job.to_df()
    out["event_timestamp"] = out["event_timestamp"] + JUST_BEFORE
    return out
