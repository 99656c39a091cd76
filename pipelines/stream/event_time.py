"""Event times as µs since the epoch, read with array arithmetic, for the intake
(``Intake.select``, pipelines/stream/intake.py) and the batch decoder.

``TimeLimits`` says which event times the stream takes now (the intake, the gate and the
terminal updates all ask it).

The intake orders records across partitions by event time. It parses each record as it
arrives (pipelines/stream/batch_decode.py ``Parsed``) and reads the parsed times with
``exact_times_us``; a record that does not parse, or whose time is not exactly in the
stream's form, has its ``event_time`` read from the raw JSON here (``event_time_keys`` +
``event_times_us``). Comparing, sorting and taking maxima of 100,000+ time strings per batch
in Python (or as numpy byte strings) cost more than the rest of the intake.

Times in the form the stream itself emits (``2018-04-01T00:00:09.118047Z``, or without the
fraction) are read vectorised; any other form goes through ``datetime.fromisoformat``, as
:mod:`pipelines.stream.records` reads it. A time that cannot be read (absent, garbage, no
offset), or that the processor refuses (before 1970, or dated in the future), is 0: such a
record sorts first and never waits for other partitions — it reaches the decoder (and the
dead-letter topic) in the next batch. This only orders the intake;
every check happens on the decoded event.

``exact_times_us`` (array arithmetic, faster than Arrow's regex match and strptime) keeps
only times exactly as the stream writes them; only those records take the batch decoder's
fast path.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from datetime import datetime

import numpy as np

from kestrel.errors import EventValidationError, FieldError
from kestrel.events import TimeBounds
from kestrel.settings import Settings
from pipelines.stream import records
from pipelines.stream.records import micros

UNREADABLE = 0
_CANONICAL = 27  # len("2018-04-01T00:00:09.118047Z")
_WHOLE_SECOND = 20  # len("2018-04-01T00:00:09Z")
_DIGITS = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
_FRACTION = [20, 21, 22, 23, 24, 25]
_SEPARATORS = {4: b"-", 7: b"-", 10: b"T", 13: b":", 16: b":"}
_US_PER_S = 1_000_000
_MONTH_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int64)
# the first "event_time" member's string value (a value that is not a string: none)
_KEY = re.compile(rb'"event_time"\s*:\s*"([^"]*)"')


def event_time_keys(values: Iterable[bytes]) -> list[bytes]:
    """Each record's raw ``event_time`` string (b"" when it has none), without decoding
    it: one regex search per record (cheaper than ``bytes.find`` and slicing in Python)."""
    search = _KEY.search
    return [m.group(1) if (m := search(value)) else b"" for value in values]


def _number(d: np.ndarray, columns: list[int]) -> np.ndarray:
    out = np.zeros(len(d), np.int64)
    for c in columns:
        out = out * 10 + d[:, c]
    return out


def _days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y = y - (m <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * np.where(m > 2, m - 3, m + 9) + 2) // 5 + d - 1
    return era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468


def _canonical(b: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """µs since the epoch of times in the stream's form, with or without a six-digit
    fraction (``b``: each time's character codes, one row of _CANONICAL columns; a longer
    time is cut, its length says so), and which ones are: that form, a date that exists
    (2018-02-30 is none: a calendar computation would roll it over to 2018-03-02) from year
    1 on, a time of day within 23:59:59. The others' values are meaningless."""
    d = b - ord("0")
    ok = ((lengths == _CANONICAL) & (b[:, 19] == ord(".")) & (b[:, 26] == ord("Z"))
          & np.all((d[:, _FRACTION] >= 0) & (d[:, _FRACTION] <= 9), axis=1)) \
        | ((lengths == _WHOLE_SECOND) & (b[:, 19] == ord("Z")))
    ok &= np.all((d[:, _DIGITS] >= 0) & (d[:, _DIGITS] <= 9), axis=1)
    for col, sep in _SEPARATORS.items():
        ok &= b[:, col] == sep[0]
    year, month, day = _number(d, _DIGITS[:4]), _number(d, [5, 6]), _number(d, [8, 9])
    hour, minute, second = _number(d, [11, 12]), _number(d, [14, 15]), _number(d, [17, 18])
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = _MONTH_DAYS[np.clip(month, 0, 12)] + ((month == 2) & leap)
    ok &= (year >= 1) & (month >= 1) & (month <= 12) & (day >= 1) & (day <= month_days) \
        & (hour <= 23) & (minute <= 59) & (second <= 59)
    fraction = np.where(lengths == _CANONICAL, _number(d, _FRACTION), 0)
    seconds = _days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
    return seconds * _US_PER_S + fraction, ok


