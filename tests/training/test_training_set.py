"""`kestrel training-set`, coverage, and a feature added to a deployment with history
(issue 29, items 5 and 6), end to end on a small simulated lake with its Spark backfill and
batch views, the Feast registry and a real Redis.

The "deployment with history" is made the way it happens: the stream's log rows for two days
written *without* a feature's column and newer (``created``) than the backfill's rows.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet as pq
import pytest
import redis

from kestrel.pan import CardTokenizer
from kestrel.settings import Settings
from pipelines.batch.backfill import backfill_stream_features, fill_online
from pipelines.batch.jobs import run_batch_features
from pipelines.features.online_writer import OnlineWriter
from pipelines.features.store import apply
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.to_lake import write_to_lake
from pipelines.stream.offline_log import log_dir
from tests.conftest import TEST_SECRET, env_for, make_settings
from training.coverage import Coverage, check, measure
from training.errors import TrainingError
from training.pipeline import feature_rows

pytestmark = [pytest.mark.spark, pytest.mark.slow]

START = date(2018, 4, 1)
DAYS = 8
NEW = "card_amount_max_1h"
SERVED = [START + timedelta(days=5), START + timedelta(days=6)]  # days "the stream served"


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Settings]:
    var = tmp_path_factory.mktemp("tset") / "var"
    settings = make_settings(var, label_delay_days=2.0, spark_shuffle_partitions=2,
                             redis_url=f"{redis_url.rsplit('/', 1)[0]}/7")
    sim = SimulationConfig(customers=150, terminals=300, days=DAYS, label_delay_days=2.0)
    write_to_lake(sim, settings.lake_dir, CardTokenizer(TEST_SECRET.encode()).token)
    backfill_stream_features(settings)
    run_batch_features(settings)
    apply(settings, echo=lambda _: None)
    yield settings


def test_training_set_command_writes_parquet_and_a_summary(lake: Settings,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "v1.parquet"
    first, last = START + timedelta(days=2), START + timedelta(days=DAYS - 1)
    done = subprocess.run(
        [sys.executable, "-m", "cli", "training-set", "--service", "fraud_scoring_v1",
         "--start", first.isoformat(), "--end", last.isoformat(), "--out", str(out)],
        env=env_for(lake), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    frame = pq.read_table(out).to_pandas()
    assert frame["event_time"].min().date() == first and frame["event_time"].max().date() == last
    assert "card_txn_count_1h" in frame and NEW not in frame  # v1's outputs, not v2's
    lines = done.stdout.splitlines()
    summary = next(line for line in lines if line.startswith("training set fraud_scoring_v1"))
    assert f"{len(frame):,} rows" in summary and "label rate" in summary
    assert any(line.strip().startswith("card_txn_count_1h") and line.endswith("% *")
               for line in lines)
    assert any(line.strip().startswith("terminal_fraud_risk_1d") and line.endswith("%")
               for line in lines)  # reported, not checked: missing by design
    assert any(line.startswith("  card_stream_features:") for line in lines)  # progress


def test_coverage_leaves_out_an_entitys_first_transaction() -> None:
    t = pd.to_datetime(["2018-04-01 00:00", "2018-04-01 01:00", "2018-04-01 02:00"], utc=True)
    frame = pd.DataFrame({"txn_id": ["a", "b", "c"], "event_time": t,
                          "card_id": ["x", "y", "x"], "customer_id": ["u", "u", "u"],
                          "terminal_id": ["p", "q", "r"],
                          "card_txn_count_1h": [np.nan, np.nan, 1.0],
                          "customer_txn_count_1h": [np.nan, 1.0, np.nan]})
    got = measure(frame, {"card_stream_features": ["card_txn_count_1h"],
                          "customer_stream_features": ["customer_txn_count_1h"]})
    assert (got["card_txn_count_1h"].present, got["card_txn_count_1h"].due) == (1, 1)
    assert (got["customer_txn_count_1h"].present, got["customer_txn_count_1h"].due) == (1, 2)


def test_a_feature_added_with_history_is_filled_offline_and_online(
        lake: Settings, tmp_path: Path) -> None:
    var = tmp_path / "var"
    shutil.copytree(lake.var_dir, var)
    settings = lake.model_copy(update={"var_dir": var})
    apply(settings, echo=lambda _: None)  # the copy's sources live under its own var dir
    card_log = log_dir(var) / "card_stream_features"
    # the stream served two days before the feature existed: its rows lack the column and
    # are newer than the backfill's
    for day in SERVED:
        rows = pq.read_table(card_log / f"backfill-{day}.parquet").drop_columns([NEW])
        created = pa.compute.add(rows.column("created"), pa.scalar(2_000_000, pa.duration("us")))
        rows = rows.set_column(rows.schema.get_field_index("created"), "created", created)
        pq.write_table(rows, card_log / f"part-old-{day}.parquet")
    first, last = START + timedelta(days=1), START + timedelta(days=DAYS - 1)

    # reading old files is no raw ArrowInvalid/KeyError: the gap is measured and named
    with pytest.raises(TrainingError) as err:
        feature_rows(settings, first, last, service="fraud_scoring_v2")
    message = str(err.value)
    assert NEW in message and "kestrel backfill" in message
    assert "card_txn_count_1h" not in message  # the features the old rows have are fine
    # v1 does not read the new feature: its set builds
    assert feature_rows(settings, first, last, service="fraud_scoring_v1").frame is not None

    # the backfill fills the rows the stream wrote without the feature
    result = backfill_stream_features(settings, SERVED[0], SERVED[-1])
    assert result["views"]["card_stream_features"]["filled"] > 0
    assert result["views"]["customer_stream_features"]["filled"] == 0
    rows = feature_rows(settings, first, last, service="fraud_scoring_v2")
    assert rows.coverage[NEW].share >= settings.training_min_coverage
    reference = feature_rows(lake, first, last, service="fraud_scoring_v2").frame
    pd.testing.assert_series_equal(rows.frame.set_index("txn_id")[NEW].sort_index(),
                                   reference.set_index("txn_id")[NEW].sort_index())

    # online: an entity whose hash lacks the feature gets its newest backfill value; a value
    # the stream wrote is kept
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    newest = pd.concat([pq.read_table(f).to_pandas()
                        for f in sorted(card_log.glob("backfill-*.parquet"))])
    newest = newest.sort_values("event_timestamp").drop_duplicates("card_id", keep="last")
    cards = newest["card_id"].tolist()[:2]
    writer = OnlineWriter(settings, dedup=False)
    pipe = client.pipeline(transaction=False)
    at = pd.Timestamp(SERVED[-1], tz="UTC").to_pydatetime()
    writer.write(pipe, "card_stream_features", [(cards[0], {"card_txn_count_1h": 1}, at),
                                                (cards[1], {NEW: 12345.0}, at)])
    pipe.execute()
    filled = fill_online(settings, [NEW])
    assert filled["card_stream_features"] >= 1
    from serving.features import OnlineFeatures
    from serving.redis_guard import RedisGuard

    guard = RedisGuard(settings.redis_url)
    reader = OnlineFeatures(settings, client, guard, "fraud_scoring_v2")
    from kestrel.events import TransactionEvent
    from serving.fixtures import transaction

    events = [TransactionEvent.model_validate(transaction(i, card_id=c))
              for i, c in enumerate(cards)]
    frame = reader.read(events)
    got = frame.x[:, frame.names.index(NEW)]
    expected = newest.set_index("card_id").loc[cards[0], NEW]
    assert got[0] == pytest.approx(expected) and got[1] == 12345.0
    guard.close()
    client.close()


def test_batch_features_without_any_value_stop_the_build() -> None:
    """Missing batch values are mostly by design; none at all means `kestrel batch` never
    ran for the range, and the set would train on NaN everywhere."""
    batch = {"customer_avg_amount_1d": Coverage("customer_avg_amount_1d", 0, 3,
                                                enforced=False),
             "terminal_fraud_risk_1d": Coverage("terminal_fraud_risk_1d", 1, 3, enforced=False)}
    with pytest.raises(TrainingError, match=r"customer_avg_amount_1d; compute them with "
                                            r"`kestrel batch --start 2018-04-01"):
        check(batch, 0.95, "2018-04-01", "2018-04-05")
    check({"terminal_fraud_risk_1d": batch["terminal_fraud_risk_1d"]}, 0.95, "2018-04-01",
          "2018-04-05")
