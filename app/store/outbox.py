"""The outbox's statements: what a sender claims, and what it writes back.

Rows are written by the inbound transaction (`Store.message`); here they are
claimed one at a time (PostgreSQL `FOR UPDATE SKIP LOCKED`, SQLite's single
writer), leased, and finished. Every write is conditional on the attempt it
belongs to (`id` and `attempts`), so a sender whose lease ran out cannot
overwrite what another sender did since.

Statuses: `pending` (waiting for its turn, `due_at`), `sending` (claimed; the
lease says until when), `sent`, `failed` (refused, or given up), `unknown` (the
request may have left; looked up in Plivo's message list), `cancelled`, `held` (written by an
`OUTBOX_SENDER=hold` instance: never claimed, pruned with its age).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from .reports import status_key  # the store's order of delivery statuses
from .schema import api_slots, optouts, outbox, replies, reports

PENDING, SENDING, SENT, FAILED, UNKNOWN, CANCELLED = "pending", "sending", "sent", "failed", "unknown", "cancelled"
HELD = "held"
KINDS = ("message", "webhook")
STATUSES = (PENDING, SENDING, SENT, FAILED, UNKNOWN, CANCELLED, HELD)
#: Statuses an item can still leave by itself; the rest are final (an operator may retry them).
OPEN = (PENDING, SENDING, UNKNOWN)
#: The one text that goes to a number that just opted out: the confirmation of that opt-out.
TO_OPTED_OUT_ROLES = frozenset({"optout"})
#: The row of api_slots that schedules Plivo Message API requests.
PLIVO_SLOTS = "plivo"


@dataclass(frozen=True, slots=True)
class Item:
    """One outbox row, as a sender or an operator sees it."""

    id: int
    kind: str                 # message or webhook
    role: str                 # reply, forward, optout, optin, help, webhook
    src: str | None
    dst: str                  # a number, or the webhook URL
    type: str                 # sms, mms, whatsapp; webhook: json
    method: str | None
    text: str
    media: tuple[str, ...]
    status: str
    attempts: int
    created_at: datetime
    due_at: datetime
    attempted_at: datetime | None
    lease_until: datetime | None
    message_id: int | None
    position: int | None
    rule: str | None
    message_uuid: str | None
    error: str | None
    retried_at: datetime | None = None

    @property
    def queued_at(self) -> datetime:
        """Since when the item waits to be sent: its creation, or an operator's retry."""
        return self.retried_at or self.created_at


@dataclass(frozen=True, slots=True)
class Claimed:
    """A claimed item and the moment its request may leave: the rate's slot, as unix seconds on
    this host's clock (`not_before`) and as the database's clock has it (`slot_at`, naive UTC;
    what `attempted_at` records when the request leaves)."""

    item: Item
    not_before: float
    slot_at: datetime | None = None


_b = sa.bindparam
_COLUMNS = [outbox.c[name] for name in Item.__slots__]


def _item(row) -> Item:
    values = dict(row._mapping)
    values["media"] = tuple(values["media"] or ())
    return Item(**values)


#: What the partial index ix_outbox_open_dst_src covers, written out as literals (SQLite uses a
#: partial index only when it can see that the query's condition implies the index's).
OPEN_MESSAGES = "kind = 'message' AND status IN ('pending', 'sending', 'unknown')"


def _first_open_to_its_number():
    """The item is the first open message from its number to its number, and no other one to
    that number is in flight or unknown.

    Texts to one number go out one at a time and in order: so one inbound message's replies
    arrive in their order, and no two of our items to one number are ever in flight or
    `unknown` together, so a lookup in Plivo's message list cannot mistake one for the other
    (an operator's retry of an older item waits too). Both look-ups read the partial index
    of open items, whatever the number's history.
    """
    first = outbox.alias("head")
    other = outbox.alias("other")
    same = lambda alias: sa.and_(alias.c.dst == outbox.c.dst, alias.c.src == outbox.c.src,  # noqa: E731
                                 sa.text(" AND ".join(f"{alias.name}.{part}" for part in OPEN_MESSAGES.split(" AND "))))
    first_id = sa.select(sa.func.min(first.c.id)).where(same(first)).scalar_subquery()
    busy = sa.exists().where(same(other), other.c.id != outbox.c.id,
                             sa.text("other.status IN ('sending', 'unknown')"))
    return sa.and_(outbox.c.id == first_id, ~busy)


