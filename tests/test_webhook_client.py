"""Tests for app.outbound.webhook: body, sign/verify_webhook, and WebhookClient.call against a
real HTTP server on loopback (no mock of requests or hmac)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import listening

from app.outbound import FAILED, RETRY, SENT
from app.outbound import MAX_RETRY_AFTER as MAX_DELAY
from app.outbound.webhook import (
    DELIVERY_HEADER,
    HEADER,
    WebhookClient,
    WebhookSignatureError,
    body,
    retry_after,
    sign,
    verify_webhook,
)

SECRET = "whsec_test"
T = 1700000000
PAYLOAD = {"uuid": "0936ec98-7c4c-11e3-9a3b-1231400165f3", "from": "14155550123",
           "to": "14155550100", "type": "sms", "text": "Meet at the café ☕ tomorrow",
           "media": [], "intent": "meeting", "rule": "meetings",
           "received_at": "2026-11-23T15:00:00Z"}
QUERY_TOKEN = "qtok-9f8e7d6c"


def expected_mac(secret: str, raw: bytes, t: int) -> str:
    """The v1 value computed here, independently of the module."""
    return hmac.new(secret.encode("utf-8"), str(t).encode("ascii") + b"." + raw, hashlib.sha256).hexdigest()


# --- body ---------------------------------------------------------------------

def test_body_is_compact_ordered_and_deterministic():
    assert body({"b": 1, "a": [1, 2], "c": None}) == b'{"b":1,"a":[1,2],"c":null}'
    assert body(PAYLOAD) == body(dict(PAYLOAD))
    assert json.loads(body(PAYLOAD)) == PAYLOAD


def test_body_keeps_non_ascii_as_utf8():
    raw = body({"text": "café ☕ 你好"})
    assert raw == '{"text":"café ☕ 你好"}'.encode("utf-8")
    assert b"\\u" not in raw


# --- sign ---------------------------------------------------------------------

def test_sign_known_answer():
    raw = b'{"a":1}'
    mac = hmac.new(b"whsec_test", b"1700000000." + raw, hashlib.sha256).hexdigest()
    assert mac == "38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
    assert sign(SECRET, raw, T) == f"t=1700000000,v1={mac}"


def test_sign_covers_timestamp_and_every_byte():
    raw = body(PAYLOAD)
    assert sign(SECRET, raw, T) == f"t={T},v1={expected_mac(SECRET, raw, T)}"
    assert sign(SECRET, raw, T) != sign(SECRET, raw, T + 1)
    assert sign(SECRET, raw, T) != sign(SECRET, raw + b" ", T)
    assert sign("ünïcode-secret", raw, T) == f"t={T},v1={expected_mac('ünïcode-secret', raw, T)}"


@pytest.mark.parametrize("secret", ["", None])
def test_sign_refuses_an_empty_secret(secret):
    with pytest.raises(ValueError):
        sign(secret, b"{}", T)


# --- verify -------------------------------------------------------------------

RAW = body(PAYLOAD)
GOOD = sign(SECRET, RAW, T)
MAC = expected_mac(SECRET, RAW, T)


def reason(secret, header, raw=RAW, **kw):
    kw.setdefault("now", T)
    with pytest.raises(WebhookSignatureError) as info:
        verify_webhook(secret, header, raw, **kw)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == info.value.reason
    return info.value.reason


def test_verify_accepts_a_good_signature_and_returns_t():
    assert verify_webhook(SECRET, GOOD, RAW, now=T) == T
    assert verify_webhook(SECRET, GOOD, RAW, now=T + 300) == T      # the edge of the tolerance
    assert verify_webhook(SECRET, GOOD, RAW, now=T - 300) == T      # a receiver whose clock is behind


def test_verify_default_now_is_the_clock():
    import time
    t = int(time.time())
    assert verify_webhook(SECRET, sign(SECRET, RAW, t), RAW) == t
    assert reason(SECRET, GOOD, now=None) == "timestamp too old"


def test_verify_rejects_wrong_secret_and_tampered_body():
    assert reason("whsec_other", GOOD) == "signature does not match"
    assert reason(SECRET, GOOD, RAW.replace(b"tomorrow", b"today")) == "signature does not match"
    assert reason(SECRET, GOOD, RAW + b"\n") == "signature does not match"
    # Moving the timestamp breaks the signature: t is inside the MAC.
    assert reason(SECRET, f"t={T + 1},v1={MAC}", now=T + 1) == "signature does not match"


def test_verify_rejects_old_and_future_timestamps():
    assert reason(SECRET, GOOD, now=T + 301) == "timestamp too old"
    assert reason(SECRET, GOOD, now=T - 301) == "timestamp too old"
    assert reason(SECRET, GOOD, now=T + 61, tolerance=60) == "timestamp too old"
    assert verify_webhook(SECRET, GOOD, RAW, now=T + 86400, tolerance=86400) == T


def test_verify_checks_the_signature_before_the_age():
    forged = f"t={T},v1={'0' * 64}"
    assert reason(SECRET, forged, now=T + 10_000) == "signature does not match"


@pytest.mark.parametrize("header", [None, "", "   "])
def test_verify_no_header(header):
    assert reason(SECRET, header) == "no signature"


@pytest.mark.parametrize("header", [f"t={T}", f"t={T},v0={MAC}", f"t={T},,"])
def test_verify_no_v1_signature(header):
    assert reason(SECRET, header) == "no signature"


@pytest.mark.parametrize("header", [
    "garbage",
    f"v1={MAC}",                       # no t
    f"t=,v1={MAC}",
    f"t=abc,v1={MAC}",
    f"t=-{T},v1={MAC}",
    f"t={T}.5,v1={MAC}",
    f"t=１７００,v1={MAC}",            # non-ASCII digits
    f"t={'9' * 5000},v1={MAC}",
    f"t={T},t={T},v1={MAC}",           # two timestamps: refused, not guessed between
    f"t={T},v1={MAC},junk",
    f"t={T},={MAC}",
])
def test_verify_malformed_headers(header):
    assert reason(SECRET, header) == "malformed header"


def test_verify_is_order_free_tolerates_whitespace_and_ignores_unknown_schemes():
    assert verify_webhook(SECRET, f" v1 = {MAC} ,  t = {T} ", RAW, now=T) == T
    assert verify_webhook(SECRET, f"v0=deadbeef,t={T},v2=whatever,v1={MAC},", RAW, now=T) == T
    assert verify_webhook(SECRET, f"t={T}, v1={MAC}", RAW, now=T) == T


def test_verify_multiple_v1_values_any_may_match():
    assert verify_webhook(SECRET, f"t={T},v1={'a' * 64},v1={MAC}", RAW, now=T) == T
    assert verify_webhook(SECRET, f"t={T},v1={MAC},v1={'a' * 64}", RAW, now=T) == T
    assert reason(SECRET, f"t={T},v1={'a' * 64},v1={'b' * 64}") == "signature does not match"


def test_verify_bounds_the_v1_values_looked_at():
    stuffed = f"t={T}," + ",".join([f"v1={'a' * 64}"] * 1000) + f",v1={MAC}"
    assert reason(SECRET, stuffed) == "signature does not match"


def test_verify_non_ascii_signature_is_a_mismatch_not_a_crash():
    assert reason(SECRET, f"t={T},v1=é{MAC[1:]}") == "signature does not match"


def test_verify_secret_rotation():
    old = sign("whsec_old", RAW, T)
    new = sign("whsec_new", RAW, T)
    rotating = ["whsec_new", "whsec_old"]
    assert verify_webhook(rotating, old, RAW, now=T) == T
    assert verify_webhook(rotating, new, RAW, now=T) == T
    assert verify_webhook(("whsec_new",), new, RAW, now=T) == T
    assert reason(["whsec_new"], old) == "signature does not match"
    # A sender signing with both secrets during a rotation: either receiver accepts.
    both = f"t={T},v1={expected_mac('whsec_new', RAW, T)},v1={expected_mac('whsec_old', RAW, T)}"
    assert verify_webhook("whsec_old", both, RAW, now=T) == T
    assert verify_webhook("whsec_new", both, RAW, now=T) == T


@pytest.mark.parametrize("secret", [[], "", [""], [SECRET, None]])
def test_verify_needs_real_secrets(secret):
    with pytest.raises(ValueError) as info:
        verify_webhook(secret, GOOD, RAW, now=T)
    assert not isinstance(info.value, WebhookSignatureError)


# --- retry_after --------------------------------------------------------------

@pytest.mark.parametrize("value, delay", [
    (None, None), ("", None), ("soon", None), ("-5", None), ("1.5", None),
    ("0", 0.0), ("120", 120.0), (" 30 ", 30.0), ("3600", 3600.0), ("99999", MAX_DELAY),
    ("9" * 5000, MAX_DELAY),
    (formatdate(T + 90, usegmt=True), 90.0),
    (formatdate(T - 90, usegmt=True), 0.0),                 # already past: try now
    (formatdate(T + 86400, usegmt=True), MAX_DELAY),
    ("Tue, 14 Nov 2023 22:13:50 -0000", 30.0),              # T + 30, no zone given: UTC
])
def test_retry_after(value, delay):
    assert retry_after(value, T) == delay


# --- a real receiver on loopback ----------------------------------------------

class Receiver:
    """A ThreadingHTTPServer on 127.0.0.1 that records every request.

    `answer` decides the next answers: (status, headers, body), "hang" (never
    answers until the test ends) or "drop" (reads the request, then closes the
    connection without a word).
    """

    def __init__(self):
        self.requests: list[dict] = []
        self.answer = (200, {}, b"ok")
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse can be seen
            timeout = 10

            def log_message(self, *args):
                pass

            def handle_request(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                receiver.requests.append({
                    "method": self.command, "path": self.path, "headers": self.headers,
                    "body": raw, "peer": self.client_address,
                })
                answer = receiver.answer
                if answer == "hang":
                    receiver.release.wait(10)
                    self.close_connection = True
                    return
                if answer == "drop":
                    self.close_connection = True
                    return
                status, headers, content = answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_POST = do_PUT = do_PATCH = do_GET = do_DELETE = handle_request

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Loopback calls must go straight to the receiver, whatever the environment says."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


class Clock:
    def __init__(self, now=T + 0.75):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def client(clock):
    with WebhookClient(SECRET, connect_timeout=2, read_timeout=5, clock=clock) as c:
        yield c


def assert_clean(result):
    """Result.error never holds the secret, the body, or the URL's query or userinfo."""
    error = result.error or ""
    for secret_bit in (SECRET, QUERY_TOKEN, "pa55word", "user", "café", "tomorrow", "meetings", "127.0.0.1"):
        assert secret_bit not in error, (secret_bit, error)


