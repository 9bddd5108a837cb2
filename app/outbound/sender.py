"""The outbox sender: takes due items from the database and sends them, once.

One `Sender` runs in each web worker (threads, `OUTBOX_SENDER=web`) or in
`flask outbox run`; any number of them share one database. Its threads:

- lanes, one per kind (LANES seats each): Message API sends, and webhook calls.
  A lane claims the next due item of its kind and sends it, so a slow or dead
  webhook receiver never holds a WhatsApp reply. Every request ends within a
  total deadline (deadline.py), well inside its lease. A message's claim comes
  with the next slot of the shared request schedule (`PLIVO_API_RATE` a second
  across every sender); when the slot comes, the request is marked as leaving
  (`attempted_at`, one short write) and sent, and its outcome written back:
  `sent`, `failed` (a 4xx other than 429; kept with Plivo's error), `pending`
  again after a growing, jittered delay (connection errors, timeouts before
  sending, 429 with its Retry-After, 5xx), or `unknown`.
- the look-ups, a thread of their own (so a WhatsApp reply never waits behind
  them; their requests take slots of the same schedule): unknown items are
  looked up in Plivo's message list every few seconds: found, they are `sent`
  with that uuid; still not found a safe delay after the attempt, sent again.
- the lease keeper: every second or so, claims whose lease ran out end, however
  busy the lanes are: a message whose request never left is due again (sent
  with no look-up, which could take another system's message for it), one
  whose request left is `unknown`; items queued too long fail.

It knows nothing of Flask or rules: it gets a `Store`, the two HTTP clients,
and numbers; and, optionally, `on_result(kind, result)`, called with each outcome it
records (kind message, lookup or webhook; result sent, retry, failed or unknown: a
lookup's is what became of the item), which the app wires to its metrics.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from ..logs import scrub
from ..store import Item, Store, StoreError, utcnow
from . import FAILED, RETRY, SENT, UNKNOWN, Result
from .plivo import message_time as plivo_time

log = logging.getLogger("app.outbox")

#: An item still not sent this long after it was queued is given up (failed): a reply a day
#: late does more harm than good. An operator can retry it (`flask outbox retry ID`).
GIVE_UP_S = 86400.0
#: Plivo's list is asked from this long before an attempt: its `message_time__gte` might be read in
#: the account's time zone rather than UTC (the docs do not say), and no zone is further from UTC.
LOOKUP_SINCE_S = 15 * 3600.0
#: A message found in the list counts only within this margin of the attempt (clock skew).
LOOKUP_MARGIN_S = 60.0
#: Unknown items looked up per round, so a few that cannot be settled do not starve the rest.
LOOKUPS_PER_ROUND = 5
#: Threads of each lane in one sender. Message API requests go one at a time per sender (the
#: shared rate spaces them anyway); webhook calls two at a time, in their own lane, so a slow
#: receiver never holds a Message API send, nor the other calls while it holds one seat.
LANES = {"message": 1, "webhook": 2}
#: A request leaves at most this long (or half a slot, if more) after its slot, else takes another.
LATE_S = 0.05
#: Slots taken again for one request before it goes back to the queue (a machine that busy).
MAX_RETAKES = 20

_running: "weakref.WeakSet[Sender]" = weakref.WeakSet()


def stop_all(timeout: float = 10.0) -> None:
    """Stop every sender thread of this process (gunicorn's worker_exit hook calls this)."""
    deadline = time.monotonic() + timeout
    for sender in list(_running):
        sender.stop(max(0.0, deadline - time.monotonic()))


def backoff(attempts: int, max_delay: float, hint: float | None = None) -> float:
    """Seconds before the next try: 1, 2, 4 ... up to `max_delay`, each between half and all
    of that (jitter, so items that failed together do not come back together); a server's
    Retry-After is honoured as the least wait."""
    ceiling = min(max_delay, 2.0 ** max(0, attempts - 1))
    delay = ceiling * random.uniform(0.5, 1.0)
    if hint is not None:
        delay = max(delay, hint + random.uniform(0.0, 0.25))
    return delay


def masked(text: str | None) -> str | None:
    """An error as logs show it (`logs.scrub`: numbers cut to their last four digits, URLs'
    credentials and query strings dropped). The formatters scrub every extra field anyway;
    this keeps the error safe for any other handler too."""
    return scrub(text) if text else text


def show_dst(item: Item) -> str:
    """A destination as logs show it: a number's last four digits, a URL's host."""
    if item.kind == "webhook":
        return urlsplit(item.dst).hostname or "?"
    return "…" + item.dst[-4:]


class Sender:
    def __init__(self, store: Store, *, api=None, webhooks=None, rate: float = 5.0, lease: float = 60.0,
                 max_delay: float = 300.0, callback_url: str | None = None, poll: float = 1.0,
                 reconcile_every: float = 5.0, give_up: float = GIVE_UP_S,
                 on_result: Callable[[str, str], None] | None = None):
        self.store = store
        self.on_result = on_result    # on_result(kind, result) for each outcome recorded (metrics)
        self.api = api                # plivo.MessageApi, or None without PLIVO_AUTH_ID
        self.webhooks = webhooks      # webhook.WebhookClient, or None without WEBHOOK_SECRET
        self.interval = 1.0 / rate
        #: A request leaves at most this long after its slot; a sender held up longer (a busy
        #: machine) takes a new slot rather than send into the next one's.
        self.late = max(self.interval / 2, LATE_S)
        self.lease = timedelta(seconds=lease)
        self.max_delay = max_delay
        self.callback_url = callback_url
        self.poll = poll
        self.reconcile_every = reconcile_every
        self.give_up = timedelta(seconds=give_up)
        #: After this long without finding it, an unknown item is sent again: long enough for
        #: Plivo's list to show a message it accepted.
        self.safe_delay = timedelta(seconds=2 * lease)
        #: How often an unknown item is looked up until it is found or the safe delay is over.
        self.lookup_every = timedelta(seconds=min(30.0, max(2.0, lease / 4)))
        self.kinds = tuple(k for k, client in (("message", api), ("webhook", webhooks)) if client is not None)
        self._stop = threading.Event()
        self._wakes: list[threading.Event] = []
        self._threads: list[threading.Thread] = []
        self._next_reconcile = 0.0

    # -- the threads -------------------------------------------------------------------
    def start(self) -> None:
        """One thread per lane seat (LANES) and the lease keeper; they run until `stop`."""
        self._threads = self._spawn(until_idle=False)
        _running.add(self)

    def wake(self) -> None:
        """Something was queued: look now instead of at the next poll."""
        for wake in list(self._wakes):
            wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the attempts in flight (bounded by the HTTP deadline), then return."""
        self._stop.set()
        self.wake()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        _running.discard(self)

    def run(self, until_idle: bool = False) -> None:
        """Send until stopped (or, with `until_idle`, until nothing is due or unresolved)."""
        if not self.kinds:
            log.warning("outbox sender has nothing to send with: set PLIVO_AUTH_ID and/or WEBHOOK_SECRET")
            return
        self._threads = self._spawn(until_idle)
        for thread in self._threads:
            while thread.is_alive():
                thread.join(0.5)

    def _spawn(self, until_idle: bool) -> list[threading.Thread]:
        """The lanes: Message API sends, look-ups and webhook calls never wait behind each other."""
        lanes, wakes = [], []
        for kind, client in (("message", self.api), ("webhook", self.webhooks)):
            if client is None:
                continue
            for seat in range(LANES[kind]):
                own = client if seat == 0 or not hasattr(client, "clone") else client.clone()
                wakes.append(threading.Event())
                lanes.append(threading.Thread(target=self._lane, name=f"responder-outbox-{kind}-{seat}", daemon=True,
                                              args=(kind, own, wakes[-1], until_idle)))
        if self.api is not None:
            lanes.append(threading.Thread(target=self._lookups, args=(until_idle,),
                                          name="responder-outbox-lookups", daemon=True))
        keeper = threading.Thread(target=self._keep_leases, args=(until_idle, lanes),
                                  name="responder-outbox-leases", daemon=True)
        self._wakes = wakes
        for thread in (*lanes, keeper):
            thread.start()
        return [*lanes, keeper]

    def _lane(self, kind: str, client, wake: threading.Event, until_idle: bool) -> None:
        """One seat of a lane: claims and sends items of its kind."""
        kinds = (kind,)
        failures = 0
        while not self._stop.is_set():
            try:
                busy = self._step(kinds, client)
                failures = 0
            except StoreError as exc:
                failures += 1
                log.warning("outbox: the database did not answer, trying again: %s", exc)
                busy = False
            except Exception:  # the sender must outlive any one item
                failures += 1
                log.exception("outbox: unexpected error")
                busy = False
            if busy:
                continue
            if until_idle and failures == 0 and not self._open_work(kinds):
                return
            wake.wait(self.poll * min(2 ** failures, 30))
            wake.clear()

    def _lookups(self, until_idle: bool) -> None:
        """Unknown items looked up in Plivo's message list every `reconcile_every` seconds, in a
        thread of their own: up to LOOKUPS_PER_ROUND items of up to LIST_MAX_PAGES pages, each
        page up to the HTTP deadline, would otherwise hold every Message API send meanwhile."""
        failures = 0
        while not self._stop.is_set():
            try:
                self.look_up_unknown()
                failures = 0
            except StoreError as exc:
                failures += 1
                log.warning("outbox: the database did not answer, trying again: %s", exc)
            except Exception:  # the look-ups must outlive any one item
                failures += 1
                log.exception("outbox: unexpected error")
            if until_idle and failures == 0 and not self._open_work(("message",)):
                return
            self._stop.wait(self.reconcile_every * min(2 ** failures, 30))

    def _keep_leases(self, until_idle: bool, lanes: list[threading.Thread]) -> None:
        """Leases run out on time whatever the lanes are doing: a cheap look every second or so."""
        tick = min(1.0, self.reconcile_every, self.lease.total_seconds() / 5)
        next_give_up = 0.0
        while not self._stop.wait(tick):
            if until_idle and not any(t.is_alive() for t in lanes):
                return
            try:
                if self.expire_leases():
                    self.wake()
                if time.monotonic() >= next_give_up:
                    next_give_up = time.monotonic() + self.reconcile_every
                    self.give_up_waiting()
            except StoreError as exc:
                log.warning("outbox: the database did not answer, trying again: %s", exc)
            except Exception:  # logged with its traceback; the sender must outlive any one item
                log.exception("outbox: unexpected error")

    def _open_work(self, kinds: tuple[str, ...]) -> bool:
        """Items of these kinds still to move (unknown ones only when they can be looked up)."""
        counts = self.store.outbox_counts(kinds)
        return bool(counts["pending"] or counts["sending"]
                    or (counts["unknown"] and self.api is not None and "message" in kinds))

    # -- one step ----------------------------------------------------------------------
    def run_once(self) -> bool:
        """Reconcile if it is time, then claim and send one due item of any kind; True if one was
        handled (one thread doing everything: for tests and tools; `start` runs the lanes)."""
        if time.monotonic() >= self._next_reconcile:
            self._next_reconcile = time.monotonic() + self.reconcile_every
            self.reconcile()
        if not self.kinds:
            return False
        return self._step(self.kinds, self.webhooks)

    def _step(self, kinds: tuple[str, ...], webhooks) -> bool:
        """Claim one due item of `kinds` and send it; False if none was due."""
        now = utcnow()
        if not self.store.outbox_due(now, kinds):
            return False
        claimed = self.store.claim(now, self.lease, self.interval, kinds, self.give_up)
        if claimed is None:
            return False
        item = claimed.item
        if item.kind == "message":
            item = self._leave(claimed)
            if item is None:
                return True
            result = self.attempt(item)
        else:
            result = webhooks.call(item.dst, item.method or "POST", item.text.encode("utf-8"), item_id=item.id)
        self.record(item, result)
        return True

    def _leave(self, claimed) -> Item | None:
        """Wait for the claim's slot and mark the request as leaving; None if it must not go.

        A request leaves in its slot or at most `late` after it; a sender held up longer takes
        the next free slot instead. So Message API requests are never closer together than the
        schedule's slots (PLIVO_API_RATE a second, across every sender of the database).
        """
        item, slot, at = claimed.item, claimed.not_before, claimed.slot_at or utcnow()
        for _ in range(MAX_RETAKES):
            wait = slot - time.time()
            if wait > 0 and self._stop.wait(wait):
                self.store.release(item, utcnow())  # stopping before the request left: not an attempt
                return None
            if time.time() <= slot + self.late:
                left = self.store.mark_left(item, at, utcnow() + self.lease, utcnow())
                if left is None:
                    log.warning("outbox: the claim ran out before its request left; not sent",
                                extra=self._fields(item))
                    return None
                if time.time() <= slot + self.late:
                    return left
                # The write itself held it up (SQLite's write turn, a slow PostgreSQL round trip):
                # it did not leave after all; a new slot.
                if not self.store.unmark_left(left):
                    return None  # no longer this sender's claim: nothing may be sent
            slot, at = self.store.take_slot_at(self.interval)
        self.store.release(item, utcnow())
        log.warning("outbox: too busy to send within %.0f ms of a slot; trying later", self.late * 1000,
                    extra=self._fields(item))
        return None

    def attempt(self, item: Item) -> Result:
        return self.api.send(src=item.src, dst=item.dst, text=item.text, type=item.type,
                             media_urls=item.media, callback_url=self.callback_url)

    def record(self, item: Item, result: Result) -> None:
        """Write down one attempt's outcome."""
        now = utcnow()
        outcome = result.outcome
        if outcome == UNKNOWN and item.kind == "webhook":
            outcome = RETRY  # webhooks are delivered at least once; receivers drop duplicates
        if outcome == SENT:
            done = self._keep_sent(item, result, now)
        elif outcome == FAILED:
            done = self.store.mark_failed(item, result.error, now, opt_out=result.opted_out)
            if done and result.opted_out:
                log.warning("outbox: Plivo says the number opted out; recorded as an opt-out",
                            extra=self._fields(item))
        elif outcome == UNKNOWN:
            done = self.store.mark_unknown(item, result.error, now)
        elif now - item.queued_at >= self.give_up:
            outcome = FAILED
            done = self.store.mark_failed(
                item, f"gave up after {item.attempts} attempts in {self.give_up.total_seconds() / 3600:g} h: "
                      f"{result.error}", now)
        else:
            delay = backoff(item.attempts, self.max_delay, result.delay)
            done = self.store.mark_retry(item, now + timedelta(seconds=delay), result.error)
            outcome = f"retry in {delay:.1f} s"
        if done:
            self._count(item.kind, outcome if outcome in (SENT, FAILED, UNKNOWN) else RETRY)
        fields = self._fields(item, status=result.status, error=masked(result.error),
                              message_uuid=result.message_uuid)
        if not done:
            log.warning("outbox: outcome of a late attempt not recorded (the item changed meanwhile)",
                        extra={**fields, "outcome": outcome})
        elif outcome == SENT:
            log.info("outbox item sent", extra=fields)
        else:
            log.warning("outbox item not sent: %s", outcome, extra=fields)

    def _keep_sent(self, item: Item, result: Result, now: datetime) -> bool:
        """Write down a 202: tried a few times, since losing it means a lookup (or a resend)."""
        for attempt in range(3):
            try:
                return self.store.mark_sent(item, result.message_uuids, now)
            except StoreError as exc:
                if attempt == 2:
                    log.error("outbox: sent, but the database did not take it; it will be looked up: %s", exc,
                              extra=self._fields(item, message_uuid=result.message_uuid))
                    raise
                self._stop.wait(0.5 * (attempt + 1))
        return False

    def _count(self, kind: str, result: str, times: int = 1) -> None:
        if self.on_result is not None:
            for _ in range(times):
                self.on_result(kind, result)

    @staticmethod
    def _fields(item: Item, **more) -> dict:
        fields = {"item": item.id, "kind": item.kind, "role": item.role, "attempts": item.attempts,
                  "dst": show_dst(item)}
        fields.update((k, v) for k, v in more.items() if v is not None)
        return fields

    # -- items whose outcome is unknown ----------------------------------------------
    def reconcile(self) -> None:
        """Expired leases end; items waiting too long fail; unknown items are looked up in
        Plivo's message list."""
        self.expire_leases()
        self.give_up_waiting()
        self.look_up_unknown()

    def expire_leases(self) -> int:
        """Claims whose lease ran out: due again if their request never left, else unknown."""
        unsent, unknown, hooks = self.store.expire_leases(utcnow()) if self.store.leases_due(utcnow()) else (0, 0, 0)
        if unsent or hooks:
            log.warning("outbox: %d claim(s) ran out before their request left: due again", unsent + hooks)
        if unknown:
            log.warning("outbox: %d claim(s) ran out after their request left: to be looked up", unknown)
        self._count("message", UNKNOWN, unknown)
        self._count("webhook", RETRY, hooks)  # (a webhook's attempt cut short: due again)
        return unsent + unknown + hooks

    def give_up_waiting(self) -> None:
        old = self.store.give_up_waiting(utcnow(), self.give_up)
        if old:
            log.error("outbox: gave up on %d item(s) not sent within %g h", old, self.give_up.total_seconds() / 3600)

    def look_up_unknown(self) -> None:
        if self.api is None:
            return
        now = utcnow()
        for item in self.store.unknown_items(now, LOOKUPS_PER_ROUND):
            if self._stop.is_set():
                return
            if not self.store.take_lookup(item, now, now + self.lookup_every):
                continue  # another sender is looking it up
            try:
                self._look_up(item)
            except StoreError:
                raise
            except Exception:  # one odd answer must not stop the other lookups
                log.exception("outbox: lookup failed", extra=self._fields(item))

    def _pace(self) -> bool:
        """Wait for the next slot of the shared request schedule (a new one if held up past
        `late`, as for a send); False if stopping meanwhile."""
        for _ in range(MAX_RETAKES):
            slot = self.store.take_slot(self.interval)
            if slot > time.time() and self._stop.wait(slot - time.time()):
                return False
            if time.time() <= slot + self.late:
                return True
        return False

    def _look_up(self, item: Item) -> None:
        attempted = item.attempted_at or item.created_at
        # Only a message of the same type sent while this attempt could have been in flight.
        earliest = attempted - timedelta(seconds=LOOKUP_MARGIN_S)
        latest = attempted + self.lease + timedelta(seconds=LOOKUP_MARGIN_S)
        found = self.api.find(src=item.src, dst=item.dst, since=attempted - timedelta(seconds=LOOKUP_SINCE_S),
                              stop_before=earliest, pace=self._pace)
        now = utcnow()
        candidates = []
        for m in sorted(found.messages, key=lambda m: str(m.get("time") or "")):
            if m.get("type") and m["type"] != item.type:
                continue
            sent_at = plivo_time(m.get("time"))
            if sent_at is not None and not earliest <= sent_at <= latest:
                continue
            candidates.append(m["uuid"])
        uuid = self.store.resolve_found(item, candidates, now) if candidates else None
        if uuid is not None:
            self._count("lookup", SENT)
            log.info("outbox item found in Plivo's message list: it was sent",
                     extra=self._fields(item, message_uuid=uuid))
        elif not found.ok:
            if found.delay:
                wait = max(found.delay, self.lookup_every.total_seconds())
                self.store.next_lookup(item, now + timedelta(seconds=wait))
            log.warning("outbox: message list lookup failed, will try again",
                        extra=self._fields(item, error=masked(found.error)))
        elif now - attempted >= self.safe_delay:
            if self.store.mark_retry(item, now, "not in Plivo's message list: sending again"):
                self._count("lookup", RETRY)
                log.warning("outbox item not in Plivo's message list: sending it again", extra=self._fields(item))
            return
        if uuid is None and now - item.queued_at >= self.give_up:
            self.store.mark_failed(item, f"gave up: its outcome is unknown and it was not found in Plivo's "
                                         f"message list within {self.give_up.total_seconds() / 3600:g} h", now)
            self._count("lookup", FAILED)
            log.error("outbox: gave up on an item whose outcome is unknown", extra=self._fields(item))
        elif uuid is None:
            self._count("lookup", UNKNOWN)  # not found yet, or the list did not answer: looked up again

def timeouts(lease: float) -> tuple[float, float, float]:
    """(connect, read, total) timeouts: every request ends, whatever the other side does, well
    inside its lease (20 s with the default 60 s lease)."""
    return min(5.0, lease / 6), min(15.0, lease / 3), min(20.0, lease / 2)


def build_sender(store: Store, settings, on_result: Callable[[str, str], None] | None = None) -> Sender:
    """A sender from the app's settings (`config.load`): the clients it can use, and its pace;
    `on_result(kind, result)` is told each outcome it records."""
    from .plivo import MessageApi
    from .webhook import WebhookClient

    connect, read, total = timeouts(settings["OUTBOX_LEASE"])
    tokens = settings.get("PLIVO_AUTH_TOKENS") or ()
    api = None
    if settings.get("PLIVO_AUTH_ID") and tokens:
        api = MessageApi(settings["PLIVO_API_URL"], settings["PLIVO_AUTH_ID"], tokens[0],
                         connect_timeout=connect, read_timeout=read, deadline=total)
    webhooks = None
    if settings.get("WEBHOOK_SECRET"):
        webhooks = WebhookClient(settings["WEBHOOK_SECRET"], connect_timeout=connect, read_timeout=read,
                                 deadline=total)
    public = settings.get("PUBLIC_URL")
    return Sender(store, api=api, webhooks=webhooks, rate=settings["PLIVO_API_RATE"],
                  lease=settings["OUTBOX_LEASE"], max_delay=settings["OUTBOX_MAX_DELAY"],
                  callback_url=f"{public}/status" if public else None, on_result=on_result)
