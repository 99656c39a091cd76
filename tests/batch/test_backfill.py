"""The Spark backfill of the stream views equals what the real stream processor wrote."""

from __future__ import annotations

import threading

import pandas as pd
import pyarrow.dataset as ds
import pytest
import redis

from kestrel.settings import Settings
from kestrel.windows import ENTITIES, ENTITY_KEYS, feature_names, stream_view_name
from pipelines.batch.backfill import backfill_stream_features
from pipelines.features.online_writer import OnlineWriter
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.to_kafka import stream_to_kafka
from pipelines.simulator.to_lake import write_to_lake
from pipelines.stream.offline_log import log_dir, view_schema
from pipelines.stream.processor import StreamProcessor
from tests.batch.conftest import tokenizer

pytestmark = [pytest.mark.spark, pytest.mark.integration, pytest.mark.slow]


def _rows(settings: Settings, entity: str, pattern: str) -> pd.DataFrame:
    folder = log_dir(settings.var_dir) / stream_view_name(entity)  # type: ignore[arg-type]
    files = [str(f) for f in sorted(folder.glob(pattern))]
    frame = ds.dataset(files, format="parquet").to_table().to_pandas()
    key = ENTITY_KEYS[entity]  # type: ignore[index]
    # the newest version of each (key, time) row: what Feast's join reads
    return (frame.sort_values("created", kind="stable")
            .drop_duplicates([key, "event_timestamp"], keep="last")
            .sort_values([key, "event_timestamp"]).reset_index(drop=True))


def test_backfill_equals_the_stream(services: Settings, spark: object) -> None:
    settings = services.model_copy(update={
        "redis_url": services.redis_url.rsplit("/", 1)[0] + "/13", "stream_batch_ms": 100})
    redis.Redis.from_url(settings.redis_url).flushdb()  # our own server, our own db
    config = SimulationConfig(customers=300, terminals=600, days=2)
    sent = stream_to_kafka(config, settings, tokenizer(), with_labels=False)
    processor = StreamProcessor(settings, OnlineWriter(settings, dedup=False))
    worker = threading.Thread(target=processor.run, kwargs={"idle_seconds": 2.5})
    worker.start()
    worker.join(300)
    assert not worker.is_alive() and processor.stats.applied == sent.transactions

    write_to_lake(config, settings.lake_dir, tokenizer())
    result = backfill_stream_features(settings)
    for entity in ENTITIES:
        key = ENTITY_KEYS[entity]
        stream = _rows(settings, entity, "part-*.parquet")
        backfill = _rows(settings, entity, "backfill-*.parquet")
        assert result["views"][stream_view_name(entity)]["rows"] == len(backfill)
        assert ds.dataset(log_dir(settings.var_dir) / stream_view_name(entity)).schema \
            .remove_metadata() == view_schema(entity)
        assert len(backfill) == len(stream) > 0
        assert (backfill.created == backfill.event_timestamp).all()
        assert (backfill.created < stream.created).all()  # the stream's rows win in Feast
        columns = [key, "event_timestamp", *feature_names(entity)]
        pd.testing.assert_frame_equal(backfill[columns], stream[columns], check_exact=True)
