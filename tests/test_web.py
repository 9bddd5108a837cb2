"""The HTTP surface against the real app: answers, and a clear status for every bad input."""

from __future__ import annotations

import logging
from urllib.parse import urlencode

import pytest
from conftest import FORM, TOKEN, listening, make_app, send, signed_headers, sms
from lxml import etree

#: Every test here runs on SQLite and on PostgreSQL (conftest.py).
pytestmark = pytest.mark.usefixtures("database")


def messages(response):
    root = etree.fromstring(response.data)
    assert root.tag == "Response"
    return [(m.get("src"), m.get("dst"), m.get("type"), m.text) for m in root]


def assert_short(response, status, fragment):
    assert response.status_code == status
    assert response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert fragment in text
    assert len(text) < 200 and "Traceback" not in text and "<html" not in text.lower()


# -- answers -------------------------------------------------------------------------
def test_keyword_reply(client):
    r = send(client, sms("Hours?"))
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/xml; charset=utf-8"
    assert r.data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<Response>')
    assert messages(r) == [("14155550100", "14155550123", "sms",
                            "We are open 9am-5pm, Monday to Friday (New York time).")]


def test_get_request_signed_over_query(client):
    r = send(client, sms("hours"), method="GET")
    assert r.status_code == 200
    assert len(messages(r)) == 1


def test_trailing_slash_url_is_signed_as_called(client):
    r = send(client, sms("hours"), path="/message/")
    assert r.status_code == 200 and len(messages(r)) == 1


def test_nothing_matched_is_empty_response(tmp_path):
    app = make_app(tmp_path, """\
        version: 1
        rules:
          - {name: only, when: {keyword: zzz}, reply: "z"}
    """)
    r = send(app.test_client(), sms("hello"))
    assert r.status_code == 200
    assert r.data == b'<?xml version="1.0" encoding="UTF-8"?>\n<Response/>'


def test_whatsapp_gets_empty_response(client):
    params = sms(None, Type="whatsapp", Body="hours", Text=None)
    r = send(client, params)
    assert r.status_code == 200 and messages(r) == []


def test_public_url_adds_callback_and_is_what_is_checked(tmp_path):
    app = make_app(tmp_path, PUBLIC_URL="https://sms.example.com/")
    client = app.test_client()
    params = sms("hours")
    headers = signed_headers("https://sms.example.com/message", params)
    r = client.post("/message", base_url="http://10.0.0.5:8000", data=urlencode(params),
                    headers={**headers, "Content-Type": FORM})
    assert r.status_code == 200
    msg = etree.fromstring(r.data)[0]
    assert msg.get("callbackUrl") == f"https://sms.example.com/status?ref={params['MessageUUID']}.0"
    assert msg.get("callbackMethod") == "POST"
    # signed for the internal URL instead: rejected, since Plivo called the public one
    assert send(client, params, host="10.0.0.5:8000").status_code == 403


def test_trusted_proxy_headers(tmp_path):
    params = sms("hours")
    headers = signed_headers("https://sms.example.com/message", params)
    forwarded = {**headers, "Content-Type": FORM, "X-Forwarded-Proto": "https",
                 "X-Forwarded-Host": "sms.example.com", "X-Forwarded-For": "203.0.113.7"}
    trusting = make_app(tmp_path, TRUSTED_PROXIES="1").test_client()
    r = trusting.post("/message", base_url="http://10.0.0.5:8000", data=urlencode(params), headers=forwarded)
    assert r.status_code == 200
    # Without TRUSTED_PROXIES the same forwarded headers are ignored: nobody can claim a URL.
    plain = make_app(tmp_path).test_client()
    r = plain.post("/message", base_url="http://10.0.0.5:8000", data=urlencode(params), headers=forwarded)
    assert r.status_code == 403


def test_several_tokens_rotation(tmp_path):
    app = make_app(tmp_path, PLIVO_AUTH_TOKEN=f"oldtoken, {TOKEN}")
    assert send(app.test_client(), sms("hours")).status_code == 200
    assert send(app.test_client(), sms("hours"), token="oldtoken").status_code == 200
    assert send(app.test_client(), sms("hours"), token="other").status_code == 403


