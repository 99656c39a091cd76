"""The Feast repo against a real Redis: apply, the fast writer, reads through Feast, ODFVs.

Each test gets a var dir (its own registry) and a Redis database of its own on the session's
server, and uses entity ids no other test uses, so nothing is flushed.
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast, get_args

import pandas as pd
import pytest
import redis
from feast import FeatureStore, FileSource

from kestrel.features import features_for
from kestrel.resp import RespTransaction
from kestrel.settings import Settings
from kestrel.windows import ENTITY_KEYS, Entity, feature_names, stream_view_name
from pipelines.features.online_writer import OnlineWriter, ViewWriter
from pipelines.features.store import apply, feature_store
from tests.conftest import make_settings

pytestmark = pytest.mark.integration

_DBS = itertools.count(11)  # the stream tests count up from 1; start elsewhere
ENTITIES: tuple[Entity, ...] = get_args(Entity)
EARTH_KM_PER_DEGREE = 6371.0088 * math.pi / 180
T0 = datetime(2024, 6, 1, 23, 30, tzinfo=UTC)  # a Saturday night
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _db_url(redis_url: str, db: int) -> str:
    return f"{redis_url.rsplit('/', 1)[0]}/{db % 16}"


@pytest.fixture
def feast_settings(tmp_path: Path, redis_url: str) -> Settings:
    return make_settings(tmp_path / "var", redis_url=_db_url(redis_url, next(_DBS)))


@pytest.fixture
def store(feast_settings: Settings) -> FeatureStore:
    apply(feast_settings, echo=lambda _: None)
    return feature_store(feast_settings)


@pytest.fixture
def client(feast_settings: Settings) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(feast_settings.redis_url)
    yield conn
    conn.close()


def stored(client: redis.Redis, key: bytes) -> dict[bytes, bytes]:
    return client.hgetall(key)  # type: ignore[arg-type,return-value]


def ttl(client: redis.Redis, key: bytes) -> int:
    return client.ttl(key)  # type: ignore[return-value]


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def stream_row(entity: Entity, seed: int) -> dict[str, Any]:
    """A full row of an entity's stream view, every value distinct and exactly representable."""
    row: dict[str, Any] = {}
    for i, f in enumerate(features_for(entity)):
        row[f.name] = seed * 100 + i + (0.25 if f.dtype == "float64" else 0)
    return row


def write(writer: ViewWriter | OnlineWriter, client: redis.Redis, view: str,
          rows: list[tuple[str, dict[str, Any], datetime]]) -> list[Any]:
    """Write through a MULTI/EXEC pipeline, as the stream does; returns EXEC's replies."""
    pipe = client.pipeline(transaction=True)
    if isinstance(writer, OnlineWriter):
        writer.write(pipe, view, rows)
    else:
        writer.add(pipe, rows)
    return pipe.execute()


def feast_write(store: FeatureStore, view: str, rows: list[tuple[str, dict[str, Any], datetime]]
                ) -> None:
    """The same rows through Feast's own online write path (what `push` does)."""
    join_key = store.get_feature_view(view).join_keys[0]
    frame = pd.DataFrame([{join_key: key, **feats, "event_timestamp": when, "created": when}
                          for key, feats, when in rows])
    store.write_to_online_store(view, frame)


# --- apply ---------------------------------------------------------------------------------