# --- call: what the receiver gets ----------------------------------------------

def test_call_sends_the_exact_body_and_signed_headers(receiver, client):
    raw = body(PAYLOAD)
    result = client.call(receiver.base + "/hook", "POST", raw, item_id=42)
    assert result.outcome == SENT and result.status == 200 and result.error is None
    [got] = receiver.requests
    assert got["method"] == "POST" and got["path"] == "/hook"
    # the delivery id is in the body too, where the signature covers it (docs/rules.md)
    assert got["body"] == body({**PAYLOAD, "delivery": "42"}) == raw[:-1] + b',"delivery":"42"}'
    h = got["headers"]
    assert h["Content-Type"] == "application/json; charset=utf-8"
    assert h["User-Agent"] == "plivo-responder-webhook/1"
    assert h[DELIVERY_HEADER] == "42"
    # The signature verifies over the raw bytes the receiver read, at the client's clock (truncated).
    assert verify_webhook(SECRET, h[HEADER], got["body"], now=T) == T
    assert h[HEADER] == f"t={T},v1={expected_mac(SECRET, got['body'], T)}"
    assert json.loads(got["body"].decode("utf-8")) == {**PAYLOAD, "delivery": "42"}


def test_call_without_item_id_sends_no_delivery_header(receiver, client):
    assert client.call(receiver.base + "/hook", "POST", b"{}").outcome == SENT
    assert DELIVERY_HEADER not in receiver.requests[0]["headers"]


