"""Scores in double precision on MySQL / TiDB.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 21:30:00

SQLAlchemy's Float is FLOAT on MySQL/MariaDB/TiDB, single precision: a stored 0.9 reads back
as 0.899999976, so the queue's `min_score=0.9` missed it. SQLite and PostgreSQL already keep
double precision (REAL, double precision): nothing changes there.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = (("cases", "max_score"), ("case_alerts", "score"))


def upgrade() -> None:
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        return
    for table, column in COLUMNS:
        op.alter_column(table, column, type_=mysql.DOUBLE(asdecimal=False),
                        existing_type=sa.Float(), existing_nullable=True)


def downgrade() -> None:
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        return
    for table, column in COLUMNS:
        op.alter_column(table, column, type_=sa.Float(),
                        existing_type=mysql.DOUBLE(asdecimal=False), existing_nullable=True)
