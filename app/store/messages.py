"""Inbound messages: the one transaction that answers a message once, and the message log.

A message is answered once: its signature nonces are claimed, its MessageUUID is
looked up by the unique index of `messages` (a retry gets the stored answer, byte for
byte), the state that matters to it is read, and the message, its replies, its outbox
rows and any opt-out change are written together. A MessageUUID whose message has been
pruned is still known (retention moves it to `seen`, kept for REPLAY_DAYS): it is not
decided again.

The messages of a process are committed in groups (writer.GroupCommit), each with its
own outcome. SQLite: one batch at a time, under the write turn. PostgreSQL: a batch
tries its senders' locks first and leaves a message whose lock is taken to its own
thread; a message alone costs four round trips (BEGIN; the sender's lock, the nonces'
claim and the retry's lookup; every insert, in a statement that also checks the state
the answer was rendered for; COMMIT), two more when the state is another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite as sqlite_dialect

from .errors import Conflict, Replayed, Unavailable
from .schema import messages, optouts, outbox, replies, seen
from .sql import Shapes, Statement
from .values import (
    Claim,
    Needs,
    NumberState,
    Record,
    Stored,
    day_number,
    iso_utc,
    lock_key,
    nonce_keys,
    seen_key,
    utcnow,
)
from .writer import GroupCommit, Job

_b = sa.bindparam
#: Columns the message path writes, from the schema (ids and later columns excluded).
MESSAGE_COLUMNS = tuple(c.name for c in messages.c if c.name != "id")
REPLY_COLUMNS = ("message_id", "position", "kind", "rule", "src", "dst", "sender", "limited", "text", "via",
                 "created_at")
OUTBOX_COLUMNS = ("created_at", "kind", "role", "message_id", "position", "rule", "src", "dst", "type", "method",
                  "text", "media", "status", "attempts", "due_at")
#: A PostgreSQL batch's answer to a message it leaves to its own thread, written alone.
ALONE = object()
#: What the state is assumed to be when an answer is rendered before it is read.
FRESH = NumberState()


class Work(Protocol):
    """One message's work, as the pipeline hands it to the store."""

    claim: Claim
    needs: Needs

    def finish(self, state: NumberState) -> tuple[Record, Stored]:
        """The rows to write and the answer, given the state (quick and pure)."""


def _param(column: sa.Column, name: str | None = None) -> sa.BindParameter:
    return _b(name or column.name, type_=column.type)


def _rows(table: sa.Table, columns: Sequence[str], count: int) -> list[dict]:
    return [{c: _param(table.c[c], f"{table.name}_{c}_{i}") for c in columns} for i in range(count)]


def _deadlock(exc: BaseException) -> bool:
    """PostgreSQL broke a deadlock by failing this transaction (SQLSTATE 40P01): worth retrying."""
    return getattr(exc.__cause__, "sqlstate", None) == "40P01"


