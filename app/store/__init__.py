"""State behind one small interface that takes and gives plain values.

The pipeline calls `Store` with strings, numbers and small dataclasses; no
SQLAlchemy object leaves this package. Every inbound message is one short
transaction (`message`): claim the signature nonces and the MessageUUID, read the state that
matters to it, let the caller decide and render, then write the message, its
replies and any opt-out change together. A MessageUUID is claimed by a unique
index, so two deliveries at the same moment are decided once: the loser's
work is rolled back and it answers with the winner's stored bytes.

Statements are built once at import; SQLAlchemy caches their compiled form
and psycopg prepares them on the server after a few uses.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from .db import DatabaseUrlError, check_connection, display, make_engine, memory_engine, parse_url
from .hot import MESSAGE_COLUMNS, Sql
from .outbox import Claimed, Item, OutboxStore
from .schema import api_slots, messages, metadata, optouts, outbox, replies, reports, seen

__all__ = ["Store", "StoreError", "Unavailable", "Replayed", "Stored", "Claim", "Needs", "Record", "State",
           "Item", "Claimed",
           "DatabaseUrlError", "utcnow", "metadata", "display", "check_connection"]

log = logging.getLogger("app.store")

#: Longest wait for a SQLite write turn before the message gets 503 (Plivo waits 8 s).
WRITER_WAIT_S = 5.0

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


class StoreError(Exception):
    """Base of the store's errors."""


class Unavailable(StoreError):
    """The database did not answer (down, locked too long, pool exhausted): answer 503."""


class Replayed(StoreError):
    """A signature nonce already used by another request (not this one again): answer 403."""


class _Conflict(StoreError):
    """A unique index refused a row (a MessageUUID claimed at the same moment)."""


def utcnow() -> datetime:
    """Now as the database keeps times: naive UTC."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def as_utc(moment: datetime | None) -> datetime:
    if moment is None:
        return utcnow()
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


@dataclass(frozen=True, slots=True)
class Stored:
    """An answer as it left: status, content type and the exact bytes."""

    status: int
    content_type: str
    body: bytes


@dataclass(slots=True)
class Claim:
    """What `record` needs before the caller decides: who, and which state to read."""

    uuid: str
    nonces: Sequence[str]             # every signature nonce of the request
    sender: str
    to: str
    now: datetime                     # naive UTC
    digest: bytes = b""               # the request's signature.request_digest (kept with its nonces)


@dataclass(slots=True)
class Needs:
    """The state a decision needs read, once the rules have run."""

    numbers: Sequence[str] = ()          # opt-outs to look up (sender and forward destinations)
    limit_since: datetime | None = None  # count limited replies to the sender since then


@dataclass(slots=True)
class Record:
    """What the caller decided, to be written with the claim."""

    message: dict                       # messages columns (see schema) except id, uuid, deliveries
    replies: list[dict] = field(default_factory=list)  # replies columns except id, message_id, created_at
    outbox: list[dict] = field(default_factory=list)   # outbox rows to send afterwards (see OUTBOX_COLUMNS)
    change: tuple[str, str, str] | None = None  # ("out"|"in", via, scope) for the sender


@dataclass(frozen=True, slots=True)
class State:
    opted_out: frozenset[str]
    recent_replies: int


# -- statements, built once --------------------------------------------------------
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


def seen_key(kind: str, value: str) -> bytes:
    """A nonce ("nonce") or a MessageUUID ("uuid") as table `seen` keeps it: 16 bytes of
    SHA-256 of "kind:value" (fixed size whatever comes; the two kinds never meet)."""
    return hashlib.sha256(f"{kind}:{value}".encode("utf-8", "surrogatepass")).digest()[:16]


def _nonce_keys(nonces: Sequence[str]) -> list[bytes]:
    """The keys of a request's nonces, in one order everywhere (no deadlock between claims)."""
    return sorted({seen_key("nonce", n) for n in nonces})


_EPOCH = date(1970, 1, 1)


def day_number(moment: datetime) -> int:
    """The UTC day of a naive UTC time, as table `seen` keeps it: days since 1970-01-01."""
    return (moment.date() - _EPOCH).days


