"""Delivery reports: each stored once, and the reply it reports on updated in Plivo's order."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from .errors import Replayed
from .schema import messages, replies, reports
from .values import as_utc, day_number, nonce_keys

_b = sa.bindparam
_REPLY_BY_REF = (sa.select(replies.c.id, replies.c.status_key, replies.c.plivo_uuid)
                 .join(messages, messages.c.id == replies.c.message_id)
                 .where(messages.c.uuid == _b("uuid")).where(replies.c.position == _b("position")))
_REPLY_BY_PLIVO = (sa.select(replies.c.id, replies.c.status_key, replies.c.plivo_uuid)
                   .where(replies.c.plivo_uuid.in_(_b("uuids", expanding=True)))
                   .order_by(replies.c.id).limit(1))
_SET_STATUS = (replies.update().where(replies.c.id == _b("reply_id"))
               .values(status=_b("status"), status_key=_b("status_key"), status_at=_b("status_at")))
_SET_PLIVO_UUID = (replies.update().where(replies.c.id == _b("reply_id"))
                   .where(replies.c.plivo_uuid.is_(None)).values(plivo_uuid=_b("plivo_uuid")))

#: Delivery statuses in the order they can follow each other; a final one is never
#: replaced by one that is not (a late `sent` after `delivered`).
_STATUS_RANK = {"queued": 0, "sent": 1, "delivered": 2, "undelivered": 2, "failed": 2,
                "rejected": 2, "read": 3}


def status_key(status: str, sequence: str, message_time: str) -> str:
    """A text that sorts like Plivo's order of events for one message.

    Rank first (queued < sent < final < read), then Plivo's `Sequence`, then `MessageTime`.
    """
    rank = _STATUS_RANK.get(status, 1)
    seq = int(sequence) if sequence.isdigit() and len(sequence) <= 12 else 0
    return f"{rank}|{seq:012d}|{message_time[:26]}"


#: Plivo's delivery ErrorCode for "the destination opted out (STOP) of this number".
OPTED_OUT_ERROR = "200"


def _digits(number: str) -> str:
    return "".join(ch for ch in number if ch.isdigit())


def _field(params: dict[str, str], name: str, limit: int) -> str:
    """A report's parameter as a column keeps it: trimmed, no NUL, at most `limit` characters."""
    value = (params.get(name) or "").strip()
    if "\x00" in value:
        value = value.replace("\x00", "")
    return value[:limit]




class Reports:
    """Delivery reports (a mixin of Store)."""

    def _setup(self) -> None:
        super()._setup()
        insert = pg_dialect.insert if self.postgres else sqlite_dialect.insert
        # RETURNING tells whether a row went in (psycopg gives no rowcount for these)
        self._insert_report = insert(reports).on_conflict_do_nothing(
            index_elements=["message_uuid", "status", "sequence", "part"])

    def _claim_report_nonces(self, conn, given: Sequence[str], digest: bytes, now: datetime) -> bool:
        """Remember each nonce with the request's `digest`; True when every one was used before
        by this very request (a retry: its report is already recorded). `Replayed` when one
        was used by another request (another body, query, URL or method: what a V2 signature
        does not cover); the transaction is then rolled back."""
        keys = nonce_keys(given)
        if not keys:
            return False
        new = self._claim_nonces(conn, keys, digest, day_number(now))
        replayed, repeated = self._check_nonces(conn, keys, new, digest)
        if replayed is not None:
            raise Replayed(replayed.hex())  # (the caller's transaction is rolled back)
        return repeated

    # -- delivery reports ----------------------------------------------------------
    def record_report(self, params: dict[str, str], nonces: Sequence[str], digest: bytes, ref: str | None,
                      now: datetime | None = None) -> tuple[int | None, bool]:
        """Store one delivery report and update the reply it reports on: (the reply's id or
        None, False when this very request came before with the same nonces: a retry, whose
        report is already recorded, so nothing is written again)."""
        now = as_utc(now)
        uuid = _field(params, "MessageUUID", 64)
        status = _field(params, "Status", 16).lower()
        sequence = _field(params, "Sequence", 32)
        parent = _field(params, "ParentMessageUUID", 64) or None
        with self._write() as conn:
            with self._cursor(conn) as cur:
                repeated = self._claim_report_nonces(cur, nonces, digest, now)
            if repeated:
                return None, False
            reply = self._find_reply(conn, ref, uuid, parent)
            reply_id = reply[0] if reply is not None else None
            error_code = _field(params, "ErrorCode", 16)
            if error_code == OPTED_OUT_ERROR:
                # Plivo refused to send because the number sent STOP to it: remember that here,
                # so nothing else is even tried (nothing is sent to an opted-out number). Plivo signed
                # this report, linked to one of our texts or not (the 202 of an API send may not be recorded yet).
                dst, src = _digits(_field(params, "To", 32)), _digits(_field(params, "From", 32))
                if dst and src:  # (no From would read as an opt-out of every number)
                    conn.execute(self._insert_optout, {"number": dst, "to_number": src, "since": now,
                                                       "via": "plivo"})
            conn.execute(self._insert_report, {
                "received_at": now, "message_uuid": uuid, "parent_uuid": parent, "status": status or "unknown",
                "sequence": sequence, "part": _field(params, "PartInfo", 32),
                "error_code": error_code or None,
                "reply_id": reply_id, "params": params,
            })
            if reply is None or not status:
                return reply_id, True
            if reply[2] is None:
                conn.execute(_SET_PLIVO_UUID, {"reply_id": reply_id, "plivo_uuid": parent or uuid})
            key = status_key(status, sequence, _field(params, "MessageTime", 26))
            if reply[1] is None or key > reply[1]:
                conn.execute(_SET_STATUS, {"reply_id": reply_id, "status": status,
                                           "status_key": key, "status_at": now})
            return reply_id, True

    def _find_reply(self, conn: sa.Connection, ref: str | None, uuid: str, parent: str | None):
        if ref:
            inbound, _, position = ref.rpartition(".")
            if (inbound and position.isdigit() and len(position) <= 6 and len(inbound) <= 64
                    and inbound.isprintable()):
                stmt = _REPLY_BY_REF.with_for_update() if self.postgres else _REPLY_BY_REF
                row = conn.execute(stmt, {"uuid": inbound, "position": int(position)}).first()
                if row is not None:
                    return row
        stmt = _REPLY_BY_PLIVO.with_for_update() if self.postgres else _REPLY_BY_PLIVO
        return conn.execute(stmt, {"uuids": [u for u in (uuid, parent) if u]}).first()

