"""Operators: the people who may sign in to the operator page, by name, with a password hash.

Only hashes come in and go out (app/operators.py makes and checks them); the password itself
never reaches the store.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from .errors import Exists
from .schema import operators, signin_failures
from .values import as_utc


class Operators:
    """Operators (a mixin of Store)."""

    def _setup(self) -> None:
        super()._setup()
        insert = pg_dialect.insert if self.postgres else sqlite_dialect.insert
        # A name taken is a plain answer (no row), not an IntegrityError that aborts the transaction.
        self._insert_operator = (insert(operators).on_conflict_do_nothing(index_elements=["name"])
                                 .returning(operators.c.id))

    def add_operator(self, name: str, password_hash: str, now: datetime | None = None) -> None:
        """Add an operator; `Exists` when one has that name already."""
        with self._write() as conn:
            added = conn.execute(self._insert_operator, {"name": name, "password_hash": password_hash,
                                                         "created_at": as_utc(now)}).first()
        if added is None:
            raise Exists(f"an operator named {name!r} exists already")

    def remove_operator(self, name: str) -> bool:
        """Remove the operator `name`; False if there was none."""
        with self._write() as conn:
            return conn.execute(operators.delete().where(operators.c.name == name)).rowcount > 0

    def list_operators(self) -> list[tuple[str, datetime]]:
        """(name, created_at as naive UTC) of every operator, by name."""
        with self._read() as conn:
            rows = conn.execute(sa.select(operators.c.name, operators.c.created_at).order_by(operators.c.name))
            return [(name, created_at) for name, created_at in rows]

    def operator_hash(self, name: str) -> str | None:
        """The password hash of the operator `name`, or None when there is none."""
        with self._read() as conn:
            return conn.execute(sa.select(operators.c.password_hash)
                                .where(operators.c.name == name)).scalar_one_or_none()

    def count_operators(self) -> int:
        with self._read() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(operators)).scalar_one()

    def has_operators(self) -> bool:
        """True once an operator exists: the operator page is on, and SECRET_KEY required."""
        with self._read() as conn:
            return conn.execute(sa.select(sa.literal(1)).select_from(operators).limit(1)).first() is not None

    def record_failure(self, name: str, address: str, at: datetime, keep: timedelta) -> None:
        """Record a failed sign-in for `name` from `address` at `at`, and delete the failures
        older than `keep` before it (the limit window: nothing older is ever counted).

        `name` is what was typed (cut to 64 characters), whether or not such an operator
        exists, so guessing names is limited like guessing passwords.
        """
        at = as_utc(at)
        with self._write() as conn:
            conn.execute(signin_failures.delete().where(signin_failures.c.at < at - keep))
            conn.execute(signin_failures.insert(), {"name": name[:64], "address": address[:64], "at": at})

    def failures_since(self, name: str, address: str, since: datetime) -> tuple[int, int]:
        """(failures for `name`, failures from `address`) recorded at or after `since`."""
        since = as_utc(since)
        recent = signin_failures.c.at >= since
        count = sa.select(sa.func.count()).select_from(signin_failures)
        with self._read() as conn:
            by_name = conn.execute(count.where(signin_failures.c.name == name[:64], recent)).scalar_one()
            by_address = conn.execute(count.where(signin_failures.c.address == address[:64], recent)).scalar_one()
        return by_name, by_address
