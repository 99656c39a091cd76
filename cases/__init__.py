"""The case store: alerts and flagged decisions grouped into investigator cases, in SQL.

``models.py`` declares the tables (SQLAlchemy 2.x typed ORM), ``migrations/`` evolves them
(Alembic, batch mode on SQLite), ``engine.py`` opens one URL (SQLite, PostgreSQL or a
MySQL-protocol store such as TiDB) and migrates it, ``store.py`` is the public API
(:class:`~cases.store.CaseStore`) the intake and the console use; ``views.py`` holds the
plain records it answers with. docs/cases.md describes the data model.
"""
