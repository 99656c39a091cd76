"""A stand-in for the producer in the stream's broker-free unit tests: it records what a
collaborator sends (to `transactions.late`, the DLQ, the repartition topic) instead of
sending it. That the sending reaches the broker is the real-broker tests' business
(test_processor.py, test_processor_poison.py)."""

from __future__ import annotations

from typing import Any


class SentRecords:
    """What was produced: (topic, key, value, partition named or None), in order."""

    def __init__(self) -> None:
        self.records: list[tuple[str, Any, bytes, int | None]] = []

    def produce(self, topic: str, key: Any, value: bytes, partition: int | None = None,
                **_: Any) -> None:
        self.records.append((topic, key, value, partition))

    def flush(self) -> None:
        """Nothing is buffered: every record is kept as it is produced."""
