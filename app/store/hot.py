"""The per-message transaction, on the driver's own connection (the hot path).

SQLAlchemy Core costs tens of microseconds per statement in Python; a message
needs about eight, so this one path speaks to the DB-API connection that
SQLAlchemy's pool hands out, with SQL written once per dialect here. The pool,
its disconnect handling and everything else stay SQLAlchemy's, and the
columns are those of `schema.py` (values stored the way SQLAlchemy stores
them, so the Core code reading them back sees no difference).
"""

from __future__ import annotations

import json
from datetime import datetime

#: Columns written for one message, in order.
MESSAGE_COLUMNS = ("uuid", "received_at", "from_number", "to_number", "type", "text", "intent", "params",
                   "rules", "compliance", "possible_optout", "held", "deliveries", "answer_status",
                   "answer_type", "answer_body")
REPLY_COLUMNS = ("message_id", "position", "kind", "rule", "src", "dst", "sender", "limited", "text", "via",
                 "created_at")
#: Columns of an outbox row written with its message (Store._outbox_rows builds them in this order).
OUTBOX_COLUMNS = ("created_at", "kind", "role", "message_id", "position", "rule", "src", "dst", "type", "method",
                  "text", "media", "status", "attempts", "due_at")
JSON_COLUMNS = frozenset({"params", "rules", "held", "media"})


class Sql:
    """The hot path's statements for one dialect ("sqlite" or "postgresql")."""

    def __init__(self, dialect: str):
        self.postgres = dialect == "postgresql"
        p = "%s" if self.postgres else "?"
        self.p = p
        self.find = f"SELECT id FROM messages WHERE uuid = {p}"
        self.redeliver = (f"UPDATE messages SET deliveries = deliveries + 1 WHERE uuid = {p} "
                          "RETURNING answer_status, answer_type, answer_body")
        # Replay protection (table `seen`): a nonce with its request's digest, a MessageUUID alone.
        self.nonce = (f"INSERT INTO seen (key, digest, day) VALUES ({p}, {p}, {p}) "
                      "ON CONFLICT (key) DO NOTHING RETURNING key")
        self.nonce_digest = f"SELECT digest FROM seen WHERE key = {p}"
        self.lock = "SELECT pg_advisory_xact_lock(%s)"
        self.recent = (f"SELECT count(*) FROM replies WHERE sender = {p} AND limited "
                       f"AND created_at >= {p}")
        self.insert_message = (f"INSERT INTO messages ({', '.join(MESSAGE_COLUMNS)}) "
                               f"VALUES ({', '.join([p] * len(MESSAGE_COLUMNS))}) RETURNING id")
        self.insert_reply = (f"INSERT INTO replies ({', '.join(REPLY_COLUMNS)}) "
                             f"VALUES ({', '.join([p] * len(REPLY_COLUMNS))})")
        self.insert_outbox = (f"INSERT INTO outbox ({', '.join(OUTBOX_COLUMNS)}) "
                              f"VALUES ({', '.join([p] * len(OUTBOX_COLUMNS))})")
        self.add_optout = (f"INSERT INTO optouts (number, to_number, since, via) VALUES ({p}, {p}, {p}, {p}) "
                           "ON CONFLICT (number, to_number) DO NOTHING")
        self.remove_optouts = f"DELETE FROM optouts WHERE number = {p}"
        self.remove_optout_for = f"DELETE FROM optouts WHERE number = {p} AND to_number IN ('', {p})"
        self._opted_out: dict[int, str] = {}
        self._claim: dict[int, str] = {}
        self._replies_and_outbox: dict[tuple[int, int], str] = {}

    def opted_out(self, count: int) -> str:
        """Which of `count` numbers are opted out for one of our numbers (the last parameter)."""
        if self.postgres:
            return "SELECT number FROM optouts WHERE number = ANY(%s) AND to_number IN ('', %s)"
        sql = self._opted_out.get(count)
        if sql is None:
            marks = ", ".join(["?"] * count)
            sql = self._opted_out[count] = (f"SELECT number FROM optouts WHERE number IN ({marks}) "
                                            "AND to_number IN ('', ?)")
        return sql

    def replies_and_outbox(self, replies: int, items: int) -> str:
        """PostgreSQL: the replies and the outbox rows of one message in one statement (one
        round trip), parameters in that order."""
        sql = self._replies_and_outbox.get((replies, items))
        if sql is None:
            def rows(columns, count):
                return ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * count)
            sql = self._replies_and_outbox[(replies, items)] = (
                f"WITH r AS (INSERT INTO replies ({', '.join(REPLY_COLUMNS)}) VALUES {rows(REPLY_COLUMNS, replies)}) "
                f"INSERT INTO outbox ({', '.join(OUTBOX_COLUMNS)}) VALUES {rows(OUTBOX_COLUMNS, items)}")
        return sql

    def claim(self, nonces: int) -> str:
        """A message's MessageUUID and its `nonces` nonces claimed in one statement, parameters:
        the uuid's key and day, then (key, digest, day) per nonce. Returns the keys that went
        in (PostgreSQL waits for a concurrent claim of a key, and then skips it if it stays)."""
        sql = self._claim.get(nonces)
        if sql is None:
            p = self.p
            rows = ", ".join([f"({p}, NULL, {p})"] + [f"({p}, {p}, {p})"] * nonces)
            sql = self._claim[nonces] = (f"INSERT INTO seen (key, digest, day) VALUES {rows} "
                                         "ON CONFLICT (key) DO NOTHING RETURNING key")
        return sql

    def opted_out_params(self, numbers, to: str) -> tuple:
        return (list(numbers), to) if self.postgres else (*numbers, to)

    def time(self, moment: datetime):
        """A naive UTC datetime as the column keeps it (SQLite: SQLAlchemy's text format)."""
        return moment if self.postgres else moment.isoformat(" ", "microseconds")

    def value(self, column: str, value):
        if column in JSON_COLUMNS:
            return json.dumps(value)
        if isinstance(value, datetime):
            return self.time(value)
        return value
