"""What replay protection costs on disk: bytes per message of table `seen`, SQLite and PostgreSQL.

    .venv/bin/python bench/seen_size.py [MESSAGES] [POSTGRES_ADMIN_URL]

Each message leaves two rows, written as the service writes them (random keys, days in
order over REPLAY_DAYS): its MessageUUID and its signature nonce (Plivo's V2 and V3 headers
carry one nonce). The table and its index on `day` are measured after the inserts: SQLite
from the file's pages, PostgreSQL with pg_total_relation_size (heap, primary key, index on day).
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile

import sqlalchemy as sa

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from app.store import migrate, seen_key
from app.store.db import make_engine, parse_url

BATCH = 2000
FIRST_DAY = 20_000


def rows(messages: int):
    """(key, digest, day) rows in the order the service writes them, a batch at a time."""
    per_day = max(1, messages // 400)
    batch = []
    for i in range(messages):
        day = FIRST_DAY + i // per_day
        batch.append((seen_key("uuid", f"{secrets.token_hex(16)}"), None, day))
        batch.append((seen_key("nonce", f"{secrets.randbelow(10 ** 20):020d}"), secrets.token_bytes(16), day))
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def fill(engine: sa.Engine, messages: int) -> None:
    migrate.upgrade(engine)
    insert = sa.text("INSERT INTO seen (key, digest, day) VALUES (:k, :d, :day)")
    for batch in rows(messages):
        with engine.begin() as conn:
            conn.execute(insert, [{"k": k, "d": d, "day": day} for k, d, day in batch])


def sqlite_bytes(messages: int) -> int:
    with tempfile.TemporaryDirectory() as folder:
        engine = make_engine(f"sqlite:///{folder}/size.sqlite3", pool_size=1)
        try:
            with engine.connect() as conn:
                empty = _sqlite_pages(conn)
            fill(engine, messages)
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                return _sqlite_pages(conn) - empty
        finally:
            engine.dispose()


def _sqlite_pages(conn) -> int:
    count = conn.exec_driver_sql("PRAGMA page_count").scalar()
    free = conn.exec_driver_sql("PRAGMA freelist_count").scalar()
    return (count - free) * conn.exec_driver_sql("PRAGMA page_size").scalar()


def postgres_bytes(admin_url: str, messages: int) -> int:
    name = f"responder_seen_size_{os.getpid()}"
    admin = sa.create_engine(parse_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine = make_engine(parse_url(admin_url).set(database=name).render_as_string(hide_password=False), pool_size=1)
    try:
        fill(engine, messages)
        with engine.connect() as conn:
            conn.commit()
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE seen")
            return conn.exec_driver_sql("SELECT pg_total_relation_size('seen')").scalar()
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def main() -> None:
    messages = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    admin_url = sys.argv[2] if len(sys.argv) > 2 else "postgresql://postgres@127.0.0.1:5432/test"
    print(f"table seen, {messages} messages (a MessageUUID and a nonce each, {2 * messages} rows):")
    size = sqlite_bytes(messages)
    print(f"  SQLite:     {size / 1e6:8.1f} MB, {size / messages:6.1f} bytes per message")
    try:
        size = postgres_bytes(admin_url, messages)
    except sa.exc.OperationalError as exc:
        print(f"  PostgreSQL: skipped ({str(exc).splitlines()[0]})")
        return
    print(f"  PostgreSQL: {size / 1e6:8.1f} MB, {size / messages:6.1f} bytes per message")


if __name__ == "__main__":
    main()
