"""The outbox against the real thing: gunicorn (each worker with its sender thread) and the
loopback stand-in of Plivo's API, through outages, restarts, SIGKILL and two instances.

Every wait polls a condition with a deadline; the stand-in counts what it received,
so "sent once" is what Plivo would have seen.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from app.outbound import webhook
from app.plivoxml import EMPTY
from app.store.db import parse_url
from conftest import TOKEN, empty_postgres, postgres_database, sms
from plivo_standin import Answer, PlivoStandin
from servers import Server, Servers
from test_outbox import Receiver, assert_slots_held, quote_and_hours, wait_until as wait_for

SECRET = "whsec_server_test_secret"


@pytest.fixture
def standin():
    with PlivoStandin(token=TOKEN) as s:
        yield s


@pytest.fixture
def start(tmp_path, standin):
    """start(url, **settings): a gunicorn on `url` sending to the stand-in, stopped at the end."""
    with Servers(tmp_path, PLIVO_AUTH_ID=standin.auth_id, PLIVO_API_URL=standin.url, OUTBOX_LEASE="6",
                 OUTBOX_MAX_DELAY="0.5", PLIVO_API_RATE="50") as start_server:
        yield start_server


def whatsapp(text: str, **extra) -> dict:
    return sms(text, Type="whatsapp", Text=None, Body=text, **extra)


def outbox_status(url: str) -> Counter:
    engine = sa.create_engine(parse_url(url))
    try:
        with engine.connect() as conn:
            return Counter(dict(conn.execute(sa.text("SELECT status, count(*) FROM outbox GROUP BY status")).all()))
    finally:
        engine.dispose()




def deliver(srv: Server, messages: list[dict]) -> None:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(srv.post, messages))
    assert [(r.status_code, r.content) for r in answers] == [(200, EMPTY)] * len(messages)


def sent_once_each(standin: PlivoStandin, messages: list[dict]) -> None:
    received = Counter(c.json["dst"] for c in standin.sends)
    assert received == Counter(m["From"] for m in messages), received


def kill_all(srv: Server) -> None:
    """SIGKILL the master and every worker at once: nobody gets to finish anything."""
    for pid in [*srv.workers(), srv.proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    srv.proc.wait(10)


def test_whatsapp_answered_through_the_api_once_and_no_secret_or_text_in_the_logs(database, start, standin):
    receiver = Receiver()
    try:
        rules = f"""version: 1
rules:
  - name: lead
    when: {{keyword: quote}}
    reply: "Thanks, we will call you back today."
    webhook: "{receiver.url}"