def test_status_endpoint_verifies_and_accepts(client):
    report = {"MessageUUID": "abc", "Status": "delivered", "ErrorCode": "", "From": "1", "To": "2"}
    r = send(client, report, path="/status")
    assert r.status_code == 200
    assert send(client, report, path="/status", sign=False).status_code == 403


# -- signatures ---------------------------------------------------------------------
def test_missing_signature(client):
    assert_short(send(client, sms(), sign=False), 403, "missing Plivo signature")


def test_wrong_signature(client):
    assert_short(send(client, sms(), token="not-the-token"), 403, "invalid Plivo signature")


def test_tampered_body(client):
    params = sms("hours")
    headers = signed_headers("http://localhost/message", params)
    tampered = urlencode({**params, "Text": "order 666"})
    r = client.post("/message", data=tampered, headers={**headers, "Content-Type": FORM})
    assert_short(r, 403, "invalid")


def test_wrong_v3_is_rejected_even_with_good_v2(client):
    params = sms("hours")
    headers = signed_headers("http://localhost/message", params)
    headers["X-Plivo-Signature-V3"] = headers["X-Plivo-Signature-Ma-V3"] = "AAAA" + headers["X-Plivo-Signature-V3"][4:]
    r = client.post("/message", data=urlencode(params), headers={**headers, "Content-Type": FORM})
    assert_short(r, 403, "invalid")


def test_rejection_log_names_url_and_headers_not_secrets(client, caplog):
    params = sms("hours")
    headers = signed_headers("http://localhost/message", params, token="wrong-token")
    with caplog.at_level(logging.WARNING, logger="app"):
        client.post("/message", data=urlencode(params), headers={**headers, "Content-Type": FORM})
    record = next(r for r in caplog.records if "signature rejected" in r.getMessage())
    assert record.checked_url == "http://localhost/message"
    assert "X-Plivo-Signature-V3" in record.headers_present
    text = caplog.text + repr(record.__dict__)
    assert TOKEN not in text and "wrong-token" not in text
    from app.signature import v3_signature
    expected = v3_signature(TOKEN, "POST", "http://localhost/message", list(params.items()),
                            headers["X-Plivo-Signature-V3-Nonce"])
    assert expected not in text


def refused(client, caplog, signed_for: str, *, path="/message", base_url="http://localhost", extra=None,
            method="POST", token=TOKEN):
    """Send a request signed for `signed_for` to `base_url + path`; (the answer, the log record)."""
    params = sms("hours")
    if method == "GET":
        query = urlencode(params)
        headers = signed_headers(f"{signed_for}?{query}", params, "GET", token)
        with caplog.at_level(logging.WARNING, logger="app"):
            r = client.get(f"{path}?{query}", base_url=base_url, headers={**headers, **(extra or {})})
    else:
        headers = signed_headers(signed_for, params, token=token)
        with caplog.at_level(logging.WARNING, logger="app"):
            r = client.post(path, base_url=base_url, data=urlencode(params),
                            headers={**headers, "Content-Type": FORM, **(extra or {})})
    assert_short(r, 403, "invalid Plivo signature")  # the answer says nothing more, whatever the cause
    records = [rec for rec in caplog.records if "signature rejected" in rec.getMessage()]
    assert len(records) == 1
    text = caplog.text + repr(records[0].__dict__)
    assert TOKEN not in text and "wrong-token" not in text
    assert headers["X-Plivo-Signature-V3"] not in text and headers["X-Plivo-Signature-V2"] not in text
    caplog.clear()
    return r, records[0]


def test_wrong_token_is_said_to_be_likelier_than_the_url(client, caplog):
    # (a public name: on localhost or an IP address, the URL is the likelier fix, see below)
    _, record = refused(client, caplog, "http://sms.example.com/message", base_url="http://sms.example.com",
                        token="wrong-token")
    assert record.likely_wrong == "token"
    assert record.getMessage() == (
        "signature rejected: bad signature; the token is likelier wrong than the URL (no nearby URL verifies "
        "either): PLIVO_AUTH_TOKEN must be the auth token of the Plivo account or subaccount that owns the number")