class MessageSql:
    """The message path's statements for one dialect, built from the schema once."""

    def __init__(self, dialect):
        self.postgres = dialect.name == "postgresql"
        insert = pg.insert if self.postgres else sqlite_dialect.insert
        S = lambda construct: Statement(construct, dialect)  # noqa: E731
        self.claim_nonces = Shapes(lambda n: insert(seen).values(
            [{"key": _b(f"key_{i}", type_=seen.c.key.type), "digest": _param(seen.c.digest),
              "day": _param(seen.c.day)} for i in range(n)]).on_conflict_do_nothing().returning(seen.c.key), dialect)
        self.nonce_digest = S(sa.select(seen.c.digest).where(seen.c.key == _param(seen.c.key)))
        self.unclaim = Shapes(lambda n: seen.delete().where(
            seen.c.key.in_([_b(f"key_{i}", type_=seen.c.key.type) for i in range(n)])), dialect)
        self.redeliver = S(messages.update().where(messages.c.uuid == _param(messages.c.uuid))
                           .values(deliveries=messages.c.deliveries + 1)
                           .returning(messages.c.answer_status, messages.c.answer_type, messages.c.answer_body))
        self.remembered = S(sa.select(seen.c.day).where(seen.c.key == _param(seen.c.key)))
        self.opted_out = Shapes(lambda n: sa.select(optouts.c.number).where(
            optouts.c.number.in_([_b(f"number_{i}", type_=optouts.c.number.type) for i in range(n)]))
            .where(optouts.c.to_number.in_([sa.literal(""), _param(optouts.c.to_number)])), dialect)
        self.recent = S(self._recent())
        self.insert_message = S(messages.insert().values({c: _param(messages.c[c]) for c in MESSAGE_COLUMNS})
                                .returning(messages.c.id))
        self.insert_replies = Shapes(lambda n: replies.insert().values(_rows(replies, REPLY_COLUMNS, n)), dialect)
        self.insert_outbox = Shapes(lambda n: outbox.insert().values(_rows(outbox, OUTBOX_COLUMNS, n)), dialect)
        self.add_optout = S(insert(optouts).values(number=_b("sender", type_=optouts.c.number.type),
                                                   to_number=_param(optouts.c.to_number), since=_param(optouts.c.since),
                                                   via=_param(optouts.c.via))
                            .on_conflict_do_nothing(index_elements=["number", "to_number"]))
        self.remove_optouts = S(optouts.delete().where(optouts.c.number == _b("sender", type_=optouts.c.number.type)))
        self.remove_optout_for = S(optouts.delete().where(optouts.c.number == _b("sender", type_=optouts.c.number.type))
                                   .where(optouts.c.to_number.in_([sa.literal(""), _param(optouts.c.to_number)])))
        if self.postgres:
            keys = _b("keys", type_=pg.ARRAY(sa.BigInteger))
            # Every sender of a batch, tried in the order of the array (a row each, true when
            # taken): a batch never waits for a lock.
            self.lock_all = S(sa.select(sa.func.pg_try_advisory_xact_lock(sa.func.unnest(keys))))
            self.pg_claim = Shapes(self._pg_claim, dialect)
            self.pg_write = Shapes(self._pg_write, dialect)

    @staticmethod
    def _recent(sender=None, since=None) -> sa.Select:
        """Limited replies to a sender since a time: through the messages' (from_number,
        received_at) index, which the message log needs anyway (a reply is as old as its message)."""
        return (sa.select(sa.func.count()).select_from(replies.join(messages, messages.c.id == replies.c.message_id))
                .where(messages.c.from_number == (sender if sender is not None else _b("sender", type_=sa.String)))
                .where(messages.c.received_at >= (since if since is not None else _b("since", type_=sa.DateTime)))
                .where(replies.c.limited))

    # -- PostgreSQL: a whole message in four round trips --------------------------------
    def _pg_claim(self, nonces: int) -> sa.Select:
        """One statement: the sender's lock (for the transaction), the nonces' claim, a retry's
        stored answer (counted), and whether a pruned message had this MessageUUID."""
        lock = sa.select(sa.func.pg_advisory_xact_lock(_b("lock", type_=sa.BigInteger)).label("locked")).cte("lock")
        columns = []
        if nonces:
            rows = [sa.select(_b(f"key_{i}", type_=seen.c.key.type), _param(seen.c.digest), _param(seen.c.day))
                    .select_from(lock) for i in range(nonces)]
            keys = sa.union_all(*rows) if nonces > 1 else rows[0]
            claimed = (pg.insert(seen).from_select(["key", "digest", "day"], keys)
                       .on_conflict_do_nothing().returning(seen.c.key).cte("claimed"))
            columns.append(sa.select(sa.func.array_agg(claimed.c.key)).scalar_subquery().label("claimed"))
        else:  # signatures not checked: nothing to claim
            columns.append(sa.null().label("claimed"))
        again = (messages.update().where(messages.c.uuid == _param(messages.c.uuid))
                 .where(sa.exists(sa.select(lock.c.locked)))
                 .values(deliveries=messages.c.deliveries + 1)
                 .returning(messages.c.answer_status, messages.c.answer_type, messages.c.answer_body).cte("again"))
        columns += [sa.select(again.c.answer_status).scalar_subquery().label("answer_status"),
                    sa.select(again.c.answer_type).scalar_subquery().label("answer_type"),
                    sa.select(again.c.answer_body).scalar_subquery().label("answer_body"),
                    sa.exists(sa.select(seen.c.key).where(seen.c.key == _b("uuid_key", type_=seen.c.key.type)))
                    .label("remembered")]
        return sa.select(*columns).select_from(lock)

    def _pg_write(self, numbers: int, limited: bool, n_replies: int, n_outbox: int, change: str | None,
                  guarded: bool) -> sa.Select:
        """One statement: the message, its replies, its outbox rows and the opt-out change.
        `guarded`: written only if none of the numbers opted out, the sender's recent replies
        are at most `most` (the state the answer was rendered for) and the MessageUUID is not
        remembered as pruned; the id is NULL otherwise, and nothing is written."""
        source = sa.select(*[_param(messages.c[c]) for c in MESSAGE_COLUMNS])
        if guarded:
            source = source.where(~sa.exists().where(seen.c.key == _b("uuid_key", type_=seen.c.key.type)))
            if numbers:
                source = source.where(~sa.exists().where(
                    optouts.c.number == sa.any_(_b("numbers", type_=pg.ARRAY(optouts.c.number.type))))
                    .where(optouts.c.to_number.in_([sa.literal(""), _b("to_g", type_=sa.String)])))
            if limited:
                recent = self._recent(_b("sender_g", type_=sa.String), _b("since", type_=sa.DateTime))
                source = source.where(recent.scalar_subquery() <= _b("most", type_=sa.Integer))
        m = messages.insert().from_select(list(MESSAGE_COLUMNS), source).returning(messages.c.id).cte("m")
        ctes = []
        for table, columns, count, name in ((replies, REPLY_COLUMNS, n_replies, "r"),
                                            (outbox, OUTBOX_COLUMNS, n_outbox, "o")):
            if not count:
                continue
            selects = [sa.select(*[m.c.id if c == "message_id" else _param(table.c[c], f"{table.name}_{c}_{i}")
                                   for c in columns])
                       for i in range(count)]
            ctes.append(table.insert().from_select(list(columns), sa.union_all(*selects) if count > 1 else selects[0])
                        .cte(name))
        sender = _b("sender_c", type_=optouts.c.number.type)
        if change == "out":
            ctes.append(pg.insert(optouts).from_select(
                ["number", "to_number", "since", "via"],
                sa.select(sender, _b("scope_to", type_=sa.String), _b("since_c", type_=sa.DateTime),
                          _b("via_c", type_=sa.String)).select_from(m))
                .on_conflict_do_nothing(index_elements=["number", "to_number"]).cte("x"))
        elif change in ("in", "in-account"):
            gone = optouts.delete().where(optouts.c.number == sender).where(sa.exists(sa.select(m.c.id)))
            if change == "in":
                gone = gone.where(optouts.c.to_number.in_([sa.literal(""), _b("scope_to", type_=sa.String)]))
            ctes.append(gone.cte("x"))
        return sa.select(sa.select(m.c.id).scalar_subquery().label("id")).add_cte(*ctes)


