"""The retention prune: what it deletes, and that it never keeps inbound messages waiting.

SQLite has one writer at a time. The prune deletes in short batches and, between two of
them, lets every writer already waiting for a turn go first (`WriteTurn.hand_over`):
the unit tests show the hand-off between threads and between processes (two open lock
files), the server test that inbound messages keep their pace while tens of thousands of
old rows are pruned beside them. The full-size figures (1M messages) come from
`BENCH_PRUNE=1 bench/run`.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from conftest import migrated_sqlite, sms
from old_rows import fill
from servers import Server
from test_state_server import post
from waiting import wait_until

from app.store import Store, utcnow
from app.store.db import parse_url
from app.store.writer import WriteTurn

#: Old messages the server test prunes (with their replies, reports, nonces: about 205,000 rows).
PRUNED = 50_000
#: Inbound p99 allowed while it runs: far above the few ms a message waits for a batch (a busy
#: 2-core machine included), far below the whole prune that the old prune made them wait.
P99_BOUND_S = 1.0
#: Messages a second the three senders get answered at least while it runs (each sends one
#: after another, 20 ms apart: about 100/s on an idle machine).
MIN_RATE = 5


def rows(url: str, sql: str) -> int:
    engine = sa.create_engine(parse_url(url))
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql)).scalar_one()
    finally:
        engine.dispose()


# -- the hand-off ---------------------------------------------------------------------------
def _writer_turn(writer: WriteTurn, order: list[str], name: str) -> threading.Thread:
    def turn():
        with writer:
            order.append(name)
    thread = threading.Thread(target=turn, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("where", ["another process", "the same process"])
def test_a_waiting_writer_has_its_turn_before_the_prune_takes_the_next(tmp_path, where):
    path = str(tmp_path / "db.sqlite3")
    prune = WriteTurn(path)
    # Two open lock files exclude each other as two processes do; one writer is shared by threads.
    inbound = WriteTurn(path) if where == "another process" else prune
    order: list[str] = []
    try:
        with prune:
            thread = _writer_turn(inbound, order, "inbound")
            wait_until(prune.waiting, 10, "the inbound writer to be seen waiting")
        prune.hand_over(0.0, 10.0)
        with prune:
            order.append("prune")
        thread.join(10)
        assert order == ["inbound", "prune"]
        assert not prune.waiting()
    finally:
        prune.close()
        if inbound is not prune:
            inbound.close()


def test_a_stream_of_waiting_writers_holds_the_prune_back_only_so_long(tmp_path):
    path = str(tmp_path / "db.sqlite3")
    prune = WriteTurn(path)
    # another process's writer that seems to wait for ever: the queue file held shared
    other = os.open(path + ".writer-lock-queue", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(other, fcntl.LOCK_SH)
    try:
        assert prune.waiting()
        started = time.monotonic()
        prune.hand_over(0.0, 0.2)
        assert 0.2 <= time.monotonic() - started < 5
    finally:
        os.close(other)
        prune.close()


# -- what it deletes ------------------------------------------------------------------------
def test_prune_deletes_every_old_row_in_many_batches_and_nothing_newer(database, tmp_path):
    """Old messages with their replies, reports, nonces and MessageUUIDs (`seen`, pruned here at
    the same age since no longer replay_days is given) and finished or held outbox items go, over
    many batches (walked in order, each its own transaction); new ones, items still to send and
    opt-outs stay."""
    written = fill(database, 3000, days_old=100, spacing_s=60, outbox_every=3)
    fill(database, 5, days_old=1, spacing_s=60, outbox_every=3)  # 5 newer messages, 1 finished item
    with sa.create_engine(parse_url(database)).begin() as conn:  # an old message's item still to send
        conn.execute(sa.text("UPDATE outbox SET status = 'pending', finished_at = NULL WHERE id = 1"))
        # An old item an OUTBOX_SENDER=hold instance wrote: never sent, gone with its message.
        conn.execute(sa.text("UPDATE outbox SET status = 'held', finished_at = NULL WHERE id = 2"))
    store = Store(database)
    try:
        store.add_optout("14155550111", now=utcnow() - timedelta(days=300))
        counts = store.prune(30)
        assert counts == {"outbox": written["outbox"] - 1, "reports": 3000, "messages": 3000, "seen": 6000}
        for table in ("messages", "replies", "reports"):
            assert rows(database, f"SELECT count(*) FROM {table}") == 5, table
        assert rows(database, "SELECT count(*) FROM seen") == 5  # their nonces (their uuids: their rows)
        assert rows(database, "SELECT count(*) FROM outbox") == 2
        assert rows(database, "SELECT count(*) FROM outbox WHERE message_id IS NULL AND status = 'pending'") == 1
        assert [o["number"] for o in store.list_optouts()] == ["14155550111"]
        assert store.prune(30) == {"outbox": 0, "reports": 0, "messages": 0, "seen": 0}
    finally:
        store.dispose()


# -- against the real server ----------------------------------------------------------------
@pytest.mark.server
def test_inbound_messages_keep_their_pace_while_a_large_prune_runs(tmp_path):
    """Tens of thousands of old messages pruned by another process (as `db prune` or a worker
    does) while signed messages arrive: each still answered 200 within P99_BOUND_S. The old
    prune retook SQLite's write turn microseconds after leaving it, and messages waited for
    the whole prune (or got 503 after 5 s)."""
    url = migrated_sqlite(tmp_path / "db")
    fill(url, PRUNED)
    srv = Server(tmp_path, DATABASE_URL=url, RETENTION_DAYS="3650")
    store = Store(url)
    results: list[tuple[float, float, int]] = []  # (sent at, seconds, status)
    prune: dict = {}

    def run_prune():
        prune["start"] = time.monotonic()
        try:
            prune["counts"] = store.prune(30)
        finally:
            prune["end"] = time.monotonic()

    def sender(index: int):
        for n in range(400):  # bounded: at most 400 messages a sender
            if "end" in prune:
                return
            sent = time.monotonic()
            status = post(srv, sms("hours", From=f"1415555{index:02d}{n % 100:02d}")).status_code
            results.append((sent, time.monotonic() - sent, status))
            time.sleep(0.02)  # a steady pace (50/s at most per sender), not synchronisation

    try:
        assert post(srv, sms("hours")).status_code == 200
        pruner = threading.Thread(target=run_prune, daemon=True)
        senders = [threading.Thread(target=sender, args=(i,), daemon=True) for i in range(3)]
        pruner.start()
        for thread in senders:
            thread.start()
        pruner.join(180)
        for thread in senders:
            thread.join(60)
        assert not pruner.is_alive() and not any(t.is_alive() for t in senders)
        assert prune["counts"]["messages"] == PRUNED
        during = sorted(seconds for sent, seconds, _ in results if prune["start"] <= sent < prune["end"])
        statuses = {status for _, _, status in results}
        assert statuses == {200}, statuses
        assert during, "no message was sent while the prune ran"
        p99 = during[min(len(during) - 1, int(0.99 * len(during)))]
        assert p99 < P99_BOUND_S, (f"inbound p99 {p99 * 1000:.0f} ms during a prune of "
                                   f"{prune['end'] - prune['start']:.1f} s ({len(during)} messages)")
        # Starved, each sender gets about one message through per prune; here they keep going.
        seconds = prune["end"] - prune["start"]
        assert len(during) >= max(20, MIN_RATE * seconds), f"only {len(during)} messages in {seconds:.1f} s"
    finally:
        store.dispose()
        srv.stop()
