"""CaseStore: the case store's public API, for the intake and the console.

- **Intake** (:meth:`CaseStore.add_alert`, :meth:`add_decision`): an idempotent upsert keyed
  by ``alert_id`` / ``txn_id`` — the same record twice is one alert — that joins the
  customer's open case or opens one (one open case per customer, enforced by a unique
  column, models.py). A race between two workers is settled by the database: the loser's
  transaction fails on a unique key and is run again, and then finds the winner's rows.
- **Reads**: :meth:`get` (a case with its alerts, evidence, notes, history and actions),
  :meth:`queue` (filters: status, rule, score band, assignee, age; priority order; counts).
- **Actions**: assign, note, escalate, close with an outcome, reopen, SAR, label. Each one
  carries the ``version`` its caller read; a stale one raises :class:`Conflict` (HTTP 409)
  and changes nothing. Each one appends to the action log in the same transaction.
- **Retention** (:meth:`prune`): closed cases older than the retention go, with their alerts
  and evidence; open or escalated cases and cases with a SAR are never pruned.
- **Listings** for the API: :meth:`alerts` (``GET /v1/alerts``) and :meth:`open_alerts` (the
  insights' ``open_alerts``: one indexed query), and :meth:`label_via_api` (``POST
  /v1/labels`` with an ``alert_id``: the verdict in the case's action log).

The store migrates its database to the newest schema when it starts (``migrate=True``).
A database that does not answer (connection refused or lost, a lock wait that timed out) is
:class:`~kestrel.errors.CaseStoreUnavailable` from every method (HTTP 503 with Retry-After);
:meth:`reachable` gives the same translation to a caller's own SQL.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Select, bindparam, delete, func, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, selectinload, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from cases import listing
from cases.engine import READS, make_engine, migrate
from cases.models import (
    OPEN_STATUSES,
    OUTCOMES,
    STATUSES,
    Action,
    Case,
    CaseAlert,
    Evidence,
    LabelOutbox,
    Note,
    StatusChange,
    utcnow,
)
from cases.records import Flag, check_id, check_text, flag_of_alert, flag_of_decision
from cases.views import (
    AlertPage,
    CaseSummary,
    CaseView,
    Intake,
    ListedAlert,
    Pruned,
    QueuePage,
    summary_of,
    view_of,
)
from kestrel.errors import CaseStoreUnavailable, Conflict, NotFound
from kestrel.settings import Settings

INTAKE_ACTOR = "kestrel-intake"
_OPEN_CASE = select(Case.id).where(Case.open_customer_id == bindparam("customer"))
NOTE_MAX_CHARS = 10_000
UPSERT_TRIES = 5
OPEN_ALERTS_LIMIT = 100  # the insights list at most this many of a case's newest alerts
P = ParamSpec("P")
R = TypeVar("R")


def unavailable(url: str, exc: BaseException) -> CaseStoreUnavailable | None:
    """The CaseStoreUnavailable a connection-level SQL error means (``url`` is shown without
    its password); None for any other error (a constraint, a bug: not the database's
    absence)."""
    if isinstance(exc, DBAPIError) and not isinstance(exc, IntegrityError) and (
            isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated):
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
        return CaseStoreUnavailable(
            f"the case store at {url} is unreachable ({type(exc).__name__}: {cause}); check "
            "that the database is up and that KESTREL_CASE_STORE_URL points at it. Scoring "
            "is unaffected and the case intake catches up once it answers; retry shortly")
    return None


def _guarded(method: Callable[Concatenate[CaseStore, P], R]
             ) -> Callable[Concatenate[CaseStore, P], R]:
    """The method, with connection-level SQL errors raised as CaseStoreUnavailable."""
    @functools.wraps(method)
    def call(self: CaseStore, *args: P.args, **kwargs: P.kwargs) -> R:
        with self.reachable():
            return method(self, *args, **kwargs)
    return call


class CaseStore:
    """The case store on one database URL (see the module doc)."""

    def __init__(self, url: str, *, busy_timeout_ms: int = 5000,
                 retention_days: int = 365, migrate_on_start: bool = True):
        self.engine = make_engine(url, busy_timeout_ms)
        self.url = self.engine.url.render_as_string(hide_password=True)
        self.retention_days = retention_days
        if migrate_on_start:
            try:
                with self.reachable():
                    migrate(self.engine)
            except BaseException:
                self.engine.dispose()
                raise
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # reads begin without taking SQLite's write lock (cases/engine.py READS)
        self._read_engine = self.engine.execution_options(**READS)
        self._reads = sessionmaker(self._read_engine, expire_on_commit=False)

    @contextmanager
    def reachable(self) -> Iterator[None]:
        """Connection-level SQL errors in the block are raised as CaseStoreUnavailable."""
        try:
            yield
        except DBAPIError as exc:
            down = unavailable(self.url, exc)
            if down is None:
                raise
            raise down from exc

    @_guarded
    def ping(self) -> None:
        """One round trip to the database; CaseStoreUnavailable when it does not answer."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    @classmethod
    def from_settings(cls, settings: Settings) -> CaseStore:
        return cls(settings.case_store, busy_timeout_ms=settings.case_store_busy_timeout_ms,
                   retention_days=settings.case_retention_days)

    def dispose(self) -> None:
        """Close the store's connections."""
        self.engine.dispose()

    # --- intake --------------------------------------------------------------------------
    def add_alert(self, alert: dict[str, Any], now: datetime | None = None) -> Intake:
        """Upsert an `alerts` record (key alert_id) into the customer's open case."""
        return self.add_flag(flag_of_alert(alert), now)

    def add_decision(self, decision: dict[str, Any], now: datetime | None = None) -> Intake:
        """Upsert a flagged decision (key txn_id) into the customer's open case."""
        return self.add_flag(flag_of_decision(decision), now)

    @_guarded
    def add_flag(self, flag: Flag, now: datetime | None = None) -> Intake:
        for _ in range(UPSERT_TRIES):
            try:
                with self._sessions.begin() as s:
                    return _upsert(s, flag, now or utcnow())
            except (IntegrityError, StaleDataError):
                continue  # another worker stored it or opened the case first: look again
        raise Conflict(f"{flag.kind} {flag.key} could not be stored after {UPSERT_TRIES} "
                       "tries against concurrent writers; retry it (the upsert is idempotent)")

    # --- reads ---------------------------------------------------------------------------
    @_guarded
    def get(self, case_id: int) -> CaseView:
        """A case with everything in it; NotFound when there is none."""
        with self._reads() as s:
            case = s.scalar(select(Case).where(Case.id == case_id).options(
                selectinload(Case.alerts).selectinload(CaseAlert.evidence),
                selectinload(Case.notes), selectinload(Case.history),
                selectinload(Case.actions)))
            if case is None:
                raise NotFound(f"no case {case_id}; list the queue for the open ones")
            return view_of(case)

    @_guarded
    def case_of_alert(self, kind: str, key: str) -> int | None:
        """The case an alert (``kind="alert"``, alert_id) or decision (txn_id) is in."""
        with self._reads() as s:
            return s.scalar(select(CaseAlert.case_id).where(CaseAlert.kind == kind,
                                                            CaseAlert.key == key))

    @_guarded
    def case_of_key(self, key: str) -> int | None:
        """The case holding an alert (by alert_id) or else a flagged decision (txn_id)."""
        with self._reads() as s:
            return listing.case_of_key(s, key)

    @_guarded
    def open_case_of(self, customer_id: str) -> CaseSummary | None:
        with self._reads() as s:
            case = s.scalar(select(Case).where(Case.open_customer_id == customer_id))
            return None if case is None else summary_of(case)

    @_guarded
    def cases_of(self, customer_id: str) -> tuple[CaseSummary, ...]:
        """Every case of a customer, newest first (the case page's past cases)."""
        with self._reads() as s:
            rows = s.scalars(select(Case).where(Case.customer_id == customer_id)
                             .order_by(Case.id.desc()))
            return tuple(summary_of(c) for c in rows)

    @_guarded
    def queue(self, *, status: str | None = None, rule: str | None = None,
              min_score: float | None = None, max_score: float | None = None,
              assignee: str | None = None, unassigned: bool = False,
              older_than: timedelta | None = None, now: datetime | None = None,
              limit: int = 50, offset: int = 0) -> QueuePage:
        """Cases matching every filter given, highest score first, then oldest first."""
        if status is not None and status not in STATUSES:
            raise NotFound(f"no status {status!r}; use one of {', '.join(STATUSES)}")
        query = select(Case)
        if rule is not None:
            query = query.where(select(CaseAlert.id).where(
                CaseAlert.case_id == Case.id, CaseAlert.rule == rule).exists())
        if min_score is not None:
            query = query.where(Case.max_score >= min_score)
        if max_score is not None:
            query = query.where(Case.max_score < max_score)
        if unassigned:
            query = query.where(Case.assignee.is_(None))
        elif assignee is not None:
            query = query.where(Case.assignee == assignee)
        if older_than is not None:
            query = query.where(Case.opened_at <= (now or utcnow()) - older_than)
        with self._reads() as s:
            by_status: dict[str, int] = {k: int(n) for k, n in s.execute(_counts(query))}
            if status is not None:
                query = query.where(Case.status == status)
            total = s.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = s.scalars(query.order_by(Case.max_score.is_(None), Case.max_score.desc(),
                                            Case.opened_at, Case.id)
                             .limit(limit).offset(offset))
            return QueuePage(tuple(summary_of(c) for c in rows), total,
                             {k: by_status.get(k, 0) for k in STATUSES})

    @_guarded
    def alerts(self, status: str = "open", offset: int = 0, limit: int = 50) -> AlertPage:
        """Alerts and flagged decisions, newest received first, whose case is ``open``
        (escalated counts as open), ``closed``, or ``all``."""
        statuses = {"open": OPEN_STATUSES, "closed": ("closed",), "all": STATUSES}.get(status)
        if statuses is None:
            raise NotFound(f"no alert status {status!r}; use open, closed or all")
        where = Case.status.in_(statuses)
        with self._reads() as s:
            total = s.scalar(select(func.count(CaseAlert.id)).join(Case).where(where)) or 0
            order = (CaseAlert.received_at.desc(), CaseAlert.id.desc())
            return AlertPage(listing.listed(s, where, order, limit, offset), int(total))

    @_guarded
    def open_alerts(self, customer_id: str) -> tuple[ListedAlert, ...]:
        """The alerts of the customer's open case, newest first (at most
        OPEN_ALERTS_LIMIT); empty when the customer has none. One query on the unique
        open-customer index."""
        with self._read_engine.connect() as conn:  # most customers: no open case, and
            if conn.execute(_OPEN_CASE, {"customer": customer_id}).first() is None:
                return ()  # this costs a third of the listing below (insights' miss path)
        with self._reads() as s:
            return listing.listed(s, Case.open_customer_id == customer_id,
                                  (CaseAlert.id.desc(),), OPEN_ALERTS_LIMIT)

    @_guarded
    def label_via_api(self, alert_id: str, txn_id: str, is_fraud: bool,
                      reason: str | None, *, actor: str) -> int:
        """Record a verdict published by ``POST /v1/labels`` in the action log of the case
        holding ``alert_id`` (an alert's id, or a flagged decision's txn_id); returns the
        case id. No outbox row: the route published the label itself. NotFound when no
        case holds it."""
        check_id("alert_id", alert_id)
        check_id("txn_id", txn_id)
        check_text("reason", reason or "", 500)
        check_text("actor", actor, 256)
        with self._sessions.begin() as s:
            case_id = listing.case_of_key(s, alert_id)
            if case_id is None:
                raise NotFound(f"no alert {alert_id!r} in the case store; list them with "
                               "GET /v1/alerts (or send the label without alert_id)")
            s.add(Action(case_id=case_id, actor=actor, action="label", at=utcnow(),
                         detail={"txn_id": txn_id, "is_fraud": is_fraud, "reason": reason,
                                 "alert_id": alert_id, "via": "api"}))
            return case_id

    @_guarded
    def log_action(self, case_id: int, action: str, *, actor: str,
                   detail: dict[str, Any]) -> None:
        """Append to a case's action log what changes nothing in it (a SAR draft exported):
        no version bump, so nobody's open page goes stale."""
        check_text("actor", actor, 256)
        with self._sessions.begin() as s:
            if s.get(Case, case_id) is None:
                raise NotFound(f"no case {case_id}; list the queue for the open ones")
            s.add(Action(case_id=case_id, actor=actor, action=action, at=utcnow(),
                         detail=detail))

    # --- actions -------------------------------------------------------------------------
    def assign(self, case_id: int, assignee: str | None, *, version: int,
               actor: str) -> CaseSummary:
        """Assign the case (``None``: unassign)."""
        if assignee is not None:
            check_text("assignee", assignee, 256)

        def change(case: Case, now: datetime) -> dict[str, Any]:
            before, case.assignee = case.assignee, assignee
            case.assigned_at = now if assignee is not None else None
            return {"from": before, "to": assignee}
        return self._edit(case_id, version, actor, "assign", change)

    def add_note(self, case_id: int, body: str, *, version: int, actor: str) -> CaseSummary:
        check_text("note", body, NOTE_MAX_CHARS)

        def change(case: Case, now: datetime) -> dict[str, Any]:
            case.notes.append(Note(author=actor, body=body, created_at=now))
            return {"chars": len(body)}
        return self._edit(case_id, version, actor, "note", change)

    def escalate(self, case_id: int, *, version: int, actor: str) -> CaseSummary:
        return self._transition(case_id, version, actor, "escalate", ("open",), "escalated")

    def close(self, case_id: int, outcome: str, *, version: int,
              actor: str) -> CaseSummary:
        """Close with an outcome (one of OUTCOMES); the customer's next alert opens a new
        case."""
        if outcome not in OUTCOMES:
            raise NotFound(f"no outcome {outcome!r}; close with one of {', '.join(OUTCOMES)}")
        return self._transition(case_id, version, actor, "close", OPEN_STATUSES, "closed",
                                outcome)

    def reopen(self, case_id: int, *, version: int, actor: str) -> CaseSummary:
        """Reopen a closed case; Conflict while the customer has another open case."""
        return self._transition(case_id, version, actor, "reopen", ("closed",), "open")

    def mark_sar(self, case_id: int, sar: bool = True, *, version: int,
                 actor: str) -> CaseSummary:
        """Flag the case as reported in a SAR: it is then never pruned."""
        def change(case: Case, now: datetime) -> dict[str, Any]:
            case.sar = sar
            return {"sar": sar}
        return self._edit(case_id, version, actor, "sar", change)

    def label(self, case_id: int, txn_id: str, is_fraud: bool, reason: str | None = None,
              *, version: int, actor: str) -> CaseSummary:
        """Label one transaction of the case: a LabelEvent row in the label outbox, written
        in the same transaction as the action (a relay publishes it to `labels`)."""
        check_id("txn_id", txn_id)
        check_text("reason", reason or "", 500)

        def change(case: Case, now: datetime) -> dict[str, Any]:
            event = {"txn_id": txn_id, "is_fraud": is_fraud, "source": "investigator",
                     "analyst_id": actor, "reason": reason,
                     "labelled_at": now.isoformat().replace("+00:00", "Z")}
            s = _session_of(case)
            s.add(LabelOutbox(case_id=case.id, txn_id=txn_id, payload=event, created_at=now))
            return {"txn_id": txn_id, "is_fraud": is_fraud, "reason": reason}
        return self._edit(case_id, version, actor, "label", change)

    @_guarded
    def unpublished_labels(self, limit: int = 500) -> list[tuple[int, dict[str, Any]]]:
        """Outbox rows not yet published, oldest first: (id, LabelEvent payload)."""
        with self._reads() as s:
            rows = s.execute(select(LabelOutbox.id, LabelOutbox.payload).where(
                LabelOutbox.published_at.is_(None)).order_by(LabelOutbox.id).limit(limit))
            return [(i, dict(p)) for i, p in rows.tuples()]

    @_guarded
    def mark_published(self, ids: list[int], now: datetime | None = None) -> None:
        with self._sessions.begin() as s:
            s.execute(update(LabelOutbox).where(LabelOutbox.id.in_(ids))
                      .values(published_at=now or utcnow()))

    # --- retention -----------------------------------------------------------------------
    @_guarded
    def prune(self, days: int | None = None, now: datetime | None = None) -> Pruned:
        """Delete closed cases (with their alerts, evidence, notes, history and actions)
        closed more than ``days`` ago, and published outbox rows as old; never an open or
        escalated case, never a case with a SAR."""
        cutoff = (now or utcnow()) - timedelta(days=days or self.retention_days)
        with self._sessions.begin() as s:
            doomed = select(Case.id).where(Case.status == "closed", Case.closed_at < cutoff,
                                           Case.sar.is_(False))
            ids = list(s.scalars(doomed))
            for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):
                s.execute(delete(Case).where(Case.id.in_(chunk)))
            outbox = s.execute(delete(LabelOutbox).where(LabelOutbox.published_at < cutoff))
            return Pruned(len(ids), int(getattr(outbox, "rowcount", 0) or 0))

    # --- the edit protocol ---------------------------------------------------------------
    def _transition(self, case_id: int, version: int, actor: str, name: str,
                    allowed: tuple[str, ...], to: str,
                    outcome: str | None = None) -> CaseSummary:
        def change(case: Case, now: datetime) -> dict[str, Any]:
            if case.status not in allowed:
                raise Conflict(f"case {case_id} is {case.status}: it cannot {name} (only a "
                               f"case that is {' or '.join(allowed)}); reload it")
            before = case.status
            case.status, case.outcome = to, outcome
            case.open_customer_id = None if to == "closed" else case.customer_id
            case.closed_at = now if to == "closed" else None
            case.history.append(StatusChange(from_status=before, to_status=to,
                                             outcome=outcome, actor=actor, at=now))
            return {"from": before, "to": to, "outcome": outcome}
        return self._edit(case_id, version, actor, name, change)

    @_guarded
    def _edit(self, case_id: int, version: int, actor: str, name: str,
              change: Callable[[Case, datetime], dict[str, Any]]) -> CaseSummary:
        check_text("actor", actor, 256)
        try:
            with self._sessions.begin() as s:
                case = _locked(s, case_id, version)
                now = utcnow()
                detail = change(case, now)
                case.updated_at = now
                case.actions.append(Action(actor=actor, action=name, detail=detail, at=now))
                s.flush()
                return summary_of(case)
        except StaleDataError:
            raise _stale(case_id, version) from None
        except IntegrityError:
            raise Conflict(f"case {case_id}: its customer has another open case; work that "
                           "one (or close it) before reopening this one") from None


