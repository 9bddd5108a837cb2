"""The outbox against the real thing: gunicorn (each worker with its sender thread) and the
loopback stand-in of Plivo's API, through outages, restarts, SIGKILL and two instances.

Every wait polls a condition with a deadline; the stand-in counts what it received,
so "sent once" is what Plivo would have seen.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
import requests
import sqlalchemy as sa
from conftest import TOKEN, empty_postgres, postgres_database, sms
from plivo_standin import Answer, PlivoStandin
from servers import Server, Servers
from test_outbox import Receiver, assert_slots_held, quote_and_hours
from waiting import wait_until

from app.outbound import webhook
from app.plivoxml import EMPTY
from app.store.db import parse_url

#: Every test here starts a real server or waits out deadlines of seconds (pyproject.toml).
pytestmark = pytest.mark.server

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
        wait_until(lambda: len(receiver.calls) == 1, 20, "the webhook call")
        assert srv.post(params).content == EMPTY  # Plivo's retry
        wait_until(lambda: outbox_status(database) == Counter(sent=2), 20, "both items sent")
        [call] = standin.sends
        assert call.json["type"] == "whatsapp" and call.json["text"] == "Thanks, we will call you back today."
        assert len(receiver.calls) == 1
        headers = {k.lower(): v for k, v in receiver.calls[0]["headers"].items()}
        webhook.verify_webhook(SECRET, headers["x-responder-signature"], receiver.calls[0]["body"])
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
    wait_until(lambda: sum(outbox_status(database).values()) == 20, 20, "20 items queued")
    assert outbox_status(database)["sent"] == 0
    srv.stop()  # a restart with the backlog in the database
    again = start(database)
    standin.start_listening()
    assert standin.wait_for_sends(20, 60)
    wait_until(lambda: outbox_status(database) == Counter(sent=20), 30, "all 20 sent")
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
    wait_until(lambda: outbox_status(database) == Counter(sent=6), 60, "all 6 sent")
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
    wait_until(lambda: sum(outbox_status(url).values()) == 30, 20, "30 items queued")
    assert outbox_status(url)["sent"] == 0
    standin.start_listening()
    assert standin.wait_for_sends(30, 60)
    wait_until(lambda: outbox_status(url) == Counter(sent=30), 30, "all 30 sent")
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
        wait_until(lambda: outbox_status(database) == Counter(sent=5), 20, "all 5 sent")
        runner.terminate()
        assert runner.wait(20) == 0
    finally:
        if runner.poll() is None:
            runner.kill()
        runner.communicate(timeout=10)
    sent_once_each(standin, messages + more)


def message_rows(url: str) -> dict[str, dict]:
    """uuid -> {"held": [...], "outbox": number of Message API rows} of every message recorded."""
    import json

    engine = sa.create_engine(parse_url(url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT m.uuid, m.held, (SELECT count(*) FROM outbox o WHERE o.message_id = m.id "
                "AND o.kind = 'message') FROM messages m")).all()
    finally:
        engine.dispose()
    return {uuid: {"held": held if isinstance(held, list) else json.loads(held), "outbox": n}
            for uuid, held, n in rows}


#: One reply, a forward to two numbers, and (for texts that start with "echo") a reply that
#: repeats the whole text first.
CAP_RULES = """version: 1
rules:
  - name: echo
    when: {keyword: echo}
    reply: "You wrote: {{ text }}"
    continue: true
  - name: team
    reply: "Thanks, a person will answer soon."
    forward: {to: ["14155550901", "14155550902"]}
