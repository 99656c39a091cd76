"""Garbage-collector settings for the long-running processes (serving workers, the stream).

Both hold ~470k objects after start-up (Feast, MLflow, XGBoost, pandas, pyarrow) and then
allocate hundreds of thousands of short-lived containers per batch. With CPython's defaults a
young collection runs every 700 net allocations and a full one walks the whole heap:

- serving: full collections stopped every request for ~300 ms (the insights p99 went
  303 → 47.6 ms once start-up objects were frozen); a 10,000-transaction batch paid ~160 ms
  of collections with 700 young objects and ~80 ms with 10,000;
- the stream processor: 5.9 s of collections (4,110 young, 374 middle, 12 full) on a
  300,000-event backlog with the defaults, 2.0 s with 50,000 young objects and the start-up
  heap frozen (measured with ``gc.callbacks``); later, with the batch path leaner, 0.8–0.9 s
  (119 young collections of ~5 ms), and 0.3 s once each batch runs inside :func:`paused`
  (84 young collections of ~1.3 ms: the batch's temporaries are gone before one runs).

Frozen objects are never scanned again (and never freed if they become cyclic garbage,
which start-up state does not). A larger young generation means fewer, longer pauses: about
0.5 ms at 10,000 objects, 3 ms at 50,000 here.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SERVING_YOUNG_OBJECTS = 10_000  # a request's latency feels each young collection
STREAM_YOUNG_OBJECTS = 50_000  # a batch takes tens of milliseconds: throughput matters

_frozen = False
_pause_lock = threading.Lock()
_pausing = 0  # blocks inside paused() right now
_resume = False  # whether automatic collection was on when the first of them began


def settle(young_objects: int) -> None:
    """Freeze what start-up allocated (once per process) and collect the young generation
    every ``young_objects`` net allocations. Call it once the process has built its state."""
    global _frozen
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True
    gc.set_threshold(young_objects, 20, 10)


@contextmanager
def paused() -> Iterator[None]:
    """No automatic collection while the block runs: for bulk work whose objects all die
    when it ends (a scored batch of 10,000 transactions allocates about a million
    containers and spent ~28 ms of its ~420 in young collections that freed nothing).

    The process-wide switch is shared by overlapping blocks (threads): collection resumes,
    as it was before the first, when the last one ends. A block that ends while others still
    run collects the young generation itself, so back-to-back overlapping blocks cannot keep
    cyclic garbage alive indefinitely."""
    global _pausing, _resume
    with _pause_lock:
        if _pausing == 0:
            _resume = gc.isenabled()
            gc.disable()
        _pausing += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pausing -= 1
            last = _pausing == 0
            if last and _resume:
                gc.enable()
        if not last:
            gc.collect(0)