def test_call_signs_every_attempt_afresh(receiver, client, clock):
    raw = body(PAYLOAD)
    client.call(receiver.base + "/hook", "POST", raw, item_id=7)
    clock.now = T + 3600.2
    client.call(receiver.base + "/hook", "POST", raw, item_id=7)
    first, second = (r["headers"] for r in receiver.requests)
    sent = body({**PAYLOAD, "delivery": "7"})
    assert receiver.requests[0]["body"] == receiver.requests[1]["body"] == sent
    assert verify_webhook(SECRET, first[HEADER], sent, now=T) == T
    assert verify_webhook(SECRET, second[HEADER], sent, now=T + 3600) == T + 3600
    assert first[DELIVERY_HEADER] == second[DELIVERY_HEADER] == "7"  # the same delivery, sent again


@pytest.mark.parametrize("method, sent", [("PUT", "PUT"), ("PATCH", "PATCH"), ("post", "POST"), ("put", "PUT")])
def test_call_honours_the_method(receiver, client, method, sent):
    assert client.call(receiver.base + "/hook", method, b'{"a":1}').outcome == SENT
    assert receiver.requests[0]["method"] == sent
    assert receiver.requests[0]["body"] == b'{"a":1}'


@pytest.mark.parametrize("method", ["GET", "DELETE", "HEAD", "BREW"])
def test_call_refuses_methods_without_a_body(receiver, client, method):
    result = client.call(receiver.base + "/hook", method, b"{}")
    assert result.outcome == FAILED and result.error == "unsupported method"
    assert receiver.requests == []


