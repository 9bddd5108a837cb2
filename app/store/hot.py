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
        self.uuid = (f"INSERT INTO seen (key, digest, day) VALUES ({p}, NULL, {p}) "
                     "ON CONFLICT (key) DO NOTHING RETURNING key")
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
        """PostgreSQL: a message's MessageUUID and its `nonces` nonces claimed in one statement
        (one round trip), parameters: the uuid's key and day, then (key, digest, day) per nonce.
        One row: whether the uuid is new (1 or 0), and the digest each nonce is now kept with
        (the request's own, or that of the request that used it first: the upsert waits for
        a concurrent one and returns its row)."""
        sql = self._claim.get(nonces)
        if sql is None:
            uuid = ("WITH u AS (INSERT INTO seen (key, digest, day) VALUES (%s, NULL, %s) "
                    "ON CONFLICT (key) DO NOTHING RETURNING 1)")
            if not nonces:
                sql = f"{uuid} SELECT (SELECT count(*) FROM u), ARRAY[]::bytea[]"
            else:
                rows = ", ".join(["(%s, %s, %s)"] * nonces)
                sql = (f"{uuid}, n AS (INSERT INTO seen (key, digest, day) VALUES {rows} "
                       "ON CONFLICT (key) DO UPDATE SET day = seen.day RETURNING digest) "
                       "SELECT (SELECT count(*) FROM u), ARRAY(SELECT digest FROM n)")
            self._claim[nonces] = sql
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