def event_times_us(keys: list[bytes], newest_allowed: int | None = None) -> np.ndarray:
    """µs since the epoch of each raw ``event_time`` (:data:`UNREADABLE` when it is none,
    before 1970, or later than ``newest_allowed``: the processor dead-letters such events,
    so they must not hold their partition back, nor cap the others)."""
    n = len(keys)
    out = np.full(n, UNREADABLE, np.int64)
    if not n:
        return out
    raw = np.array(keys, dtype=f"S{_CANONICAL}")  # longer keys are cut; they are not canonical
    b = raw.view(np.uint8).reshape(n, _CANONICAL).astype(np.int64)
    us, ok = _canonical(b, np.fromiter(map(len, keys), np.int64, n))
    out[ok] = us[ok]
    for i in np.flatnonzero(~ok).tolist():
        out[i] = _read(keys[i])
    out[out < 0] = UNREADABLE  # before 1970: dead-lettered too
    if newest_allowed is not None:
        out[out > newest_allowed] = UNREADABLE
    return out


def exact_times_us(times: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """µs since the epoch of decoded ``event_time`` strings, and which of them are exactly
    as ``records.iso`` writes their time (the form of _canonical, the fraction left out
    when it is zero: ``.000000`` is not). Only those may skip the per-record decoder; the
    others' values are meaningless."""
    n = len(times)
    if not n:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    raw = np.array(times, dtype=f"U{_CANONICAL}")  # longer ones are cut: the lengths say so
    b = raw.view(np.uint32).reshape(n, _CANONICAL).astype(np.int64)
    lengths = np.fromiter(map(len, times), np.int64, n)
    us, ok = _canonical(b, lengths)
    ok &= (lengths != _CANONICAL) | (us % _US_PER_S != 0)
    return us, ok


def _read(key: bytes) -> int:
    try:
        at = datetime.fromisoformat(key.decode())
    except (ValueError, UnicodeDecodeError):
        return UNREADABLE
    return UNREADABLE if at.tzinfo is None else micros(at)


class TimeLimits:
    """The event times the stream takes now: kestrel.events.TimeBounds (as everywhere), and
    never before 1970 (the online store's timestamps cannot hold such a time)."""

    def __init__(self, settings: Settings) -> None:
        self.bounds = TimeBounds.from_settings(settings)
        self.earliest_us = max(0, micros(self.bounds.earliest))
        self.ahead_us = int(self.bounds.ahead.total_seconds() * 1_000_000)

    def newest_allowed_us(self) -> int:
        """The latest event time accepted now (the processor's clock plus
        ``event_time_ahead``, by default the allowed lateness). A later one (a producer with
        a wrong clock) would move its partition's stream time so far ahead that on-time
        events after it would count as late."""
        return time.time_ns() // 1000 + self.ahead_us

    def error(self, time_us: int) -> EventValidationError:
        """Why an event time the stream cannot take is refused: outside TimeBounds (before
        ``event_time_earliest``; dated past newest_allowed_us: check the producer's clock),
        or before 1970 (the online store's timestamps cannot hold it; a partition with no
        stream time yet would accept it, and its commit would fail on every restart)."""
        try:
            when = records.iso(time_us)
        except OverflowError:  # 0001-01-01T00:00+01:00 is in year 0 in UTC
            return EventValidationError([FieldError(
                "event_time", "is out of the range of representable UTC times")])
        reason = self.bounds.reason(datetime.fromisoformat(when))
        if reason is None:
            reason = ("is before 1970-01-01, which the online store cannot hold"
                      if time_us < self.earliest_us else
                      "is dated in the future (check the producer's clock)")
        return EventValidationError([FieldError("event_time", f"{when} {reason}")])