def test_call_keeps_the_query_and_sends_userinfo_as_basic_auth(receiver, client):
    url = receiver.base.replace("//", "//user:pa55word@") + f"/hook?token={QUERY_TOKEN}"
    assert client.call(url, "POST", b"{}").outcome == SENT
    got = receiver.requests[0]
    assert got["path"] == f"/hook?token={QUERY_TOKEN}"
    assert got["headers"]["Authorization"].startswith("Basic ")


# --- call: outcomes -------------------------------------------------------------

@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_sent(receiver, client, status):
    receiver.answer = (status, {}, b"")
    result = client.call(receiver.base + "/hook", "POST", b"{}")
    assert (result.outcome, result.status, result.error, result.delay) == (SENT, status, None, None)


@pytest.mark.parametrize("status", [500, 502, 503, 404, 400, 401, 410, 429, 301, 302])
def test_anything_else_is_retried(receiver, client, status):
    receiver.answer = (status, {"Location": receiver.base + "/elsewhere"}, b"the receiver's own error page")
    result = client.call(receiver.base + "/hook", "POST", b"{}")
    assert (result.outcome, result.status, result.error, result.delay) == (RETRY, status, f"HTTP {status}", None)
    assert len(receiver.requests) == 1  # redirects are not followed


@pytest.mark.parametrize("status, value, delay", [
    (429, "120", 120.0),
    (503, "7", 7.0),
    (429, "86400", MAX_DELAY),
    (503, formatdate(T + 90, usegmt=True), 89.25),  # relative to the client's clock (T + 0.75)
    (429, "whenever", None),
])
def test_retry_after_gives_the_delay(receiver, client, status, value, delay):
    receiver.answer = (status, {"Retry-After": value}, b"")
    result = client.call(receiver.base + "/hook", "POST", b"{}")
    assert (result.outcome, result.status, result.error) == (RETRY, status, f"HTTP {status}")
    if delay is None:
        assert result.delay is None
    else:
        assert result.delay == pytest.approx(delay)


