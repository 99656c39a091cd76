"""The migrations produce exactly the models' schema, on every backend, and are idempotent."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from cases.engine import current_revision, make_engine, migrate
from cases.models import Base

pytestmark = pytest.mark.integration


def test_migrations_build_exactly_the_models(case_url: str) -> None:
    engine = make_engine(case_url)
    try:
        migrate(engine)
        migrate(engine)  # a second start changes nothing
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, Base.metadata) == []
        assert current_revision(engine) == "0004"
        assert set(inspect(engine).get_table_names()) == {
            *Base.metadata.tables, "alembic_version"}
    finally:
        engine.dispose()