def _key64(text: str) -> int:
    """A signed 64-bit key for pg_advisory_xact_lock."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)


class Store(OutboxStore):
    """The database of one process. Thread-safe; make one per process, after fork."""

    def __init__(self, url: str, *, pool_size: int = 8, engine: sa.Engine | None = None):
        self.url = url
        self.engine = engine if engine is not None else make_engine(url, pool_size=pool_size)
        self.dialect = self.engine.dialect.name
        self.postgres = self.dialect == "postgresql"
        self._sql = Sql(self.dialect)
        self._dbapi = self.engine.dialect.dbapi
        # SQLite has one writer at a time, and a writer that finds the lock taken sleeps in
        # SQLite's busy handler (1, 2, 5, 10 ms...). Writers queue here instead: the threads
        # of a process on a lock, the processes on an flock of a file beside the database,
        # each woken the moment the lock is free.
        self._writer = _SqliteWriter(self.engine.url.database) if not self.postgres else None
        insert = pg_dialect.insert if self.postgres else sqlite_dialect.insert
        # RETURNING tells whether a row went in (psycopg gives no rowcount for these)
        self._insert_report = insert(reports).on_conflict_do_nothing(
            index_elements=["message_uuid", "status", "sequence", "part"])
        self._slot_upsert = insert(api_slots)
        self._insert_optout = (insert(optouts).on_conflict_do_nothing(index_elements=["number", "to_number"])
                               .returning(optouts.c.id))

    @classmethod
    def in_memory(cls) -> Store:
        """A new, empty database of its own in this process's memory, schema made: for rule
        tests, which run each case on a fresh state without a database file."""
        engine = memory_engine()
        metadata.create_all(engine)
        return cls("sqlite://", engine=engine)

    def __repr__(self) -> str:
        return f"<Store {display(self.url)}>"

    def dispose(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.engine.dispose()

    # -- transactions ------------------------------------------------------------
    @contextmanager
    def _raw(self, write: bool) -> Iterator:
        """A driver cursor in one transaction (SQLite reads: autocommit), committed at the end.

        A unique violation becomes `_Conflict`; any other database error `Unavailable`,
        after the connection is dropped from the pool if it was cut.
        """
        sqlite_write = write and self._writer is not None
        with self._writer if sqlite_write else nullcontext():
            try:
                # SQLite writes are one at a time per process anyway: they keep one connection,
                # which saves the pool round and rereading pages another connection changed.
                fairy = self._writer.connection(self.engine) if sqlite_write else self.engine.raw_connection()
            except (SQLAlchemyError, self._dbapi.Error) as exc:  # the pool passes the driver's own
                raise Unavailable(_reason(exc)) from exc
            conn = fairy.driver_connection
            cur = None
            try:
                cur = conn.cursor()
                if write and not self.postgres:
                    cur.execute("BEGIN IMMEDIATE")
                yield cur
                if self.postgres:
                    conn.commit()
                elif write:
                    cur.execute("COMMIT")
            except BaseException as exc:
                _rollback(conn)
                if isinstance(exc, self._dbapi.IntegrityError):
                    raise _Conflict(str(exc)) from exc
                if isinstance(exc, self._dbapi.Error):
                    if self.engine.dialect.is_disconnect(exc, conn, cur) or getattr(conn, "closed", False):
                        # As SQLAlchemy does on a lost connection: drop this one and mark every
                        # older pooled one stale, so a database restart costs one 503, not one
                        # per pooled connection. (Pool._invalidate: private, stable since 1.4.)
                        invalidate = getattr(self.engine.pool, "_invalidate", None)
                        if invalidate is not None:
                            invalidate(fairy, exc)
                        else:
                            fairy.invalidate(exc)
                        if sqlite_write:
                            self._writer.forget()
                    raise Unavailable(_reason(exc)) from exc
                raise
            finally:
                if cur is not None:
                    try:
                        cur.close()
                    except Exception:  # noqa: BLE001 - a cut connection's cursor
                        pass
                if not sqlite_write:
                    fairy.close()

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """One short write transaction through SQLAlchemy; failures become `Unavailable`."""
        with self._writer or nullcontext():
            with self._errors(), self.engine.connect() as conn:
                if not self.postgres:
                    conn.execution_options(sqlite_immediate=True)
                with conn.begin():
                    yield conn

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
        except (DBAPIError, PoolTimeout, SQLAlchemyError) as exc:
            raise Unavailable(_reason(exc)) from exc

    def ping(self) -> bool:
        """True when the database answers a query now."""
        try:
            with self._read() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except Unavailable:
            return False

    # -- replay protection (table `seen`) ------------------------------------------
    def _claim_nonces(self, fetch, given: Sequence[str], digest: bytes, now: datetime) -> bool:
        """Remember each nonce with the request's `digest`; True when every one was used
        before by this very request (a retry: its outcome is already recorded).

        `Replayed` when one was used by another request (another body, query, URL or
        method: what a V2 signature does not cover). `fetch(sql, params)` runs one of the
        driver-level statements and returns its first row: the SQLite hot path passes its
        cursor, the Core paths their connection.
        """
        day = day_number(now)
        repeated = bool(given)
        for key in _nonce_keys(given):
            if fetch(self._sql.nonce, (key, digest, day)) is None:
                repeated = self._same_request(fetch, key, digest) and repeated
            else:
                repeated = False
        return repeated

    def _same_request(self, fetch, key: bytes, digest: bytes) -> bool:
        """A nonce that was there already: True if it came with this very request (a retry),
        `Replayed` if with another one."""
        kept = fetch(self._sql.nonce_digest, (key,))
        if kept is None:  # gone meanwhile (pruned): nothing to compare
            return False
        if kept[0] is None or bytes(kept[0]) != digest:
            raise Replayed(key.hex())  # (a nonce kept before 0003 has no digest: never again)
        return True

    # -- inbound messages (the hot path: driver connections, see hot.py) ---------
    def message(self, claim: Claim, prepare: Callable[[], Needs],
                finish: Callable[[State], tuple[Record, Stored]]) -> tuple[Stored | None, bool]:
        """Answer one delivery of a message: (the answer, True if this call decided it).

        A MessageUUID already recorded gets its stored answer (one more delivery
        counted) and `finish` does not run (on SQLite `prepare` may have run first,
        outside the write turn; its work is then unused). Otherwise `prepare()` runs the rules
        and says which state to read, and `finish(state)` renders the answer;
        the claim, the nonces, the message, its replies and any opt-out change are
        written in one transaction. `finish` runs inside it: quick and pure.
        A MessageUUID decided before whose message has been pruned (it is remembered
        for REPLAY_DAYS) gives (None, False): nothing is decided again, and there is no
        stored answer left to repeat. A nonce used before by another request raises
        `Replayed`; a database that does not answer raises `Unavailable`.
        """
        if self.postgres:
            return self._message_postgres(claim, prepare, finish)
        return self._message_sqlite(claim, prepare, finish)

    def _message_sqlite(self, claim, prepare, finish):
        # The rules run before the write lock is taken (one writer at a time): a plain
        # read finds a retry without locking, and the unique claim settles a race.
        with self._raw(write=False) as cur:
            found = cur.execute(self._sql.find, (claim.uuid,)).fetchone()
        if found is None:
            needs = prepare()
            try:
                with self._raw(write=True) as cur:
                    if self._claim_raw(cur, claim):
                        return self._decide_and_insert(cur, claim, needs, finish), True
                    # decided meanwhile by another worker, or long ago and pruned since
                    return self._redeliver_raw(cur, claim), False
            except _Conflict:
                pass  # claimed meanwhile by another worker: answer as it answered
        with self._raw(write=True) as cur:
            new = self._claim_raw(cur, claim)
            stored = self._redeliver_raw(cur, claim)
            if stored is None and new:
                raise Unavailable("could not record the message")  # (rolls the claim back)
        return stored, False

    def _message_postgres(self, claim, prepare, finish):
        # One transaction, few round trips: one sender's messages are decided one after
        # another (an advisory lock for the transaction), so opt-outs and limits hold exactly
        # across workers and hosts, and a retry is found by the same UPDATE that counts it.
        # The nonces and the MessageUUID are claimed in one statement: a new uuid goes straight
        # on to the decision, a known one to its stored answer.
        for attempt in range(2):
            try:
                with self._raw(write=True) as cur:
                    cur.execute(self._sql.lock, (_key64(claim.sender),))
                    new = self._claim_raw(cur, claim)
                    if not new or attempt:  # (after a conflict: a message kept without its uuid)
                        stored = self._redeliver_raw(cur, claim)
                        if stored is not None or not new:
                            return stored, False  # None: decided long ago, pruned since
                    return self._decide_and_insert(cur, claim, prepare(), finish), True
            except _Conflict:
                continue  # the same uuid from another sender number, at the same moment
        raise Unavailable("could not record the message")

    def _claim_raw(self, cur, claim: Claim) -> bool:
        """Claim the MessageUUID and the nonces (one statement; a nonce used before costs one
        more); True if the uuid is new. `Replayed` for a nonce used by another request."""
        day = day_number(claim.now)
        keys = _nonce_keys(claim.nonces)
        uuid = seen_key("uuid", claim.uuid)
        params = [uuid, day]
        for key in keys:
            params += (key, claim.digest, day)
        new = {bytes(row[0]) for row in cur.execute(self._sql.claim(len(keys)), params).fetchall()}
        for key in keys:
            if key not in new:
                self._same_request(lambda q, p: cur.execute(q, p).fetchone(), key, claim.digest)
        return uuid in new

    def _redeliver_raw(self, cur, claim: Claim) -> Stored | None:
        row = cur.execute(self._sql.redeliver, (claim.uuid,)).fetchone()
        return None if row is None else Stored(row[0], row[1], bytes(row[2]))

    def _decide_and_insert(self, cur, claim: Claim, needs: Needs, finish) -> Stored:
        sql = self._sql
        opted: frozenset[str] = frozenset()
        if needs.numbers:
            opted = frozenset(r[0] for r in cur.execute(sql.opted_out(len(needs.numbers)),
                                                        sql.opted_out_params(needs.numbers, claim.to)))
        recent = 0
        if needs.limit_since is not None:
            recent = cur.execute(sql.recent, (claim.sender, sql.time(needs.limit_since))).fetchone()[0]
        record, answer = finish(State(opted, recent))
        row = dict(record.message)
        row.update(uuid=claim.uuid, deliveries=1, answer_status=answer.status,
                   answer_type=answer.content_type, answer_body=answer.body)
        row.setdefault("received_at", claim.now)
        message_id = cur.execute(sql.insert_message, tuple(sql.value(c, row[c]) for c in MESSAGE_COLUMNS)).fetchone()[0]
        if record.replies or record.outbox:
            now = sql.time(claim.now)
            reply_rows = [(message_id, r["position"], r["kind"], r["rule"], r["src"], r["dst"], r["sender"],
                           r["limited"], r["text"], r["via"], now) for r in record.replies]
            outbox_rows = self._outbox_rows(message_id, record.outbox)
            if self.postgres and reply_rows and outbox_rows:  # one statement, one round trip
                cur.execute(sql.replies_and_outbox(len(reply_rows), len(outbox_rows)),
                            [v for row in (*reply_rows, *outbox_rows) for v in row])
            else:
                for statement, rows in ((sql.insert_reply, reply_rows), (sql.insert_outbox, outbox_rows)):
                    if len(rows) == 1:
                        cur.execute(statement, rows[0])
                    elif rows:
                        cur.executemany(statement, rows)
        if record.change is not None:
            what, via, scope = record.change
            if what == "out":
                cur.execute(sql.add_optout, (claim.sender, "" if scope == "account" else claim.to,
                                             sql.time(claim.now), via))
            elif scope == "account":
                cur.execute(sql.remove_optouts, (claim.sender,))
            else:
                cur.execute(sql.remove_optout_for, (claim.sender, claim.to))
        return answer

    def _outbox_rows(self, message_id: int, items: list[dict]) -> list[tuple]:
        """Outbox rows in OUTBOX_COLUMNS order, due now by the real clock (the sender's; a
        test's rules clock may be another)."""
        if not items:
            return []
        queued = self._sql.time(utcnow())
        return [(queued, r["kind"], r["role"], message_id, r.get("position"), r.get("rule"), r.get("src"),
                 r["dst"], r["type"], r.get("method"), r["text"], json.dumps(r.get("media") or []),
                 r.get("status", "pending"), 0,
                 queued) for r in items]

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
            if self._claim_nonces(lambda q, p: conn.exec_driver_sql(q, p).first(), nonces, digest, now):
                return None, False
            reply = self._find_reply(conn, ref, uuid, parent)
            reply_id = reply[0] if reply is not None else None
            error_code = _field(params, "ErrorCode", 16)
            if error_code == OPTED_OUT_ERROR:
                # Plivo refused to send because the number sent STOP to it: remember that here,
                # so nothing else is even tried (nothing is sent to an opted-out number). Plivo signed this report, linked to
                # one of our texts or not (the 202 of an API send may not be recorded yet).
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
            return [{"number": r["number"], "to": r["to_number"] or None, "since": _iso(r["since"]),
                     "via": r["via"]} for r in rows]

    def count_optouts(self) -> int:
        """How many numbers have opted out (of the whole account or of one of its numbers)."""
        with self._read() as conn:
            return conn.execute(sa.select(sa.func.count(sa.distinct(optouts.c.number)))).scalar_one()

    # -- the message log ---------------------------------------------------------------
    def list_messages(self, limit: int = 20, from_number: str | None = None,
                      uuid: str | None = None) -> list[dict]:
        """The newest messages first, with their replies (`messages --json`)."""
        stmt = sa.select(messages).order_by(messages.c.received_at.desc(), messages.c.id.desc()).limit(limit)
        if from_number:
            stmt = stmt.where(messages.c.from_number == from_number)
        if uuid is not None:
            stmt = stmt.where(messages.c.uuid == uuid)
        with self._read() as conn:
            rows = list(conn.execute(stmt).mappings())
            by_message: dict[int, list[dict]] = {r["id"]: [] for r in rows}
            calls = {}
            if by_message:
                sent: dict[tuple, list[dict]] = {}
                calls: dict[int, list[dict]] = {}
                for o in conn.execute(sa.select(outbox.c.id, outbox.c.message_id, outbox.c.position,
                                                outbox.c.kind, outbox.c.dst, outbox.c.status, outbox.c.attempts,
                                                outbox.c.error, outbox.c.message_uuid)
                                      .where(outbox.c.message_id.in_(list(by_message)))
                                      .order_by(outbox.c.id)).mappings():
                    entry = {"id": o["id"], "status": o["status"], "attempts": o["attempts"], "error": o["error"]}
                    if o["kind"] == "webhook":
                        calls.setdefault(o["message_id"], []).append({"url": o["dst"], **entry})
                    else:
                        sent.setdefault((o["message_id"], o["position"]), []).append(
                            {"dst": o["dst"], "message_uuid": o["message_uuid"], **entry})
                for r in conn.execute(sa.select(replies).where(replies.c.message_id.in_(list(by_message)))
                                      .order_by(replies.c.message_id, replies.c.position)).mappings():
                    reply = {
                        "dst": r["dst"], "text": r["text"], "via": r["via"], "status": r["status"],
                        "kind": r["kind"], "rule": r["rule"], "plivo_uuid": r["plivo_uuid"],
                    }
                    if r["via"] == "api":
                        reply["outbox"] = sent.get((r["message_id"], r["position"]), [])
                    by_message[r["message_id"]].append(reply)
        return [{
            "uuid": r["uuid"], "received_at": _iso(r["received_at"]), "from": r["from_number"],
            "to": r["to_number"], "type": r["type"], "text": r["text"], "intent": r["intent"] or None,
            "rules": list(r["rules"]), "deliveries": r["deliveries"], "replies": by_message[r["id"]],
            "compliance": r["compliance"], "possible_optout": bool(r["possible_optout"]),
            "held": list(r["held"]), "answer_status": r["answer_status"],
            "webhooks": calls.get(r["id"], []) if by_message else [],
        } for r in rows]

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
            if self._writer is not None:
                self._writer.hand_over(spent * PRUNE_PAUSE_RATIO, PRUNE_YIELD_MAX_S)
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
             lambda cutoff: messages.c.received_at < cutoff, goes_with=(replies.c.message_id,)),
    Expiring("seen", seen, seen.c.key, seen.c.day, lambda day: seen.c.day < day, replay=True),
)


