"""Which `transactions` partitions are at their end: the stream processor's record of it.

librdkafka reports the end of a partition (``enable.partition.eof``) once per end offset,
after the records before it, and not again until records past that offset have been
consumed. A partition is therefore at its end from that report until a record at or past the
offset it named arrives. Records from before that offset — delivered in the same poll as the
report, or still buffered when the batch holding them commits — are no sign of new data: the
processor used to strike a partition off when a batch with its records committed, and the
partition, with nothing buffered and no further report coming, then capped every other
partition at its stream time plus MAX_PARTITION_SKEW_US for good (records held forever at
the end of a live replay, a stream with ``idle_seconds`` never stopping).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from confluent_kafka import Message

from kestrel.topics import TRANSACTIONS


def delivered_past_end(msgs: Sequence[Message], parts: Collection[int],
                       end_offsets: Mapping[int, int]) -> set[int]:
    """The partitions among ``parts`` (at their end) of which ``msgs`` hold a `transactions`
    record at or past the end offset their last end-of-partition report named: they have
    new data. Within a partition records arrive in offset order, so the last one decides;
    the list is scanned from its end and stops once each partition has been seen."""
    left, back = set(parts), set()
    for m in reversed(msgs):
        part = m.partition() or 0
        if part in left and m.topic() == TRANSACTIONS:
            left.discard(part)
            if (m.offset() or 0) >= end_offsets.get(part, 0):
                back.add(part)
            if not left:
                break
    return back