def test_apply_registers_every_object_with_metadata(feast_settings: Settings) -> None:
    printed: list[str] = []
    summary = apply(feast_settings, echo=printed.append)
    assert summary.entities == ("card", "customer", "terminal")
    stream_views = {stream_view_name(e) for e in ENTITIES}
    assert set(summary.feature_views) == stream_views | {"customer_batch_features",
                                                         "terminal_batch_features"}
    assert summary.on_demand_feature_views == ("card_velocity_features",
                                               "customer_context_features",
                                               "txn_request_features")
    assert summary.feature_services == ("customer_insights_v1", "fraud_scoring_v1",
                                        "fraud_scoring_v2")
    assert printed[0].startswith("project kestrel")

    store = feature_store(feast_settings)
    objects: list[Any] = [*store.list_entities(), *store.list_feature_views(),
               *store.list_on_demand_feature_views(), *store.list_feature_services(),
               *store.list_data_sources()]
    objects = [o for o in objects if o.name != "__dummy"]
    assert len(objects) == 3 + 5 + 3 + 3 + 9
    for obj in objects:
        assert obj.description, obj.name
        assert obj.owner == "fraud-platform@kestrel.dev", obj.name
        assert obj.tags["team"] == "fraud-platform" and obj.tags["pii"] == "false", obj.name

    for entity in ENTITIES:
        view = store.get_feature_view(stream_view_name(entity))
        assert tuple(f.name for f in view.features) == feature_names(entity)
        assert view.join_keys == [ENTITY_KEYS[entity]]
        assert view.online and view.ttl == timedelta(days=30)  # the retention: stream_views.py
        assert view.stream_source is not None
        assert view.stream_source.name == f"{view.name}_push"
        log = cast(FileSource, view.batch_source)
        assert Path(log.path) == feast_settings.var_dir.resolve() / "features" / "log" / view.name
        assert (log.timestamp_field, log.created_timestamp_column) == ("event_timestamp",
                                                                        "created")
    scoring = store.get_feature_service("fraud_scoring_v1")
    assert {p.name for p in scoring.feature_view_projections} == {
        *stream_views, "customer_batch_features", "terminal_batch_features",
        "txn_request_features", "card_velocity_features", "customer_context_features"}
    insights = store.get_feature_service("customer_insights_v1")
    assert {p.name for p in insights.feature_view_projections} == {
        "customer_stream_features", "customer_batch_features"}

    again = apply(feast_settings, echo=lambda _: None)  # idempotent
    assert again == summary


def test_sql_registry(tmp_path: Path, redis_url: str) -> None:
    s = make_settings(tmp_path / "var", redis_url=redis_url,
                      feast_registry_url=f"sqlite:///{tmp_path / 'registry.sqlite'}")
    summary = apply(s, echo=lambda _: None)
    assert summary.registry.startswith("sqlite:///")
    store = feature_store(s)
    assert store.config.registry.registry_type == "sql"
    assert store.get_feature_service("fraud_scoring_v1").owner == "fraud-platform@kestrel.dev"


# --- the writer: same bytes as Feast ---------------------------------------------------------


def test_writer_stores_exactly_what_feast_stores(feast_settings: Settings, store: FeatureStore,
                                                 redis_url: str) -> None:
    theirs_settings = feast_settings.model_copy(
        update={"redis_url": _db_url(redis_url, next(_DBS))})
    theirs = feature_store(theirs_settings)  # same registry, another database
    ours = OnlineWriter(feast_settings)
    c_ours = redis.Redis.from_url(feast_settings.redis_url)
    c_theirs = redis.Redis.from_url(theirs_settings.redis_url)
    c_columns = redis.Redis.from_url(_db_url(redis_url, next(_DBS)))  # add_columns' copy
    keys: list[bytes] = []
    for n, entity in enumerate(ENTITIES):
        view = stream_view_name(entity)
        rows = [(uid(entity), stream_row(entity, n * 10 + i),
                 T0 + timedelta(microseconds=137 * i)) for i in range(5)]
        rows[1][1][feature_names(entity)[0]] = None
        rows[2][1][feature_names(entity)[-1]] = math.nan
        write(ours, c_ours, view, rows)
        feast_write(theirs, view, rows)
        ids = [key for key, _, _ in rows]
        columns = {name: [feats[name] for _, feats, _ in rows] for name in feature_names(entity)}
        times = [int((when - EPOCH) / timedelta(microseconds=1)) for _, _, when in rows]
        tx = RespTransaction()
        ours.view(view).add_columns(tx, ids, columns, times)
        tx.execute(c_columns)
        from_registry = ViewWriter.for_view(store, view)  # the applied copy queues the same
        again = RespTransaction()
        from_registry.add_columns(again, ids, columns, times)
        assert again.payload() == tx.payload()
        assert from_registry.key("k") == ours.view(view).key("k")
        keys += [ours.view(view).key(key) for key, _, _ in rows]
    for key in keys:
        mine = stored(c_ours, key)
        assert mine and mine == stored(c_theirs, key) == stored(c_columns, key)
        retention = 30 * 86_400  # the default key TTL: the feature retention
        assert retention - 60 < ttl(c_ours, key) <= retention
        assert retention - 60 < ttl(c_theirs, key) <= retention


