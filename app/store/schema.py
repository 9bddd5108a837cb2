"""The database schema, as SQLAlchemy Core tables.

The tables are the single description of the schema: Alembic's migrations in
`migrations/` create and change them, and a test proves that the migrations,
run from an empty database, reach exactly these tables on SQLite and PostgreSQL.

Every index has a reader, named beside it: each one costs every message that writes its
table (on SQLite a page written to the WAL, on PostgreSQL a B-tree insert and its WAL).

Times are naive UTC `DateTime`s (the same on both databases); phone numbers are
digits as Plivo sends them; a whole-account opt-out has `to_number = ''`
(an empty string rather than NULL, so one unique index covers both kinds).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

#: One row per inbound MessageUUID: what came, what was decided, the answer's bytes.
messages = sa.Table(
    "messages", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("uuid", sa.String(64), nullable=False, unique=True),     # the claim; a retry's answer
    sa.Column("received_at", sa.DateTime, nullable=False, index=True),  # the log, newest first; the prune
    sa.Column("from_number", sa.String(32), nullable=False),
    sa.Column("to_number", sa.String(32), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("intent", sa.String(16), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),        # every parameter Plivo sent
    sa.Column("rules", sa.JSON, nullable=False),         # names of the rules that matched
    sa.Column("compliance", sa.String(16)),              # optout, optin, help, or NULL
    sa.Column("possible_optout", sa.Boolean, nullable=False),  # an opt-out word inside a longer text
    sa.Column("held", sa.JSON, nullable=False),          # texts not sent: [{dst, text, reason}]
    sa.Column("deliveries", sa.Integer, nullable=False),  # how many times Plivo delivered this uuid
    sa.Column("answer_status", sa.Integer, nullable=False),
    sa.Column("answer_type", sa.String(64), nullable=False),
    sa.Column("answer_body", sa.LargeBinary, nullable=False),
)
# `messages --from`; the reply limit's count (replies joined by message_id).
sa.Index("ix_messages_from_number_received_at", messages.c.from_number, messages.c.received_at)

#: One row per text the service sent (or asked Plivo to send) for a message.
replies = sa.Table(
    "replies", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.Integer, sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),   # order in the answer, from 0
    sa.Column("kind", sa.String(16), nullable=False),    # reply, forward, optout, optin, help
    sa.Column("rule", sa.Text),                          # the rule that made it (NULL: compliance)
    sa.Column("src", sa.String(32), nullable=False),
    sa.Column("dst", sa.JSON, nullable=False),           # the numbers it went to (a list)
    sa.Column("sender", sa.String(32), nullable=False),  # the inbound sender (for reply limits)
    sa.Column("limited", sa.Boolean, nullable=False),    # counts towards limits.replies_per_sender
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("via", sa.String(8), nullable=False),      # xml or api
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("status", sa.String(16)),                  # latest delivery report's Status
    sa.Column("status_key", sa.String(64)),              # its place in Plivo's order (see store)
    sa.Column("status_at", sa.DateTime),
    sa.Column("plivo_uuid", sa.String(64)),              # Plivo's MessageUUID, once known
    sa.UniqueConstraint("message_id", "position"),  # a message's replies: the log, the limit, reports' ref
)
# Reports find their reply by Plivo's uuid, unknown when the reply is written: only rows that
# have one are in the index (no entry at insert). The reply limit counts through the messages'
# (from_number, received_at) index, so no index on (sender, created_at).
sa.Index("ix_replies_plivo_uuid", replies.c.plivo_uuid, sqlite_where=replies.c.plivo_uuid.isnot(None),
         postgresql_where=replies.c.plivo_uuid.isnot(None))

#: Every delivery report received on /status.
reports = sa.Table(
    "reports", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("received_at", sa.DateTime, nullable=False, index=True),  # the prune
    sa.Column("message_uuid", sa.String(64), nullable=False),   # Plivo's uuid of the sent message
    sa.Column("parent_uuid", sa.String(64)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("sequence", sa.String(32), nullable=False),       # Sequence, '' when absent
    sa.Column("part", sa.String(32), nullable=False),           # PartInfo, '' when absent
    sa.Column("error_code", sa.String(16)),
    # (indexed: a pruned reply's reports are found to be unlinked)
    sa.Column("reply_id", sa.Integer, sa.ForeignKey("replies.id", ondelete="SET NULL"), index=True),
    sa.Column("params", sa.JSON, nullable=False),
    sa.UniqueConstraint("message_uuid", "status", "sequence", "part"),  # a report stored once
)

#: Numbers that must get nothing. to_number '' = every number of the service.
optouts = sa.Table(
    "optouts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("number", sa.String(32), nullable=False),
    sa.Column("to_number", sa.String(32), nullable=False),
    sa.Column("since", sa.DateTime, nullable=False),
    sa.Column("via", sa.String(16), nullable=False),     # keyword, intent, manual
    sa.UniqueConstraint("number", "to_number"),  # the opt-out check of every message
)

#: Replay protection, kept for REPLAY_DAYS (longer than the messages themselves): every
#: signature nonce used, with a digest of the request it came with, and every inbound
#: MessageUUID decided. Compact: a fixed-size key, no text (SQLite: one B-tree, no rowid).
seen = sa.Table(
    "seen", metadata,
    sa.Column("key", sa.LargeBinary, primary_key=True),  # 16 bytes: SHA-256 of "nonce:<nonce>" or "uuid:<uuid>"
    sa.Column("digest", sa.LargeBinary),                 # nonce: the request's (signature.request_digest); uuid: NULL
    # UTC day of its first use, days since 1970-01-01 (indexed: the prune)
    sa.Column("day", sa.Integer, nullable=False, index=True),
    sqlite_with_rowid=False,
)

#: Messages and webhook calls to send after the answer, written in the same
#: transaction as the inbound message and taken by a sender (a web worker's thread or
#: `flask outbox run`). status: pending -> sending -> sent | failed | unknown | cancelled;
#: `held` (OUTBOX_SENDER=hold) is never sent.
outbox = sa.Table(
    "outbox", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),     # message or webhook
    sa.Column("role", sa.String(16), nullable=False),     # reply, forward, optout, optin, help, webhook
    # (indexed: a message's items in the log; unlinked when the message is pruned)
    sa.Column("message_id", sa.Integer, sa.ForeignKey("messages.id", ondelete="SET NULL"), index=True),
    sa.Column("position", sa.Integer),                    # the reply's position in its message
    sa.Column("rule", sa.Text),                           # the rule that made it (NULL: compliance)
    sa.Column("src", sa.String(32)),                      # our number (messages)
    sa.Column("dst", sa.Text, nullable=False),            # one number, or the webhook URL
    sa.Column("type", sa.String(16), nullable=False),     # sms, mms, whatsapp; webhook: json
    sa.Column("method", sa.String(8)),                    # webhook: POST, PUT, PATCH
    sa.Column("text", sa.Text, nullable=False),           # the message text; webhook: the JSON body
    sa.Column("media", sa.JSON, nullable=False),          # media URLs
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("due_at", sa.DateTime, nullable=False),     # not tried before this
    sa.Column("lease_until", sa.DateTime),                # sending: the sender's claim runs out then
    # the latest attempt left (a message: its rate slot; NULL: not yet)
    sa.Column("attempted_at", sa.DateTime),
    sa.Column("finished_at", sa.DateTime),
    sa.Column("message_uuid", sa.String(64)),             # what Plivo answered
    sa.Column("error", sa.Text),                          # the last error, short and safe to show
    sa.Column("retried_at", sa.DateTime),                 # an operator's `outbox retry`: a new day to succeed
)
# The claim's order (due_at, id) is the index's: the next due item is its first entry.
sa.Index("ix_outbox_status_due_at", outbox.c.status, outbox.c.due_at, outbox.c.id)
# Only rows Plivo answered for (most are NULL while queued: no index entry at insert).
sa.Index("ix_outbox_message_uuid", outbox.c.message_uuid, sqlite_where=outbox.c.message_uuid.isnot(None),
         postgresql_where=outbox.c.message_uuid.isnot(None))
# Open messages by number: what the claim checks for each candidate (see store/outbox.py).
_OPEN = sa.text("kind = 'message' AND status IN ('pending', 'sending', 'unknown')")
sa.Index("ix_outbox_open_dst_src", outbox.c.dst, outbox.c.src, outbox.c.id, sqlite_where=_OPEN,
         postgresql_where=_OPEN)

#: The Message API's request schedule, shared by every sender on the database:
#: each request takes the next free slot, PLIVO_API_RATE slots a second.
api_slots = sa.Table(
    "api_slots", metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("next_at", sa.Float, nullable=False),       # unix seconds of the next free slot
)

#: The people who may sign in to the operator page: a name and werkzeug's scrypt hash of the
#: password, never the password. Read by `store/operators.py`: the `operators` commands, and
#: the gunicorn master at start (SECRET_KEY is required once a row exists).
operators = sa.Table(
    "operators", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),  # sign-in finds its operator
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

#: Failed sign-ins to the operator page, kept for the limit window (§11: 5 per name, 20 per
#: address, in 15 minutes) in the database so every worker and host counts the same failures.
#: Rows older than the window are pruned whenever a failure is recorded.
signin_failures = sa.Table(
    "signin_failures", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("address", sa.String(64), nullable=False),
    sa.Column("at", sa.DateTime, nullable=False),
)
# The window's two counts, and the pruning of what is older than it.
sa.Index("ix_signin_failures_name_at", signin_failures.c.name, signin_failures.c.at)
sa.Index("ix_signin_failures_address_at", signin_failures.c.address, signin_failures.c.at)
sa.Index("ix_signin_failures_at", signin_failures.c.at)