@pytest.mark.parametrize("base_url, host, what", [
    ("http://10.0.0.5:8000", "10.0.0.5", "a private address"),
    ("http://127.0.0.1:8000", "127.0.0.1", "a loopback address"),
    ("http://localhost", "localhost", "a loopback name"),
    ("http://responder:8000", "responder", "an internal name"),
])
def test_a_proxy_that_passes_no_forwarded_host_points_at_public_url(client, caplog, base_url, host, what):
    """Plivo called https://sms.example.com/message; a proxy passed it on with its own Host and
    no X-Forwarded-Host, so the real URL cannot be tried. A Host that Plivo cannot have called
    makes PUBLIC_URL, not the token, the likelier fix."""
    _, record = refused(client, caplog, "https://sms.example.com/message", base_url=base_url)
    assert record.likely_wrong == "url"
    assert record.getMessage() == (
        f"signature rejected: bad signature; the URL is likelier wrong than the token: {base_url}/message was "
        f"checked, and {host} is {what}, seldom the address Plivo calls (a proxy in front that passes no "
        "X-Forwarded-Host?): set PUBLIC_URL to the base of the URL in the Plivo application (as "
        f"https://sms.example.com); if Plivo does call {base_url}, PLIVO_AUTH_TOKEN is wrong")


def test_with_public_url_set_an_internal_host_is_no_reason_to_doubt_the_url(tmp_path, caplog):
    client = make_app(tmp_path, PUBLIC_URL="https://sms.example.com").test_client()
    _, record = refused(client, caplog, "https://sms.example.com/message", base_url="http://10.0.0.5:8000",
                        token="wrong-token")
    assert record.likely_wrong == "token"


def test_untrusted_forwarded_headers_that_would_verify_point_at_trusted_proxies(tmp_path, caplog):
    client = make_app(tmp_path).test_client()
    _, record = refused(client, caplog, "https://sms.example.com/message", base_url="http://10.0.0.5:8000",
                        extra={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "sms.example.com"})
    assert record.likely_wrong == "url"
    assert record.getMessage() == (
        "signature rejected: bad signature; the URL is likelier wrong than the token: the signature matches "
        "https://sms.example.com/message, but http://10.0.0.5:8000/message was checked; a proxy in front sets "
        "X-Forwarded-Proto/Host: set TRUSTED_PROXIES=1 (the proxies that set them), "
        "or PUBLIC_URL=https://sms.example.com")


def test_tls_ended_in_front_points_at_public_url(client, caplog):
    _, record = refused(client, caplog, "https://localhost/message")
    assert record.likely_wrong == "url"
    assert record.getMessage().endswith(
        "the signature matches https://localhost/message, but http://localhost/message was checked; "
        "Plivo calls https://localhost: set PUBLIC_URL=https://localhost")


def test_a_public_url_that_is_not_the_one_plivo_calls_is_named(tmp_path, caplog):
    client = make_app(tmp_path, PUBLIC_URL="https://old.example.com").test_client()
    _, record = refused(client, caplog, "https://sms.example.com/status", path="/status",
                        base_url="https://sms.example.com")
    assert record.likely_wrong == "url"
    assert record.getMessage().endswith(
        "the signature matches https://sms.example.com/status, but https://old.example.com/status was checked; "
        "PUBLIC_URL is https://old.example.com, but Plivo calls https://sms.example.com (the request's Host): "
        "set PUBLIC_URL=https://sms.example.com")


def test_a_trailing_slash_lost_on_the_way_is_named_without_the_query(client, caplog):
    _, record = refused(client, caplog, "http://localhost/message/", method="GET")
    assert record.likely_wrong == "url"
    assert record.getMessage().endswith(
        "the signature matches http://localhost/message/, but http://localhost/message was checked; "
        "Plivo signed the path with a trailing '/' that the request lost on the way; make the URL in the "
        "Plivo application and the path this service receives agree")
    assert "14155550123" not in record.getMessage() and record.checked_url == "http://localhost/message"


