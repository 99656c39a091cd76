"""The stream's retention TTL: sent once per interval per key, and still a bound."""

from __future__ import annotations

from pathlib import Path

import redis

from kestrel.resp import RespTransaction
from kestrel.windows import stream_view_name
from pipelines.features.key_ttl import MAX_REFRESH_SECONDS, KeyTtlRefresh
from pipelines.features.online_writer import OnlineWriter
from tests.conftest import make_settings


def test_a_key_is_due_once_per_interval() -> None:
    now = [100.0]
    refresh = KeyTtlRefresh(30 * 86_400, clock=lambda: now[0])
    assert refresh.refresh == MAX_REFRESH_SECONDS and refresh.ttl == 30 * 86_400 + 3600
    assert refresh.due(["a", "b"]).tolist() == [True, True]
    assert refresh.due(["b", "c"]).tolist() == [False, True]
    now[0] += 3599
    assert refresh.due(["a"]).tolist() == [False]
    now[0] += 1  # a new interval: every key is due again
    assert refresh.due(["a", "c"]).tolist() == [True, True]
    assert KeyTtlRefresh(50).refresh == 5  # a short TTL refreshes within a tenth of it


def test_the_stream_writer_sets_the_ttl_once_and_it_outlives_the_retention(
        tmp_path: Path, redis_url: str) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/11"
    settings = make_settings(tmp_path / "var", redis_url=url, feature_retention_days=30)
    client = redis.Redis.from_url(url)
    client.flushdb()
    writer = OnlineWriter(settings, dedup=False)
    view = stream_view_name("terminal")
    cols = {"terminal_txn_count_1h": [1, 2], "terminal_txn_count_24h": [1, 2]}
    replies = []
    for _ in range(2):
        tx = RespTransaction()
        writer.write_columns(tx, view, ["T1", "T2"], cols, [1_700_000_000, 1_700_000_001])
        replies.append(tx.execute(client))
    assert len(replies[0]) == 4 and len(replies[1]) == 2  # EXPIREs only with the first write
    key = writer.view(view).key("T1")
    assert 30 * 86_400 < client.ttl(key) <= 30 * 86_400 + 3600  # type: ignore[operator]