"""
        srv = start(database, rules=rules, WEBHOOK_SECRET=SECRET, LOG_LEVEL="DEBUG")
        params = whatsapp("quote for my secret garden project")
        assert srv.post(params).content == EMPTY
        assert standin.wait_for_sends(1, 20)
        wait_for(lambda: len(receiver.calls) == 1, 20, "the webhook call")
        assert srv.post(params).content == EMPTY  # Plivo's retry
        wait_for(lambda: outbox_status(database) == Counter(sent=2), 20, "both items sent")
        [call] = standin.sends
        assert call.json["type"] == "whatsapp" and call.json["text"] == "Thanks, we will call you back today."
        assert len(receiver.calls) == 1
        headers = {k.lower(): v for k, v in receiver.calls[0]["headers"].items()}
        webhook.verify(SECRET, headers["x-responder-signature"], receiver.calls[0]["body"])
    finally:
        receiver.close()
    srv.stop()
    log = srv.log_path.read_text()
    assert "outbox item sent" in log
    for secret in (TOKEN, SECRET, "secret garden", "call you back", "crm-secret", params["From"]):
        assert secret not in log, secret


def test_api_down_while_20_messages_arrive_then_a_restart_each_sent_once_when_it_is_back(database, start, standin):
    standin.stop_listening()
    srv = start(database)
    messages = [whatsapp("hours", From=f"1646555{n:04d}") for n in range(20)]
    deliver(srv, messages)
    wait_for(lambda: sum(outbox_status(database).values()) == 20, 20, "20 items queued")
    assert outbox_status(database)["sent"] == 0
    srv.stop()  # a restart with the backlog in the database
    again = start(database)
    standin.start_listening()
    assert standin.wait_for_sends(20, 60)
    wait_for(lambda: outbox_status(database) == Counter(sent=20), 30, "all 20 sent")
    sent_once_each(standin, messages)
    again.stop()


def test_sigkill_while_sends_are_in_flight_then_restart_every_item_sent_none_twice(database, start, standin):
    standin.default = Answer(delay=2.0)  # a slow API: requests are in flight when the kill comes
    srv = start(database, PLIVO_API_RATE="20")
    messages = [whatsapp("hours", From=f"1718555{n:04d}") for n in range(6)]
    deliver(srv, messages)
    assert standin.wait_for_sends(2, 20)  # two workers, each waiting on an answer
    kill_all(srv)
    in_flight = len(standin.sends)
    standin.default = Answer()
    start(database)
    wait_for(lambda: outbox_status(database) == Counter(sent=6), 60, "all 6 sent")
    sent_once_each(standin, messages)
    assert in_flight >= 2
    # the in-flight ones were found in Plivo's message list, not sent again
    assert any(c.method == "GET" for c in standin.calls)


def test_two_instances_on_one_postgresql_drain_one_outbox_once_and_share_the_rate(start, standin):
    url = postgres_database()
    empty_postgres()
    standin.stop_listening()  # let the backlog build so both instances drain it together
    a, b = start(url, PLIVO_API_RATE="10"), start(url, PLIVO_API_RATE="10")
    messages = [whatsapp("hours", From=f"1202555{n:04d}") for n in range(30)]
    deliver(a, messages[::2])
    deliver(b, messages[1::2])
    wait_for(lambda: sum(outbox_status(url).values()) == 30, 20, "30 items queued")
    assert outbox_status(url)["sent"] == 0
    standin.start_listening()
    assert standin.wait_for_sends(30, 60)
    wait_for(lambda: outbox_status(url) == Counter(sent=30), 30, "all 30 sent")
    sent_once_each(standin, messages)
    # The rate, as it is guaranteed whatever the machine's load: each request in its own slot,
    # slots 1/10 s apart across both instances, none reaching the API before its slot.
    assert_slots_held(outbox_sent(url), standin, 30, 10)


def outbox_sent(url: str) -> list:
    """(message_uuid, attempted_at) of the sent items."""
    engine = sa.create_engine(parse_url(url))
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(
                "SELECT message_uuid, attempted_at FROM outbox WHERE status = 'sent'")).all()]
    finally:
        engine.dispose()


def test_without_plivo_auth_id_the_start_warns_and_rules_that_need_the_api_are_refused(tmp_path, database):
    srv = Server(tmp_path, DATABASE_URL=database)  # the shipped rules, no PLIVO_AUTH_ID
    try:
        assert srv.post(whatsapp("hours")).content == EMPTY
    finally:
        srv.stop()
    assert "PLIVO_AUTH_ID is not set: WhatsApp messages will be recorded but get no replies" in srv.log_path.read_text()

    rules = "version: 1\nrules:\n  - name: menu\n    reply: Our menu\n    media: https://cdn.example.com/menu.jpg\n"
    with pytest.raises(RuntimeError) as refused:
        Server(tmp_path, rules=rules, DATABASE_URL=database, log_name="refused.log")
    assert ("rules.yaml:5: rule 'menu': 'media' is sent through Plivo's Message API, which needs "
            "PLIVO_AUTH_ID to be set") in str(refused.value)


def test_outbox_sender_off_leaves_sending_to_flask_outbox_run(database, start, standin):
    import subprocess
    import sys

    from conftest import ROOT
    from servers import server_env

    srv = start(database, OUTBOX_SENDER="off")
    messages = [whatsapp("hours", From=f"1305555{n:04d}") for n in range(3)]
    deliver(srv, messages)
    assert outbox_status(database) == Counter(pending=3) and standin.sends == []
    env = server_env(DATABASE_URL=database, PLIVO_AUTH_TOKEN=TOKEN, PLIVO_AUTH_ID=standin.auth_id,
                     PLIVO_API_URL=standin.url, RULES_PATH=str(srv.rules))
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "outbox", "run", "--once"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "3 sent" in done.stderr
    sent_once_each(standin, messages)
    assert outbox_status(database) == Counter(sent=3)
    # ... and as a long-running process: it sends what comes, and stops cleanly on SIGTERM.
    runner = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "outbox", "run"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        more = [whatsapp("hours", From=f"1305556{n:04d}") for n in range(2)]
        deliver(srv, more)
        assert standin.wait_for_sends(5, 30)
        wait_for(lambda: outbox_status(database) == Counter(sent=5), 20, "all 5 sent")
        runner.terminate()
        assert runner.wait(20) == 0
    finally:
        if runner.poll() is None:
            runner.kill()
        runner.communicate(timeout=10)
    sent_once_each(standin, messages + more)


def test_a_receiver_that_trickles_headers_delays_no_whatsapp_reply_and_is_cut_at_the_deadline(database, start,
                                                                                             standin):
    """Webhook calls to a receiver that sends a header line every second fill
    the outbox first; a WhatsApp reply queued behind them still leaves within a few seconds, each
    call ends at its deadline (OUTBOX_LEASE 6 s: 3 s) and is tried again, and no item stays
    `sending` past its lease."""
    from trickler import Trickler
    with Trickler(every=1.0, lines=60) as slow:  # each read 1 s: inside the 2 s read timeout, for a minute
        srv = start(database, rules=quote_and_hours(slow.url), WEBHOOK_SECRET=SECRET)
        deliver(srv, [whatsapp("quote", From=f"1512555{n:04d}") for n in range(6)])
        wait_for(lambda: len(slow.requests) >= 2, 10, "calls to the slow receiver under way")
        queued = time.monotonic()
        deliver(srv, [whatsapp("hours", From="15125559999")])
        assert standin.wait_for_sends(1, 30)
        stall = standin.sends[0].time - queued
        print(f"\nthe WhatsApp reply left {stall:.2f} s after it was queued behind 6 calls to a trickling receiver")
        assert stall < 5, stall
        # The calls end at their deadline and are tried again; none is `sending` past its lease.
        engine = sa.create_engine(parse_url(database))
        try:
            def hooks():
                with engine.connect() as conn:
                    rows = conn.execute(sa.text("SELECT status, attempts, error, lease_until FROM outbox "
                                                "WHERE kind = 'webhook'")).all()
                return rows, datetime.now(timezone.utc).replace(tzinfo=None)

            wait_for(lambda: sum(r.attempts >= 2 for r in hooks()[0]) >= 2, 30, "calls tried again")
            assert "no complete answer within 3 s" in {r.error for r in hooks()[0]}
            for _ in range(40):  # a few seconds of looking: each claim ends inside its lease
                rows, now = hooks()
                for r in rows:
                    if r.status == "sending":
                        lease_until = datetime.fromisoformat(str(r.lease_until))
                        assert now - lease_until < timedelta(seconds=1.5), (r, now)
                time.sleep(0.1)
        finally:
            engine.dispose()
        srv.stop()
