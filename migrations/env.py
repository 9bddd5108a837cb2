"""Alembic environment: the app's metadata, and the connection or URL the app gives.

`flask --app wsgi db upgrade` and the gunicorn master call `app.store.migrate.upgrade`,
which hands a connection in `config.attributes["connection"]`. Run by hand
(`alembic -c migrations/alembic.ini upgrade head`), it reads DATABASE_URL (or DATABASE_URL_FILE).
"""

from __future__ import annotations

import os

from alembic import context

import config as settings
from app.store.db import make_engine
from app.store.schema import metadata

config = context.config
target_metadata = metadata


def _database_url() -> str | None:
    """DATABASE_URL, or the content of DATABASE_URL_FILE, as the service reads them."""
    try:
        return settings.secret_files(os.environ).get("DATABASE_URL") or os.environ.get("DATABASE_URL")
    except settings.ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite changes tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url") or _database_url()
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = _database_url()
    if not url:
        raise SystemExit("error: DATABASE_URL is not set (or use: flask --app wsgi db upgrade)")
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
