"""app/webhook_routes.py: /message and /status answered before Flask, as Flask answered them.

Each request is sent byte for byte to two apps with their own databases: the app as
create_app makes it (the webhooks answered in plain WSGI) and the same app entered at
Flask's own wsgi_app (the blueprint's views). Status line, headers and body must agree.
"""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from conftest import FORM, make_app, send, signed_headers, sms
from flask import Flask, request_started
from werkzeug.test import Client
from werkzeug.wrappers import Response


class Both:
    """A test client that sends each request to both apps and gives both answers."""

    def __init__(self, tmp_path, **settings):
        self.apps = []
        for name in ("lean", "flask"):
            (tmp_path / name).mkdir()
            self.apps.append(make_app(tmp_path / name, **settings))
        lean, flask = self.apps
        self.lean = lean.test_client()
        self.flask = Client(lambda environ, start_response: Flask.wsgi_app(flask, environ, start_response), Response)

    def open(self, *args, **kwargs):
        return self.lean.open(*args, **kwargs), self.flask.open(*args, **kwargs)


def same(answers) -> tuple[str, bytes]:
    lean, flask = answers
    assert (lean.status, lean.headers.to_wsgi_list(), lean.data) == \
           (flask.status, flask.headers.to_wsgi_list(), flask.data)
    return lean.status, lean.data


@pytest.fixture
def both(tmp_path):
    return Both(tmp_path, MAX_CONTENT_LENGTH="1024")


def test_answers_and_refusals_are_flasks_byte_for_byte(both):
    assert same(send(both, sms("hours")))[0] == "200 OK"
    assert same(send(both, sms("hours"), method="GET"))[0] == "200 OK"
    assert same(send(both, sms("hours"), path="/message/"))[0] == "200 OK"
    assert same(send(both, sms("hello")))[0] == "200 OK"  # nothing matched: the empty <Response/>
    assert same(send(both, sms("hours"), query="a=1&b=%20"))[0] == "200 OK"
    assert same(send(both, sms("hours"), sign=False)) == ("403 FORBIDDEN", b"missing Plivo signature\n")
    assert same(send(both, sms("hours"), token="other"))[0] == "403 FORBIDDEN"
    assert same(send(both, sms("hours", MessageUUID="")))[0] == "400 BAD REQUEST"
    assert same(send(both, sms("x" * 2000))) == ("413 REQUEST ENTITY TOO LARGE",
                                                 b"request body too large (limit 1024 bytes)\n")
    assert same(send(both, sms("hours"), headers={"Transfer-Encoding": "gzip"})) == \
        ("400 BAD REQUEST", b"unsupported Transfer-Encoding\n")
    report = {"MessageUUID": "abc", "Status": "delivered", "ErrorCode": "", "From": "1", "To": "2"}
    assert same(send(both, report, path="/status")) == ("200 OK", b"ok\n")
    assert same(send(both, report, path="/status/", method="GET"))[0] == "200 OK"
    assert same(send(both, {"Status": "delivered"}, path="/status"))[0] == "400 BAD REQUEST"


@pytest.mark.parametrize("length, answer", [
    ("12x", b"bad Content-Length\n"),
    ("1000", b"body shorter than Content-Length\n"),
    ("5000", b"request body too large (limit 1024 bytes)\n"),
])
def test_a_body_that_cannot_be_read_is_refused_alike(both, length, answer):
    params = sms("hours")
    headers = {**signed_headers("http://localhost/message", params), "Content-Type": FORM}
    answers = both.open("/message", method="POST", data=urlencode(params).encode(), headers=headers,
                        environ_overrides={"CONTENT_LENGTH": length})
    assert same(answers)[1] == answer


@pytest.mark.parametrize("path, method, status", [
    ("/message", "HEAD", 405), ("/status", "OPTIONS", 405), ("/message", "PUT", 405),
    ("//message", "POST", 404), ("/%2Fmessage", "POST", 404), ("/messages", "POST", 404),
])
def test_what_is_not_a_webhook_call_goes_on_to_flask(both, path, method, status):
    lean, flask = both.open(path, method=method)
    assert lean.status_code == flask.status_code == status
    assert lean.headers.get("Allow") == flask.headers.get("Allow")


def test_the_webhooks_never_enter_flask_and_the_rest_does(both):
    lean_app = both.apps[0]
    entered = []

    def note(sender, **_):
        entered.append(1)

    request_started.connect(note, lean_app)
    try:
        assert send(both.lean, sms("hours")).status_code == 200
        assert send(both.lean, {"MessageUUID": "abc"}, path="/status").status_code == 200
        assert entered == []
        assert both.lean.get("/healthz").status_code == 200
        assert entered == [1]
    finally:
        request_started.disconnect(note, lean_app)


def test_an_unexpected_error_is_logged_and_answered_500_alike(both, monkeypatch, caplog):
    def broken(req):
        raise RuntimeError("the pipeline broke")

    for app in both.apps:
        monkeypatch.setattr(app.extensions["responder"], "handle_message", broken)
    assert same(send(both, sms("hours"))) == ("500 INTERNAL SERVER ERROR", b"internal error\n")
    logged = [r for r in caplog.records if r.getMessage() == "unexpected error"]
    assert len(logged) == 2 and all(r.name == "app" and r.exc_info for r in logged)
