"""The case store's tables, declared once (SQLAlchemy 2.x typed ORM).

A **case** groups what flagged one customer: stream rule **alerts** (key ``alert_id``) and
flagged **decisions** (key ``txn_id``), each with its **evidence** transactions (txn ids:
tokens, never card numbers). A customer has at most one case that is not closed: the column
``open_customer_id`` holds the customer id while the case is open or escalated and NULL once
it is closed, and is unique, so the database itself refuses a second open case (NULLs do not
collide on SQLite, PostgreSQL or MySQL/TiDB). Every edit bumps ``version``
(SQLAlchemy's ``version_id_col``): an edit made from a stale read fails instead of
overwriting another analyst's.

Around a case: its **notes**, its **status history** (every change of status and outcome),
the **action log** (every analyst or intake action, with what changed), and the **label
outbox** (a label written with the case's edit in one transaction; a relay publishes it to
`labels` and stamps ``published_at``, issue 31 item 3).

Times are stored as naive UTC (``UtcDateTime``) so the three backends agree, to the
microsecond (``DATETIME(6)`` on MySQL/TiDB, whose plain DATETIME keeps whole seconds).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator, TypeEngine

from kestrel.contract import ID_MAX_LENGTH

STATUSES = ("open", "escalated", "closed")
OPEN_STATUSES = ("open", "escalated")
OUTCOMES = ("confirmed_fraud", "false_positive", "needs_more_information")
KINDS = ("alert", "decision")  # a stream rule's alert (key alert_id) or a decision (txn_id)
ID = String(ID_MAX_LENGTH)
# a score: FLOAT is single precision on MySQL/TiDB (a stored 0.9 then fails `>= 0.9`)
SCORE = Float().with_variant(mysql.DOUBLE(asdecimal=False), "mysql", "mariadb")
SUBJECT = String(256)  # who acted, as the identity provider names them

# one naming convention, so migrations name constraints the same on every backend
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A UTC instant: stored naive (in UTC), read back aware. A naive value is refused."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):  # DATETIME alone keeps whole seconds
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"a time without a timezone is ambiguous: {value!r}; give UTC")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None,
                             dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Case(Base):
    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(ID, index=True)
    open_customer_id: Mapped[str | None] = mapped_column(ID, unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    outcome: Mapped[str | None] = mapped_column(String(32))
    sar: Mapped[bool] = mapped_column(Boolean, default=False)
    assignee: Mapped[str | None] = mapped_column(SUBJECT, index=True)
    assigned_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    max_score: Mapped[float | None] = mapped_column(SCORE, index=True)
    rules: Mapped[list[str]] = mapped_column(JSON, default=list)  # rules of its alerts
    opened_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    version: Mapped[int] = mapped_column(Integer)

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 (SQLAlchemy's own dict)

    alerts: Mapped[list[CaseAlert]] = relationship(
        back_populates="case", cascade="all, delete-orphan", order_by="CaseAlert.id")
    notes: Mapped[list[Note]] = relationship(cascade="all, delete-orphan", order_by="Note.id")
    history: Mapped[list[StatusChange]] = relationship(
        cascade="all, delete-orphan", order_by="StatusChange.id")
    actions: Mapped[list[Action]] = relationship(
        cascade="all, delete-orphan", order_by="Action.id")


class CaseAlert(Base):
    """One alert or flagged decision in a case, with what flagged it, as received."""

    __tablename__ = "case_alerts"
    # (case_id, rule): the queue's rule filter is answered from the index alone, without
    # reading each alert row (and its JSON payload) to test the rule
    __table_args__ = (UniqueConstraint("kind", "key", name="uq_case_alerts_kind_key"),
                      Index("ix_case_alerts_case_id_rule", "case_id", "rule"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(ID)  # alert_id of an alert, txn_id of a decision
    customer_id: Mapped[str] = mapped_column(ID)
    card_id: Mapped[str | None] = mapped_column(ID)
    rule: Mapped[str | None] = mapped_column(String(64), index=True)
    score: Mapped[float | None] = mapped_column(SCORE)
    action: Mapped[str | None] = mapped_column(String(16))
    model_version: Mapped[str | None] = mapped_column(String(64))
    decision: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # score, reasons, explanation
    features: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the vector that was scored
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # the record as received
    event_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)

    case: Mapped[Case] = relationship(back_populates="alerts")
    evidence: Mapped[list[Evidence]] = relationship(
        cascade="all, delete-orphan", order_by="Evidence.id")


class Evidence(Base):
    """One transaction (by txn_id) an alert or decision rests on."""

    __tablename__ = "case_evidence"
    __table_args__ = (UniqueConstraint("alert_id", "txn_id", name="uq_case_evidence_alert_txn"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("case_alerts.id", ondelete="CASCADE"))
    txn_id: Mapped[str] = mapped_column(ID, index=True)


class Note(Base):
    __tablename__ = "case_notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    author: Mapped[str] = mapped_column(SUBJECT)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class StatusChange(Base):
    __tablename__ = "case_status_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str | None] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(SUBJECT)
    at: Mapped[datetime] = mapped_column(UtcDateTime)


class Action(Base):
    """The analyst action log: who did what to a case, when, with what detail."""

    __tablename__ = "case_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    actor: Mapped[str] = mapped_column(SUBJECT)
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(UtcDateTime)


class LabelOutbox(Base):
    """A label to publish to `labels`, written in the transaction that made it; the relay
    (issue 31 item 3) publishes unpublished rows in id order and sets ``published_at``."""

    __tablename__ = "label_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[int | None] = mapped_column(
        ForeignKey("cases.id", ondelete="SET NULL"), index=True)
    txn_id: Mapped[str] = mapped_column(ID)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # the LabelEvent as published
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)


class ConsoleSession(Base):
    """A signed-in investigator console session, kept by the server (serving/console/): the
    browser holds only its random id in an HttpOnly cookie; the table keeps the id's SHA-256,
    never the id itself nor the token that opened it. Sign-out sets ``revoked_at``."""

    __tablename__ = "console_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(SUBJECT)
    role: Mapped[str] = mapped_column(String(32))
    client: Mapped[str] = mapped_column(String(128))
    csrf_token: Mapped[str] = mapped_column(String(64))  # the forms' token, per session
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
