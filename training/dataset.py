"""Point-in-time feature rows for transactions, from a fraud feature service (default
``training.features.FEATURE_SERVICE``, the version new models train on).

The service is read from the Feast registry (``kestrel features apply``): its feature views
(stream and batch) and its on-demand views. For each transaction at T, each view's row is the
latest one stamped at or before ``T − 1 µs`` (Feast's join includes rows stamped exactly T;
the row written by T itself must not reach T's own vector — DESIGN.md), among versions of one
(key, timestamp) the newest ``created``, and none when it is older than the view's ttl. Views
are joined one at a time (Feast 0.67's file store drops a whole entity row when all rows of
one view's key are newer than T). The on-demand views then run Feast's own transformation
(``OnDemandFeatureView.transform_dict``) over the request data and those joined values, with
a missing value passed as None, exactly as the online path does.

Two engines give the same rows (tests/training/test_dataset.py checks it):
- ``feast``: ``FeatureStore.get_historical_features`` per view. Correct, but Feast 0.67's
  file (dask) offline store merges every entity row with every row of its key before
  filtering: measured here ≈ 1,000 rows/s per view, so ≈ 2 hours for the default set;
- ``asof`` (default): the same join as a sorted as-of merge (pandas ``merge_asof``) over the
  same offline files, found through the same registry objects (source path, timestamp and
  created columns, join key, ttl): seconds for millions of rows.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
from feast import FeatureStore, FeatureView
from feast.on_demand_feature_view import OnDemandFeatureView

from kestrel.lake import read_table
from kestrel.settings import Settings
from pipelines.features.store import feature_store
from pipelines.stream.offline_log import open_log
from training.errors import TrainingError
from training.features import FEATURE_SERVICE

Engine = Literal["asof", "feast"]
JUST_BEFORE = pd.Timedelta(microseconds=1)
ENTITY_COLUMNS = ["txn_id", "card_id", "customer_id", "terminal_id", "event_time", "amount",
                  "lat", "lon"]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ServiceParts:
    """The feature service as the registry holds it."""

    name: str
    views: list[tuple[FeatureView, list[str]]]
    on_demand: list[tuple[OnDemandFeatureView, list[str]]]

    @property
    def feature_names(self) -> list[str]:
        return [n for _, names in [*self.views, *self.on_demand] for n in names]

    @property
    def fingerprint(self) -> str:
        """Changes when the service's set of views or features changes."""
        text = ";".join(f"{v.name}:{','.join(n)}" for v, n in [*self.views, *self.on_demand])
        return hashlib.sha256(f"{self.name}|{text}".encode()).hexdigest()[:16]


def service_parts(store: FeatureStore, name: str = FEATURE_SERVICE) -> ServiceParts:
    try:
        service = store.get_feature_service(name)
    except Exception as exc:  # Feast raises its own not-found error
        raise TrainingError(f"feature service {name!r} is not in the Feast registry; run "
                            "`kestrel features apply`") from exc
    odfv_names = {o.name for o in store.list_on_demand_feature_views()}
    views, on_demand = [], []
    for projection in service.feature_view_projections:
        names = [f.name for f in projection.features]
        if projection.name in odfv_names:
            on_demand.append((store.get_on_demand_feature_view(projection.name), names))
        else:
            views.append((store.get_feature_view(projection.name), names))
    return ServiceParts(name, views, on_demand)


def transactions_between(lake_dir: Path, start: date, end: date) -> pd.DataFrame:
    """The lake's transactions with event dates ``start`` … ``end`` (inclusive), by time."""
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    table = read_table(lake_dir, "transactions", days, columns=ENTITY_COLUMNS)
    frame = table.to_pandas()
    return frame.sort_values(["event_time", "txn_id"], kind="stable").reset_index(drop=True)


def _join_key(view: FeatureView) -> str:
    return view.entity_columns[0].name


