"""Alembic's environment for the case store: run by cases.engine.migrate (and so by
CaseStore on start and `kestrel cases migrate`) with a connection it has already opened."""

from __future__ import annotations

from alembic import context

from cases.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the case store's migrations with `kestrel cases migrate` "
                       "(cases.engine.migrate), which passes the connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite cannot ALTER most things: copy-and-move instead
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
