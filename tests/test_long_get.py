"""A GET webhook carries the whole message in its request line: the longest text Plivo can
send, in its worst encoding, with every other parameter at its longest, is answered by the
real gunicorn; a line over `limit_request_line` gets a 414 and the server carries on; the
header limits fit Plivo's headers and a proxy's, and refuse more."""

from __future__ import annotations

import re
import uuid
from urllib.parse import urlencode

import pytest
from conftest import ROOT, signed_headers
from rawhttp import exchange, request
from servers import Server

#: Every test here starts a real server or waits out deadlines of seconds (pyproject.toml).
pytestmark = pytest.mark.server

#: gunicorn.conf.py's limits, read from the file (importing it would start its set-up).
_CONF = (ROOT / "gunicorn.conf.py").read_text(encoding="utf-8")
LINE_LIMIT = int(re.search(r"^limit_request_line = (\d+)", _CONF, re.M).group(1))
FIELDS_LIMIT = int(re.search(r"^limit_request_fields = (\d+)", _CONF, re.M).group(1))
FIELD_SIZE = int(re.search(r"^limit_request_field_size = (\d+)", _CONF, re.M).group(1))
#: gunicorn's own cap on limit_request_line, which the service raises.
GUNICORN_CAP = 8190

MEDIA = [f"https://api.plivo.com/v1/Account/MAXXXXXXXXXXXXXXXXXX/Message/{uuid.uuid4()}/Media/{uuid.uuid4()}/"
         for _ in range(10)]


def longest(text: str, type_: str = "sms") -> dict[str, str]:
    """Every parameter Plivo sends for an inbound message, each at its longest."""
    params = {"From": "+" + "9" * 15, "To": "+" + "9" * 15, "Type": type_,
              "Text" if type_ == "sms" else "Body": text, "MessageUUID": str(uuid.uuid4()), "Units": "11",
              "TotalRate": "0.00000", "TotalAmount": "0.00000", "MessageIntent": "", "PowerpackUUID": str(uuid.uuid4()),
              "MediaCount": "10"}
    params.update({f"Media{i}": url for i, url in enumerate(MEDIA, 1)})
    return params


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("long"), WEB_CONCURRENCY="1")
    yield srv
    srv.stop()


def get(server, params, extra_headers=()):
    target = "/message?" + urlencode(params)
    headers = signed_headers(f"http://127.0.0.1:{server.port}{target}", params, method="GET")
    line = f"GET {target} HTTP/1.1"
    reply = exchange(server.port, request("GET", target, [("Host", f"127.0.0.1:{server.port}"),
                                                          ("User-Agent", "PlivoHttpClient/1.0"),
                                                          *headers.items(), *extra_headers]))
    return len(line.encode()), reply


#: (what, text, type): the worst case of each limit, percent-encoded as a GET carries it.
WORST = [
    ("1,600 GSM-7 characters of 2 UTF-8 bytes", "é" * 1600, "sms"),
    ("800 GSM-7 extension characters (2 units each)", "€" * 800, "sms"),
    ("737 UCS-2 characters as 4-byte emoji", "\U0001F600" * 737, "sms"),
    ("737 CJK characters", "中" * 737, "sms"),
    ("1,600 MMS characters as 4-byte emoji", "\U0001F600" * 1600, "mms"),
    ("4,096 WhatsApp characters as 4-byte emoji", "\U0001F600" * 4096, "whatsapp"),
]


@pytest.mark.parametrize("what, text, type_", WORST, ids=[w[0] for w in WORST])
def test_the_longest_get_webhooks_are_answered(server, what, text, type_):
    size, reply = get(server, longest(text, type_))
    assert size <= LINE_LIMIT
    assert reply.status == 200, (what, size, reply.head, reply.body[:200])
    assert b"<Response" in reply.body


def test_the_sms_worst_case_is_beyond_gunicorns_own_cap():
    """Without the service raising gunicorn's cap, the 1,600 'é' SMS would be a 414."""
    size = len(f"GET /message?{urlencode(longest('é' * 1600))} HTTP/1.1")
    assert GUNICORN_CAP < size < LINE_LIMIT


def test_a_line_over_the_limit_is_414_and_the_server_carries_on(server):
    filler = "x" * (LINE_LIMIT - len("GET /message?a= HTTP/1.1") + 1)
    target = "/message?a=" + filler
    assert len(f"GET {target} HTTP/1.1") == LINE_LIMIT + 1
    reply = exchange(server.port, request("GET", target, [("Host", "127.0.0.1")]))
    assert reply.status == 414, reply.head
    # Exactly at the limit the line is read (and the app answers: no signature).
    at_limit = exchange(server.port, request("GET", target[:-1], [("Host", "127.0.0.1")]))
    assert at_limit.status == 403, at_limit.head
    # An absurd line (a megabyte): refused without reading it all; the server stays up.
    absurd = exchange(server.port, request("GET", "/message?a=" + "x" * 1_000_000, [("Host", "127.0.0.1")]))
    assert absurd.status in (414, None), absurd.head
    assert exchange(server.port, request("GET", "/healthz", [("Host", "127.0.0.1")])).status == 200
    size, ok = get(server, longest("hello"))
    assert ok.status == 200


def test_header_limits_fit_plivo_and_a_proxy_and_refuse_more(server):
    # Plivo's dozen headers plus 30 a chain of proxies and a CDN might add.
    proxy = [(f"X-Proxy-Header-{i}", "v" * 200) for i in range(30)]
    assert get(server, longest("hello"), proxy)[1].status == 200
    # Two signatures in one header (a token being rotated) and a long proxy header are fine.
    assert get(server, longest("hello"), [("X-Amzn-Trace-Id", "Root=" + "1" * 4000)])[1].status == 200
    too_many = [(f"X-H-{i}", "v") for i in range(FIELDS_LIMIT + 1)]
    assert get(server, longest("hello"), too_many)[1].status == 431
    too_long = [("X-Long", "v" * (FIELD_SIZE + 10))]
    assert get(server, longest("hello"), too_long)[1].status == 431
    assert exchange(server.port, request("GET", "/healthz", [("Host", "127.0.0.1")])).status == 200
