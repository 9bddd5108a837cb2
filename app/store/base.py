"""The one way into the database: an engine, its connections and transactions, and
what a failure becomes.

Every module of the store reads and writes through `Database._read()` and
`Database._write()`: SQLAlchemy connections, transactions begun and ended by
SQLAlchemy (SQLite's `BEGIN IMMEDIATE` for writes, see db.py), database errors turned
into `Unavailable` in one place. A lost connection is SQLAlchemy's to notice and
drop from its pool. On SQLite every write takes the process's write turn
(writer.py) and its one writing connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from .db import display, make_engine, memory_engine
from .errors import Conflict, StoreError, Unavailable, reason
from .schema import metadata
from .writer import WriteTurn


class Database:
    """The database of one process. Thread-safe; make one per process, after fork."""

    def __init__(self, url: str, *, pool_size: int = 8, engine: sa.Engine | None = None):
        self.url = url
        self.engine = engine if engine is not None else make_engine(url, pool_size=pool_size)
        self.dialect = self.engine.dialect.name
        self.postgres = self.dialect == "postgresql"
        self._turn = WriteTurn(self.engine.url.database) if not self.postgres else None
        self._setup()

    def _setup(self) -> None:
        """Each subject's statements, built once (cooperative: every mixin calls super)."""

    @classmethod
    def in_memory(cls):
        """A new, empty database of its own in this process's memory, schema made: for rule
        tests, which run each case on a fresh state without a database file."""
        engine = memory_engine()
        metadata.create_all(engine)
        return cls("sqlite://", engine=engine)

    def __repr__(self) -> str:
        return f"<Store {display(self.url)}>"

    def dispose(self) -> None:
        if self._turn is not None:
            self._turn.close()
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """One short write transaction; failures become `Unavailable` (a unique index's
        refusal `Conflict`)."""
        if self._turn is None:
            with self._errors(), self.engine.connect() as conn, conn.begin():
                yield conn
            return
        with self._turn, self._errors():
            conn = self._turn.connection
            if conn is None or conn.invalidated or conn.closed:
                # SQLite writes are one at a time per process anyway: they keep one connection,
                # which saves the pool round and rereading pages another connection changed.
                conn = self._turn.connection = self.engine.connect().execution_options(sqlite_immediate=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _cursor(self, conn: sa.Connection) -> Iterator:
        """The driver cursor of `conn`, for statements compiled once (sql.Statement), with the
        driver's errors turned into the store's as SQLAlchemy would turn them: a unique
        index's refusal `Conflict`, anything else `Unavailable`, after dropping a connection
        that was lost, with the rest of the pool."""
        dbapi = self.engine.dialect.dbapi
        raw = conn.connection.driver_connection
        cursor = raw.cursor()
        try:
            yield cursor
        except dbapi.IntegrityError as exc:
            raise Conflict(reason(exc)) from exc
        except dbapi.Error as exc:
            if self.engine.dialect.is_disconnect(exc, raw, cursor):
                # As SQLAlchemy does when it sees a lost connection: drop this one, and every
                # other pooled one (a database restart cut them all), so a restart costs one
                # 503, not one per pooled connection. The pooled ones are closed now; those
                # other threads hold are dropped when they give them back.
                conn.invalidate(exc)
                self.engine.dispose()
            raise Unavailable(reason(exc)) from exc
        finally:
            try:
                cursor.close()
            except dbapi.Error:  # a lost connection's cursor
                pass

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self._errors(), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except IntegrityError as exc:
            raise Conflict(reason(exc)) from exc
        except (DBAPIError, PoolTimeout, SQLAlchemyError) as exc:
            raise Unavailable(reason(exc)) from exc
        except self.engine.dialect.dbapi.Error as exc:  # from the driver's own connection (db.py's BEGIN)
            if isinstance(exc, self.engine.dialect.dbapi.IntegrityError):
                raise Conflict(reason(exc)) from exc
            raise Unavailable(reason(exc)) from exc

    def ping(self) -> bool:
        """True when the database answers a query now."""
        try:
            with self._read() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except Unavailable:
            return False
