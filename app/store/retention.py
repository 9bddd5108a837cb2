"""Retention: old messages, reports, finished outbox items and replay keys deleted in
short batches that never stand in the way of inbound messages."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from .schema import messages, outbox, replies, reports, seen
from .values import as_utc, day_number, seen_key

#: The retention prune deletes in batches that each hold the write turn about this long
#: (the number of rows adapts to it, between PRUNE_ROWS)...
PRUNE_BATCH_S = 0.005
PRUNE_ROWS = (10, 2000)
#: On PostgreSQL a batch locks only the old rows it deletes, in nobody's way: it may take
#: longer, which spreads the cost of each commit (a WAL flush) over more rows.
PRUNE_BATCH_PG_S = 0.025
#: ...then pauses this many times the batch's time (so it takes at most about half the
#: database's time), and on SQLite then waits, at most PRUNE_YIELD_MAX_S, until every writer
#: that is waiting for a turn has had it: inbound messages go first.
PRUNE_PAUSE_RATIO = 1.0
PRUNE_YIELD_MAX_S = 0.25


class Retention:
    """The retention prune (a mixin of Store)."""

    # -- retention -----------------------------------------------------------------------
    def prune(self, days: int, now: datetime | None = None, replay_days: int | None = None) -> dict[str, int]:
        """Delete finished outbox items, delivery reports and messages (with their replies) older
        than `days`, and the nonces and MessageUUIDs remembered (`seen`) older than `replay_days`
        (never fewer than `days`: a pruned message's uuid is still known): how many of each.

        Opt-outs are never deleted, nor outbox items still to send. Never in the way of
        inbound messages: the old rows are found by a read (no write turn), then deleted by
        key in short transactions of about PRUNE_BATCH_S each, and after each one the prune
        pauses about as long, then lets every writer already waiting for a turn go first.
        """
        cutoff = as_utc(now) - timedelta(days=days)
        forget = day_number(as_utc(now) - timedelta(days=max(days, replay_days or days)))
        return {entry.name: self._prune_table(entry, entry.old(forget if entry.replay else cutoff))
                for entry in RETENTION}

    def _prune_table(self, entry: Expiring, old: sa.ColumnElement[bool]) -> int:
        low, high = PRUNE_ROWS
        size, after, total = low * 10, None, 0
        columns = (entry.key,) if entry.order is None or entry.order is entry.key else (entry.key, entry.order)
        while True:
            # Walked in the order of an indexed column from where the last batch ended, so no
            # batch rereads what was deleted (on PostgreSQL, dead index entries until a vacuum).
            find = sa.select(*columns).where(old).limit(size)
            if entry.order is not None:
                find = find.order_by(entry.order)
                if after is not None:
                    find = find.where(entry.order >= after)
            with self._read() as conn:
                found = conn.execute(find).all()
            if not found:
                return total
            keys = [row[0] for row in found]
            if entry.remember is not None:
                # Committed before the rows go: a delivery of the same MessageUUID meanwhile
                # finds either its message or this (PostgreSQL: in whatever snapshot it reads).
                with self._write() as conn:
                    entry.remember(conn, keys)
            with self._write() as conn:
                began, began_cpu = time.monotonic(), time.thread_time()
                for link in entry.goes_with:  # the old condition of these tables never changes back
                    conn.execute(link.table.delete().where(self._among(link, keys)))
                total += conn.execute(entry.table.delete().where(self._among(entry.key, keys)).where(old)).rowcount
                spent = time.monotonic() - began  # the work, not the commit (PostgreSQL: an fsync)
                # SQLite works in this thread: its CPU time is the batch's cost, which a busy
                # machine's scheduling delays would otherwise shrink to a few rows a batch.
                work = spent if self.postgres else time.thread_time() - began_cpu
            if not self.postgres:
                self._checkpoint()
            if len(found) < size:
                return total
            after = found[-1][-1] if entry.order is not None else None
            fit = int(size * (PRUNE_BATCH_PG_S if self.postgres else PRUNE_BATCH_S) / max(work, 1e-6))
            size = max(low, min(high, 2 * size, max(size // 2, fit)))  # at most halved or doubled
            if self._turn is not None:
                self._turn.hand_over(spent * PRUNE_PAUSE_RATIO, PRUNE_YIELD_MAX_S)
            else:
                time.sleep(spent * PRUNE_PAUSE_RATIO)

    def _checkpoint(self) -> None:
        """Copy what the WAL holds into the database file now, outside the write turn: left to
        SQLite, the commit that finds the WAL past 1,000 pages does it (and an fsync) while
        its writer still holds the turn, and a prune fills the WAL fast."""
        with self._read() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def _among(self, column: sa.Column, keys: list) -> sa.ColumnElement[bool]:
        """`column IN keys`; on PostgreSQL `= ANY(array)`: one statement text whatever the
        count, so the server plans it once (an IN list is a new statement per length)."""
        if self.postgres:
            return column == sa.any_(sa.bindparam("keys", keys, type_=pg_dialect.ARRAY(column.type)))
        return column.in_(keys)



@dataclass(frozen=True)
class Expiring:
    """A table the retention prune clears of old rows."""

    name: str
    table: sa.Table
    key: sa.Column                  # what the prune deletes by: the primary key
    order: sa.Column | None         # an indexed column to walk old rows in (None: as `old` finds them)
    old: Callable[[Any], sa.ColumnElement[bool]]   # the rows older than a cutoff
    goes_with: tuple[sa.Column, ...] = ()  # links of other tables' rows deleted with each row
    replay: bool = False            # kept for REPLAY_DAYS: `old` takes a day number, not a time
    remember: Callable[[Any, list], None] | None = None  # (conn, keys): keep what must outlive the rows


def _remember_uuids(conn, ids: list) -> None:
    """A pruned message's MessageUUID stays known (table `seen`, for REPLAY_DAYS from the day it
    came), so Plivo delivering it again is not decided again."""
    found = conn.execute(sa.select(messages.c.uuid, messages.c.received_at).where(messages.c.id.in_(ids))).all()
    if found:
        insert = (pg_dialect.insert if conn.dialect.name == "postgresql" else sqlite_dialect.insert)(seen)
        conn.execute(insert.on_conflict_do_nothing(),
                     [{"key": seen_key("uuid", uuid), "digest": None, "day": day_number(at)} for uuid, at in found])


#: What the prune deletes, in this order: reports before messages, so deleting a message's
#: replies has no report link left to clear.
RETENTION = (
    # No index on finished_at: the (status, due_at) index finds finished items, the oldest
    # first, and an ORDER BY would sort every finished item for each batch.
    # Held items (OUTBOX_SENDER=hold) are never sent: they go once as old as their message.
    Expiring("outbox", outbox, outbox.c.id, None,
             lambda cutoff: sa.or_(sa.and_(outbox.c.status.in_(("sent", "failed", "cancelled")),
                                           outbox.c.finished_at < cutoff),
                                   sa.and_(outbox.c.status == "held", outbox.c.created_at < cutoff))),
    Expiring("reports", reports, reports.c.id, reports.c.received_at,
             lambda cutoff: reports.c.received_at < cutoff),
    Expiring("messages", messages, messages.c.id, messages.c.received_at,
             lambda cutoff: messages.c.received_at < cutoff, goes_with=(replies.c.message_id,),
             remember=_remember_uuids),
    Expiring("seen", seen, seen.c.key, seen.c.day, lambda day: seen.c.day < day, replay=True),
)