def test_the_hint_is_worked_out_only_for_refused_requests(client, monkeypatch):
    from app import signature_hint
    calls = []
    monkeypatch.setattr(signature_hint, "candidates", lambda *a: calls.append(a) or [])
    assert send(client, sms("hours")).status_code == 200
    assert calls == []
    assert send(client, sms("hours"), token="wrong-token").status_code == 403
    assert len(calls) == 1


def test_a_hint_is_worked_out_at_most_once_per_interval(client, caplog, monkeypatch):
    """Each hint costs a dozen HMACs and a forged request costs nothing: a flood of them gets
    one hint per interval, and the other refusals are logged without one."""
    from app import signature_hint
    calls = []
    real = signature_hint.candidates
    monkeypatch.setattr(signature_hint, "candidates", lambda *a: calls.append(a) or real(*a))
    clock = [1000.0]
    client.application.extensions["responder"].hints = signature_hint.Throttle(10.0, clock=lambda: clock[0])

    _, first = refused(client, caplog, "http://sms.example.com/message", base_url="http://sms.example.com",
                       token="wrong-token")
    assert first.likely_wrong == "token" and len(calls) == 1
    clock[0] += 2.5
    _, second = refused(client, caplog, "https://localhost/message")  # a URL hint would be found: not sought
    assert second.getMessage() == "signature rejected: bad signature; hint skipped, one was logged 2.5 s ago"
    assert not hasattr(second, "likely_wrong") and len(calls) == 1
    clock[0] += 7.5  # 10 s after the first
    _, third = refused(client, caplog, "https://localhost/message")
    assert third.likely_wrong == "url" and len(calls) == 2


def test_the_hint_interval_holds_across_threads():
    from concurrent.futures import ThreadPoolExecutor

    from app.signature_hint import HINT_INTERVAL, Throttle
    assert HINT_INTERVAL == 10.0
    throttle = Throttle(HINT_INTERVAL, clock=lambda: 5.0)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: throttle.due(), range(200)))
    assert results.count(None) == 1 and results.count(0.0) == 199


def test_signatures_off_answers_unsigned_and_warns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="app"):
        app = make_app(tmp_path, PLIVO_AUTH_TOKEN=None, VERIFY_SIGNATURES="false")
    assert "VERIFY_SIGNATURES=false" in caplog.text
    assert send(app.test_client(), sms("hours"), sign=False).status_code == 200


# -- malformed requests -------------------------------------------------------------
@pytest.mark.parametrize("missing", ["From", "To", "MessageUUID"])
def test_missing_required_field(client, missing):
    r = send(client, sms("hours", **{missing: None}))
    assert_short(r, 400, f"missing {missing}")


def test_blank_required_field(client):
    assert_short(send(client, sms("hours", From="  ")), 400, "missing From")


def test_json_body_is_refused(client):
    params = sms("hours")
    headers = signed_headers("http://localhost/message", params)
    r = client.post("/message", json=params, headers=headers)
    assert_short(r, 400, "application/x-www-form-urlencoded")


def test_multipart_body_is_refused(client):
    r = client.post("/message", data={"From": "1", "To": "2", "MessageUUID": "x"},
                    content_type="multipart/form-data")
    assert_short(r, 400, "application/x-www-form-urlencoded")


def test_raw_invalid_utf8(client):
    r = client.post("/message", data=b"From=1&To=2&MessageUUID=u&Text=\xff\xfe", content_type=FORM)
    assert_short(r, 400, "not valid UTF-8")


def test_percent_encoded_invalid_utf8(client):
    r = client.post("/message", data=b"From=1&To=2&MessageUUID=u&Text=%C3%28", content_type=FORM)
    assert_short(r, 400, "not valid UTF-8")


def test_invalid_utf8_in_query(client):
    r = client.get("/message?From=1&To=2&MessageUUID=u&Text=%FF")
    assert_short(r, 400, "not valid UTF-8")


def test_body_over_limit(tmp_path):
    app = make_app(tmp_path, MAX_CONTENT_LENGTH="1024")
    params = sms("x" * 2000)
    r = send(app.test_client(), params)
    assert_short(r, 413, "too large")


