"""Opt-outs: numbers that must get nothing, for every number of the account or for one."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from .schema import optouts
from .values import as_utc, iso_utc


class Optouts:
    """Opt-outs (a mixin of Store)."""

    def _setup(self) -> None:
        super()._setup()
        insert = pg_dialect.insert if self.postgres else sqlite_dialect.insert
        self._insert_optout = (insert(optouts).on_conflict_do_nothing(index_elements=["number", "to_number"])
                               .returning(optouts.c.id))

    # -- opt-outs --------------------------------------------------------------------
    def add_optout(self, number: str, to: str | None = None, via: str = "manual",
                   now: datetime | None = None) -> bool:
        """Opt `number` out (of every number, or only of `to`); False if it already was."""
        with self._write() as conn:
            result = conn.execute(self._insert_optout, {"number": number, "to_number": to or "",
                                                        "since": as_utc(now), "via": via})
            return result.first() is not None

    def remove_optout(self, number: str, to: str | None = None) -> int:
        """Remove the opt-out of `number` (the account-wide one, or the one for `to`); how many went."""
        with self._write() as conn:
            stmt = optouts.delete().where(optouts.c.number == number).where(optouts.c.to_number == (to or ""))
            return conn.execute(stmt).rowcount

    def list_optouts(self) -> list[dict]:
        with self._read() as conn:
            rows = conn.execute(sa.select(optouts).order_by(optouts.c.since.desc(), optouts.c.id.desc())).mappings()
            return [{"number": r["number"], "to": r["to_number"] or None, "since": iso_utc(r["since"]),
                     "via": r["via"]} for r in rows]

    def count_optouts(self) -> int:
        """How many numbers have opted out (of the whole account or of one of its numbers)."""
        with self._read() as conn:
            return conn.execute(sa.select(sa.func.count(sa.distinct(optouts.c.number)))).scalar_one()

