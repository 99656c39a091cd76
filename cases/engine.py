"""One URL → an engine the case store can write from several processes, and its migration.

- SQLite (``sqlite:///path``, the embedded default under the var dir): WAL mode (readers do
  not block the writer), a busy timeout (a writer waits for the other instead of failing
  with "database is locked"), foreign keys on, and every writing transaction
  ``BEGIN IMMEDIATE``: it takes the write lock at its start, so two workers queue on the
  busy timeout rather than deadlock when both read and then try to write. A read-only
  session (``READS``) begins deferred: it reads its snapshot and never waits on a writer.
- PostgreSQL (``postgresql+psycopg://``) and MySQL-protocol stores such as TiDB or MariaDB
  (``mysql+pymysql://``): a connection pool with pre-ping; migrations take a database lock
  (an advisory lock, ``GET_LOCK``) so two workers starting together migrate once.

:func:`migrate` runs Alembic's ``upgrade head`` with the scripts shipped in
``cases/migrations`` (batch mode on SQLite, which cannot ALTER most things in place).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from kestrel.errors import ConfigError, ServiceUnavailable

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BACKENDS = ("sqlite", "postgresql", "mysql")
MYSQL_LOCK = "kestrel_cases_migrate"
MIGRATE_LOCK_SECONDS = 60


def backend_of(url: str) -> str:
    """``sqlite``, ``postgresql`` or ``mysql``; ConfigError for anything else."""
    try:
        name = make_url(url).get_backend_name()
    except ArgumentError:
        raise ConfigError("KESTREL_CASE_STORE_URL is not a database URL: give e.g. "
                          "sqlite:///var/cases.db, postgresql+psycopg://user@host/db or "
                          "mysql+pymysql://user@host/db") from None
    if name == "mariadb":
        return "mysql"
    if name not in BACKENDS:
        raise ConfigError(f"KESTREL_CASE_STORE_URL names a {name!r} database; the case store "
                          "runs on SQLite, PostgreSQL (postgresql+psycopg://) or a "
                          "MySQL-protocol store such as TiDB (mysql+pymysql://)")
    return name


CONNECT_TIMEOUT_S = 3
_READ_OPTION = "kestrel_read_only"
READS = {_READ_OPTION: True}
"""Execution options of a read-only session (``engine.execution_options(**READS)``): on SQLite
its transaction begins deferred, without the write lock; elsewhere they change nothing."""


def make_engine(url: str, busy_timeout_ms: int = 5000) -> Engine:
    """The engine for ``url``, set up for concurrent writers (see the module doc)."""
    backend = backend_of(url)
    if backend != "sqlite":
        # a server that does not answer fails a connection within CONNECT_TIMEOUT_S instead
        # of the operating system's minutes: the console answers 503, the intake retries
        return create_engine(url, pool_pre_ping=True, pool_recycle=3600,
                             connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # the driver's own BEGIN off: ours is IMMEDIATE
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # a writer takes the write lock at its start (two writers queue on the busy timeout
        # instead of failing on a lock upgrade); a read (READS) takes none: in WAL mode it
        # reads its snapshot while a writer writes, and never waits behind one
        read = conn.get_execution_options().get(_READ_OPTION, False)
        conn.exec_driver_sql("BEGIN" if read else "BEGIN IMMEDIATE")

    return engine


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision`` (``upgrade head`` by default); idempotent."""
    cfg = alembic_config()
    backend = backend_of(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        _lock(conn, backend)
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        finally:
            if backend == "mysql":  # GET_LOCK is the session's, not the transaction's
                conn.exec_driver_sql(f"SELECT RELEASE_LOCK('{MYSQL_LOCK}')")


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _lock(conn: Any, backend: str) -> None:
    """One migrator at a time (SQLite: BEGIN IMMEDIATE already is that lock)."""
    if backend == "postgresql":
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(310001)")
    elif backend == "mysql":
        got = conn.exec_driver_sql(
            f"SELECT GET_LOCK('{MYSQL_LOCK}', {MIGRATE_LOCK_SECONDS})").scalar()
        if got != 1:
            raise ServiceUnavailable(
                f"another process has held the case store's migration lock for "
                f"{MIGRATE_LOCK_SECONDS} s; let it finish (or end it), then start again")