def test_thousands_of_parameters(client):
    params = sms("hours")
    params.update({f"p{i}": "1" for i in range(3000)})
    r = send(client, params)
    assert_short(r, 400, "too many form fields")


def test_not_form_data_at_all(client):
    # V2 signs only the URL, so a V2-signed request can carry any body: it must still get a 400.
    headers = {k: v for k, v in signed_headers("http://localhost/message", {}).items() if "V3" not in k}
    r = client.post("/message", data=b"\x00\x01\x02garbage", content_type=FORM, headers=headers)
    assert_short(r, 400, "missing From")


def test_unsigned_garbage_is_refused_before_parsing_fields(client):
    r = client.post("/message", data=b"\x00\x01\x02garbage", content_type=FORM)
    assert_short(r, 403, "missing Plivo signature")


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods(client, method):
    r = client.open("/message", method=method)
    assert_short(r, 405, "method not allowed")
    assert set(r.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


def test_unknown_path(client):
    assert_short(client.get("/nope"), 404, "not found")


# -- hostile but valid texts ----------------------------------------------------------
def forwarded_texts(response):
    return [m[3] for m in messages(response) if m[1] == "14155550999"]


def test_control_characters_are_removed_from_xml(client):
    r = send(client, sms("hi\x00there\x01\x1b\x7f\ufffe ok\ttab"))
    assert r.status_code == 200
    assert forwarded_texts(r) == ["From 14155550123: hithere\x7f ok\ttab"]


def test_a_5000_character_text_is_forwarded_as_one_message_cut_with_three_dots(client):
    """A forward is one message (issue 13): cut to 1,600 GSM-7 characters, the last three '...'."""
    text = " ".join(["word"] * 1000)[:5000]
    r = send(client, sms(text))
    assert r.status_code == 200
    assert forwarded_texts(r) == [("From 14155550123: " + text)[:1597].rstrip() + "..."]


def test_emoji_and_unicode(client):
    r = send(client, sms("café 中文 👍🏽"))
    assert r.status_code == 200
    assert forwarded_texts(r) == ["From 14155550123: café 中文 👍🏽"]


def test_template_syntax_in_sender_text_is_not_evaluated(client):
    r = send(client, sms("{{ 7*7 }} {% for x in range(9999999) %}{% endfor %}"))
    assert forwarded_texts(r) == ["From 14155550123: {{ 7*7 }} {% for x in range(9999999) %}{% endfor %}"]


def test_xml_special_characters_are_escaped(client):
    r = send(client, sms('<Response> & "quotes"'))
    assert b"&lt;Response&gt; &amp; \"quotes\"" in r.data
    assert forwarded_texts(r) == ['From 14155550123: <Response> & "quotes"']


def test_unknown_extra_parameters_are_tolerated(client):
    r = send(client, sms("hours", NewPlivoField="x", Context='{"a": 1}'))
    assert r.status_code == 200 and len(messages(r)) == 1


# -- health ---------------------------------------------------------------------------
def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.data == b"ok\n"


def test_readyz(client):
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json["status"] == "ready" and r.json["rules"] == 13


def test_not_ready_without_rules(tmp_path):
    app = make_app(tmp_path, RULES_PATH=str(tmp_path / "missing.yaml"))
    client = app.test_client()
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json["reason"] == "rules not loaded"
    assert "missing.yaml" in r.json["problems"][0]
    # Plivo retries a 503, so the message is not lost while the file is fixed.
    assert_short(send(client, sms("hours")), 503, "rules are not loaded")


CRM_RULES = """\
    version: 1
    rules:
      - name: crm
        webhook: 'htps://admin:S3cret@crm.example.com/hooks?api_key=k3y'
      - name: pic
        reply: hi
        colour: red
    """


def test_not_ready_shows_where_and_what_kind_of_problem_never_the_file(tmp_path, caplog):
    """/readyz answers anyone: `path:line: kind`, never a message that may quote the file."""
    with listening(caplog, "app.rules"):
        app = make_app(tmp_path, CRM_RULES, WEBHOOK_SECRET="s")
    r = app.test_client().get("/readyz")
    assert r.status_code == 503 and r.json["reason"] == "rules not loaded"
    path = tmp_path / "rules.yaml"
    assert r.json["problems"] == [f"{path}:4: bad url", f"{path}:7: unknown key"]
    assert "S3cret" not in r.text and "api_key" not in r.text and "colour" not in r.text
    logged = caplog.text + repr([record.__dict__ for record in caplog.records])
    assert "rules not loaded" in logged and "S3cret" not in logged and "api_key" not in logged


def test_the_message_answered_line_says_whether_it_may_be_an_opt_out(client, caplog):
    with listening(caplog, "app.service"):
        assert send(client, sms("please stop texting me", MessageUUID="m-flag")).status_code == 200
        assert send(client, sms("hours", MessageUUID="m-plain")).status_code == 200
    answered = {r.uuid: r for r in caplog.records if r.getMessage() == "message answered"}
    assert answered["m-flag"].possible_optout is True and answered["m-plain"].possible_optout is False


@pytest.mark.parametrize("field,value", [("From", "14155550123<14155550124"), ("To", "1415 555"),
                                         ("From", "<script>"), ("To", "14155550100x")])
def test_numbers_must_be_numbers(client, field, value):
    # '<' joins several numbers in dst: a From carrying one would send the reply to others
    assert_short(send(client, sms("hours", **{field: value})), 400, f"{field} is not a phone number")


@pytest.mark.parametrize("path", ["/message", "/status", "/message/"])
@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "PUT"])
def test_head_and_options_are_not_webhooks(client, path, method):
    r = client.open(path, method=method)
    assert r.status_code == 405
    assert r.data == (b"" if method == "HEAD" else b"method not allowed\n")  # HEAD answers carry no body
    assert sorted(r.headers["Allow"].split(", ")) == ["GET", "POST"]