_DUE = (sa.select(outbox.c.id).where(outbox.c.status == PENDING, outbox.c.due_at <= _b("now"))
        .where(outbox.c.kind.in_(_b("kinds", expanding=True)))
        .where(sa.or_(outbox.c.kind != "message", _first_open_to_its_number()))
        .order_by(outbox.c.due_at, outbox.c.id).limit(1))
_ANY_DUE = (sa.select(outbox.c.id).where(outbox.c.status == PENDING, outbox.c.due_at <= _b("now"))
            .where(outbox.c.kind.in_(_b("kinds", expanding=True))).limit(1))
_GET = sa.select(*_COLUMNS).where(outbox.c.id == _b("id"))
_OPTED_OUT = (sa.select(optouts.c.id).where(optouts.c.number == _b("dst"))
              .where(optouts.c.to_number.in_(["", _b("src")])).limit(1))


def _attempt(item_id: int, attempts: int, *statuses: str):
    """An UPDATE of one attempt of one item, only while it is in one of `statuses`."""
    return (outbox.update().where(outbox.c.id == item_id, outbox.c.attempts == attempts,
                                  outbox.c.status.in_(statuses)))


class OutboxStore:
    """The outbox half of `Store` (mixed into it; uses its transactions)."""

    # -- claiming ------------------------------------------------------------------
    def outbox_due(self, now: datetime, kinds: Sequence[str] = KINDS) -> bool:
        """True when some pending item is due (a cheap read before taking SQLite's write turn;
        on PostgreSQL the claim itself is as cheap, so this says yes and lets it look)."""
        if self.postgres:
            return True
        with self._read() as conn:
            return conn.execute(_ANY_DUE, {"now": now, "kinds": list(kinds)}).first() is not None

    def claim(self, now: datetime, lease: timedelta, interval: float,
              kinds: Sequence[str] = KINDS, give_up: timedelta | None = None) -> Claimed | None:
        """Take the next due item for one attempt, or None when nothing is due.

        In the same transaction: a message to a number that has opted out since it was
        queued is cancelled instead (and the next item looked at), and a Message API
        request takes the next slot of the shared schedule (`interval` seconds apart,
        across every sender on this database), so the caller waits until `not_before`.
        An item older than `give_up` (queued while nothing could send it) fails instead.
        """
        due = _DUE.with_for_update(skip_locked=True) if self.postgres else _DUE
        for _ in range(20):
            with self._write() as conn:
                if self.postgres:
                    # Walk the (status, due_at, id) index to its first free entry. Without this,
                    # a planner whose statistics are older than the backlog (a table that grew
                    # fast, not yet analyzed) sorts every pending row for each claim: 75 ms at
                    # 50,000 pending instead of 0.1 ms.
                    conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
                    conn.exec_driver_sql("SET LOCAL enable_sort = off")
                row = conn.execute(due, {"now": now, "kinds": list(kinds)}).first()
                if row is None:
                    return None
                item = _item(conn.execute(_GET, {"id": row[0]}).first())
                if (item.kind == "message" and item.role not in TO_OPTED_OUT_ROLES
                        and conn.execute(_OPTED_OUT, {"dst": item.dst, "src": item.src or ""}).first()):
                    conn.execute(_attempt(item.id, item.attempts, PENDING).values(
                        status=CANCELLED, finished_at=now, error="the number opted out before it was sent"))
                    continue
                if give_up is not None and now - item.queued_at >= give_up:
                    conn.execute(_attempt(item.id, item.attempts, PENDING).values(
                        status=FAILED, finished_at=now,
                        error=f"gave up: not sent within {give_up.total_seconds() / 3600:g} h"
                              + (f" (last error: {item.error})" if item.error else "")))
                    continue
                not_before, slot_at = time.time(), None
                if item.kind == "message":
                    not_before, slot_at = self._take_slot(conn, PLIVO_SLOTS, interval)
                start = now + timedelta(seconds=max(0.0, not_before - time.time()))
                # A message's attempted_at stays empty until its request leaves (mark_left): a claim
                # whose sender dies before that is simply due again, never looked up (expire_leases).
                # A webhook call (due again either way) starts now.
                attempted = None if item.kind == "message" else start
                conn.execute(_attempt(item.id, item.attempts, PENDING).values(
                    status=SENDING, attempts=item.attempts + 1, attempted_at=attempted, lease_until=start + lease))
                return Claimed(_replace(item, status=SENDING, attempts=item.attempts + 1, attempted_at=attempted,
                                        lease_until=start + lease), not_before, slot_at)
        return None

    def mark_left(self, item: Item, at: datetime, lease_until: datetime, now: datetime) -> Item | None:
        """The request of this claim leaves now (written just before it is sent): from here on, a
        claim that runs out is `unknown` and looked up. None if the claim is no longer this
        sender's (its lease ran out, another sender has it): then nothing may be sent."""
        with self._write() as conn:
            done = conn.execute(_attempt(item.id, item.attempts, SENDING).where(outbox.c.lease_until > now)
                                .values(attempted_at=at, lease_until=lease_until)).rowcount
        return _replace(item, attempted_at=at, lease_until=lease_until) if done else None

    def unmark_left(self, item: Item) -> bool:
        """Undo `mark_left` for a request that did not leave after all (its sender, held up by the
        write itself, was past its slot): the claim stays this sender's, not yet an attempt that left."""
        with self._write() as conn:
            return bool(conn.execute(_attempt(item.id, item.attempts, SENDING).values(attempted_at=None)).rowcount)

    def take_slot(self, interval: float, name: str = PLIVO_SLOTS) -> float:
        """The next slot of the shared request schedule (unix seconds, this host's clock): for lookups."""
        return self.take_slot_at(interval, name)[0]

    def take_slot_at(self, interval: float, name: str = PLIVO_SLOTS) -> tuple[float, datetime]:
        """The next slot: (unix seconds on this host's clock, naive UTC on the database's)."""
        with self._write() as conn:
            return self._take_slot(conn, name, interval)

    def _take_slot(self, conn: sa.Connection, name: str, interval: float) -> tuple[float, datetime]:
        # One row per schedule: the next free moment. Taking a slot moves it `interval` on;
        # a schedule that fell behind the clock starts again from now (no bursts to catch up).
        # PostgreSQL's clock is the one every host shares; its offset to ours is applied.
        if self.postgres:
            db_now, = conn.exec_driver_sql("SELECT extract(epoch from clock_timestamp())::float8").first()
            offset = time.time() - db_now
        else:
            db_now, offset = time.time(), 0.0
        upsert = self._slot_upsert.values(name=name, next_at=db_now + interval)
        upsert = upsert.on_conflict_do_update(
            index_elements=["name"],
            set_={"next_at": sa.func.greatest(api_slots.c.next_at, db_now) + interval} if self.postgres
            else {"next_at": sa.func.max(api_slots.c.next_at, db_now) + interval},
        ).returning(api_slots.c.next_at)
        next_at = conn.execute(upsert).scalar_one()
        slot = next_at - interval
        # The database's slot exactly (slots are exactly `interval` apart there); ours is moved by
        # the offset, which the round trip only ever makes later, never earlier.
        return slot + offset, datetime.fromtimestamp(slot, timezone.utc).replace(tzinfo=None)

    def release(self, item: Item, now: datetime) -> None:
        """A claimed item whose request never left (the sender is stopping): pending again."""
        with self._write() as conn:
            conn.execute(_attempt(item.id, item.attempts, SENDING).values(
                status=PENDING, attempts=item.attempts - 1, due_at=now, lease_until=None))

    # -- outcomes ----------------------------------------------------------------
    def mark_sent(self, item: Item, message_uuids: Sequence[str], now: datetime) -> bool:
        """Sent: keep Plivo's uuid, link it to the reply, and any report that came first."""
        uuid = message_uuids[0] if message_uuids else None
        with self._write() as conn:
            done = conn.execute(_attempt(item.id, item.attempts, SENDING, UNKNOWN).values(
                status=SENT, message_uuid=uuid, finished_at=now, lease_until=None, error=None)).rowcount
            if done and uuid and item.message_id is not None and item.position is not None:
                self._link_reply(conn, item, list(message_uuids))
            return bool(done)

    def _link_reply(self, conn: sa.Connection, item: Item, uuids: list[str]) -> None:
        reply = conn.execute(sa.select(replies.c.id, replies.c.status_key).where(
            replies.c.message_id == item.message_id, replies.c.position == item.position)).first()
        if reply is None:
            return
        conn.execute(replies.update().where(replies.c.id == reply[0], replies.c.plivo_uuid.is_(None))
                     .values(plivo_uuid=uuids[0]))
        # A delivery report can beat the 202 here: link those that came first.
        key = reply[1]
        for rep in conn.execute(sa.select(reports.c.id, reports.c.status, reports.c.sequence, reports.c.params,
                                          reports.c.received_at)
                                .where(reports.c.message_uuid.in_(uuids), reports.c.reply_id.is_(None))).all():
            conn.execute(reports.update().where(reports.c.id == rep[0]).values(reply_id=reply[0]))
            rep_key = status_key(rep[1], rep[2], str((rep[3] or {}).get("MessageTime", "")))
            if key is None or rep_key > key:
                key = rep_key
                conn.execute(replies.update().where(replies.c.id == reply[0])
                             .values(status=rep[1], status_key=rep_key, status_at=rep[4]))

    def mark_retry(self, item: Item, due_at: datetime, error: str | None) -> bool:
        with self._write() as conn:
            return bool(conn.execute(_attempt(item.id, item.attempts, SENDING, UNKNOWN).values(
                status=PENDING, due_at=due_at, lease_until=None, error=error)).rowcount)

    def mark_failed(self, item: Item, error: str | None, now: datetime, *, opt_out: bool = False) -> bool:
        """Refused for good; with `opt_out`, Plivo said the number opted out: remember it here."""
        with self._write() as conn:
            done = conn.execute(_attempt(item.id, item.attempts, SENDING, UNKNOWN).values(
                status=FAILED, finished_at=now, lease_until=None, error=error)).rowcount
            if done and opt_out and item.kind == "message":
                conn.execute(self._insert_optout, {"number": item.dst, "to_number": item.src or "",
                                                   "since": now, "via": "plivo"})
            return bool(done)

    def mark_unknown(self, item: Item, error: str | None, look_up_at: datetime) -> bool:
        with self._write() as conn:
            return bool(conn.execute(_attempt(item.id, item.attempts, SENDING).values(
                status=UNKNOWN, lease_until=None, error=error, due_at=look_up_at)).rowcount)

    def next_lookup(self, item: Item, at: datetime, error: str | None = None) -> bool:
        """An unknown item not settled by this lookup: the next one at `at`."""
        with self._write() as conn:
            values = {"due_at": at} if error is None else {"due_at": at, "error": error}
            return bool(conn.execute(_attempt(item.id, item.attempts, UNKNOWN).values(**values)).rowcount)

    # -- items whose sender went away ------------------------------------------------
    def leases_due(self, now: datetime) -> bool:
        """True when some claim's lease ran out (a cheap read of the few `sending` rows)."""
        with self._read() as conn:
            return conn.execute(sa.select(outbox.c.id).where(outbox.c.status == SENDING, outbox.c.lease_until < now)
                                .limit(1)).first() is not None

    def expire_leases(self, now: datetime) -> tuple[int, int, int]:
        """Claims whose lease ran out. A message whose request left (`attempted_at`, see
        `mark_left`) is `unknown` and will be looked up; one whose request never left is simply
        due again, with no look-up that could take another message for it; a webhook is due
        again (receivers drop duplicates by their delivery id).
        (messages due again, messages unknown, webhooks due again)."""
        expired = sa.and_(outbox.c.status == SENDING, outbox.c.lease_until < now)
        with self._write() as conn:
            unsent = conn.execute(outbox.update().where(expired, outbox.c.kind == "message",
                                                        outbox.c.attempted_at.is_(None)).values(
                status=PENDING, lease_until=None, due_at=now,
                error="the sender stopped before the request left")).rowcount
            messages = conn.execute(outbox.update().where(expired, outbox.c.kind == "message").values(
                status=UNKNOWN, lease_until=None, due_at=now,
                error="the sender stopped before the outcome was known")).rowcount
            hooks = conn.execute(outbox.update().where(expired, outbox.c.kind != "message").values(
                status=PENDING, due_at=now, lease_until=None,
                error="the sender stopped before the outcome was known")).rowcount
        return unsent, messages, hooks

    def give_up_waiting(self, now: datetime, give_up: timedelta) -> int:
        """Pending items queued longer ago than `give_up` fail, all at once (after a long outage
        they would otherwise be taken one by one, ahead of fresh replies)."""
        cutoff = now - give_up
        with self._write() as conn:
            # due_at is never before created_at, so the (status, due_at) index finds them without
            # reading the backlog; one whose due_at moved past the cutoff fails when it comes due.
            return conn.execute(outbox.update().where(outbox.c.status == PENDING, outbox.c.due_at < cutoff,
                                                      outbox.c.created_at < cutoff,
                                                      sa.or_(outbox.c.retried_at.is_(None),
                                                             outbox.c.retried_at < cutoff)).values(
                status=FAILED, finished_at=now,
                error=f"gave up: not sent within {give_up.total_seconds() / 3600:g} h")).rowcount

    def take_lookup(self, item: Item, now: datetime, next_at: datetime) -> bool:
        """This sender looks `item` up now (the next look is at `next_at`): False if another
        sender took this turn first."""
        with self._write() as conn:
            return bool(conn.execute(_attempt(item.id, item.attempts, UNKNOWN).where(outbox.c.due_at <= now)
                                     .values(due_at=next_at)).rowcount)

    def unknown_items(self, now: datetime, limit: int = 5) -> list[Item]:
        """Unknown items whose next lookup is due (`due_at`), the longest waiting first."""
        with self._read() as conn:
            rows = conn.execute(sa.select(*_COLUMNS).where(outbox.c.status == UNKNOWN, outbox.c.due_at <= now)
                                .order_by(outbox.c.due_at, outbox.c.id).limit(limit)).all()
        return [_item(r) for r in rows]

    def resolve_found(self, item: Item, candidates: Sequence[str], now: datetime) -> str | None:
        """An unknown item found in Plivo's list: the first candidate uuid no other item has.

        Serialised per destination, so two senders looking up two unknown items to one
        number at the same moment cannot both take the same uuid.
        """
        with self._write() as conn:
            if self.postgres:
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%(k)s)", {"k": _dst_key(item.dst)})
            wanted = list(candidates)
            taken = set(conn.execute(sa.select(outbox.c.message_uuid)
                                     .where(outbox.c.message_uuid.in_(wanted))).scalars())
            # ... nor is it a text we know came another way (an XML reply Plivo reported on)
            taken.update(conn.execute(sa.select(replies.c.plivo_uuid)
                                      .where(replies.c.plivo_uuid.in_(wanted))).scalars())
            taken.update(conn.execute(sa.select(reports.c.message_uuid)
                                      .where(reports.c.message_uuid.in_(wanted), reports.c.reply_id.isnot(None))
                                      ).scalars())
            free = [u for u in candidates if u not in taken]
            if not free:
                return None
            done = conn.execute(_attempt(item.id, item.attempts, UNKNOWN).values(
                status=SENT, message_uuid=free[0], finished_at=now, lease_until=None,
                error=None)).rowcount
            if not done:
                return None
            if item.message_id is not None and item.position is not None:
                self._link_reply(conn, item, [free[0]])
            return free[0]

    # -- operators -----------------------------------------------------------------
    def list_outbox(self, limit: int = 50, status: str | None = None) -> list[Item]:
        stmt = sa.select(*_COLUMNS).order_by(outbox.c.id.desc()).limit(limit)
        if status:
            stmt = stmt.where(outbox.c.status == status)
        with self._read() as conn:
            return [_item(r) for r in conn.execute(stmt).all()]

    def get_item(self, item_id: int) -> Item | None:
        with self._read() as conn:
            row = conn.execute(_GET, {"id": item_id}).first()
        return None if row is None else _item(row)

    def retry_item(self, item_id: int, now: datetime) -> Item | None:
        """An operator's retry of a failed or cancelled item: pending and due now, with a new day to
        succeed (counted from `retried_at`; `created_at` stays when it was queued)."""
        with self._write() as conn:
            conn.execute(outbox.update().where(outbox.c.id == item_id, outbox.c.status.in_((FAILED, CANCELLED)))
                         .values(status=PENDING, due_at=now, finished_at=None, retried_at=now))
            row = conn.execute(_GET, {"id": item_id}).first()
        return None if row is None else _item(row)

    def cancel_item(self, item_id: int, now: datetime) -> Item | None:
        """An operator's cancel of an item that has not gone (pending or failed). An unknown
        one may have gone: it is left to the lookup, which settles it either way."""
        with self._write() as conn:
            conn.execute(outbox.update().where(outbox.c.id == item_id,
                                               outbox.c.status.in_((PENDING, FAILED)))
                         .values(status=CANCELLED, finished_at=now, lease_until=None,
                                 error="cancelled by an operator"))
            row = conn.execute(_GET, {"id": item_id}).first()
        return None if row is None else _item(row)

    def outbox_counts(self, kinds: Sequence[str] = KINDS) -> dict[str, int]:
        """Items per status (of these kinds)."""
        with self._read() as conn:
            rows = conn.execute(sa.select(outbox.c.status, sa.func.count()).where(outbox.c.kind.in_(list(kinds)))
                                .group_by(outbox.c.status)).all()
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({status: n for status, n in rows})
        return counts


def _replace(item: Item, **changes) -> Item:
    values = {name: getattr(item, name) for name in Item.__slots__}
    values.update(changes)
    return Item(**values)


def _dst_key(dst: str) -> int:
    import hashlib
    return int.from_bytes(hashlib.blake2b(("outbox:" + dst).encode(), digest_size=8).digest(), "big", signed=True)
