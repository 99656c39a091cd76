"""``kestrel features materialize``: the latest batch values and the insights into Redis.

Incremental, like Feast's ``materialize-incremental``: per batch view a watermark in Redis
(``kestrel:materialize:<view>`` → the last loaded ``run_date`` and the fingerprint of its
inputs) says what is already there; only newer partitions (or the last one, recomputed since)
are read, and of those only the ones within the view's ttl of the newest (older rows would be
stale online anyway). For each entity the latest row is written in Feast's own Redis format
(pipelines/features/online_writer.py: RESP encoded column by column from the Arrow table, one
MULTI/EXEC per 5,000 rows), not through ``FeatureStore.materialize`` (which goes through
pandas and protos row by row). ``FeatureStore.get_online_features`` reads the rows back like
its own.

Insights, in the format the contracts fix:

* ``kestrel:insights:customer:{customer_id}`` → ``{"as_of", "daily": [last 35 days of
  {date, category, amount, count}], "monthly": [last 13 months of {month, amount, count,
  mom_change}]}``, for every customer with spend in those 13 months; the customer's insight
  cache entry (``insight:user:{id}:v{N}``) is deleted with it;
* ``kestrel:insights:top_spenders:{YYYY-MM-DD}`` → ``[{customer_id, amount, count}]``, top
  100, descending amount.

``start`` / ``end`` limit the partitions considered; an explicit ``start`` reloads from there
whatever the watermark says (then an older row never overwrites a newer one online: the
writes compare event times, as Feast's do).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis

from kestrel.redis_keys import insight_cache_key, insight_doc_key, top_spenders_key
from kestrel.resp import RespTransaction
from kestrel.settings import Settings
from kestrel.windows import ENTITY_KEYS, batch_feature_names, batch_view_name
from pipelines.batch.fingerprint import Manifest
from pipelines.batch.layout import (
    DAILY_CATEGORY,
    MONTHLY,
    TOP_SPENDERS,
    batch_table,
    insight_table,
    manifest_path,
    partition_files,
    partition_values,
)
from pipelines.features.online_writer import OnlineWriter

Progress = Callable[[str], None]
WATERMARK_KEY = "kestrel:materialize:{name}"
DAILY_DAYS = 35
MONTHS = 13
CHUNK = 5_000
# The batch views' ttl (feature_repo/kestrel_repo/batch_views.py): partitions older than this
# before the newest one cannot hold a row Feast would serve.
BATCH_TTL_DAYS = 2


def _in_range(values: list[str], start: date | None, end: date | None, width: int = 10
              ) -> list[str]:
    lo = start.isoformat()[:width] if start else ""
    hi = end.isoformat()[:width] if end else "9999"
    return [v for v in values if lo <= v <= hi]


def _watermark(client: redis.Redis, name: str) -> dict[str, str]:
    raw: bytes | None = client.get(WATERMARK_KEY.format(name=name))  # type: ignore[assignment]
    return orjson.loads(raw) if raw else {}


def _set_watermark(client: redis.Redis, name: str, partition: str, fingerprint: str) -> None:
    client.set(WATERMARK_KEY.format(name=name),
               orjson.dumps({"partition": partition, "fingerprint": fingerprint}))


def _pending(values: list[str], mark: dict[str, str], fingerprints: dict[str, str],
             forced: bool) -> list[str]:
    """Partitions newer than the watermark (all when forced), plus the watermark's own one
    when it was recomputed since it was loaded."""
    if forced or not mark:
        return values
    last = mark["partition"]
    return [v for v in values if v > last
            or (v == last and fingerprints.get(v, "") != mark.get("fingerprint"))]


def _read(folder: Any, key: str, values: list[str], columns: list[str] | None = None
          ) -> pa.Table | None:
    tables = []
    for value in values:
        for f in partition_files(folder, key, value):
            t = pq.read_table(f, columns=columns)
            tables.append(t.append_column(key, pa.array([value] * t.num_rows, pa.string())))
    return pa.concat_tables(tables, promote_options="permissive") if tables else None


def latest_rows(folder: Any, key: str, values: list[str], columns: list[str]) -> pa.Table:
    """The newest row of each entity in the partitions ``values`` (a daily run holds one row
    per entity): the newest partition whole, older ones only for entities it lacks."""
    tables: list[pa.Table] = []
    seen: pa.Array | None = None
    for value in sorted(values, reverse=True):
        part = _read(folder, "run_date", [value], columns)
        if part is None:
            continue
        if seen is not None:
            part = part.filter(pc.invert(pc.is_in(part.column(key), value_set=seen)))
        tables.append(part)
        keys = part.column(key).combine_chunks()
        seen = keys if seen is None else pa.concat_arrays([seen, keys])
    if not tables:
        return pa.table({c: [] for c in columns})
    return pa.concat_tables(tables, promote_options="permissive")


def _feature_rows(table: pa.Table, key: str, names: tuple[str, ...]
                  ) -> Iterator[tuple[str, dict[str, Any], int]]:
    keys = table.column(key).to_pylist()
    times = table.column("event_timestamp").cast(pa.int64()).to_pylist()
    values = zip(*(table.column(n).to_pylist() for n in names), strict=True)
    for entity, row, time_us in zip(keys, values, times, strict=True):
        yield entity, dict(zip(names, row, strict=True)), time_us


def materialize_views(settings: Settings, client: redis.Redis, manifest: Manifest,
                      start: date | None, end: date | None, say: Progress) -> dict[str, Any]:
    out: dict[str, Any] = {}
    writer = OnlineWriter(settings, dedup=start is not None)
    fingerprints = manifest.groups.get("features", {})
    for entity in ("customer", "terminal"):
        view = batch_view_name(entity)
        key = ENTITY_KEYS[entity]
        folder = batch_table(settings, entity)
        values = _in_range(partition_values(folder, "run_date"), start, end)
        pending = _pending(values, _watermark(client, view), fingerprints, start is not None)
        if pending:
            oldest = (date.fromisoformat(pending[-1]) - timedelta(days=BATCH_TTL_DAYS))
            pending = [v for v in pending if v >= oldest.isoformat()]
        if not pending:
            out[view] = {"rows": 0, "partitions": [], "seconds": 0.0}
            say(f"{view}: up to date")
            continue
        began = time.perf_counter()
        names = batch_feature_names(entity)
        latest = latest_rows(folder, key, pending, [key, *names, "event_timestamp"])
        view_writer = writer.view(view)
        written = 0
        for offset in range(0, latest.num_rows, CHUNK):
            chunk = latest.slice(offset, CHUNK)
            if view_writer.dedup:  # the compare-and-set script needs the Pipeline's loading
                pipe = client.pipeline(transaction=False)
                view_writer.add(pipe, _feature_rows(chunk, key, names))
                pipe.execute()
            else:  # hand-encoded RESP from the columns, one MULTI/EXEC per chunk
                tx = RespTransaction()
                view_writer.add_columns(
                    tx, chunk.column(key).to_pylist(),
                    {n: chunk.column(n).to_pylist() for n in names},
                    chunk.column("event_timestamp").cast(pa.int64()).to_pylist())
                tx.execute(client)
            written += chunk.num_rows
        seconds = time.perf_counter() - began
        _set_watermark(client, view, pending[-1], fingerprints.get(pending[-1], ""))
        out[view] = {"rows": written, "partitions": pending, "seconds": seconds,
                     "rows_per_s": written / seconds if seconds else 0.0}
        say(f"{view}: {written:,} entities from run_date {pending[0]} … {pending[-1]} "
            f"in {seconds:.2f} s ({written / max(seconds, 1e-9):,.0f} rows/s)")
    return out


def _months_back(month: str, n: int) -> list[str]:
    year, mon = int(month[:4]), int(month[5:7])
    out = []
    for _ in range(n):
        out.append(f"{year:04d}-{mon:02d}")
        year, mon = (year - 1, 12) if mon == 1 else (year, mon - 1)
    return sorted(out)


def materialize_insights(settings: Settings, client: redis.Redis, manifest: Manifest,
                         start: date | None, end: date | None, say: Progress
                         ) -> dict[str, Any]:
    out: dict[str, Any] = {"customers": 0, "top_spender_days": 0}
    daily_fp = manifest.groups.get("insights_daily", {})
    monthly_fp = manifest.groups.get("insights_monthly", {})
    # top spenders: one key per day
    folder = insight_table(settings, TOP_SPENDERS)
    days = _in_range(partition_values(folder, "date"), start, end)
    pending = _pending(days, _watermark(client, TOP_SPENDERS), daily_fp, start is not None)
    if pending:
        pipe = client.pipeline(transaction=False)
        for day in pending:
            table = _read(folder, "date", [day], ["rank", "customer_id", "amount", "count"])
            rows = table.sort_by("rank").to_pylist() if table is not None else []
            pipe.set(top_spenders_key(day), orjson.dumps(
                [{"customer_id": r["customer_id"], "amount": r["amount"], "count": r["count"]}
                 for r in rows]))
        pipe.execute()
        _set_watermark(client, TOP_SPENDERS, pending[-1], daily_fp.get(pending[-1], ""))
        out["top_spender_days"] = len(pending)
        say(f"top spenders: {len(pending)} days ({pending[0]} … {pending[-1]})")

    # per-customer docs as of the newest day
    folder = insight_table(settings, DAILY_CATEGORY)
    days = _in_range(partition_values(folder, "date"), start, end)
    if not days:
        say("insights: no daily partitions")
        return out
    as_of = days[-1]
    first = (date.fromisoformat(as_of) - timedelta(days=DAILY_DAYS - 1)).isoformat()
    window = [d for d in days if d >= first]
    months_folder = insight_table(settings, MONTHLY)
    months = [m for m in partition_values(months_folder, "month")
              if m in set(_months_back(as_of[:7], MONTHS))]
    digest = hashlib.sha1(orjson.dumps([as_of, [daily_fp.get(d) for d in window],
                                        [monthly_fp.get(m) for m in months]])).hexdigest()
    mark = _watermark(client, "insights")
    if start is None and mark == {"partition": as_of, "fingerprint": digest}:
        say(f"insights: up to date (as of {as_of})")
        return out
    began = time.perf_counter()
    daily = _read(folder, "date", window, ["customer_id", "category", "amount", "count"])
    monthly = _read(months_folder, "month", months,
                    ["customer_id", "amount", "count", "mom_change"])
    docs: dict[str, dict[str, Any]] = {}

    def doc(customer: str) -> dict[str, Any]:
        if customer not in docs:
            docs[customer] = {"as_of": as_of, "daily": [], "monthly": []}
        return docs[customer]

    if daily is not None:
        for r in daily.sort_by([("customer_id", "ascending"), ("date", "ascending"),
                                ("category", "ascending")]).to_pylist():
            doc(r["customer_id"])["daily"].append(
                {"date": r["date"], "category": r["category"], "amount": r["amount"],
                 "count": r["count"]})
    if monthly is not None:
        for r in monthly.sort_by([("customer_id", "ascending"),
                                  ("month", "ascending")]).to_pylist():
            doc(r["customer_id"])["monthly"].append(
                {"month": r["month"], "amount": r["amount"], "count": r["count"],
                 "mom_change": r["mom_change"]})
    pipe = client.pipeline(transaction=False)
    version = settings.insight_schema_version
    for i, (customer, body) in enumerate(docs.items(), 1):
        pipe.set(insight_doc_key(customer), orjson.dumps(body))
        pipe.delete(insight_cache_key(customer, version))
        if i % CHUNK == 0:
            pipe.execute()
    pipe.execute()
    _set_watermark(client, "insights", as_of, digest)
    out["customers"] = len(docs)
    out["as_of"] = as_of
    out["seconds"] = time.perf_counter() - began
    say(f"insights: {len(docs):,} customer docs as of {as_of} ({out['seconds']:.2f} s)")
    return out


def materialize(settings: Settings, start: date | None = None, end: date | None = None,
                progress: Progress | None = None) -> dict[str, Any]:
    """Load what is new in the batch views and insight tables into Redis; returns, per
    view, the rows written, the partitions read and the rate, and the insight counts."""
    say = progress or (lambda _line: None)
    began = time.perf_counter()
    client = redis.Redis.from_url(settings.redis_url)
    manifest = Manifest(manifest_path(settings))
    views = materialize_views(settings, client, manifest, start, end, say)
    insights = materialize_insights(settings, client, manifest, start, end, say)
    rows = sum(v["rows"] for v in views.values())
    view_seconds = sum(v["seconds"] for v in views.values())
    return {"views": views, "insights": insights, "rows": rows,
            "rows_per_s": rows / view_seconds if view_seconds else 0.0,
            "seconds": time.perf_counter() - began}