_METHODS = ("GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH")


def test_allow_tells_the_truth_on_every_route(client):
    """For every route, the methods a 405 or an OPTIONS answer lists are exactly the ones
    that are not answered 405."""
    paths = sorted({rule.rule for rule in client.application.url_map.iter_rules() if rule.endpoint != "static"})
    assert {"/message", "/status", "/healthz", "/readyz"} <= set(paths)
    for path in paths:
        answers = {method: client.open(path, method=method) for method in _METHODS}
        served = {m for m, r in answers.items() if r.status_code != 405}
        assert {"GET"} <= served, path
        for method, r in answers.items():
            if r.status_code == 405 or method == "OPTIONS" and r.status_code < 300:
                assert set(r.headers["Allow"].replace(" ", "").split(",")) == served, (path, method)


def test_a_huge_forward_is_capped(tmp_path):
    params = sms(" ".join(["word"] * 12000)[:60000])
    app = make_app(tmp_path)
    r = send(app.test_client(), params)
    assert r.status_code == 200 and len(messages(r)) == 2  # the forward, cut to one message, and the reply
    [forward] = forwarded_texts(r)
    assert len(forward) == 1600 and forward.endswith("...")


@pytest.mark.parametrize("path", ["//message", "/%2Fmessage", "//status", "/message//", "/%2fstatus/"])
def test_only_the_webhooks_own_paths_are_served(client, path):
    """werkzeug routes `//message` and `/%2Fmessage` to the view; signed for that very URL, they
    would be served by a path other than the one Plivo calls. They are 404 before any signature."""
    answer = send(client, sms("hours"), path=path)
    assert answer.status_code == (308 if path == "/message//" else 404)  # werkzeug redirects that one


def test_trailing_slash_is_still_the_webhook(client):
    assert send(client, sms("hours"), path="/message/").status_code == 200


@pytest.mark.parametrize("coding", ["gzip, chunked", "gzip", "identity"])
def test_a_transfer_coding_other_than_chunked_is_refused(client, coding):
    """A coded body would reach the app still coded, so a proxy in front and the service would
    read different bodies; Plivo sends plain or chunked bodies only."""
    answer = send(client, sms("hours"), headers={"Transfer-Encoding": coding})
    assert answer.status_code == 400 and b"unsupported Transfer-Encoding" in answer.data
