"""Apply the Alembic migrations in `migrations/` (`flask --app wsgi db upgrade`).

Called by the command, by the gunicorn master before it forks, and by `flask run`.
Several hosts starting at once on one PostgreSQL database are serialised by an
advisory lock, so only one of them changes the schema.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

MIGRATIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "migrations")
#: pg_advisory_lock key held while migrating ("responder" in ASCII, as a number).
_LOCK_KEY = 0x726573706F6E6465


def _config(connection=None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS)
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    return ScriptDirectory.from_config(_config()).get_current_head()


def current(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: sa.Engine, revision: str = "head") -> tuple[str | None, str]:
    """Bring the schema to `revision`; (revision before, revision after)."""
    with engine.connect() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            # A migration may take longer than the 5 s a message's statements get, and so may
            # waiting for another host's migration: no time limits on this connection.
            conn.exec_driver_sql("SET statement_timeout = 0")
            conn.exec_driver_sql("SET lock_timeout = 0")
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({_LOCK_KEY})")
            conn.commit()
        try:
            before = MigrationContext.configure(conn).get_current_revision()
            conn.commit()
            command.upgrade(_config(conn), revision)
            conn.commit()
            after = MigrationContext.configure(conn).get_current_revision()
            conn.commit()
        finally:
            if postgres:
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_LOCK_KEY})")
                conn.exec_driver_sql("RESET statement_timeout")  # back to the pool's defaults
                conn.exec_driver_sql("RESET lock_timeout")
                conn.commit()
    return before, after
