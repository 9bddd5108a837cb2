"""The Message API client (app/outbound/plivo.py) against the Plivo stand-in on loopback.

No mock of requests: every test is a real HTTP exchange with tests/plivo_standin.py,
so the outcome mapping is checked on what the wire really does (a dropped
connection, a read timeout, a refused connect, a kept-alive connection).
"""

from __future__ import annotations

import base64
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from email.utils import formatdate
from pathlib import Path

import pytest
import requests
import urllib3.exceptions
from conftest import listening
from plivo_standin import Answer, PlivoStandin

from app.outbound import FAILED, RETRY, SENT, UNKNOWN, plivo
from app.outbound.plivo import Found, MessageApi

ROOT = Path(__file__).resolve().parent.parent
SRC = "14155550100"
DST = "14155550123"
TEXT = "Thanks for your message, we open at 9"


@pytest.fixture
def standin():
    with PlivoStandin() as server:
        yield server
    assert not server.errors, server.errors


@pytest.fixture
def api(standin):
    client = MessageApi(standin.url, standin.auth_id, standin.token, connect_timeout=1.0, read_timeout=2.0)
    yield client
    client.close()


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def send(api: MessageApi, **kwargs):
    return api.send(**{"src": SRC, "dst": DST, "text": TEXT, **kwargs})


# --- the request -------------------------------------------------------------------

def test_sms_body_headers_and_auth_as_spec(standin, api):
    result = send(api)
    assert result.outcome == SENT and result.status == 202
    call, = standin.sends
    assert result.message_uuids == call.message_uuids and result.message_uuid == call.message_uuid
    assert call.method == "POST" and call.path == f"/v1/Account/{standin.auth_id}/Message/"
    assert call.json == {"src": SRC, "dst": DST, "text": TEXT, "type": "sms"}
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["Accept"] == "application/json"
    assert call.headers["User-Agent"].startswith("plivo-responder/")
    assert call.authorized and call.answered_status == 202
    scheme, _, credentials = call.headers["Authorization"].partition(" ")
    assert scheme == "Basic" and base64.b64decode(credentials).decode() == f"{standin.auth_id}:{standin.token}"


def test_mms_with_media_and_callback(standin, api):
    media = ["https://example.com/a.jpg", "https://example.com/b.png"]
    result = send(api, type="mms", media_urls=media, callback_url="https://responder.example/status")
    assert result.outcome == SENT
    assert standin.sends[0].json == {"src": SRC, "dst": DST, "text": TEXT, "type": "mms", "media_urls": media,
                                     "url": "https://responder.example/status", "method": "POST"}


def test_whatsapp_and_an_unknown_type(standin, api):
    assert send(api, type="whatsapp").outcome == SENT
    assert standin.sends[0].json == {"src": SRC, "dst": DST, "text": TEXT, "type": "whatsapp"}
    refused = send(api, type="fax")
    assert refused.outcome == FAILED and "unsupported message type" in refused.error
    assert len(standin.calls) == 1  # never asked Plivo


def test_auth_id_is_quoted_in_the_path():
    with PlivoStandin(auth_id="SA X/1", token="t") as standin, MessageApi(standin.url + "/", "SA X/1", "t") as api:
        assert send(api).outcome == SENT
        assert standin.sends[0].path == "/v1/Account/SA%20X%2F1/Message/"


def test_wrong_token_fails_and_is_not_a_send(standin):
    with MessageApi(standin.url, standin.auth_id, "wrong-token") as api:
        result = send(api)
    assert (result.outcome, result.status, result.error) == (FAILED, 401, "HTTP 401: authentication failed")
    assert not result.opted_out
    assert standin.sends == [] and standin.calls[0].authorized is False


# --- answers -----------------------------------------------------------------------

def test_429_with_retry_after_seconds(standin, api):
    standin.script(Answer(status=429, retry_after="2"))
    result = send(api)
    assert (result.outcome, result.status, result.delay) == (RETRY, 429, 2.0)
    assert result.error.startswith("HTTP 429: ")
    assert standin.sends == []
    assert send(api).outcome == SENT  # the script is used up: back to 202


def test_429_with_retry_after_http_date(standin, api):
    standin.script(Answer(status=429, retry_after=formatdate(time.time() + 30, usegmt=True)))
    result = send(api)
    assert result.outcome == RETRY and 25 <= result.delay <= 30