"""
TEAM_OF_TWO = ["14155550901", "14155550902"]


def long_text(first: str, size: int = 63_000) -> str:
    """A GSM-7 text of `size` characters (its form body is under 64 KB), words of 9 letters."""
    return (first + " " + "abcdefghi " * (size // 10))[:size]


def test_one_64_kb_message_causes_at_most_10_message_api_requests_and_a_forward_is_one_message(
        database, start, standin):
    """Issue 13 item 5: a 64 KB WhatsApp text matching a forward rule to two numbers caused 83
    Message API sends (41 SMS pieces to each number). Now the forward is one message, cut with
    '...', and however long the replies, one message causes at most 10 requests; what is cut
    or not sent is held with the reason. The XML answer of an SMS likewise."""
    from app import smsenc
    from app.policy import FORWARD_CUT
    from app.recording import parse_messages
    from app.service import API_CAP, MAX_API_REQUESTS, XML_CAP

    thanks = "Thanks, a person will answer soon."
    team = "<".join(TEAM_OF_TWO)
    srv = start(database, rules=CAP_RULES, MAX_CONTENT_LENGTH="65536", WEB_CONCURRENCY="1")
    plain, echo = whatsapp(long_text("hello")), whatsapp(long_text("echo"))
    for params in (plain, echo):
        assert srv.post(params).content == EMPTY
    rows = message_rows(database)
    # The reply, and the forward to each of two numbers: 3 requests; the forward cut to one message.
    assert rows[plain["MessageUUID"]]["outbox"] == 3
    forward = f"From {plain['From']}: {plain['Body']}"
    [cut] = rows[plain["MessageUUID"]]["held"]
    assert cut["dst"] == team and cut["reason"] == FORWARD_CUT
    assert forward.endswith(cut["text"]) and len(cut["text"]) > len(forward) - smsenc.MAX_GSM7
    # The echo repeats 63,000 characters in 16 WhatsApp pieces, then come the reply and two
    # forwards: 19 requests, of which the first 10 go.
    echoed = "You wrote: " + echo["Body"]
    assert rows[echo["MessageUUID"]]["outbox"] == MAX_API_REQUESTS == 10
    held = rows[echo["MessageUUID"]]["held"]
    assert [(h["dst"], h["reason"]) for h in held] == [
        (team, FORWARD_CUT),
        (echo["From"], f"{API_CAP} (6 of 16 parts)"),
        (echo["From"], API_CAP),
        (TEAM_OF_TWO[0], API_CAP),
        (TEAM_OF_TWO[1], API_CAP),
    ]
    assert held[1]["text"] == echoed[10 * 4096:] and held[2]["text"] == thanks

    wait_until(lambda: outbox_status(database) == Counter(sent=13), 60, "13 items sent")
    assert len(standin.sends) == 13
    to_team = [c.json for c in standin.sends if c.json["dst"] in TEAM_OF_TWO]
    assert sorted(c["dst"] for c in to_team) == TEAM_OF_TWO
    for send in to_team:
        assert send["type"] == "sms" and send["text"].endswith("...")
        assert forward.startswith(send["text"][:-3]) and len(smsenc.split(send["text"])) == 1
    to_echo = [c.json["text"] for c in standin.sends if c.json["dst"] == echo["From"] and c.json["text"] != thanks]
    assert sorted(to_echo) == sorted(echoed[i:i + 4096] for i in range(0, 10 * 4096, 4096))

    # SMS: the forward is one <Message> to both numbers, cut alike; the XML carries at most 10.
    plain_sms, echo_sms = sms(long_text("hello")), sms(long_text("echo"))
    [reply, fwd] = parse_messages(srv.post(plain_sms).content)
    assert fwd["dst"] == team and fwd["text"].endswith("...") and len(smsenc.split(fwd["text"])) == 1
    assert f"From {plain_sms['From']}: {plain_sms['Text']}".startswith(fwd["text"][:-3])
    assert reply["text"] == thanks
    answer = parse_messages(srv.post(echo_sms).content)
    assert len(answer) == 10 and all(m["dst"] == echo_sms["From"] for m in answer)
    rows = message_rows(database)
    assert [h["reason"] for h in rows[plain_sms["MessageUUID"]]["held"]] == [FORWARD_CUT]
    pieces = smsenc.split("You wrote: " + echo_sms["Text"])
    assert [(h["dst"], h["reason"]) for h in rows[echo_sms["MessageUUID"]]["held"]] == [
        (team, FORWARD_CUT),
        (echo_sms["From"], f"{XML_CAP} ({len(pieces) - 10} of {len(pieces)} parts)"),
        (echo_sms["From"], XML_CAP),
        (team, XML_CAP),
    ]
    assert [m["text"] for m in answer] == pieces[:10]
    assert outbox_status(database) == Counter(sent=13)  # an SMS's text replies are all in its XML


def test_replay_goes_only_to_a_target_that_holds_its_outbox_and_that_target_sends_nothing(
        tmp_path, database, start, standin):
    """Issue 13: a replay target must send nothing anywhere. With OUTBOX_SENDER=hold a service
    answers and records as production would, its Message API sends and webhook calls included,
    but writes them `held`: no sender of that database takes them. `replay` asks the target's
    /readyz first and refuses one that does not hold (unless --allow-sending)."""
    import json
    import subprocess
    import sys
    from urllib.parse import urlencode

    from conftest import FORM, ROOT
    from servers import server_env

    from app.recording import dumps

    receiver = Receiver()
    rules = f"""version: 1
