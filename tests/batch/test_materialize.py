"""`kestrel features materialize`: batch views and insights into a real Redis, read by Feast."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pandas as pd
import pytest
import redis

from kestrel.redis_keys import insight_doc_key, top_spenders_key
from kestrel.settings import Settings
from kestrel.windows import batch_feature_names, batch_view_name
from pipelines.batch.layout import batch_table
from pipelines.features.materialize import materialize
from pipelines.features.store import apply, feature_store
from tests.batch import reference as ref
from tests.batch.conftest import SMALL

pytestmark = [pytest.mark.spark, pytest.mark.integration]

LAST = SMALL.start + timedelta(days=SMALL.days - 1)


@pytest.fixture
def mat_settings(computed_copy: Settings, redis_url: str) -> Settings:
    """The computed tables plus db 13 of the tests' own redis-server (emptied first)."""
    s = computed_copy.model_copy(update={"redis_url": redis_url.rsplit("/", 1)[0] + "/13"})
    redis.Redis.from_url(s.redis_url).flushdb()
    apply(s, echo=lambda _: None)
    return s


def test_materialize_is_incremental_and_feast_reads_it(mat_settings: Settings) -> None:
    s = mat_settings
    early = materialize(s, end=LAST - timedelta(days=5))
    assert early["views"][batch_view_name("customer")]["partitions"][-1] == \
        (LAST - timedelta(days=5)).isoformat()
    result = materialize(s)
    loaded = result["views"][batch_view_name("customer")]["partitions"]
    assert loaded == [(LAST - timedelta(days=i)).isoformat() for i in (2, 1, 0)]
    assert result["rows"] > 0 and result["rows_per_s"] > 0
    again = materialize(s)
    assert again["rows"] == 0 and again["insights"]["customers"] == 0

    store = feature_store(s)
    for entity in ("customer", "terminal"):
        key = f"{entity}_id"
        latest = ref.read_partition(batch_table(s, entity), "run_date", LAST.isoformat())
        sample = latest.sample(n=25, random_state=3).set_index(key)
        names = batch_feature_names(entity)
        got = store.get_online_features(
            features=[f"{batch_view_name(entity)}:{n}" for n in names],
            entity_rows=[{key: k} for k in sample.index]).to_dict()
        for i, k in enumerate(sample.index):
            for n in names:
                want = sample.loc[k, n]
                if pd.isna(want):
                    assert got[n][i] is None, (k, n)
                else:
                    assert got[n][i] == pytest.approx(want), (k, n)


def test_insight_docs_and_top_spenders(mat_settings: Settings) -> None:
    s = mat_settings
    result = materialize(s)
    assert result["insights"]["as_of"] == LAST.isoformat()
    client = redis.Redis.from_url(s.redis_url)
    tx, _ = ref.lake_frames(s.lake_dir)
    customer = tx.customer_id.iloc[-1]
    doc = orjson.loads(client.get(insight_doc_key(customer)))
    assert doc["as_of"] == LAST.isoformat()
    first = (LAST - timedelta(days=34)).isoformat()
    assert doc["daily"] and all(first <= d["date"] <= LAST.isoformat() for d in doc["daily"])
    assert set(doc["daily"][0]) == {"date", "category", "amount", "count"}
    want = ref.daily_category(tx, LAST)
    for d in (d for d in doc["daily"] if d["date"] == LAST.isoformat()):
        assert d["amount"] == pytest.approx(want.loc[(customer, d["category"]), "amount"])
    assert [m["month"] for m in doc["monthly"]] == ["2018-04", "2018-05"]
    may = ref.monthly(tx, "2018-05").loc[customer]
    assert doc["monthly"][1]["amount"] == pytest.approx(may["amount"])
    assert doc["monthly"][1]["mom_change"] == pytest.approx(may["mom_change"], abs=1e-4)

    top = orjson.loads(client.get(top_spenders_key(LAST.isoformat())))
    assert len(top) == 100 and set(top[0]) == {"customer_id", "amount", "count"}
    amounts = [t["amount"] for t in top]
    assert amounts == sorted(amounts, reverse=True)
    assert client.exists(top_spenders_key(SMALL.start.isoformat()))