# One reading for Plivo and webhooks (app.outbound.retry_after): delay-seconds are digits only
# (RFC 9110), so `1.5` and `-3` are unreadable (None: the sender's own backoff).
@pytest.mark.parametrize("value, expected", [
    ("7", 7.0), (" 0 ", 0.0), ("1.5", None), ("-3", None), ("86400", 3600.0), ("soon", None), ("", None),
    (None, None), ("nan", None), ("inf", None), (formatdate(0, usegmt=True), 0.0),
])
def test_retry_after_values(value, expected):
    assert plivo.retry_after(value) == expected


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_retried(standin, api, status):
    standin.script(Answer(status=status, error="upstream busy"))
    result = send(api)
    assert (result.outcome, result.status, result.delay) == (RETRY, status, None)
    assert result.error == f"HTTP {status}: upstream busy"
    assert standin.sends == []


def test_5xx_honours_retry_after_and_falls_back_to_the_reason(standin, api):
    standin.script(Answer(status=503, retry_after="5"), Answer(status=502, body="<html>proxy error</html>"))
    first, second = send(api), send(api)
    assert (first.outcome, first.delay) == (RETRY, 5.0)
    assert (second.outcome, second.error) == (RETRY, "HTTP 502: Bad Gateway")


def test_400_fails_with_plivos_error(standin, api):
    standin.script(Answer(status=400, error="invalid dst"), Answer(status=400, error={"dst": ["not a number"]}))
    first, second = send(api), send(api)
    assert (first.outcome, first.status, first.error, first.opted_out) == (FAILED, 400, "HTTP 400: invalid dst", False)
    assert second.error == 'HTTP 400: {"dst":["not a number"]}'
    assert standin.sends == []


@pytest.mark.parametrize("error", [
    "dst number has opted out", "Destination is Opted-Out", "OPTOUT: message blocked",
    "destination blocked by STOP keyword",
])
def test_opted_out_destination(standin, api, error):
    standin.script(Answer(status=400, error=error))
    result = send(api)
    assert result.outcome == FAILED and result.opted_out


@pytest.mark.parametrize("error", ["text 'Reply STOP to end' rejected", "the recipient unsubscribed from a list",
                                   "invalid dst"])
def test_an_error_that_only_mentions_stop_is_not_an_opt_out(standin, api, error):
    # a wrong match would opt a customer out; Plivo's real signal is ErrorCode 200 in a report
    standin.script(Answer(status=400, error=error))
    result = send(api)
    assert result.outcome == FAILED and not result.opted_out


def test_a_2xx_without_message_uuid_is_unknown_and_a_single_uuid_is_tolerated(standin, api):
    standin.script(Answer(body="<html>ok</html>"), Answer(body='{"message_uuid": []}'),
                   Answer(body='{"api_id": "x", "message_uuid": "5b40a428-bfc7-4daf-9d54-5b8b1b7c7f8c"}'))
    for result in (send(api), send(api)):
        assert (result.outcome, result.status, result.error) == (UNKNOWN, 202, "HTTP 202 without a message_uuid")
    single = send(api)
    assert single.outcome == SENT and single.message_uuids == ("5b40a428-bfc7-4daf-9d54-5b8b1b7c7f8c",)


def test_a_redirect_is_not_followed(standin, api):
    standin.script(Answer(status=301, headers={"Location": standin.url + "/elsewhere"}))
    result = send(api)
    assert (result.outcome, result.status) == (RETRY, 301) and "PLIVO_API_URL" in result.error
    assert len(standin.calls) == 1


def test_errors_are_short_single_line_and_hold_no_secret(standin, api, caplog):
    caplog.set_level(logging.DEBUG)
    with listening(caplog, "app.outbound.plivo"):
        _errors_and_logs(standin, api, caplog)


def _errors_and_logs(standin, api, caplog):
    standin.script(Answer(status=400, error=f"bad request\nfrom {standin.token} with text '{TEXT}'\x00" + "x" * 500),
                   Answer(status=503, error={"token": standin.token, "text": TEXT}))
    for result in (send(api), send(api)):
        assert len(result.error) <= plivo.MAX_ERROR and result.error.isprintable()
        assert standin.token not in result.error and TEXT not in result.error
    send(api)
    api.find(src=SRC, dst=DST, since=utcnow())
    records = list({id(r): r for r in caplog.records}.values())  # once, whichever way it came
    logged = "\n".join(f"{r.getMessage()} {r.args}" for r in records)
    assert logged  # DEBUG lines were written ...
    assert standin.token not in logged and TEXT not in logged and "Authorization" not in logged  # ... without secrets
    assert not [r for r in records if r.name.startswith("app") and r.levelno >= logging.INFO]


# --- the network ---------------------------------------------------------------------

