"""The case store and the two threads around it, as one worker runs them.

- :meth:`CaseServices.store`: the case store (cases/, SQL), opened and migrated on first use.
  A database that is down when the service starts does not stop it — scoring never needs the
  case store — and each call tries again until it answers (CaseStoreUnavailable, HTTP 503,
  meanwhile).
- the **case intake** (serving/case_intake.py): topics `alerts` and `decisions` → the store
  (``KESTREL_CASE_INTAKE``);
- the **label relay** (serving/label_relay.py): the store's label outbox → topic `labels`
  (``KESTREL_LABEL_RELAY``).

Readiness (:meth:`readiness`): the intake down waiting to restart (its consumer failed) is a
failed check, as the alert consumer's was; the case store being unreachable and the label
relay's state are *reported*, never checks — a worker that cannot reach SQL, or whose relay
waits out a broker outage in its backoff, still decides payments, so it must stay in the
load balancer (the broker has its own check). The store's reachability is probed at most
every ``PROBE_EVERY_S`` (a probe of an unreachable server waits up to the engine's connect
timeout, cases/engine.py), so a readiness probe answers at once in between.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from cases.store import CaseStore
from kestrel.errors import CaseStoreUnavailable, KestrelError
from kestrel.producer import EventProducer
from kestrel.settings import Settings
from serving.case_intake import CaseIntake
from serving.label_relay import LabelRelay

PROBE_EVERY_S = 5.0


class CaseServices:
    """The case store of one worker, its intake and its label relay (see the module doc)."""

    def __init__(self, settings: Settings, producer: Callable[[], EventProducer],
                 invalidate: Callable[[str], None]):
        self.settings = settings
        self.intake: CaseIntake | None = None
        self.relay: LabelRelay | None = None
        self._producer = producer
        self._invalidate = invalidate
        self._store: CaseStore | None = None
        self._lock = threading.Lock()
        self._probe: tuple[float, dict[str, Any]] | None = None  # (monotonic, status)

    def store(self) -> CaseStore:
        """The case store; CaseStoreUnavailable while its database does not answer."""
        store = self._store
        if store is not None:
            return store
        with self._lock:
            if self._store is None:
                try:
                    self._store = CaseStore.from_settings(self.settings)
                    self._probe = None  # it answers now: readiness probes afresh
                except CaseStoreUnavailable:
                    raise
                except OSError as exc:  # e.g. the SQLite file's directory cannot be made
                    raise CaseStoreUnavailable(
                        f"the case store could not be opened ({exc}); check "
                        "KESTREL_CASE_STORE_URL and that its place is writable") from exc
            return self._store

    def start(self) -> None:
        if self.settings.case_intake:
            self.intake = CaseIntake(self.settings, self.store, self._producer(),
                                     invalidate=self._invalidate)
            self.intake.start()
        if self.settings.label_relay:
            self.relay = LabelRelay(self.settings, self.store)
            self.relay.start()

    def label_written(self) -> None:
        """A label went into the outbox: publish it now rather than at the relay's next
        idle wake-up."""
        if self.relay is not None:
            self.relay.wake()

    def readiness(self) -> tuple[dict[str, bool], dict[str, Any]]:
        """(checks, details): the threads' checks, and what readiness reports beside them."""
        intake, relay = self.intake, self.relay
        checks = {
            # waiting for the store is not a failure of this worker (see the module doc)
            "case_intake": intake is None or intake.healthy
            or intake.state == "waiting_for_store",
        }
        details = {"case_intake": intake.status() if intake is not None else None,
                   "label_relay": relay.status() if relay is not None else None,
                   "case_store": self.probe()}
        return checks, details

    def probe(self) -> dict[str, Any]:
        """Whether the case store answers, at most every PROBE_EVERY_S."""
        now = time.monotonic()
        cached = self._probe
        if cached is not None and now - cached[0] < PROBE_EVERY_S:
            return cached[1]
        try:
            self.store().ping()
            status: dict[str, Any] = {"reachable": True, "error": None}
        except KestrelError as exc:  # unreachable, or not configured (KESTREL_ENV=prod)
            status = {"reachable": False, "error": str(exc)}
        self._probe = (now, status)
        return status

    def stop(self) -> None:
        for thread in (self.intake, self.relay):
            if thread is not None:
                thread.stop()
        if self._store is not None:
            self._store.dispose()
