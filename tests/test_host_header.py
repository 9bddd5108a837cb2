"""The Host header (and a trusted proxy's X-Forwarded-Host and -Proto) must be a plain
`host[:port]` / `[v6]:port` and http(s), or the request is a 400 before any signature work.

Without that check the URL a signature is checked against could be steered: a Host of
`127.0.0.1:PORT/message?<a captured signed query>#` makes a captured V3-signed GET verify
while the app reads the attacker's query, and a Host ending in `/status?` lets a V2
signature made for /status pass on /message. Each trick is first shown to verify with the
signature code alone (so the test is about the real trick), then sent byte for byte to a
real gunicorn."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from conftest import FORM, TOKEN, signed_headers, sms
from rawhttp import exchange, request
from servers import Server

from app import signature
from app.hostcheck import valid_host, valid_scheme
from app.service import called_url

#: Every test here starts a real server or waits out deadlines of seconds (pyproject.toml).
pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("plain"), WEB_CONCURRENCY="1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("proxied"), WEB_CONCURRENCY="1", TRUSTED_PROXIES="1")
    yield server
    server.stop()


def _captured(port: int, host: str | None = None, scheme: str = "http"):
    """A GET Plivo signed for its own message: (its query, its signature headers)."""
    params = sms("captured message", From="14155550123")
    query = urlencode(params)
    url = f"{scheme}://{host or f'127.0.0.1:{port}'}/message?{query}"
    return query, signed_headers(url, params, method="GET")


def _attacker_query() -> str:
    return urlencode(sms("the attacker's own text", From="14155550999"))


def test_a_host_carrying_a_captured_signed_query_is_refused(plain):
    port = plain.port
    captured, headers = _captured(port)
    attacker = _attacker_query()
    host = f"127.0.0.1:{port}/message?{captured}#"
    # What the service would check without the Host rule: the captured query, and it verifies.
    assert signature.verify([TOKEN], "GET", called_url("http", host, f"/message?{attacker}", None), headers) == "V3"
    reply = exchange(port, request("GET", f"/message?{attacker}", [("Host", host), *headers.items()]))
    assert (reply.status, reply.body) == (400, b"bad Host header\n")
    # The captured request itself, sent as Plivo sent it, is still answered (its nonce unused).
    ok = exchange(port, request("GET", f"/message?{captured}", [("Host", f"127.0.0.1:{port}"), *headers.items()]))
    assert ok.status == 200, ok


def test_a_v2_signature_for_status_does_not_pass_on_message(plain):
    port = plain.port
    params = sms("a message for /message")
    full = signed_headers(f"http://127.0.0.1:{port}/status", params)
    v2 = {k: v for k, v in full.items() if "V2" in k}
    host = f"127.0.0.1:{port}/status?"
    assert signature.verify([TOKEN], "POST", called_url("http", host, "/message", None), v2, params) == "V2"
    reply = exchange(port, request("POST", "/message", [("Host", host), ("Content-Type", FORM), *v2.items()],
                                   urlencode(params).encode()))
    assert (reply.status, reply.body) == (400, b"bad Host header\n")


def test_trusted_x_forwarded_host_and_proto_are_held_to_the_same_rule(proxied):
    port = proxied.port
    attacker = _attacker_query()
    local = ("Host", f"127.0.0.1:{port}")

    captured, headers = _captured(port)
    forwarded_host = f"127.0.0.1:{port}/message?{captured}#"
    assert signature.verify([TOKEN], "GET", called_url("http", forwarded_host, f"/message?{attacker}", None),
                            headers) == "V3"
    reply = exchange(port, request("GET", f"/message?{attacker}",
                                   [local, ("X-Forwarded-Host", forwarded_host), *headers.items()]))
    assert (reply.status, reply.body) == (400, b"bad X-Forwarded-Host header\n")

    # The scheme is the URL's first part: a forwarded proto can carry a whole URL too.
    proto = f"http://127.0.0.1:{port}/message?{captured}#"
    assert signature.verify([TOKEN], "GET", called_url(proto, f"127.0.0.1:{port}", f"/message?{attacker}", None),
                            headers) == "V3"
    reply = exchange(port, request("GET", f"/message?{attacker}",
                                   [local, ("X-Forwarded-Proto", proto), *headers.items()]))
    assert (reply.status, reply.body) == (400, b"bad X-Forwarded-Proto header\n")

    # The Host the proxy itself sent is checked too, with or without X-Forwarded-Host.
    for extra in ([], [("X-Forwarded-Host", "sms.example.com")]):
        reply = exchange(port, request("GET", "/healthz", [("Host", "127.0.0.1/x?y#"), *extra]))
        assert (reply.status, reply.body) == (400, b"bad Host header\n")

    # A proxy that forwards plain values is followed, as before.
    captured, headers = _captured(port, host="sms.example.com", scheme="https")
    reply = exchange(port, request("GET", f"/message?{captured}", [
        local, ("X-Forwarded-Host", "sms.example.com"), ("X-Forwarded-Proto", "https"), *headers.items()]))
    assert reply.status == 200, reply


GOOD_HOSTS = ["127.0.0.1:{port}", "127.0.0.1", "localhost", "LocalHost:{port}", "sms.example.com",
              "sms.example.com.:443", "my_service:8000", "[::1]:{port}", "[::1]", "[2001:db8::5]:8000"]
BAD_HOSTS = ["127.0.0.1:{port}/message", "127.0.0.1:{port}/status?", "127.0.0.1:{port}#x", "127.0.0.1:{port}?a=b",
             "user@127.0.0.1:{port}", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:123456", "a b", "a,b", "",
             "%31%32%37.0.0.1", "a\\b", "[::1", "[::1]x", "[zz::1]:80", "[127.0.0.1]:80", "a..b", "x" * 300]


def test_plain_hosts_are_answered(plain):
    port = plain.port
    for pattern in GOOD_HOSTS:
        host = pattern.format(port=port)
        params = sms("hello")
        headers = signed_headers(f"http://{host}/message", params)
        reply = exchange(port, request("POST", "/message", [("Host", host), ("Content-Type", FORM),
                                                            *headers.items()], urlencode(params).encode()))
        assert reply.status == 200, (host, reply)


def test_anything_else_is_400_before_the_signature(plain):
    port = plain.port
    for pattern in BAD_HOSTS:
        host = pattern.format(port=port)
        reply = exchange(port, request("POST", "/message", [("Host", host), ("Content-Type", FORM)], b"From=1"))
        assert (reply.status, reply.body) == (400, b"bad Host header\n"), host
    reply = exchange(port, request("GET", "/healthz", [("Host", f"127.0.0.1:{port}/x")]))
    assert (reply.status, reply.body) == (400, b"bad Host header\n")
    # Two Host headers: gunicorn joins them with a comma, which is no host.
    reply = exchange(port, request("GET", "/healthz", [("Host", "a.example"), ("Host", "b.example")]))
    assert reply.status == 400
    # No Host at all: HTTP/1.1 requires one; HTTP/1.0 gets the server's own address (nothing to steer).
    reply = exchange(port, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert (reply.status, reply.body) == (400, b"missing Host header\n")
    reply = exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert reply.status == 200
    # An absolute-form request line names the host itself: it must be the Host's.
    reply = exchange(port, request("GET", "http://evil.example/healthz", [("Host", f"127.0.0.1:{port}")]))
    assert (reply.status, reply.body) == (400, b"request line names another host\n")
    reply = exchange(port, request("GET", f"http://127.0.0.1:{port}/healthz", [("Host", f"127.0.0.1:{port}")]))
    assert reply.status == 200


def test_valid_host_and_scheme():
    for host in GOOD_HOSTS:
        assert valid_host(host.format(port=8000)), host
    for host in BAD_HOSTS:
        assert not valid_host(host.format(port=8000)), host
    assert valid_host("a" * 63 + "." + "b" * 63) and not valid_host("a" * 261) and not valid_host(".a")
    assert all(map(valid_scheme, ["http", "https", "HTTPS"]))
    assert not any(map(valid_scheme, ["ftp", "http://x/y?", "", "https "]))