def test_not_listening_is_retry_and_nothing_is_recorded(standin, api):
    assert send(api).outcome == SENT  # a kept-alive connection exists ...
    standin.stop_listening()          # ... and the API goes down
    result = send(api)
    assert (result.outcome, result.error, result.status) == (RETRY, "connection refused", None)
    found = api.find(src=SRC, dst=DST, since=utcnow())
    assert not found.ok and found.error == "connection refused"
    assert len(standin.calls) == 1
    standin.start_listening()  # back, on the same port
    assert send(api).outcome == SENT and len(standin.sends) == 2


@contextmanager
def unanswered_port():
    """A port on loopback whose connects get no answer: the listener's accept queue is full,
    so the kernel drops further SYNs and a connect waits until its own timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            with socket.socket() as probe:
                probe.settimeout(0.2)
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    pytest.skip("this kernel completes connects beyond the accept queue")
            yield port
        finally:
            for filler in fillers:
                filler.close()


def test_connect_timeout_is_retry():
    with unanswered_port() as port:
        with MessageApi(f"http://127.0.0.1:{port}", "MAX", "token", connect_timeout=0.2, read_timeout=0.2) as api:
            result = send(api)
        assert (result.outcome, result.error) == (RETRY, "connect timeout after 0.2 s")


def test_slow_answer_is_unknown_but_the_message_was_created(standin):
    standin.script(Answer(delay=30))  # ends when the stand-in closes
    since = utcnow() - timedelta(seconds=1)
    with MessageApi(standin.url, standin.auth_id, standin.token, read_timeout=0.3) as api:
        result = send(api)
        assert (result.outcome, result.error, result.status) == (UNKNOWN, "no answer within 0.3 s", None)
        call, = standin.sends
        assert call.answered_status is None
        found = api.find(src=SRC, dst=DST, since=since)
    assert found.ok and [m["uuid"] for m in found.messages] == [call.message_uuid]


@pytest.mark.parametrize("drop", [True, "reset"])
def test_dropped_connection_after_the_send_is_unknown(standin, api, drop):
    standin.script(Answer(drop=drop))
    since = utcnow() - timedelta(seconds=1)
    result = send(api)
    assert result.outcome == UNKNOWN and result.error == "connection lost after sending"
    call, = standin.sends
    found = api.find(src=SRC, dst=DST, since=since)
    assert found == Found(True, [{"uuid": call.message_uuid, "time": found.messages[0]["time"], "type": "sms",
                                  "state": "queued", "from": SRC, "to": DST}], status=200)
    assert send(api).outcome == SENT  # the client is fine afterwards


def test_truncated_answer_is_unknown(standin, api):
    standin.script(Answer(headers={"Content-Length": "500"}))
    result = send(api)
    assert (result.outcome, result.error) == (UNKNOWN, "connection lost while reading the answer")
    assert len(standin.sends) == 1


def test_dropped_before_creating_is_unknown_and_not_found(standin, api):
    standin.script(Answer(status=503, drop=True))
    since = utcnow() - timedelta(seconds=1)
    assert send(api).outcome == UNKNOWN
    found = api.find(src=SRC, dst=DST, since=since)
    assert found.ok and found.messages == []


def test_connections_are_reused_and_cookies_ignored(standin, api):
    standin.script(Answer(headers={"Set-Cookie": "lb=node1; Path=/"}))
    for _ in range(4):
        assert send(api).outcome == SENT
    api.find(src=SRC, dst=DST, since=utcnow())
    assert len({call.peer_port for call in standin.calls}) == 1
    assert all("Cookie" not in call.headers for call in standin.calls)


@pytest.mark.parametrize("exc, outcome, error", [
    (requests.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/", urllib3.exceptions.NameResolutionError(
        "api.plivo.com", None, socket.gaierror(-2, "Name or service not known")))), RETRY, "DNS lookup failed"),
    (requests.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/", urllib3.exceptions.NewConnectionError(
        None, "Network is unreachable"))), RETRY, "could not connect"),
    (requests.ConnectTimeout(), RETRY, "connect timeout after 5 s"),
    (requests.ReadTimeout(), UNKNOWN, "no answer within 15 s"),
    (requests.ConnectionError(urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(104))),
     UNKNOWN, "connection lost after sending"),
    (requests.exceptions.ChunkedEncodingError(), UNKNOWN, "connection lost while reading the answer"),
    (requests.ConnectionError("something else"), UNKNOWN, "connection error after sending (ConnectionError)"),
])
def test_network_errors_that_loopback_cannot_make(exc, outcome, error):
    assert plivo._network(exc, 5.0, 15.0) == (outcome, error)


# --- the message list ---------------------------------------------------------------

def test_find_follows_pages_and_keeps_only_this_pair(standin, api):
    since = utcnow() - timedelta(seconds=1)
    for _ in range(25):
        send(api)
    send(api, dst="14155550999")
    send(api, src="14155550777")
    found = api.find(src=SRC, dst="+" + DST, since=since)
    assert found.ok and found.error is None
    assert [m["uuid"] for m in found.messages] == [c.message_uuid for c in reversed(standin.messages_to(DST))
                                                   if c.json["src"] == SRC]
    assert len(found.messages) == 25
    lists = [c for c in standin.calls if c.method == "GET"]
    assert [c.query["offset"] for c in lists] == ["0", "20"]
    assert lists[0].query == {"message_direction": "outbound", "from_number": SRC, "to_number": "+" + DST,
                              "message_time__gte": since.strftime("%Y-%m-%d %H:%M:%S"), "limit": "20", "offset": "0"}


def test_find_since_later_finds_nothing(standin, api):
    send(api)
    found = api.find(src=SRC, dst=DST, since=utcnow() + timedelta(seconds=2))
    assert found.ok and found.messages == []


def test_find_aware_since_is_converted_to_utc(standin, api):
    since = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5)))
    api.find(src=SRC, dst=DST, since=since)
    assert standin.calls[0].query["message_time__gte"] == "2026-01-02 08:04:05"


def test_a_lagging_list_finds_it_later(standin, api):
    standin.list_lag = 60
    since = utcnow() - timedelta(seconds=1)
    uuid = send(api).message_uuid
    assert api.find(src=SRC, dst=DST, since=since) == Found(True, [], status=200)
    standin.list_lag = 0  # the list caught up
    assert [m["uuid"] for m in api.find(src=SRC, dst=DST, since=since).messages] == [uuid]


def test_find_failures(standin, api):
    standin.script_list(Answer(status=503, retry_after="7"), Answer(status=401, error="authentication failed"),
                        Answer(body="not json"), Answer(body='{"objects": 3}'))
    unavailable = api.find(src=SRC, dst=DST, since=utcnow())
    assert (unavailable.ok, unavailable.status, unavailable.delay) == (False, 503, 7.0)
    assert unavailable.error == "HTTP 503: service unavailable"
    assert api.find(src=SRC, dst=DST, since=utcnow()).error == "HTTP 401: authentication failed"
    for _ in range(2):
        bad = api.find(src=SRC, dst=DST, since=utcnow())
        assert (bad.ok, bad.status, bad.error) == (False, 200, "HTTP 200: not a message list")


def test_find_reads_at_most_ten_pages(standin, api):
    def page(n: int) -> str:
        objects = [{"message_uuid": f"u{n}-{i}", "from_number": SRC, "to_number": DST, "message_time": "t",
                    "message_direction": "outbound", "message_state": "sent", "message_type": "sms"} for i in range(20)]
        return json.dumps({"meta": {"next": "/more", "limit": 20, "offset": 20 * n}, "objects": objects})

    standin.script_list(*[Answer(body=page(n)) for n in range(11)])
    found = api.find(src=SRC, dst=DST, since=utcnow())
    assert not found.ok and found.error == "message list longer than 10 pages"
    assert len(found.messages) == 200  # what was read still counts: a match there is a match


# --- the stand-in on its own ----------------------------------------------------------

@pytest.mark.server
def test_standin_runs_standalone():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "tests/plivo_standin.py", "--port", str(port), "--delay", "0.1"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        banner = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in banner
        with MessageApi(f"http://127.0.0.1:{port}", "MAXXXXXXXXXXXXXXXXXX", "standin-token") as api:
            started = time.monotonic()
            assert send(api).outcome == SENT
            assert time.monotonic() - started >= 0.1
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=5)
        assert proc.returncode == 0 and "1 sends" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_find_stops_paging_at_messages_older_than_the_window(standin, api):
    for _ in range(25):
        assert send(api).outcome == SENT
    found = api.find(src=SRC, dst=DST, since=utcnow() - timedelta(hours=1),
                     stop_before=utcnow() + timedelta(hours=1))  # every message is older than this
    assert found.ok and len(found.messages) == 20
    assert len([c for c in standin.calls if c.method == "GET"]) == 1


def test_find_asks_pace_before_each_page_and_stops_when_told(standin, api):
    for _ in range(25):
        send(api)
    asked = []
    found = api.find(src=SRC, dst=DST, since=utcnow() - timedelta(hours=1), pace=lambda: asked.append(1) or True)
    assert found.ok and len(found.messages) == 25 and len(asked) == 2
    stopped = api.find(src=SRC, dst=DST, since=utcnow() - timedelta(hours=1), pace=lambda: False)
    assert not stopped.ok and stopped.error == "stopped"


# --- a total deadline ------------------------------------------------------------------
@pytest.mark.server
@pytest.mark.parametrize("where", ["headers", "body"])
def test_an_api_that_trickles_its_answer_is_cut_at_the_deadline_and_the_send_is_unknown(where):
    from trickler import Trickler
    with Trickler(every=0.3, lines=40, where=where) as slow:  # each read 0.3 s: no read timeout ever fires
        client = MessageApi(slow.url, "MAXX", "tok", connect_timeout=1.0, read_timeout=2.0, deadline=1.5)
        started = time.monotonic()
        result = send(client)
        took = time.monotonic() - started
        client.close()
        assert (result.outcome, result.error) == (UNKNOWN, "no complete answer within 1.5 s")  # it had left
        assert 1.4 <= took < 5, took  # 12 s without the deadline; a busy machine may be a little late
        # the list look-up too: a failed, incomplete read, not a hang
        started = time.monotonic()
        found = client.find(src=SRC, dst=DST, since=utcnow())
        assert not found.ok and found.error == "no complete answer within 1.5 s"
        assert time.monotonic() - started < 5


# --- the deadline's watchdog (what the third review found) ---------------------------------------
@pytest.mark.server
def test_the_deadline_watchdog_outlives_a_connection_it_cannot_shut_and_still_cuts_the_next_exchange():
    """Through an https proxy `conn.sock` is urllib3's SSLTransport, not a socket: its real socket
    is shut down, and anything the watchdog cannot shut does not end the watchdog (which would
    leave every later exchange of the worker without a total deadline)."""
    from trickler import Trickler

    from app.outbound import deadline

    class Transport:  # like urllib3's SSLTransport: the socket is its `.socket`; not a socket itself
        def __init__(self, sock):
            self.socket = sock

    class NotASocket:  # what socket.socket.shutdown refuses with a TypeError
        pass

    class Connection:
        def __init__(self, sock):
            self.sock = sock

    ours, peer = socket.socketpair()
    with ours, peer:
        for sock in (NotASocket(), Transport(ours)):
            with deadline.within(0.2) as watch:
                watch._attach(Connection(sock), sending=True)
                end = time.monotonic() + 5
                while not watch.expired and time.monotonic() < end:
                    time.sleep(0.02)
                assert watch.expired
        peer.settimeout(5)
        assert peer.recv(1) == b""  # the transport's socket was shut down
    with Trickler(every=0.3, lines=40) as slow:  # and the next exchange is still cut at its deadline
        client = MessageApi(slow.url, "MAXX", "tok", connect_timeout=1.0, read_timeout=2.0, deadline=1.0)
        started = time.monotonic()
        result = send(client)
        client.close()
        assert (result.outcome, result.error) == (UNKNOWN, "no complete answer within 1 s")
        assert time.monotonic() - started < 5  # 12 s without a watchdog


def test_an_answer_read_whole_before_the_deadline_stands_though_the_deadline_expires_before_finish(standin):
    """A 202 read whole just before the deadline is a 202 (its uuid kept), not `unknown`."""
    from app.outbound import deadline
    session = requests.Session()
    session.mount("http://", deadline.DeadlineAdapter(max_retries=0))
    with session, deadline.within(0.5) as watch:
        response = session.post(standin.url + standin.path, auth=(standin.auth_id, standin.token), timeout=5,
                                stream=True, json={"src": SRC, "dst": DST, "text": TEXT, "type": "sms"})
        data = deadline.read_body(response, 65536, watch)
        end = time.monotonic() + 5
        while not watch.expired and time.monotonic() < end:  # the thread held up past the deadline here
            time.sleep(0.02)
        assert watch.expired
        assert watch.finish()  # ... but what it read came whole before it
    assert json.loads(data)["message_uuid"] == [standin.sends[0].message_uuid]


@pytest.mark.server
def test_a_connect_that_stalls_past_the_deadline_over_plain_http_is_tried_again_not_unknown():
    """Nothing of the request reached a socket: it certainly did not leave."""
    with unanswered_port() as port:
        client = MessageApi(f"http://127.0.0.1:{port}", "MAXX", "tok", connect_timeout=1.5, read_timeout=2.0,
                            deadline=0.5)
        result = send(client)
        client.close()
        assert result.outcome == RETRY, result