def _locked(s: Session, case_id: int, version: int) -> Case:
    case = s.get(Case, case_id)
    if case is None:
        raise NotFound(f"no case {case_id}; list the queue for the open ones")
    if case.version != version:
        raise _stale(case_id, version, case.version)
    return case


def _stale(case_id: int, seen: int, now: int | None = None) -> Conflict:
    current = f" (it is at version {now})" if now is not None else ""
    return Conflict(f"case {case_id} changed since you read it at version {seen}{current}: "
                    "reload the case and apply your change again")


def _session_of(case: Case) -> Session:
    from sqlalchemy.orm import object_session

    s = object_session(case)
    if s is None:
        raise RuntimeError("a case edit runs inside its session")
    return s


def _counts(query: Select[Any]) -> Select[Any]:
    sub = query.subquery()
    return select(sub.c.status, func.count()).group_by(sub.c.status)


def _upsert(s: Session, flag: Flag, now: datetime) -> Intake:
    known = s.scalar(select(CaseAlert.case_id).where(CaseAlert.kind == flag.kind,
                                                     CaseAlert.key == flag.key))
    if known is not None:
        return Intake(known, created=False, opened_case=False)
    case = s.scalar(select(Case).where(Case.open_customer_id == flag.customer_id))
    opened = case is None
    if case is None:
        case = Case(customer_id=flag.customer_id, open_customer_id=flag.customer_id,
                    status="open", sar=False, rules=[], opened_at=now, updated_at=now)
        case.history.append(StatusChange(from_status=None, to_status="open",
                                         actor=INTAKE_ACTOR, at=now))
        s.add(case)
    alert = CaseAlert(
        kind=flag.kind, key=flag.key, customer_id=flag.customer_id, card_id=flag.card_id,
        rule=flag.rule, score=flag.score, action=flag.action, model_version=flag.model_version,
        decision=flag.decision, features=flag.features, payload=flag.payload,
        event_time=flag.event_time, received_at=now,
        evidence=[Evidence(txn_id=t) for t in flag.evidence_txn_ids])
    case.alerts.append(alert)
    if flag.score is not None and (case.max_score is None or flag.score > case.max_score):
        case.max_score = flag.score
    if flag.rule and flag.rule not in (case.rules or []):
        case.rules = [*(case.rules or []), flag.rule]
    case.updated_at = now
    case.actions.append(Action(actor=INTAKE_ACTOR, action="open" if opened else "join",
                               detail={"kind": flag.kind, "key": flag.key}, at=now))
    s.flush()
    return Intake(case.id, created=True, opened_case=opened)


