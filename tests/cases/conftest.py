"""The case store's backends for the tests: each test gets its own, freshly made database on
SQLite (a file in a tmp dir), the local PostgreSQL (localhost:5432, trust auth) and the local
MariaDB (127.0.0.1:3306, root without a password; it stands in for TiDB's MySQL protocol),
and drops it afterwards. A server that does not answer fails the test with what to start:
the store must be proven on all three, so none is skipped."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from cases.store import CaseStore

BACKENDS = ("sqlite", "postgresql", "mysql")
SERVERS = {
    "postgresql": "postgresql+psycopg://root@localhost:5432/postgres",
    "mysql": "mysql+pymysql://root@127.0.0.1:3306/",
}
HOW_TO_START = {
    "postgresql": "start the local PostgreSQL (service postgresql start) with a `root` role",
    "mysql": "start the local MariaDB (service mariadb start)",
}


def _server(backend: str) -> Engine:
    engine = create_engine(SERVERS[backend], isolation_level="AUTOCOMMIT")
    try:
        engine.connect().close()
    except OperationalError as exc:
        pytest.fail(f"the {backend} server does not answer at {SERVERS[backend]}: "
                    f"{HOW_TO_START[backend]} ({exc.orig})")
    return engine


def new_database(backend: str, tmp: Path) -> Iterator[str]:
    """A URL of a new, empty database on ``backend``; dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'cases.db'}"
        return
    name = f"kestrel_cases_{uuid.uuid4().hex[:12]}"
    server = _server(backend)
    with server.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        if backend == "postgresql":
            yield f"postgresql+psycopg://root@localhost:5432/{name}"
        else:
            yield f"mysql+pymysql://root@127.0.0.1:3306/{name}"
    finally:
        force = " WITH (FORCE)" if backend == "postgresql" else ""
        with server.connect() as conn:
            conn.execute(text(f"DROP DATABASE {name}{force}"))
        server.dispose()


@pytest.fixture(params=BACKENDS)
def case_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new database's URL, once per backend."""
    yield from new_database(request.param, tmp_path)


@pytest.fixture
def store(case_url: str) -> Iterator[CaseStore]:
    """A CaseStore on a new database, migrated to head."""
    s = CaseStore(case_url, busy_timeout_ms=10_000)
    yield s
    s.dispose()