def test_not_listening_is_retried(client):
    with socket.socket() as s:  # bound, never listening: the port is ours and refuses
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/hook?token={QUERY_TOKEN}"
        result = client.call(url, "POST", body(PAYLOAD), item_id=1)
    assert (result.outcome, result.error, result.status) == (RETRY, "connection refused", None)
    assert_clean(result)


def test_slow_receiver_is_retried_with_no_answer(receiver, clock):
    receiver.answer = "hang"
    with WebhookClient(SECRET, connect_timeout=2, read_timeout=0.2, clock=clock) as client:
        result = client.call(receiver.base + f"/hook?token={QUERY_TOKEN}", "POST", body(PAYLOAD), item_id=3)
    assert (result.outcome, result.error, result.status) == (RETRY, "no answer within 0.2 s", None)
    assert len(receiver.requests) == 1  # it did arrive: the delivery id lets the receiver drop the retry
    assert_clean(result)


def test_default_timeouts():
    client = WebhookClient(SECRET)
    assert (client.connect_timeout, client.read_timeout) == (5.0, 15.0)
    assert f"{client.read_timeout:g}" == "15"  # as the error text shows it: "no answer within 15 s"
    client.close()


def test_connection_lost_after_sending_is_retried(receiver, client):
    receiver.answer = "drop"
    result = client.call(receiver.base + f"/hook?token={QUERY_TOKEN}", "POST", body(PAYLOAD))
    assert (result.outcome, result.error, result.status) == (RETRY, "connection lost after sending", None)
    assert receiver.requests[0]["body"] == body(PAYLOAD)
    assert_clean(result)


def test_connect_timeout_is_retried(clock):
    """A listener whose accept queue is full drops new SYNs: the connect times out."""
    listener = socket.socket()
    fillers = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(8):
            f = socket.socket()
            f.settimeout(0.2)
            fillers.append(f)
            try:
                f.connect(("127.0.0.1", port))
            except (TimeoutError, socket.timeout):
                break
        else:
            pytest.skip("this kernel does not drop connections to a full accept queue")
        with WebhookClient(SECRET, connect_timeout=0.2, read_timeout=5, clock=clock) as client:
            result = client.call(f"http://127.0.0.1:{port}/hook?token={QUERY_TOKEN}", "POST", b"{}")
        assert (result.outcome, result.error) == (RETRY, "connect timeout after 0.2 s")
        assert_clean(result)
    finally:
        for f in fillers:
            f.close()
        listener.close()


@pytest.mark.parametrize("url, error", [
    ("ftp://127.0.0.1/hook", "URL scheme not supported"),
    ("127.0.0.1/hook", "URL has no scheme"),
    ("http://", "invalid URL"),
    ("http://[::1/hook", "invalid URL"),
    (f"http://user:pa55word@/hook?token={QUERY_TOKEN}", "invalid URL"),
])
def test_invalid_urls_fail_for_good(client, url, error):
    result = client.call(url, "POST", b"{}")
    assert (result.outcome, result.error, result.status) == (FAILED, error, None)
    assert_clean(result)


def test_errors_never_hold_the_secret_body_or_url_secrets(receiver, client):
    url = receiver.base.replace("//", "//user:pa55word@") + f"/hook?token={QUERY_TOKEN}"
    for answer in [(500, {}, body(PAYLOAD)), (404, {}, SECRET.encode()), "drop"]:
        receiver.answer = answer
        result = client.call(url, "POST", body(PAYLOAD), item_id=9)
        assert result.outcome == RETRY
        assert_clean(result)


def test_logs_are_debug_only_and_never_hold_the_body_or_query(receiver, client, caplog):
    with listening(caplog, "app.outbound.webhook"):
        _logs(receiver, client, caplog)


