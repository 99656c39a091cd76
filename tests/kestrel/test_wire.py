from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa

from kestrel.events import TransactionEvent, decode_transaction
from kestrel.lake import TRANSACTION_SCHEMA
from kestrel.pan import CardTokenizer
from kestrel.wire import transaction_json
from pipelines.simulator.config import SimulationConfig
from pipelines.simulator.generator import iter_days


def test_columnar_json_decodes_to_the_same_events() -> None:
    config = SimulationConfig(customers=300, terminals=600, days=2)
    tables = [b.transactions for b in iter_days(config, CardTokenizer(b"k" * 32).token)]
    table = pa.concat_tables(tables)
    assert table.column("device_id").null_count > 0
    encoded = transaction_json(table).to_pylist()
    for row, raw in zip(table.to_pylist(), encoded, strict=True):
        row.pop("event_date", None)
        assert decode_transaction(raw) == TransactionEvent.model_validate(row)


def test_edge_values() -> None:
    rows = [{
        "txn_id": "t1", "event_time": datetime(
            2018, 4, 1, tzinfo=UTC),
        "customer_id": "C1", "account_id": "A1", "card_id": "card_x", "terminal_id": "T1",
        "mcc": "0742", "amount": 1_000_000.0, "currency": "EUR", "country": "FR", "lat": -90.0,
        "lon": 180.0, "channel": "atm", "device_id": "D-1", "schema_version": 1}]
    table = pa.Table.from_pylist(rows, schema=TRANSACTION_SCHEMA)
    [raw] = transaction_json(table).to_pylist()
    ev = decode_transaction(raw)
    assert ev.amount == 1_000_000.0 and ev.mcc == "0742" and ev.device_id == "D-1"
    assert ev.event_time == rows[0]["event_time"]
