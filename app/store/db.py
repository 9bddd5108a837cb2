"""Engines for `DATABASE_URL`: SQLite (WAL, busy timeout, foreign keys) or PostgreSQL (psycopg 3).

Made once per process (after gunicorn forks: engines and their pools must
never cross a fork), never per request.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

#: How long a SQLite writer waits for another process's write lock, and a PostgreSQL
#: statement or lock at most: well under the 8 s Plivo waits for an answer.
BUSY_TIMEOUT_MS = 5000
CONNECT_TIMEOUT_S = 3


class DatabaseUrlError(ValueError):
    """`DATABASE_URL` cannot be used; the message is one line naming it."""


def parse_url(raw: str) -> URL:
    """A SQLAlchemy URL from `DATABASE_URL`; `postgresql://` and `postgres://` mean psycopg 3."""
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError) as exc:
        raise DatabaseUrlError(f"DATABASE_URL is not a database URL ({exc}): "
                               "use sqlite:////path/to/file.sqlite3 or postgresql://user@host/dbname") from None
    backend, _, driver = url.drivername.partition("+")
    if backend == "postgres":
        backend = "postgresql"
    if backend == "postgresql":
        if driver not in ("", "psycopg"):
            raise DatabaseUrlError(f"DATABASE_URL: driver {driver!r} is not installed; use postgresql:// (psycopg 3)")
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise DatabaseUrlError(f"DATABASE_URL: driver {driver!r} is not installed; use sqlite:///path")
        if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
            raise DatabaseUrlError("DATABASE_URL: SQLite needs a file (sqlite:////path/to/file.sqlite3), "
                                   "shared by every worker; an in-memory database is not")
        if url.query:
            raise DatabaseUrlError(f"DATABASE_URL: SQLite takes no options here (got ?{'&'.join(url.query)}); "
                                   "the service sets what it needs")
        return url.set(drivername="sqlite+pysqlite")
    raise DatabaseUrlError(f"DATABASE_URL: {backend!r} databases are not supported; use sqlite or postgresql")


def _unwritable(path: str) -> str | None:
    """Why this process cannot write the SQLite file `path` (SQLite also writes its journal
    beside it), or None. A read-only root filesystem or an image run as another user id
    (OpenShift: an arbitrary one, in group 0) ends here rather than at the first write."""
    directory = os.path.dirname(path)
    if os.access(directory, os.W_OK | os.X_OK) and (not os.path.exists(path) or os.access(path, os.W_OK)):
        return None
    writable = os.access(directory, os.W_OK | os.X_OK)
    what = f"the SQLite file {path}" if writable else f"the folder {directory} of the SQLite file"
    return (f"DATABASE_URL: {what} is not writable by this user (uid {os.getuid()}, gid {os.getgid()}): "
            "mount a writable volume there (any user id in group 0 can write it after chgrp 0 and chmod g=u), "
            "or set DATABASE_URL to a database this user can write")


def make_engine(raw: str, *, pool_size: int = 8) -> sa.Engine:
    """An engine for `raw` (DATABASE_URL). Connects lazily: nothing is opened here."""
    url = parse_url(raw)
    if url.get_backend_name() == "sqlite":
        directory = os.path.dirname(os.path.abspath(url.database))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise DatabaseUrlError(f"DATABASE_URL: cannot make the folder {directory} for the SQLite file: "
                                   f"{exc.strerror or exc}") from None
        problem = _unwritable(os.path.abspath(url.database))
        if problem is not None:
            raise DatabaseUrlError(problem)
        engine = sa.create_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_timeout=BUSY_TIMEOUT_MS / 1000,
            connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            hide_parameters=True,  # an error's text would quote them: numbers and message texts
        )
        _sqlite_events(engine)
        return engine
    return sa.create_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_timeout=BUSY_TIMEOUT_MS / 1000,
        pool_recycle=1800, hide_parameters=True,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": "responder",
            "options": f"-c statement_timeout={BUSY_TIMEOUT_MS} -c lock_timeout={BUSY_TIMEOUT_MS}",
        },
    )


def _sqlite_events(engine: sa.Engine) -> None:
    """WAL, a busy timeout, foreign keys; transactions begun by us, IMMEDIATE when they write.

    pysqlite's own transaction handling would BEGIN lazily (DEFERRED) and a reader
    that later writes can then fail at once with "database is locked"; a write
    transaction takes the write lock at BEGIN instead and waits for it.
    """

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we send BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # WAL + NORMAL: a commit survives the process being killed (not a power cut),
        # at a fraction of FULL's fsync cost.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn):
        # On the driver's connection: this runs for every transaction, and a statement through
        # SQLAlchemy's execution costs several times the BEGIN itself.
        immediate = conn.get_execution_options().get("sqlite_immediate")
        conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")


def memory_engine() -> sa.Engine:
    """An engine on a new in-memory SQLite database, private to it: one connection that every
    checkout shares (the database lives as long as that connection), set up as files are."""
    engine = sa.create_engine("sqlite+pysqlite://", poolclass=StaticPool, hide_parameters=True,
                              connect_args={"check_same_thread": False})
    _sqlite_events(engine)
    return engine


def check_connection(engine: sa.Engine) -> None:
    """Connect once; raise DatabaseUrlError with one line naming DATABASE_URL if that fails."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure to connect is a refusal to start
        said = str(getattr(exc, "orig", None) or exc).strip()
        reason = said.splitlines()[0] if said and str(exc).strip() else type(exc).__name__
        raise DatabaseUrlError(f"DATABASE_URL: cannot connect to the database: {reason}") from None


def display(url: str | URL) -> str:
    """The URL with its password hidden, for logs and messages."""
    try:
        return parse_url(str(url) if isinstance(url, URL) else url).render_as_string(hide_password=True)
    except DatabaseUrlError:
        return "(invalid URL)"