def _read_view_rows(view: FeatureView, names: list[str], upto: pd.Timestamp,
                    since: pd.Timestamp | None) -> pd.DataFrame:
    source: Any = view.batch_source  # a FileSource: the view's offline Parquet folder
    ts, created = source.timestamp_field, source.created_timestamp_column
    path = Path(source.path)
    key = _join_key(view)
    cols = [key, ts, *([created] if created else []), *names]
    if not path.exists():  # nothing written yet: no rows, the same columns as below
        return pd.DataFrame({("_row_ts" if c == ts else c): pd.Series(dtype="float64")
                             for c in cols if c != created})
    # files written before a feature existed lack its column: it reads as null (open_log)
    data = open_log(path, cols, partitioning="hive")
    ts_type = data.schema.field(ts).type
    flt = ds.field(ts) <= pa.scalar(upto.to_pydatetime(), ts_type)
    if since is not None:
        flt = flt & (ds.field(ts) >= pa.scalar(since.to_pydatetime(), ts_type))
    table = data.to_table(columns=cols, filter=flt)
    # sorted by (timestamp, created): among versions of one (key, timestamp) row the newest
    # `created` comes last, and merge_asof takes the last of equal timestamps — the same
    # choice as Feast's join
    order = [(ts, "ascending"), *([(created, "ascending")] if created else [])]
    frame = table.sort_by(order).to_pandas()
    return frame.rename(columns={ts: "_row_ts"}).drop(columns=[created] if created else [])


def _join_view_asof(entities: pd.DataFrame, view: FeatureView, names: list[str]) -> pd.DataFrame:
    key = _join_key(view)
    left = entities[["txn_id", key, "_asked"]].sort_values("_asked", kind="stable")
    ttl = view.ttl if view.ttl and view.ttl.total_seconds() else None
    since = left["_asked"].min() - ttl if ttl is not None else None
    right = _read_view_rows(view, names, left["_asked"].max(), since)
    right["_row_ts"] = right["_row_ts"].astype(left["_asked"].dtype)
    # merge_asof groups by the key: integer codes instead of strings make it several
    # times faster on millions of rows
    codes, _ = pd.factorize(pd.concat([left[key], right[key]], ignore_index=True))
    left = left.assign(_key=codes[: len(left)])
    right = right.assign(_key=codes[len(left):]).drop(columns=[key])
    merged = pd.merge_asof(left, right, left_on="_asked", right_on="_row_ts", by="_key",
                           direction="backward", allow_exact_matches=True)
    if ttl is not None:
        stale = merged["_row_ts"] < merged["_asked"] - ttl
        merged.loc[stale, names] = np.nan
    return merged[["txn_id", *names]]


def _join_view_feast(store: FeatureStore, entities: pd.DataFrame, view: FeatureView,
                     names: list[str]) -> pd.DataFrame:
    key = _join_key(view)
    entity_df = entities[["txn_id", key, "_asked"]].rename(columns={"_asked": "event_timestamp"})
    refs = [f"{view.name}:{n}" for n in names]
    joined = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
    return joined[["txn_id", *names]]


def _as_inputs(series: pd.Series) -> list[Any]:
    """Column → list with None for a missing value (what the online path passes)."""
    values = series.astype(object)
    return values.where(series.notna(), None).tolist()


def historical_features(settings: Settings, transactions: pd.DataFrame,
                        engine: Engine = "asof", progress: Progress | None = None,
                        store: FeatureStore | None = None,
                        service: str = FEATURE_SERVICE) -> tuple[pd.DataFrame, ServiceParts]:
    """Per transaction (``ENTITY_COLUMNS``), every output of the feature service ``service``
    as it was just before the transaction: the transaction's columns plus one float64 column
    per feature, in the service's order."""
    say = progress or (lambda _line: None)
    store = store or feature_store(settings)
    parts = service_parts(store, service)
    entities = transactions.copy()
    entities["event_time"] = pd.to_datetime(entities["event_time"], utc=True)
    entities["_asked"] = entities["event_time"] - JUST_BEFORE
    entities["event_time_us"] = entities["event_time"].dt.as_unit("us").astype("int64")
    out = entities.drop(columns=["_asked"]).copy()
    for view, names in parts.views:
        began = time.perf_counter()
        if engine == "feast":
            joined = _join_view_feast(store, entities, view, names)
        else:
            joined = _join_view_asof(entities, view, names)
        joined = joined.drop_duplicates("txn_id")
        out = out.merge(joined, on="txn_id", how="left")
        say(f"  {view.name}: {int(out[names[0]].notna().sum()):,} of {len(out):,} rows found "
            f"({time.perf_counter() - began:.1f} s)")
    for odfv, names in parts.on_demand:
        inputs: dict[str, list[Any]] = {}
        for request in odfv.source_request_sources.values():
            for field in request.schema:
                inputs[field.name] = _as_inputs(out[field.name])
        for projection in odfv.source_feature_view_projections.values():
            for field in projection.features:
                inputs[field.name] = _as_inputs(out[field.name])
        result = odfv.transform_dict(inputs)
        for name in names:
            out[name] = pd.Series(result[name], index=out.index, dtype="float64")
    for name in parts.feature_names:
        out[name] = pd.to_numeric(out[name], errors="coerce").astype("float64")
    return out, parts