@pytest.mark.parametrize("dedup,columns", [(True, False), (False, False), (False, True)])
def test_key_ttl_is_set_like_feast(tmp_path: Path, redis_url: str, dedup: bool,
                                   columns: bool) -> None:
    s = make_settings(tmp_path / "var", redis_url=_db_url(redis_url, next(_DBS)),
                      feast_online_key_ttl_seconds=3600)
    apply(s, echo=lambda _: None)
    view = stream_view_name("customer")
    writer = OnlineWriter(s, dedup=dedup).view(view)
    client = redis.Redis.from_url(s.redis_url)
    customer = uid("cust")
    row = stream_row("customer", 1)
    if columns:
        tx = RespTransaction()
        writer.add_columns(tx, [customer], {k: [v] for k, v in row.items()}, [1_700_000_000])
        replies = tx.execute(client)
        assert replies == [1 + len(row), 1]  # HSET: fields added (ts + features); EXPIRE: set
    else:
        write(writer, client, view, [(customer, row, T0)])
    assert 3590 < ttl(client, writer.key(customer)) <= 3600


# --- reading back through Feast ------------------------------------------------------------


def test_fraud_scoring_reads_back_what_the_writer_wrote(store: FeatureStore,
                                                        client: redis.Redis,
                                                        feast_settings: Settings) -> None:
    writer = OnlineWriter(feast_settings)
    card, customer, terminal = uid("card"), uid("cust"), uid("term")
    last_us = int((T0 - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1_000_000)
    card_row = {**stream_row("card", 1), "card_last_event_time_us": last_us,
                "card_last_lat": 0.0, "card_last_lon": 0.0}
    written: dict[Entity, dict[str, Any]] = {
        "card": card_row, "customer": stream_row("customer", 2),
        "terminal": stream_row("terminal", 3),
    }
    ids: dict[Entity, str] = {"card": card, "customer": customer, "terminal": terminal}
    for entity, key in ids.items():
        replies = write(writer, client, stream_view_name(entity),
                        [(key, written[entity], T0)])
        assert replies == [1]
    batch = {"customer_txn_count_1d": 2, "customer_txn_count_7d": 9,
             "customer_txn_count_30d": 31, "customer_avg_amount_1d": 12.5,
             "customer_avg_amount_7d": 18.0, "customer_avg_amount_30d": 20.0,
             "customer_home_lat": 1.0, "customer_home_lon": 0.0}
    write(writer, client, "customer_batch_features", [(customer, batch, T0 - timedelta(hours=6))])

    event_us = last_us + 90_500_000  # 90.5 s after the card's previous transaction
    request = {"amount": 50.0, "event_time_us": event_us, "lat": 0.0, "lon": 1.0}
    rows = [{"card_id": card, "customer_id": customer, "terminal_id": terminal, **request},
            {"card_id": uid("nobody"), "customer_id": uid("nobody"),
             "terminal_id": uid("nobody"), **request}]
    # v2 reads every feature the stream views hold today (v1 a subset: test_services.py)
    got = store.get_online_features(features=store.get_feature_service("fraud_scoring_v2"),
                                    entity_rows=rows).to_dict()

    for entity, values in written.items():
        for name in feature_names(entity):
            assert got[name] == [values[name], None], name
    for name, value in batch.items():
        assert got[name] == [value, None], name
    for name in ("terminal_txn_count_1d", "terminal_fraud_risk_30d"):
        assert got[name] == [None, None]  # no batch row for the terminal yet

    assert got["txn_amount"] == [50.0, 50.0]
    assert got["txn_hour_of_day"] == [23, 23]  # 23:30:00.09 UTC
    assert got["txn_is_night"] == [1, 1] and got["txn_is_weekend"] == [1, 1]
    assert got["seconds_since_last_txn"] == [pytest.approx(90.5), -1.0]
    assert got["km_from_last_txn"] == [pytest.approx(EARTH_KM_PER_DEGREE), -1.0]
    # home (1°N, 0°) to (0°, 1°E): the haversine by hand
    a = math.sin(math.radians(-1) / 2) ** 2 + math.cos(math.radians(1)) * math.sin(
        math.radians(1) / 2) ** 2
    assert got["km_from_home"] == [pytest.approx(2 * 6371.0088 * math.asin(math.sqrt(a))), -1.0]
    assert got["amount_to_avg_30d"] == [pytest.approx(2.5), -1.0]


@pytest.mark.parametrize(("when", "hour", "night", "weekend"), [
    (datetime(2024, 6, 3, 5, 59, 59, 999999, tzinfo=UTC), 5, 1, 0),  # Monday, before 06:00
    (datetime(2024, 6, 3, 6, 0, tzinfo=UTC), 6, 0, 0),
    (datetime(2024, 6, 7, 21, 59, 59, tzinfo=UTC), 21, 0, 0),  # Friday
    (datetime(2024, 6, 7, 22, 0, tzinfo=UTC), 22, 1, 0),
    (datetime(2024, 6, 9, 12, 0, tzinfo=UTC), 12, 0, 1),  # Sunday
    (datetime(2024, 6, 10, 0, 0, tzinfo=UTC), 0, 1, 0),  # Monday midnight
])
def test_request_features_by_hand(store: FeatureStore, when: datetime, hour: int, night: int,
                                  weekend: int) -> None:
    micros = int((when - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))
    got = store.get_online_features(
        features=["txn_request_features:txn_hour_of_day", "txn_request_features:txn_is_night",
                  "txn_request_features:txn_is_weekend"],
        entity_rows=[{"amount": 1.0, "event_time_us": micros, "lat": 0.0, "lon": 0.0}]).to_dict()
    assert (got["txn_hour_of_day"], got["txn_is_night"], got["txn_is_weekend"]) == (
        [hour], [night], [weekend])


def test_missing_inputs_give_sentinels(store: FeatureStore, client: redis.Redis,
                                       feast_settings: Settings) -> None:
    writer = OnlineWriter(feast_settings)
    card, customer = uid("card"), uid("cust")
    write(writer, client, stream_view_name("card"), [(card, {"card_last_event_time_us": None,
                                                              "card_last_lat": 10.0,
                                                              "card_last_lon": None}, T0)])
    write(writer, client, "customer_batch_features",
          [(customer, {"customer_avg_amount_30d": 0.0, "customer_home_lat": 1.0,
                       "customer_home_lon": 2.0}, T0)])
    got = store.get_online_features(
        features=["txn_request_features:txn_amount", "txn_request_features:txn_hour_of_day",
                  "card_velocity_features:seconds_since_last_txn",
                  "card_velocity_features:km_from_last_txn",
                  "customer_context_features:km_from_home",
                  "customer_context_features:amount_to_avg_30d"],
        entity_rows=[{"card_id": card, "customer_id": customer, "amount": None,
                      "event_time_us": None, "lat": None, "lon": None}]).to_dict()
    assert got["txn_amount"] == [None] and got["txn_hour_of_day"] == [None]
    for name in ("seconds_since_last_txn", "km_from_last_txn", "km_from_home",
                 "amount_to_avg_30d"):
        assert got[name] == [-1.0], name


# --- older timestamps: what Feast's own write does -----------------------------------------


def test_older_or_equal_timestamps_are_dropped_like_feast(feast_settings: Settings,
                                                          store: FeatureStore,
                                                          client: redis.Redis,
                                                          redis_url: str) -> None:
    """Feast's Redis write (skip_dedup false, the default) keeps a row only if its event time
    is strictly after the stored one, also between rows of one batch; ours does the same."""
    theirs_settings = feast_settings.model_copy(
        update={"redis_url": _db_url(redis_url, next(_DBS))})
    theirs = feature_store(theirs_settings)
    c_theirs = redis.Redis.from_url(theirs_settings.redis_url)
    view = stream_view_name("terminal")
    writer = OnlineWriter(feast_settings).view(view)
    terminal = uid("term")
    newer, older, same = (stream_row("terminal", 7), stream_row("terminal", 8),
                          stream_row("terminal", 9))
    t2 = T0 + timedelta(seconds=2)
    steps = [
        [(terminal, newer, t2)],
        [(terminal, older, T0)],  # older: dropped
        [(terminal, same, t2)],  # same instant: dropped too
        # one batch, out of order: the newest row of the batch wins
        [(terminal, older, t2 + timedelta(microseconds=3)),
         (terminal, same, t2 + timedelta(microseconds=9)),
         (terminal, newer, t2 + timedelta(microseconds=5))],
    ]
    replies = []
    for rows in steps:
        replies.append(write(writer, client, view, rows))
        feast_write(theirs, view, rows)
        assert stored(client, writer.key(terminal)) == stored(c_theirs, writer.key(terminal))
    assert replies == [[1], [0], [0], [1, 1, 0]]
    got = store.get_online_features(features=[f"{view}:{n}" for n in feature_names("terminal")],
                                    entity_rows=[{"terminal_id": terminal}]).to_dict()
    assert {n: got[n][0] for n in feature_names("terminal")} == same


def test_overwrite_equal_lets_a_same_instant_row_win(feast_settings: Settings,
                                                    client: redis.Redis) -> None:
    view = stream_view_name("card")
    writer = OnlineWriter(feast_settings, overwrite_equal=True).view(view)
    card = uid("card")
    first, second, older = (stream_row("card", 1), stream_row("card", 2),
                            stream_row("card", 3))
    replies = [write(writer, client, view, [(card, first, T0)]),
               write(writer, client, view, [(card, second, T0)]),
               write(writer, client, view, [(card, older, T0 - timedelta(microseconds=1))])]
    assert replies == [[1], [1], [0]]


def test_without_dedup_last_write_wins(feast_settings: Settings, store: FeatureStore,
                                       client: redis.Redis) -> None:
    """``skip_dedup: true`` in Feast, ``dedup=False`` here: a plain HSET."""
    view = stream_view_name("customer")
    writer = OnlineWriter(feast_settings, dedup=False).view(view)
    customer = uid("cust")
    newer, older = stream_row("customer", 4), stream_row("customer", 5)
    write(writer, client, view, [(customer, newer, T0 + timedelta(hours=1))])
    write(writer, client, view, [(customer, older, T0)])
    got = store.get_online_features(features=[f"{view}:{n}" for n in feature_names("customer")],
                                    entity_rows=[{"customer_id": customer}]).to_dict()
    assert {n: got[n][0] for n in feature_names("customer")} == older


def test_a_failed_transaction_writes_nothing(feast_settings: Settings, store: FeatureStore,
                                             client: redis.Redis) -> None:
    """The writer only queues: the caller's MULTI/EXEC decides, all or nothing."""
    view = stream_view_name("card")
    writer = OnlineWriter(feast_settings).view(view)
    card = uid("card")
    pipe = client.pipeline(transaction=True)
    writer.add(pipe, [(card, stream_row("card", 1), T0)])
    pipe.reset()  # the caller gives up before EXEC
    assert client.exists(writer.key(card)) == 0


# --- offline: the feature log through Feast's point-in-time join ----------------------------


def test_offline_join_reads_the_feature_log_with_the_same_odfvs(
        feast_settings: Settings, store: FeatureStore) -> None:
    """Training asks at T - 1 µs (kestrel.windows): the row stamped T itself must not leak."""
    view = stream_view_name("card")
    t1, t2 = T0, T0 + timedelta(minutes=5)
    log = []
    for i, when in enumerate((t1, t2)):
        row = stream_row("card", i)
        row.update(card_id="c1", event_timestamp=when, created=when, card_last_lat=float(i),
                   card_last_lon=0.0,
                   card_last_event_time_us=int((when - T0).total_seconds() * 1e6) + 10**15)
        log.append(row)
    folder = feast_settings.var_dir / "features" / "log" / view
    folder.mkdir(parents=True)
    pd.DataFrame(log).to_parquet(folder / "part-0.parquet")
    t2_us = 10**15 + 300_000_000
    asked = pd.DataFrame({"card_id": ["c1", "c1", "c9"],
                          "event_timestamp": [t2 - timedelta(microseconds=1), t2, t2],
                          "amount": [1.0] * 3, "event_time_us": [t2_us] * 3,
                          "lat": [0.0] * 3, "lon": [0.0] * 3})
    got = store.get_historical_features(entity_df=asked, features=[
        f"{view}:card_txn_count_1h", "card_velocity_features:seconds_since_last_txn",
        "card_velocity_features:km_from_last_txn",
    ]).to_df().sort_values(["card_id", "event_timestamp"]).reset_index(drop=True)
    count = log[0]["card_txn_count_1h"], log[1]["card_txn_count_1h"]
    assert got["card_txn_count_1h"].iloc[:2].tolist() == list(count)
    assert math.isnan(got["card_txn_count_1h"].iloc[2])
    assert got["seconds_since_last_txn"].tolist() == [300.0, 0.0, -1.0]
    assert got["km_from_last_txn"].tolist() == [0.0, pytest.approx(EARTH_KM_PER_DEGREE), -1.0]