def _reason(exc: BaseException) -> str:
    """The first line of what the database (or the pool) said."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _rollback(conn) -> None:
    try:
        if getattr(conn, "in_transaction", True):
            conn.rollback()
    except Exception:  # noqa: BLE001 - a cut connection cannot roll back; the pool drops it
        pass


class _SqliteWriter:
    """Mutual exclusion of SQLite writers: a thread lock, then an flock across processes.

    A writer that has to wait says so, so that a background writer (the prune) can let it
    go first: a thread of this process by a count, the one thread of a process that waits
    for the flock by a shared flock on a second file (`hand_over`).
    """

    def __init__(self, database: str | None):
        self._lock = threading.Lock()
        self._path = os.path.abspath(database) + ".writer-lock" if database else None
        self._fd: int | None = None
        self._fairy = None
        self._waiting = 0                 # threads of this process waiting for the thread lock
        self._count = threading.Lock()
        self._queue_path = self._path + "-queue" if self._path else None
        self._queue_fd: int | None = None  # shared-locked while this process waits for the flock
        self._probe_fd: int | None = None  # another open file: tries the queue exclusively

    def connection(self, engine: sa.Engine):
        """The process's writing connection (taken from the pool once; call under the lock)."""
        if self._fairy is None:
            self._fairy = engine.raw_connection()
        return self._fairy

    def __enter__(self):
        deadline = time.monotonic() + WRITER_WAIT_S
        if not self._lock.acquire(blocking=False):
            with self._count:
                self._waiting += 1
            try:
                got = self._lock.acquire(timeout=WRITER_WAIT_S)
            finally:
                with self._count:
                    self._waiting -= 1
            if not got:
                raise Unavailable(f"the database is busy: no write turn within {WRITER_WAIT_S:g} s")
        try:
            if self._path is not None:
                if self._fd is None:
                    self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                self._flock(deadline)
        except OSError:
            pass  # no lock file (a read-only folder): SQLite's own busy timeout still orders writers
        except BaseException:
            self._lock.release()
            raise
        return self

    def _flock(self, deadline: float) -> None:
        """The cross-process lock by the deadline: at once when free, else tried again after
        0.1, 0.2, 0.5, then every 1 ms (a turn lasts a few hundred microseconds), so a stuck
        holder (a stopped process) costs a 503 after the deadline, never a hang. While it
        waits, the process holds the queue file shared: other processes see a writer waiting."""
        delays = (0.0001, 0.0002, 0.0005)
        attempt = 0
        queued = False
        try:
            while True:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise Unavailable(f"the database is busy: no write turn within {WRITER_WAIT_S:g} s") from None
                    if not queued:
                        queued = self._queue(fcntl.LOCK_SH)
                    time.sleep(delays[attempt] if attempt < len(delays) else 0.001)
                    attempt += 1
        finally:
            if queued:
                fcntl.flock(self._queue_fd, fcntl.LOCK_UN)

    def _queue(self, how: int) -> bool:
        """Take the queue file's lock (`how`) without waiting: False when another holds it
        in a way that conflicts. The exclusive try goes through a file of its own, so it
        also sees this process's own waiting thread."""
        try:
            if how == fcntl.LOCK_SH:
                if self._queue_fd is None:
                    self._queue_fd = os.open(self._queue_path, os.O_RDWR | os.O_CREAT, 0o600)
                fd = self._queue_fd
            else:
                if self._probe_fd is None:
                    self._probe_fd = os.open(self._queue_path, os.O_RDWR | os.O_CREAT, 0o600)
                fd = self._probe_fd
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return True
        except OSError:  # BlockingIOError: taken; any other: no queue file, nobody can be seen waiting
            return False

    def waiting(self) -> bool:
        """True while another writer waits for a turn: a thread of this process or another process."""
        if self._waiting:
            return True
        if self._queue_path is None:
            return False
        if self._queue(fcntl.LOCK_EX):
            fcntl.flock(self._probe_fd, fcntl.LOCK_UN)
            return False
        return self._probe_fd is not None

    def hand_over(self, pause: float, most: float) -> None:
        """After a background writer's turn, before its next: sleep `pause`, then wait until
        no writer is waiting (each has had its turn), for at most `most` seconds, so the
        background writer can never be held back for good by a steady stream of writers."""
        time.sleep(pause)
        deadline = time.monotonic() + most
        while self.waiting() and time.monotonic() < deadline:
            time.sleep(0.0005)

    def __exit__(self, *exc):
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()

    def forget(self) -> None:
        """The writing connection was dropped: the next write takes a new one."""
        self._fairy = None

    def close(self) -> None:
        with self._lock:
            if self._fairy is not None:
                self._fairy.close()
                self._fairy = None
            for name in ("_fd", "_queue_fd", "_probe_fd"):
                fd = getattr(self, name)
                if fd is not None:
                    os.close(fd)
                    setattr(self, name, None)


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=timezone.utc).isoformat().replace("+00:00", "Z")