rules:
  - name: lead
    when: {{keyword: quote}}
    reply: "Thanks, we will call you back today."
    forward: {{to: ["14155550901"]}}
    webhook: "{receiver.url}"
"""
    folder = tmp_path / "recordings"
    folder.mkdir()
    messages = [whatsapp(f"quote number {n}", From=f"1305555{n:04d}") for n in range(3)]
    for n, params in enumerate(messages):
        (folder / f"{n}.json").write_text(dumps({
            "description": "a WhatsApp lead", "method": "POST", "url": "https://sms.example.com/message",
            "headers": {"Content-Type": FORM}, "body": urlencode(params),
            "expect": {"status": 200, "content_type": "application/xml; charset=utf-8", "messages": []}}))
    env = server_env(PLIVO_AUTH_TOKEN=TOKEN, DATABASE_URL=database, PLIVO_AUTH_ID=standin.auth_id,
                     PLIVO_API_URL=standin.url, WEBHOOK_SECRET=SECRET, LOG_FORMAT="text")

    def flask(*args, **extra):
        return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT,
                              env={**env, **extra}, capture_output=True, text=True, timeout=60)

    try:
        held = start(database, rules=rules, WEBHOOK_SECRET=SECRET, OUTBOX_SENDER="hold")
        assert requests.get(held.base + "/readyz", timeout=10).json()["outbox"] == "hold"
        done = flask("replay", str(folder), "--url", held.base + "/message")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == "3 recording(s): 3 answered 2xx, 0 not"
        # Recorded as production would: a reply and a forward through the API, a webhook call.
        assert outbox_status(database) == Counter(held=9)
        engine = sa.create_engine(parse_url(database))
        try:
            with engine.connect() as conn:
                kinds = Counter(conn.execute(sa.text("SELECT kind, role FROM outbox")).all())
        finally:
            engine.dispose()
        assert kinds == Counter({("message", "reply"): 3, ("message", "forward"): 3, ("webhook", "webhook"): 3})
        # No sender of that database takes a held item: not even one started without the hold.
        run = flask("outbox", "run", "--once")
        assert run.returncode == 0, run.stderr
        assert "9 held" in run.stderr
        refused = flask("outbox", "run", "--once", OUTBOX_SENDER="hold")
        assert refused.returncode == 1 and "OUTBOX_SENDER=hold" in refused.stderr
        listing = json.loads(flask("outbox", "list", "--json", "--status", "held").stdout)
        assert len(listing) == 9
        held.stop()

        # A target that sends is refused before anything reaches it.
        sends = start(database, rules=rules, WEBHOOK_SECRET=SECRET)
        refused = flask("replay", str(folder), "--url", sends.base + "/message")
        assert refused.returncode == 1 and refused.stdout == ""
        assert "runs with OUTBOX_SENDER=web" in refused.stderr and "--allow-sending" in refused.stderr
        assert outbox_status(database) == Counter(held=9)
    finally:
        receiver.close()
    assert standin.calls == [] and receiver.calls == []


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
        wait_until(lambda: len(slow.requests) >= 2, 10, "calls to the slow receiver under way")
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

            wait_until(lambda: sum(r.attempts >= 2 for r in hooks()[0]) >= 2, 30, "calls tried again")
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
