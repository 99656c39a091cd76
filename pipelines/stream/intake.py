"""Intake and pausing: which buffered `transactions` records go into the next batch, and
which partitions the consumer fetches.

The stream processor polls records into a buffer; ``Intake`` counts them as they arrive
(``count``), learns when a partition reaches its end (``on_eof``), picks each batch from the
buffer (``select``: shares per partition, then event time across partitions, Kafka Streams'
stream-time synchronization) and, after each batch, pauses partitions that run ahead in event
time or hold too many buffered records and resumes the others (``pace``). ``batch_full`` tells
the consumer loop a batch need not wait for its time limit.

A partition is at its end from librdkafka's end-of-partition report (``enable.partition.eof``:
once per end offset, after the records before it) until a record at or past the offset it
named arrives: records from before that offset, delivered in the same poll as the report or
still buffered, are no sign of new data (``delivered_past_end``). A partition at its end holds
no other back; one that is not would otherwise cap the others at its stream time plus
MAX_PARTITION_SKEW_US for good.

The stream time of each partition (the newest event time its accepted records reached) is
held by partitions.py and moved by the gate (gate.py); the intake reads the same dict.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence

import numpy as np
from confluent_kafka import Consumer, Message, TopicPartition

from kestrel.settings import Settings
from kestrel.topics import TRANSACTIONS
from pipelines.stream import batch_decode, columnar
from pipelines.stream.event_time import UNREADABLE, TimeLimits, event_time_keys, event_times_us

MAX_PARTITION_SKEW_US = 3600 * 1_000_000
PARTITION_SHARE_PER_BATCH = 1_000  # at least; more when the batch size allows
# A partition is paused once the buffer holds this many of its records (in batches' worth:
# times stream_batch_records). Pausing makes librdkafka drop what it prefetched for the
# partition and refetch it on resume, so pausing a partition as soon as it delivered its
# share of a batch would leave the loop waiting on refetches; select already keeps a batch to
# its shares and to event time, holding the rest.
PARTITION_HOLD_BATCHES = 1
# When a partition's prefetch queue is over queued.min.messages, librdkafka postpones that
# partition's next fetch by fetch.queue.backoff.ms (default 1,000 ms). One fetch is over
# 5,000 records, so with the default a partition would go quiet for a second at a time while
# select holds the others back in event time until it delivers.
FETCH_QUEUE_BACKOFF_MS = 10
# The consumer's fetch settings. Small fetches cap consumption well below the stream's rate;
# large prefetches let one partition deliver far more than its share before pause() takes
# effect, which select holds back for a later batch (a batch still follows the records'
# timestamps across partitions). ``enable.partition.eof`` feeds on_eof.
FETCH_CONFIG: dict[str, object] = {"max.partition.fetch.bytes": 1_048_576,
                                   "queued.min.messages": 5_000,
                                   "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
                                   "enable.partition.eof": True}

_NO_INTS = np.zeros(0, np.int64)


def intake_columns(buffer: Sequence[Message], newest_allowed_us: int, earliest_us: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, batch_decode.Parsed]:
    """Per record: its `transactions` partition (-1 for other topics), its event time in µs
    (0 for other topics, and for times before ``earliest_us`` or past ``newest_allowed_us``,
    which are dead-lettered as soon as they are taken), and the record parsed
    (batch_decode.Parsed; not parsed for other topics).

    Each record is parsed here, once, and its batch decodes from that: the event time comes
    with the parse. A record that does not parse, or whose time is not in the stream's own
    form, has its time read from the raw JSON (pipelines/stream/event_time.py)."""
    n = len(buffer)
    parts = np.array([m.partition() or 0 for m in buffer], np.int64)
    other = np.array([m.topic() != TRANSACTIONS for m in buffer], bool)
    values = [m.value() or b"" for m in buffer]
    if other.any():
        parts[other] = -1
        at = np.flatnonzero(~other)
        parsed = batch_decode.Parsed.scatter(
            n, at, batch_decode.Parsed.of([values[i] for i in at.tolist()]))
    else:
        parsed = batch_decode.Parsed.of(values)
    exact = parsed.exact_us != batch_decode.NOT_EXACT
    times = np.where(exact, parsed.exact_us, UNREADABLE)
    rest = np.flatnonzero(~exact & ~other)
    if len(rest):
        times[rest] = event_times_us(event_time_keys([values[i] for i in rest.tolist()]),
                                     newest_allowed_us)
    times[(times < earliest_us) | (times > newest_allowed_us)] = UNREADABLE
    return parts, times, parsed


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


class Intake:
    """The owned `transactions` partitions' intake: what is buffered of each, which are
    paused or at their end, and the records held back for the next batch."""

    def __init__(self, settings: Settings, stream_time: dict[int, int],
                 limits: TimeLimits) -> None:
        """``stream_time``: per partition, the newest event time accepted (read here)."""
        self.batch_records = settings.stream_batch_records
        self.stream_time = stream_time
        self.limits = limits
        self.owned: set[int] = set()
        self.paused: set[int] = set()
        # at their end: from an end-of-partition report until a record at or past the
        # offset it named (end_offset) arrives
        self.at_end: set[int] = set()
        self.end_offset: dict[int, int] = {}
        # reported their end since a batch with their records last committed: what the
        # consumer had of them is in the buffer (batch_full; a live partition reports its
        # end between arrivals, often with records past it in the same poll)
        self.caught_up: set[int] = set()
        self.buffered: dict[int, int] = {}  # per partition: its records in the buffer
        # the records select held back, with their partitions, event times and parse (each
        # record is parsed once, on arrival)
        self._held: tuple[list[Message], np.ndarray, np.ndarray, batch_decode.Parsed] = (
            [], _NO_INTS, _NO_INTS, batch_decode.Parsed.none(0))
        # the records of the batch select last took, parsed at intake (aligned with it)
        self.taken_parsed: batch_decode.Parsed | None = None
        # select took nothing (every record waits for a partition behind) and nothing that
        # could change that has happened since: a record, an end of partition, a pause
        self._waiting = False

    # --- the group's assignment -----------------------------------------------------------
    def assign(self, parts: Collection[int]) -> None:
        self._waiting = False
        self.owned |= set(parts)

    def revoke(self, part: int) -> None:
        self._waiting = False  # the partitions that cap the others change
        self.owned.discard(part)
        self.paused.discard(part)
        self.at_end.discard(part)
        self.caught_up.discard(part)

    def committed(self, parts: Collection[int]) -> None:
        """A batch with records of ``parts`` was taken: they are no longer caught up."""
        self.caught_up.difference_update(parts)

    # --- what arrives -----------------------------------------------------------------------
    def count(self, msgs: list[Message], consumer: Consumer) -> None:
        """Stop fetching a partition once the buffer holds hold_limit of its records (what
        goes into a batch is select's business, in shares and event time); pace resumes
        it. ``msgs``: the records one poll added to the buffer."""
        self._waiting = False
        owned, paused, buffered = self.owned, self.paused, self.buffered
        hold_limit = self.hold_limit()
        counts = Counter([m.partition() or 0 for m in msgs if m.topic() == TRANSACTIONS])
        back = self.at_end.intersection(counts)
        if back:  # new data, or only records from before the end they reported?
            self.at_end -= delivered_past_end(msgs, back, self.end_offset)
        for part, count in counts.items():
            if part not in owned:
                continue
            n = buffered[part] = buffered.get(part, 0) + count
            if n >= hold_limit and part not in paused:
                consumer.pause([TopicPartition(TRANSACTIONS, part)])
                paused.add(part)

    def on_eof(self, m: Message) -> None:
        """A partition at its end holds no other back until a record past that end arrives
        (count); committing the records it delivered before does not change that."""
        self._waiting = False
        if m.topic() == TRANSACTIONS:
            part = m.partition() or 0
            self.at_end.add(part)
            self.caught_up.add(part)
            self.end_offset[part] = m.offset() or 0  # the next offset to be written

    def batch_full(self) -> bool:
        """Every owned `transactions` partition is paused (ahead, or holding its limit), at
        its end, or caught up (reported its end since its records last committed): waiting
        for the batch's time limit would only add latency. Under live traffic a partition is
        rarely at its end when a poll finishes (records past the end it reported arrive in
        the same poll), so "at its end" alone would leave nearly every batch to the time
        limit."""
        caught_up = self.at_end | self.caught_up
        return bool(self.owned) and all(p in self.paused or p in caught_up
                                        for p in self.owned)

    # --- picking a batch ----------------------------------------------------------------------
    def share(self) -> int:
        return max(PARTITION_SHARE_PER_BATCH, self.batch_records // max(1, len(self.owned)))

    def hold_limit(self) -> int:
        """Buffered records of one partition past which it is paused (memory bound)."""
        return max(self.share(), PARTITION_HOLD_BATCHES * self.batch_records)

    def select(self, buffer: list[Message], stopping: bool = False
               ) -> tuple[list[Message], list[Message]]:
        """Split the buffered records into this batch and the ones held back for the next.

        Kafka Streams' stream-time synchronization across partitions, on the records' event
        time: past its share of the batch (share), a partition's `transactions` records are
        taken only up to the newest event time every partition with buffered records has
        reached (a partition at its end does not hold the others back; nor, for this
        cutoff, does one with nothing buffered: waiting for it, Kafka Streams'
        max.task.idle.ms, is slower as pause()/resume() make fetches restart), and at most
        ``stream_batch_records`` of them, oldest first. Whatever the share, no record passes
        the skew ceiling (skew_ceiling: the slowest partition's reach, its stream time
        included when nothing of it is buffered, plus MAX_PARTITION_SKEW_US); when every
        record waits on it, nothing is taken until that partition delivers. A partition
        whose prefetch delivered far more than its share (records keep coming after pause())
        thus cannot carry a batch ahead of the others in event time (terminal state is fed
        by all of them); such records wait in the buffer for the next batch.

        Event times are those of the records as parsed on arrival (intake_columns: one that
        cannot be read counts as 0 and is never held); this only orders the intake, every
        check still happens on the decoded event. The parsed records taken are left in
        ``taken_parsed`` for the batch's decoder. Within a partition the records taken are
        always a prefix, so offsets and per-partition order are those of the log. When
        ``stopping``, and on revoke, everything buffered is taken. The buffer often holds
        several batches (a partition is paused only past hold_limit), so the decision is
        made on arrays, and the records held back keep their columns for the next call.
        """
        limit = self.batch_records
        held, held_parts, held_times, held_parsed = self._held
        self.taken_parsed = batch_decode.Parsed.none(0)
        if self._waiting and not stopping and len(buffer) == len(held) and held \
                and buffer[0] is held[0] and buffer[-1] is held[-1]:
            return [], buffer  # the same answer as last time, without scanning again
        self._waiting = False
        self._held = ([], _NO_INTS, _NO_INTS, batch_decode.Parsed.none(0))
        reuse = len(held) if held and len(buffer) >= len(held) and buffer[0] is held[0] \
            and buffer[len(held) - 1] is held[-1] else 0  # held last time: they lead
        parts, times, parsed = intake_columns(buffer[reuse:], self.limits.newest_allowed_us(),
                                              self.limits.earliest_us)
        if reuse:
            parts, times = np.concatenate((held_parts, parts)), np.concatenate((held_times, times))
            parsed = held_parsed.then(parsed)
        self.taken_parsed = parsed  # unless some are held back (below)
        txn = parts >= 0
        if stopping or not txn.any():
            return buffer, []
        members = {p: np.flatnonzero(parts == p)
                   for p in np.flatnonzero(np.bincount(parts[txn])).tolist()}
        newest = {p: int(times[idx].max()) for p, idx in members.items()}
        bounds = [t for p, t in newest.items() if p not in self.at_end]
        cutoff = min(bounds) if bounds else max(newest.values())
        ceiling = self.skew_ceiling(newest)
        txns = int(txn.sum())
        quota = txns  # records at exactly the cutoff that may still be taken
        if txns > limit:
            eligible = times[txn & (times <= cutoff)]
            if len(eligible) > limit:  # the limit-th oldest (a partial sort)
                cutoff = int(np.partition(eligible, limit - 1)[limit - 1])
                quota = limit - int(np.count_nonzero(eligible < cutoff))
        share = self.share()
        rank = np.zeros(len(parts), np.int64)  # position among its partition's records
        for idx in members.values():
            rank[idx] = np.arange(len(idx))
        too_far = txn & (times > ceiling) if ceiling is not None else np.zeros_like(txn)
        fails = too_far | (txn & (rank >= share) & (times > cutoff))
        first_held: dict[int, int] = {}  # per partition: its first record held (the prefix rule)
        for p, idx in members.items():
            failing = idx[fails[idx]]
            first_held[p] = int(failing[0]) if len(failing) else len(parts)
        # a record at exactly the cutoff past its partition's share is taken while the quota
        # lasts, in buffer order; any record taken at the cutoff uses up the quota
        for i in np.flatnonzero(txn & (times == cutoff)).tolist():
            p = int(parts[i])
            if first_held[p] <= i:
                continue
            if rank[i] >= share and quota <= 0:
                first_held[p] = i
                continue
            quota -= 1
        holding = np.zeros(len(parts), dtype=bool)
        for p, idx in members.items():
            holding[idx[idx >= first_held[p]]] = True
        if not holding.any():
            return buffer, []
        take, hold = columnar.split(buffer, holding)
        if not take and not too_far.any():  # never stall on records out of order in a
            return buffer, []  # partition
        self.taken_parsed, held_parsed = parsed.split(holding)
        self._held = (hold, parts[holding], times[holding], held_parsed)
        self._waiting = not take
        return take, hold

    def skew_ceiling(self, newest: dict[int, int]) -> int | None:
        """The event time (µs) no record may pass in this batch, whatever its share: what
        the slowest live owned partition has reached (its newest buffered record, or its
        stream time when nothing of it is buffered) plus MAX_PARTITION_SKEW_US. A partition
        pace paused with nothing buffered counts only while pace would resume it (it then
        delivers); one further ahead does not, as the others must move for it to resume.

        Without it a partition with many buffered records and no competitor in the buffer
        (the others paused, or refetching after a resume) would go through in one batch, and
        terminal updates from the partitions behind would come later than the terminal
        reorder slack. None when no live partition has a reach."""
        reached: list[int] = []
        resume_below = self.resume_below()
        for part in self.owned - self.at_end:
            at = newest.get(part, UNREADABLE)
            if at == UNREADABLE:  # nothing (readable) of it buffered
                t = self.stream_time.get(part, 0)
                if part not in self.paused or t <= resume_below:
                    reached.append(t)
                continue
            reached.append(at)
        if not reached:
            return None
        return min(reached) + MAX_PARTITION_SKEW_US

    def resume_below(self) -> int:
        """pace resumes a paused partition whose stream time is at most this: the slowest
        live owned partition's stream time plus half of MAX_PARTITION_SKEW_US."""
        live = self.owned - self.at_end
        slowest = min((self.stream_time.get(p, 0) for p in live), default=0)
        return slowest + MAX_PARTITION_SKEW_US // 2

    # --- pausing ------------------------------------------------------------------------------
    def pace(self, consumer: Consumer) -> None:
        """Keep the owned `transactions` partitions within MAX_PARTITION_SKEW_US of each
        other in event time (Kafka Streams does the same by picking the lowest timestamp).

        A catch-up or a replay would otherwise let one partition run days ahead of another;
        terminal state, fed by all of them through the repartition topic, would then see
        events too far out of order. A partition that has reached its end does not hold the
        others back; one that has not delivered yet does (it soon delivers or ends). Records
        held back for the next batch count towards its hold limit (a partition that already
        holds that many stays paused): their partitions are those select keeps with them.
        """
        held_parts = self._held[1]
        counts = np.bincount(held_parts[held_parts >= 0])
        self.buffered = {p: int(counts[p]) for p in np.flatnonzero(counts).tolist()}
        full = {p for p, n in self.buffered.items() if n >= self.hold_limit()}
        live = [p for p in self.owned if p not in self.at_end]
        ahead: set[int] = set()
        if len(live) < 2:
            to_resume = set(self.paused)
        else:
            times = {p: self.stream_time.get(p, 0) for p in self.owned}
            slowest = min(times[p] for p in live)
            ahead = {p for p in live if times[p] > slowest + MAX_PARTITION_SKEW_US}
            resume_below = self.resume_below()
            to_resume = {p for p in self.paused if times[p] <= resume_below} - ahead
        to_resume -= full
        to_pause = ((ahead | full) & self.owned) - self.paused
        if to_pause:
            consumer.pause([TopicPartition(TRANSACTIONS, p) for p in to_pause])
            self.paused |= to_pause
            self._waiting = False  # a paused partition no longer caps the others
        if to_resume:
            consumer.resume([TopicPartition(TRANSACTIONS, p) for p in to_resume])
            self.paused -= set(to_resume)
