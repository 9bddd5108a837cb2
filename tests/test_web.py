"""The HTTP surface against the real app: answers, and a clear status for every bad input."""

from __future__ import annotations

import logging
from urllib.parse import urlencode

import pytest
from lxml import etree

from conftest import FORM, TOKEN, make_app, send, signed_headers, sms

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


def test_5000_character_text_is_split(client):
    text = " ".join(["word"] * 1000)[:5000]
    r = send(client, sms(text))
    assert r.status_code == 200
    parts = forwarded_texts(r)
    assert len(parts) == 4
    assert " ".join(parts) == "From 14155550123: " + text


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
    assert r.json["status"] == "ready" and r.json["rules"] == 11


def test_not_ready_without_rules(tmp_path):
    app = make_app(tmp_path, RULES_PATH=str(tmp_path / "missing.yaml"))
    client = app.test_client()
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json["reason"] == "rules not loaded"
    assert "missing.yaml" in r.json["problems"][0]
    # Plivo retries a 503, so the message is not lost while the file is fixed.
    assert_short(send(client, sms("hours")), 503, "rules are not loaded")


@pytest.mark.parametrize("field,value", [("From", "14155550123<14155550124"), ("To", "1415 555"),
                                         ("From", "<script>"), ("To", "14155550100x")])
def test_numbers_must_be_numbers(client, field, value):
    # '<' joins several numbers in dst: a From carrying one would send the reply to others
    assert_short(send(client, sms("hours", **{field: value})), 400, f"{field} is not a phone number")


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS"])
def test_head_and_options_are_not_webhooks(client, method):
    r = client.open("/message", method=method)
    assert r.status_code == 405
    assert r.data == (b"" if method == "HEAD" else b"method not allowed\n")  # HEAD answers carry no body
    assert set(r.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


def test_a_huge_forward_is_capped(tmp_path):
    params = sms(" ".join(["word"] * 12000)[:60000])
    app = make_app(tmp_path)
    r = send(app.test_client(), params)
    assert r.status_code == 200 and len(messages(r)) == 10