def _logs(receiver, client, caplog):
    url = receiver.base.replace("//", "//user:pa55word@") + f"/hook?token={QUERY_TOKEN}"
    client.call(url, "POST", body(PAYLOAD))
    receiver.answer = (503, {}, b"")
    client.call(url, "POST", body(PAYLOAD))
    client.call("ftp://127.0.0.1/x?token=" + QUERY_TOKEN, "POST", body(PAYLOAD))
    ours = list({id(r): r for r in caplog.records if r.name == "app.outbound.webhook"}.values())
    assert len(ours) == 3
    for record in ours:
        assert record.levelno == logging.DEBUG
        text = record.getMessage()
        for bit in (SECRET, QUERY_TOKEN, "pa55word", "café", "/hook"):
            assert bit not in text


# --- call: connections -----------------------------------------------------------

def test_connections_are_reused(receiver, client):
    receiver.answer = (200, {}, b'{"ok": true}')
    for i in range(3):
        assert client.call(receiver.base + "/hook", "POST", b"{}", item_id=i).outcome == SENT
    receiver.answer = (503, {"Retry-After": "1"}, b"busy")
    assert client.call(receiver.base + "/hook", "POST", b"{}").outcome == RETRY
    receiver.answer = (200, {}, b"")
    assert client.call(receiver.base + "/hook", "PUT", b"{}").outcome == SENT
    peers = {r["peer"] for r in receiver.requests}
    assert len(receiver.requests) == 5 and len(peers) == 1  # one TCP connection for all five


def test_a_huge_answer_is_not_read_and_does_not_break_the_next_call(receiver, client):
    receiver.answer = (200, {}, b"x" * (1024 * 1024))
    assert client.call(receiver.base + "/hook", "POST", b"{}").outcome == SENT
    receiver.answer = (200, {}, b"")
    assert client.call(receiver.base + "/hook", "POST", b"{}").outcome == SENT
    assert len(receiver.requests) == 2


def test_a_given_session_is_used_and_left_open(receiver, clock):
    import requests
    session = requests.Session()
    client = WebhookClient(SECRET, session=session, clock=clock)
    assert client.call(receiver.base + "/hook", "POST", b"{}").outcome == SENT
    client.close()
    assert session.adapters  # still usable: the caller owns it
    assert client.call(receiver.base + "/hook", "POST", b"{}").outcome == SENT
    session.close()


@pytest.mark.parametrize("secret", ["", None])
def test_client_refuses_an_empty_secret(secret):
    with pytest.raises(ValueError):
        WebhookClient(secret)


# --- a total deadline ------------------------------------------------------------------
@pytest.mark.server
def test_a_receiver_that_trickles_header_lines_is_cut_at_the_deadline_and_retried(clock):
    from trickler import Trickler
    with Trickler(every=0.3, lines=40) as slow:  # a line every 0.3 s: each read far inside the read timeout
        with WebhookClient(SECRET, connect_timeout=1, read_timeout=2, deadline=1.5, clock=clock) as client:
            started = time.monotonic()
            result = client.call(slow.url + "/hook", "POST", body(PAYLOAD), item_id=3)
            took = time.monotonic() - started
            assert (result.outcome, result.error) == (RETRY, "no complete answer within 1.5 s")
            assert 1.4 <= took < 5, took  # 12 s without the deadline
            # the connection was closed, not reused: the next call opens a new one
            client.call(slow.url + "/hook", "POST", body(PAYLOAD), item_id=3)
            assert len(slow.requests) == 2


@pytest.mark.server
def test_an_answer_whose_body_trickles_is_cut_at_the_deadline_and_retried(clock):
    from trickler import Trickler
    with Trickler(every=0.3, lines=40, where="body") as slow:
        with WebhookClient(SECRET, connect_timeout=1, read_timeout=2, deadline=1.5, clock=clock) as client:
            started = time.monotonic()
            result = client.call(slow.url + "/hook", "POST", body(PAYLOAD))
            assert (result.outcome, result.error) == (RETRY, "no complete answer within 1.5 s")
            assert time.monotonic() - started < 5
