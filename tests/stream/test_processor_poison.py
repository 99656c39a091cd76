"""The stream processor against a real broker and Redis, on both of its paths (the columnar
one `kestrel stream` runs, and the per-event reference): card numbers in identifiers, event
times outside TimeBounds and bytes that are no event — on `transactions` and on
`transactions.by-terminal` — go to the DLQ (redacted) and are never applied; the valid records
after them are; nothing PAN-like reaches the DLQ or any output of the stream."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest
import redis

from kestrel.settings import Settings
from kestrel.topics import (
    ALERTS,
    TRANSACTIONS,
    TRANSACTIONS_BY_TERMINAL,
    TRANSACTIONS_DLQ,
    TRANSACTIONS_LATE,
)
from pipelines.features.online_writer import OnlineWriter
from pipelines.stream.changelog import group_prefix
from pipelines.stream.offline_log import log_dir
from pipelines.stream.processor import GROUP_ID, StreamProcessor, offsets_key
from tests.pipelines.events_factory import encode, make_event
from tests.pipelines.poison import (
    GARBAGE,
    PAN_FORMS,
    garbage_transactions,
    pan_hits,
    pan_transactions,
    parquet_strings,
    produce_in_order,
    texts,
    time_transactions,
)
from tests.pipelines.test_archive import read_topic
from tests.stream.test_processor import stream_settings  # noqa: F401 — the fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T_2018 = 1_522_540_800_000_000  # 2018-04-01T00:00:00Z in µs


def _forwarded_bad() -> list[tuple[str, bytes | None]]:
    """`transactions.by-terminal` records the stream never wrote."""
    pan = PAN_FORMS["dashes"]
    return [*[(f"garbage {n}", g) for n, g in enumerate(GARBAGE[:12])],
            ("terminal PAN", orjson.dumps(["tx-fwd-1", T_2018, pan])),
            ("txn PAN", orjson.dumps([PAN_FORMS["digits"], T_2018, "T00001"])),
            ("terminal Arabic-Indic", orjson.dumps(["tx-fwd-2", T_2018,
                                                    PAN_FORMS["Arabic-Indic"]])),
            ("year 1", orjson.dumps(["tx-fwd-3", -62_135_596_800_000_000, "T00001"])),
            ("past int64", orjson.dumps(["tx-fwd-4", 2 ** 64 - 1, "T00001"])),
            ("four items", orjson.dumps(["tx-fwd-5", T_2018, "T00001", 1])),
            ("time string", orjson.dumps(["tx-fwd-6", "2018-04-01T00:00:00Z", "T00001"]))]


def _redis_texts(client: redis.Redis, skip_values: set[bytes]) -> list[str]:
    """Every key of the database and every value, decoded: JSON documents' strings (their
    numbers are numbers: µs times, counts), other values (Feast's protobuf rows) as text.
    ``skip_values``: keys whose values are the processor's own ids and clocks (batch ids
    hold a 13-digit millisecond clock, owner tokens random hex: PAN-like by the definition
    at times, and never from a record); their names are still read."""
    out: list[str] = []
    for key in client.scan_iter(count=1000):
        out.append(key.decode("utf-8", errors="replace"))
        if key in skip_values:
            continue
        kind = client.type(key)
        blobs: list[Any] = (
            [b for kv in client.hgetall(key).items() for b in kv] if kind == b"hash" else
            client.lrange(key, 0, -1) if kind == b"list" else
            list(client.smembers(key)) if kind == b"set" else
            client.zrange(key, 0, -1) if kind == b"zset" else [client.get(key)])
        for blob in blobs:
            try:
                out += texts(orjson.loads(blob))
            except orjson.JSONDecodeError:
                out.append(blob.decode("utf-8", errors="replace"))
    return out


@pytest.mark.parametrize("path", ["columnar", "per_event"])
def test_pans_bad_times_and_garbage_are_dead_lettered_never_applied(
        stream_settings: Settings, path: str) -> None:  # noqa: F811 — the fixture
    s = stream_settings
    bad = [*pan_transactions(50_000), *time_transactions(60_000),
           *garbage_transactions(70_000)]
    records: list[tuple[str | None, bytes | None]] = []
    good: list[dict[str, Any]] = []
    bad_offsets: dict[int, str] = {}
    for n, (what, value) in enumerate(bad):  # a valid record after each bad one
        bad_offsets[len(records)] = what
        records.append((None, value))
        event = make_event(n)
        records.append((event["customer_id"], encode(event)))
        good.append(event)
    produce_in_order(s, TRANSACTIONS, records)
    forwarded_bad = _forwarded_bad()
    forwarded = [(None, v) for _, v in forwarded_bad]
    forwarded.append(("T00042", orjson.dumps(["tx-fwd-ok", T_2018, "T00042"])))
    produce_in_order(s, TRANSACTIONS_BY_TERMINAL, forwarded)

    proc = StreamProcessor(s, OnlineWriter(s, dedup=False),
                           apply_path="arrays" if path == "columnar" else "per_event")
    worker = threading.Thread(target=proc.run, kwargs={"idle_seconds": 2.5})
    worker.start()
    worker.join(300)
    assert not worker.is_alive(), "stream did not stop"

    st = proc.stats
    assert st.invalid == len(bad) + len(forwarded_bad)
    assert st.applied == len(good) and st.late == 0
    assert st.terminal_applied == len(good) + 1  # and the valid forwarded update
    dlq = read_topic(s, TRANSACTIONS_DLQ, st.invalid)
    docs = [orjson.loads(m.value()) for m in dlq]
    assert len(docs) == st.invalid
    sources = {(d["source"]["topic"], d["source"]["offset"]) for d in docs}
    assert sources == {(TRANSACTIONS, off) for off in bad_offsets} | {
        (TRANSACTIONS_BY_TERMINAL, off) for off in range(len(forwarded_bad))}
    by_what = {bad_offsets[d["source"]["offset"]]: d for d in docs
               if d["source"]["topic"] == TRANSACTIONS}
    for field in ("txn_id", "account_id", "terminal_id", "device_id"):
        assert [e["path"] for e in by_what[f"{field} dashes"]["errors"]] == [field]
    for t in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00", "2099-01-01T00:00:00Z"):
        assert [e["path"] for e in by_what[f"event_time {t}"]["errors"]] == ["event_time"]

    # read back as decoded content: the DLQ, the offline log, Redis, the output topics
    dlq_texts = [t for m in dlq for t in (*texts(orjson.loads(m.value())),
                                          m.value().decode("utf-8", errors="replace"))]
    offline = parquet_strings(log_dir(s.var_dir).rglob("*.parquet"))
    assert len(offline) >= 3 * len(good)  # a card, customer and terminal row per event
    client = redis.Redis.from_url(s.redis_url)
    own = {offsets_key(GROUP_ID).encode(), *(
        k for k in client.scan_iter(match=group_prefix(GROUP_ID) + "owner:*"))}
    stored = _redis_texts(client, own)
    assert sum(good[-1]["txn_id"] in t for t in stored) >= 1  # the recent list holds it
    outputs = [t for topic in (ALERTS, TRANSACTIONS_LATE)
               for m in read_topic(s, topic, 0, timeout=5)
               for t in texts(orjson.loads(m.value()))]
    assert pan_hits(dlq_texts) == []
    assert pan_hits(offline) == []
    assert pan_hits(stored) == []
    assert pan_hits(outputs) == []

    # positive control: the same scans flag a card number where there is one
    planted = [v.decode("utf-8", errors="replace") for what, v in bad
               if v is not None and what.split(" ", 1)[-1] in PAN_FORMS]
    assert len(planted) == 6 * len(PAN_FORMS) and len(pan_hits(planted)) == len(planted)
    client.set("control:json", orjson.dumps({"id": PAN_FORMS["en dashes"]}))
    client.hset("control:hash", b"\x01\x02", PAN_FORMS["spaces"].encode())
    assert sorted(pan_hits(_redis_texts(client, own))) == sorted(
        [PAN_FORMS["en dashes"], PAN_FORMS["spaces"]])