class Messages:
    """The message path and the message log (a mixin of Store)."""

    def _setup(self) -> None:
        super()._setup()
        self._msql = MessageSql(self.engine.dialect)
        self._group = GroupCommit(self._postgres_batch if self.postgres else self._sqlite_batch)

    def message(self, work: Work) -> tuple[Stored | None, bool]:
        """Answer one delivery of a message: (the answer, True if this call decided it).

        A MessageUUID already recorded gets its stored answer (one more delivery counted)
        and `work.finish` does not run. Otherwise `work.finish(state)` renders the answer
        for the state read, and the nonces, the message, its replies, its outbox rows and
        any opt-out change are written in one transaction. A MessageUUID decided so long
        ago that its message is pruned gives (None, False): nothing is decided again. A
        nonce used before by another request raises `Replayed`; a database that does not
        answer raises `Unavailable`.
        """
        outcome = self._group.submit(work)
        if outcome is ALONE:
            return self._message_postgres(work)
        return outcome

    # -- SQLite ----------------------------------------------------------------------------
    def _sqlite_batch(self, jobs: list[Job]) -> None:
        """Write `jobs` in one transaction; when any fails, each again in a transaction of
        its own, so one message's failure never fails another."""
        if len(jobs) > 1:
            results = []
            try:
                with self._write() as conn, self._cursor(conn) as cur:
                    for job in jobs:
                        results.append(self._sqlite_one(cur, job.work))
            except Unavailable as exc:
                if not isinstance(exc, Conflict):  # the database's refusal, not one message's: theirs too
                    for job in jobs:
                        job.finish(error=exc)
                    return
            except Exception:  # noqa: BLE001 - nothing was written: each again below, with its own outcome
                pass
            else:
                for job, (outcome, error) in zip(jobs, results):
                    job.finish(outcome, error)
                return
        for job in jobs:
            try:
                with self._write() as conn, self._cursor(conn) as cur:
                    outcome, error = self._sqlite_one(cur, job.work)
            except Exception as exc:  # noqa: BLE001 - the job's own failure, raised in its thread
                job.finish(error=exc)
            else:
                job.finish(outcome, error)

    def _sqlite_one(self, cur, work: Work) -> tuple[tuple[Stored | None, bool] | None, Exception | None]:
        """One message inside the batch's transaction: (outcome, None), or (None, Replayed)
        after undoing its own claim (a refused request leaves nothing behind)."""
        sql, claim = self._msql, work.claim
        day = day_number(claim.now)
        keys = nonce_keys(claim.nonces)
        if keys:
            new = self._claim_nonces(cur, keys, claim.digest, day)
            replayed, _ = self._check_nonces(cur, keys, new, claim.digest)
            if replayed is not None:
                if new:
                    sql.unclaim(len(new)).run(cur, {f"key_{i}": k for i, k in enumerate(sorted(new))})
                return None, Replayed(replayed.hex())
        row = sql.redeliver.run(cur, {"uuid": claim.uuid}).fetchone()
        if row is not None:
            return (Stored(row[0], row[1], bytes(row[2])), False), None
        if sql.remembered.run(cur, {"key": seen_key("uuid", claim.uuid)}).fetchone() is not None:
            return (None, False), None
        record, stored = work.finish(self._state(cur, claim, work.needs))
        self._insert(cur, claim, record, stored)
        return (stored, True), None

    def _claim_nonces(self, cur, keys: list[bytes], digest: bytes, day: int) -> set[bytes]:
        """Remember each nonce key with the request's digest: the keys that were new."""
        values = {f"key_{i}": key for i, key in enumerate(keys)}
        values.update(digest=digest, day=day)
        return {bytes(row[0]) for row in self._msql.claim_nonces(len(keys)).run(cur, values)}

    def _check_nonces(self, cur, keys: list[bytes], new: set[bytes], digest: bytes) -> tuple[bytes | None, bool]:
        """The keys that were there already, against the request's digest: (the first one
        another request used, a replay, or None; True when every key came before with this
        very request, a retry). Messages and delivery reports both claim nonces this way."""
        repeated = True
        for key in keys:
            if key in new:
                repeated = False
                continue
            kept = self._msql.nonce_digest.run(cur, {"key": key}).fetchone()
            if kept is None:  # gone meanwhile (pruned): nothing to compare
                repeated = False
            elif kept[0] is None or bytes(kept[0]) != digest:  # (a nonce kept before 0003 has no digest)
                return key, False
        return None, repeated

    def _state(self, cur, claim: Claim, needs: Needs) -> NumberState:
        sql = self._msql
        opted: frozenset[str] = frozenset()
        if needs.numbers:
            values = {f"number_{i}": n for i, n in enumerate(needs.numbers)}
            values["to_number"] = claim.to
            opted = frozenset(r[0] for r in sql.opted_out(len(needs.numbers)).run(cur, values))
        recent = 0
        if needs.limit_since is not None:
            recent = sql.recent.run(cur, {"sender": claim.sender, "since": needs.limit_since}).fetchone()[0]
        return NumberState(opted, recent)

    def _insert(self, cur, claim: Claim, record: Record, stored: Stored) -> None:
        sql = self._msql
        message_id = sql.insert_message.run(cur, self._message_values(claim, record, stored)).fetchone()[0]
        if record.replies:
            sql.insert_replies(len(record.replies)).run(cur, self._reply_values(claim, record, message_id))
        if record.outbox:
            sql.insert_outbox(len(record.outbox)).run(cur, self._outbox_values(record, message_id))
        if record.change is not None:
            what, via, scope = record.change
            to = "" if scope == "account" else claim.to
            if what == "out":
                sql.add_optout.run(cur, {"sender": claim.sender, "to_number": to, "since": claim.now, "via": via})
            elif scope == "account":
                sql.remove_optouts.run(cur, {"sender": claim.sender})
            else:
                sql.remove_optout_for.run(cur, {"sender": claim.sender, "to_number": claim.to})

    @staticmethod
    def _message_values(claim: Claim, record: Record, stored: Stored) -> dict:
        values = dict(record.message)
        values.update(uuid=claim.uuid, deliveries=1, answer_status=stored.status,
                      answer_type=stored.content_type, answer_body=stored.body)
        values.setdefault("received_at", claim.now)
        return values

    @staticmethod
    def _reply_values(claim: Claim, record: Record, message_id: int | None) -> dict:
        values: dict = {}
        for i, reply in enumerate(record.replies):
            for column in REPLY_COLUMNS:
                values[f"replies_{column}_{i}"] = reply.get(column)
            values[f"replies_message_id_{i}"] = message_id
            values[f"replies_created_at_{i}"] = claim.now
        return values

    @staticmethod
    def _outbox_values(record: Record, message_id: int | None) -> dict:
        """Outbox rows due now by the real clock (the sender's; a test's rules clock may be another)."""
        queued = utcnow()
        values: dict = {}
        for i, item in enumerate(record.outbox):
            row = {"created_at": queued, "message_id": message_id, "media": item.get("media") or [],
                   "status": item.get("status", "pending"), "attempts": 0, "due_at": queued}
            for column in OUTBOX_COLUMNS:
                values[f"outbox_{column}_{i}"] = row[column] if column in row else item.get(column)
        return values

    # -- PostgreSQL ------------------------------------------------------------------------
    def _postgres_batch(self, jobs: list[Job]) -> None:
        """Write `jobs` in one transaction, their senders' locks tried first in one order. A
        message whose sender's lock another transaction holds, and every message of a batch
        that fails (a replayed nonce, a MessageUUID written elsewhere at the same moment, a
        deadlock), goes back to its own thread to be written alone (`ALONE`): the batch never
        waits for a lock, and the next batch of this process never waits for those."""
        if len(jobs) == 1:
            jobs[0].finish(ALONE)
            return
        sql = self._msql
        keys = sorted({lock_key(job.work.claim.sender) for job in jobs})
        batch, results = [], []
        try:
            with self._write() as conn, self._cursor(conn) as cur:
                held = {key for key, (got,) in zip(keys, sql.lock_all.run(cur, {"keys": keys}).fetchall()) if got}
                batch = [job for job in jobs if lock_key(job.work.claim.sender) in held]
                for job in batch:
                    results.append(self._postgres_one(cur, job.work))
        except Unavailable as exc:
            if not isinstance(exc, Conflict) and not _deadlock(exc):
                for job in jobs:  # the database's refusal (down, no connection): theirs too
                    job.finish(error=exc)
                return
            batch = []
        except Exception:  # noqa: BLE001 - nothing was written: each alone, with its own outcome
            batch = []
        for job, outcome in zip(batch, results):
            job.finish(outcome)
        for job in jobs:
            if not job.done:
                job.finish(ALONE)

    def _message_postgres(self, work: Work) -> tuple[Stored | None, bool]:
        """One message in a transaction of its own (waiting for its sender's lock)."""
        for _attempt in range(3):
            try:
                with self._write() as conn, self._cursor(conn) as cur:
                    return self._postgres_one(cur, work)
            except Unavailable as exc:
                # The same uuid at the same moment from another sender number, or a deadlock
                # PostgreSQL broke by failing this transaction: look again.
                if not isinstance(exc, Conflict) and not _deadlock(exc):
                    raise
        raise Unavailable("could not record the message")

    def _postgres_one(self, cur, work: Work) -> tuple[Stored | None, bool]:
        sql, claim, needs = self._msql, work.claim, work.needs
        keys = nonce_keys(claim.nonces)
        uuid_key = seen_key("uuid", claim.uuid)
        values = {f"key_{i}": key for i, key in enumerate(keys)}
        values.update(lock=lock_key(claim.sender), digest=claim.digest, day=day_number(claim.now),
                      uuid=claim.uuid, uuid_key=uuid_key)
        claimed, status, content_type, body, remembered = sql.pg_claim(len(keys)).run(cur, values).fetchone()
        if keys:
            replayed, _ = self._check_nonces(cur, keys, {bytes(k) for k in claimed or ()}, claim.digest)
            if replayed is not None:
                raise Replayed(replayed.hex())  # (the transaction is rolled back: nothing is kept)
        if status is not None:
            return Stored(status, content_type, bytes(body)), False
        if remembered:
            return None, False
        # That statement's snapshot was taken before the lock's wait; the next one's is taken
        # after it. The answer rendered for a sender with no opt-out and no replies yet is
        # written only if, in that snapshot, that is the state and no prune has remembered the
        # MessageUUID meanwhile (its message deleted under the first statement's feet).
        record, stored = work.finish(FRESH)
        most = needs.most
        limited = needs.limit_since is not None and most is not None
        shape = self._pg_shape(record, needs, limited)
        values = self._pg_values(claim, record, stored)
        values.update(numbers=list(needs.numbers), to_g=claim.to, sender_g=claim.sender,
                      since=needs.limit_since, most=most, uuid_key=uuid_key)
        if sql.pg_write(*shape, True).run(cur, values).fetchone()[0] is not None:
            return stored, True
        if sql.remembered.run(cur, {"key": uuid_key}).fetchone() is not None:
            return None, False
        record, stored = work.finish(self._state(cur, claim, needs))
        shape = self._pg_shape(record, needs, False)
        sql.pg_write(*shape, False).run(cur, self._pg_values(claim, record, stored))
        return stored, True

    @staticmethod
    def _pg_shape(record: Record, needs: Needs, limited: bool) -> tuple:
        change = None
        if record.change is not None:
            what, _via, scope = record.change
            change = "out" if what == "out" else ("in-account" if scope == "account" else "in")
        return (len(needs.numbers), limited, len(record.replies), len(record.outbox), change)

    def _pg_values(self, claim: Claim, record: Record, stored: Stored) -> dict:
        values = self._message_values(claim, record, stored)
        values.update(self._reply_values(claim, record, None))
        values.update(self._outbox_values(record, None))
        if record.change is not None:
            what, via, scope = record.change
            values.update(sender_c=claim.sender, scope_to="" if scope == "account" else claim.to,
                          since_c=claim.now, via_c=via)
        return values

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
                        "dst": "<".join(r["dst"]), "numbers": list(r["dst"]), "text": r["text"], "via": r["via"],
                        "status": r["status"],
                        "kind": r["kind"], "rule": r["rule"], "plivo_uuid": r["plivo_uuid"],
                    }
                    if r["via"] == "api":
                        reply["outbox"] = sent.get((r["message_id"], r["position"]), [])
                    by_message[r["message_id"]].append(reply)
        return [{
            "uuid": r["uuid"], "received_at": iso_utc(r["received_at"]), "from": r["from_number"],
            "to": r["to_number"], "type": r["type"], "text": r["text"], "intent": r["intent"] or None,
            "rules": list(r["rules"]), "deliveries": r["deliveries"], "replies": by_message[r["id"]],
            "compliance": r["compliance"], "possible_optout": bool(r["possible_optout"]),
            "held": list(r["held"]), "answer_status": r["answer_status"],
            "webhooks": calls.get(r["id"], []) if by_message else [],
        } for r in rows]
