"""State through the app: the message log, retries, replays, compliance, limits, reports.

Every test runs on SQLite and on PostgreSQL (conftest.py `database`).
"""

from __future__ import annotations

import json
from datetime import timedelta
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa
from conftest import FORM, MONDAY_10AM, make_app, send, signed_headers, sms
from lxml import etree

from app.store import seen_key

pytestmark = pytest.mark.usefixtures("database")

SENDER, LINE, OTHER_LINE = "14155550123", "14155550100", "14155550200"
HOURS = "We are open 9am-5pm, Monday to Friday (New York time)."
OPTED_OUT = "You are unsubscribed. Reply START to resubscribe."
OPTED_IN = "You are resubscribed. Reply STOP to unsubscribe."
EMPTY = b'<?xml version="1.0" encoding="UTF-8"?>\n<Response/>'


def texts(response) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return [m.text for m in etree.fromstring(response.data)]


def messages(app, **kw) -> list[dict]:
    return app.extensions["responder"].store.list_messages(limit=kw.pop("limit", 100), **kw)


def rows(app, sql: str) -> list:
    with app.extensions["responder"].store.engine.connect() as conn:
        return list(conn.exec_driver_sql(sql))


class Clock:
    """A clock the test moves: the rules and the database both read it."""

    def __init__(self, now=MONDAY_10AM):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, **kw):
        self.now += timedelta(**kw)


# -- the message log ----------------------------------------------------------------------
def test_message_is_recorded_with_rules_replies_and_answer(app, client):
    params = sms("Hours?")
    r = send(client, params)
    assert texts(r) == [HOURS]
    [m] = messages(app)
    assert m["uuid"] == params["MessageUUID"]
    assert (m["from"], m["to"], m["type"], m["text"], m["intent"]) == (SENDER, LINE, "sms", "Hours?", None)
    assert m["rules"] == ["hours"] and m["deliveries"] == 1
    assert m["replies"] == [{"dst": SENDER, "numbers": [SENDER], "text": HOURS, "via": "xml", "status": None,
                             "kind": "reply", "rule": "hours", "plivo_uuid": None}]
    assert m["received_at"] == "2026-11-23T15:00:00Z"  # 10:00 in New York, kept in UTC
    [(body,)] = rows(app, "SELECT answer_body FROM messages")
    assert bytes(body) == r.data
    [(stored,)] = rows(app, "SELECT params FROM messages")
    assert json.loads(stored) if isinstance(stored, str) else stored == params


def test_forward_and_replies_recorded_in_answer_order(app, client):
    r = send(client, sms("I want my money back", From="14155550555"))
    assert len(texts(r)) == 2
    [m] = messages(app)
    assert [(x["kind"], x["dst"]) for x in m["replies"]] == [
        ("reply", "14155550555"), ("forward", "14155550999<14155550998")]


def test_unmatched_message_is_recorded_with_an_empty_answer(tmp_path):
    app = make_app(tmp_path, "version: 1\nrules:\n  - {name: a, when: {keyword: x}, reply: y}\n")
    r = send(app.test_client(), sms("nothing here"))
    assert r.data == EMPTY
    [m] = messages(app)
    assert m["rules"] == [] and m["replies"] == []


def test_rejected_requests_are_not_recorded(app, client):
    assert send(client, sms("hours"), token="wrong").status_code == 403
    assert send(client, sms("hours", From=None)).status_code == 400
    assert messages(app) == []


def test_whatsapp_without_plivo_auth_id_is_recorded_with_its_replies_held_and_why(app, client):
    r = send(client, sms("hours", Type="whatsapp", Text=None, Body="hours"))
    assert r.data == EMPTY
    [m] = messages(app)
    assert m["type"] == "whatsapp" and m["replies"] == []
    assert m["held"] == [{"dst": SENDER, "text": HOURS,
                          "reason": "PLIVO_AUTH_ID is not set (the Message API is needed)"}]


def test_nul_characters_are_kept_as_replacement_characters(app, client):
    r = send(client, sms("hi\x00there"))
    assert r.status_code == 200
    [m] = messages(app)
    assert m["text"] == "hi\ufffdthere"


# -- retries ------------------------------------------------------------------------------
def test_retry_gets_the_stored_answer_byte_for_byte_and_counts(tmp_path):
    clock = Clock()
    app = make_app(tmp_path, CLOCK=clock)
    client = app.test_client()
    params = sms("hello there")  # for a person: a forward to the team and one reply
    first = send(client, params)
    clock.advance(days=6)  # a weekend: the rules would answer differently now
    again = send(client, params)  # a new nonce, as Plivo's retries carry
    third = send(client, params)
    assert again.data == first.data == third.data
    assert again.headers["Content-Type"] == first.headers["Content-Type"]
    [m] = messages(app)
    assert m["deliveries"] == 3
    assert len(m["replies"]) == 2  # sent once, not once per delivery


def test_retry_does_not_run_compliance_again(app, client):
    stop = sms("STOP")
    assert texts(send(client, stop)) == [OPTED_OUT]
    assert texts(send(client, stop)) == [OPTED_OUT]  # the same message again: the same answer
    assert texts(send(client, sms("STOP"))) == []    # a new STOP: already opted out, no second confirmation


def test_retry_of_a_get_webhook(app, client):
    params = sms("hours")
    assert send(client, params, method="GET").data == send(client, params, method="GET").data
    assert messages(app)[0]["deliveries"] == 2


# -- replays --------------------------------------------------------------------------------
def _post(client, params, headers, path="/message"):
    return client.post(path, data=urlencode(params), headers={**headers, "Content-Type": FORM},
                       base_url="http://localhost")


def test_nonce_reused_with_another_uuid_is_refused(app, client):
    url = "http://localhost/message"
    first = sms("hours")
    headers = signed_headers(url, first, nonce="12345678901234567890")
    assert _post(client, first, headers).status_code == 200
    other = sms("hours")  # another MessageUUID, signed with the same nonce
    r = _post(client, other, signed_headers(url, other, nonce="12345678901234567890"))
    assert (r.status_code, r.get_data(as_text=True)) == (403, "replayed Plivo signature\n")
    # the very same request again is a retry, answered as before
    assert _post(client, first, headers).status_code == 200
    assert [m["uuid"] for m in messages(app)] == [first["MessageUUID"]]


def test_v2_replay_with_another_body_is_refused(app, client):
    """V2 signs only the URL and nonce: a leaked V2 request replayed with any body."""
    first = sms("hours")
    headers = {k: v for k, v in signed_headers("http://localhost/message", first).items() if "V3" not in k}
    assert _post(client, first, headers).status_code == 200
    forged = sms("I want my money back")
    r = _post(client, forged, headers)
    assert (r.status_code, r.get_data(as_text=True)) == (403, "replayed Plivo signature\n")


def test_nonce_replay_on_status_is_refused(app, client):
    report = {"MessageUUID": "aaaa-1", "Status": "delivered"}
    headers = signed_headers("http://localhost/status", report, nonce="98765432109876543210")
    assert _post(client, report, headers, "/status").status_code == 200
    assert _post(client, report, headers, "/status").status_code == 200  # the same report again
    other = {"MessageUUID": "bbbb-2", "Status": "delivered"}
    r = _post(client, other, signed_headers("http://localhost/status", other, nonce="98765432109876543210"),
              "/status")
    assert (r.status_code, r.get_data(as_text=True)) == (403, "replayed Plivo signature\n")


def _v2_only(url, params, nonce, method="POST"):
    return {k: v for k, v in signed_headers(url, params, method, nonce=nonce).items() if "V3" not in k}


def _count(app, table: str) -> int:
    return rows(app, f"SELECT count(*) FROM {table}")[0][0]


def test_report_v2_headers_with_another_body_or_query_are_refused_and_change_nothing(app, client):
    """A captured /status report's V2 headers (URL without query, nonce) kept, the body or the
    query changed: the victim is not opted out, no other reply is set to failed, nothing is
    stored; the very same report again is a retry that writes nothing."""
    first = sms("hours")
    assert texts(send(client, first)) == [HOURS]
    url = "http://localhost/status"
    ref = f"ref={first['MessageUUID']}.0"
    report = {"MessageUUID": "plivo-1", "Status": "delivered", "From": LINE, "To": SENDER}
    headers = _v2_only(url, report, nonce="55555555555555555555")
    assert _post(client, report, headers, f"/status?{ref}").status_code == 200
    assert messages(app)[0]["replies"][0]["status"] == "delivered"
    forged = [(dict(report, Status="failed"), ref),
              (dict(report, ErrorCode="200", To="14155550777"), ref),          # opt the victim out
              (dict(report, Status="failed", Sequence="2"), ref),
              (report, "ref=someone-else.0"),                                  # another query
              (report, f"{ref}&x=1")]
    for body, query in forged:
        r = _post(client, body, headers, f"/status?{query}")
        assert (r.status_code, r.get_data(as_text=True)) == (403, "replayed Plivo signature\n"), (body, query)
    assert _count(app, "reports") == 1 and app.extensions["responder"].store.list_optouts() == []
    assert messages(app)[0]["replies"][0]["status"] == "delivered"
    r = _post(client, report, headers, f"/status?{ref}")  # the identical request: a retry
    assert (r.status_code, r.get_data(as_text=True)) == (200, "ok\n")
    assert _count(app, "reports") == 1


def test_message_v2_headers_with_another_body_or_query_are_refused_even_for_the_same_uuid(app, client):
    url = "http://localhost/message"
    first = sms("hours")
    headers = _v2_only(url, first, nonce="66666666666666666666")
    answer = _post(client, first, headers)
    assert texts(answer) == [HOURS]
    for body, path in [(dict(first, Text="STOP"), "/message"), (dict(first, From="14155550777"), "/message"),
                       (first, "/message?x=1")]:
        r = _post(client, body, headers, path)
        assert (r.status_code, r.get_data(as_text=True)) == (403, "replayed Plivo signature\n"), (body, path)
    # a GET with the parameters in the query, under the same headers
    r = client.get("/message?" + urlencode(first), headers=headers, base_url="http://localhost")
    assert r.status_code == 403
    again = _post(client, first, headers)  # the identical request: the stored answer, byte for byte
    assert (again.status_code, again.data, again.headers["Content-Type"]) == (
        200, answer.data, answer.headers["Content-Type"])
    [m] = messages(app)
    assert m["deliveries"] == 2 and m["text"] == "hours"
    assert app.extensions["responder"].store.list_optouts() == []


def test_a_pruned_message_is_never_decided_again(tmp_path):
    """After RETENTION_DAYS its record is gone, but its MessageUUID and nonces are kept for
    REPLAY_DAYS: the request again (same nonce, or a new one as Plivo's retries) gets an
    empty answer and changes nothing: no reply, no outbox item, no opt-out."""
    clock = Clock()
    app = make_app(tmp_path, CLOCK=clock, PLIVO_AUTH_ID="MAXXXXXXXXXXXXXXXXXX")
    client = app.test_client()
    store = app.extensions["responder"].store
    url = "http://localhost/message"
    stop, whatsapp = sms("STOP"), sms("hours", From="14155550444", Type="whatsapp", Text=None, Body="hours")
    sent = {}
    for params in (stop, whatsapp):
        sent[params["MessageUUID"]] = headers = signed_headers(url, params, nonce=params["MessageUUID"][:20])
        assert _post(client, params, headers).status_code == 200
    assert texts(send(client, sms("START"))) == [OPTED_IN]  # back in: a replayed STOP must not undo it
    assert store.list_optouts() == [] and _count(app, "outbox") == 1
    clock.advance(days=91)
    assert store.prune(90, now=clock.now, replay_days=400)["messages"] == 3
    assert messages(app) == []
    for params in (stop, whatsapp):
        for headers in (sent[params["MessageUUID"]], signed_headers(url, params)):  # same nonce, a new one
            r = _post(client, params, headers)
            assert (r.status_code, r.data) == (200, EMPTY)
    assert messages(app) == [] and store.list_optouts() == [] and _count(app, "outbox") == 1
    # a nonce of a pruned message is still refused with another request
    r = _post(client, sms("hours"), {k: v for k, v in sent[stop["MessageUUID"]].items() if "V3" not in k})
    assert (r.status_code, r.get_data(as_text=True)) == (403, "replayed Plivo signature\n")
    # REPLAY_DAYS after the last of them they are forgotten too
    clock.advance(days=401)
    assert store.prune(90, now=clock.now, replay_days=400)["seen"] > 0
    assert _count(app, "seen") == 0


# -- compliance -----------------------------------------------------------------------------
@pytest.mark.parametrize("word", ["STOP", "Stop!", "STOP.", "  stop ", "ＳＴＯＰ", "unsubscribe", "Quit"])
def test_opt_out_words(app, client, word):
    assert texts(send(client, sms(word))) == [OPTED_OUT]
    assert texts(send(client, sms("hours"))) == []
    [m, stop] = messages(app)
    assert stop["compliance"] == "optout" and stop["rules"] == []
    assert m["held"] == [{"dst": SENDER, "text": HOURS, "reason": "opted out"}]
    assert app.extensions["responder"].store.list_optouts()[0]["via"] == "keyword"


def test_opt_out_by_intent_and_back_in(app, client):
    assert texts(send(client, sms("please remove me", MessageIntent="optout"))) == [OPTED_OUT]
    assert [o["via"] for o in app.extensions["responder"].store.list_optouts()] == ["intent"]
    assert texts(send(client, sms("hours"))) == []
    assert texts(send(client, sms("Start"))) == [OPTED_IN]
    assert texts(send(client, sms("hours"))) == [HOURS]
    assert app.extensions["responder"].store.list_optouts() == []


def test_help_is_always_answered(app, client):
    help_text = ("Acme support: help@acme.example or call 415-555-0100. Msg&data rates may apply. "
                 "Reply STOP to unsubscribe.")
    assert texts(send(client, sms("help"))) == [help_text]
    send(client, sms("STOP"))
    assert texts(send(client, sms("HELP"))) == [help_text]
    assert texts(send(client, sms("x", MessageIntent="help"))) == [help_text]


def test_opted_out_sender_is_recorded_and_forwards_still_go(app, client):
    send(client, sms("STOP"))
    r = send(client, sms("I want a refund"))
    # the refund rule forwards to the team and replies: only the forward goes
    assert [m.get("dst") for m in etree.fromstring(r.data)] == ["14155550999<14155550998"]
    assert messages(app)[0]["held"][0]["reason"] == "opted out"


def test_forward_is_not_sent_to_an_opted_out_number(app, client):
    send(client, sms("STOP", From="14155550998"))  # one of the refund team's numbers
    r = send(client, sms("refund please"))
    assert [m.get("dst") for m in etree.fromstring(r.data)] == [SENDER, "14155550999"]
    assert messages(app)[0]["held"] == [{"dst": "14155550998", "text": f"From {SENDER}: refund please",
                                         "reason": "opted out"}]


def test_possible_opt_out_is_flagged_for_review(app, client):
    assert texts(send(client, sms("please stop texting me")))  # answered by the rules
    assert texts(send(client, sms("hours")))
    newest, flagged = messages(app)
    assert flagged["possible_optout"] is True and newest["possible_optout"] is False
    assert app.extensions["responder"].store.list_optouts() == []


def test_scope_number_opts_out_of_one_number_only(tmp_path):
    app = make_app(tmp_path, """\
        version: 1
        compliance: {scope: number}
        rules:
          - {name: all, reply: "hi"}
        """)
    client = app.test_client()
    assert texts(send(client, sms("STOP", To=LINE))) == [OPTED_OUT]
    assert texts(send(client, sms("x", To=LINE))) == []
    assert texts(send(client, sms("x", To=OTHER_LINE))) == ["hi"]
    assert app.extensions["responder"].store.list_optouts()[0]["to"] == LINE


def test_scope_account_covers_every_number(app, client):
    send(client, sms("STOP", To=LINE))
    assert texts(send(client, sms("hours", To=OTHER_LINE))) == []


def test_custom_keywords_and_disabled_compliance(tmp_path):
    app = make_app(tmp_path, """\
        version: 1
        compliance:
          opt_out: {keywords: [BASTA], reply: "Adios."}
        rules:
          - {name: all, reply: "hi"}
        """)
    client = app.test_client()
    assert texts(send(client, sms("stop"))) == ["hi"]
    assert texts(send(client, sms("Basta!"))) == ["Adios."]
    (tmp_path / "off").mkdir()
    off = make_app(tmp_path / "off", """\
        version: 1
        compliance: {enabled: false}
        rules:
          - {name: all, reply: "hi"}
        """)
    # (the same database: the sender above is opted out, and stays so)
    assert texts(send(off.test_client(), sms("STOP", From="14155550124"))) == ["hi"]


def test_manual_opt_out_holds_even_with_compliance_off(tmp_path):
    app = make_app(tmp_path, "version: 1\ncompliance: {enabled: false}\nrules:\n  - {name: all, reply: hi}\n")
    app.extensions["responder"].store.add_optout(SENDER)
    assert texts(send(app.test_client(), sms("x"))) == []


# -- limits -----------------------------------------------------------------------------------
LIMITED = """\
    version: 1
    limits:
      replies_per_sender: {count: 2, per: 10m}
    rules:
      - {name: all, reply: ["one", "two"]}
    """


def test_reply_limit_holds_replies_until_the_window_slides(tmp_path):
    clock = Clock()
    app = make_app(tmp_path, LIMITED.replace('["one", "two"]', '"hi"'), CLOCK=clock)
    client = app.test_client()
    assert texts(send(client, sms("a"))) == ["hi"]
    clock.advance(minutes=5)
    assert texts(send(client, sms("b"))) == ["hi"]
    assert texts(send(client, sms("c"))) == []
    assert texts(send(client, sms("d", From="14155550124"))) == ["hi"]  # per sender
    clock.advance(minutes=5, seconds=1)  # the first reply left the window
    assert texts(send(client, sms("e"))) == ["hi"]
    assert texts(send(client, sms("f"))) == []
    assert messages(app)[0]["held"] == [{"dst": SENDER, "text": "hi", "reason": "reply limit"}]


def test_reply_limit_counts_each_reply_and_never_holds_compliance(tmp_path):
    app = make_app(tmp_path, LIMITED)
    client = app.test_client()
    assert texts(send(client, sms("a"))) == ["one", "two"]
    assert texts(send(client, sms("b"))) == []
    assert texts(send(client, sms("help"))) == [
        "Reply STOP to unsubscribe or START to resubscribe. Msg&data rates may apply."]
    assert texts(send(client, sms("STOP"))) == [OPTED_OUT]
    assert texts(send(client, sms("START"))) == [OPTED_IN]


# -- delivery reports -----------------------------------------------------------------------------
def _report(client, **params):
    params.setdefault("Status", "delivered")
    ref = params.pop("ref", None)
    path = "/status" + (f"?ref={ref}" if ref else "")
    url = "https://sms.example.com" + path
    return client.post(path, data=urlencode(params), base_url="http://10.0.0.5:8000",
                       headers={**signed_headers(url, params), "Content-Type": FORM})


def test_delivery_reports_are_linked_and_ordered(tmp_path):
    app = make_app(tmp_path, PUBLIC_URL="https://sms.example.com")
    client = app.test_client()
    params = sms("hours")
    headers = signed_headers("https://sms.example.com/message", params)
    r = client.post("/message", data=urlencode(params), base_url="http://10.0.0.5:8000",
                    headers={**headers, "Content-Type": FORM})
    callback = etree.fromstring(r.data)[0].get("callbackUrl")
    ref = callback.split("?ref=", 1)[1]
    assert ref == f"{params['MessageUUID']}.0"
    plivo = "ffff0000-1111-2222-3333-444455556666"
    assert _report(client, ref=ref, MessageUUID=plivo, Status="queued", Sequence="1").status_code == 200
    assert messages(app)[0]["replies"][0]["status"] == "queued"
    assert _report(client, ref=ref, MessageUUID=plivo, Status="delivered", Sequence="3").status_code == 200
    assert _report(client, ref=ref, MessageUUID=plivo, Status="sent", Sequence="2").status_code == 200  # late
    reply = messages(app)[0]["replies"][0]
    assert (reply["status"], reply["plivo_uuid"]) == ("delivered", plivo)
    # linked by Plivo's uuid too, without the reference
    assert _report(client, MessageUUID=plivo, Status="read", Sequence="4").status_code == 200
    assert messages(app)[0]["replies"][0]["status"] == "read"
    assert len(rows(app, "SELECT id FROM reports WHERE reply_id IS NOT NULL")) == 4


def test_report_for_an_unknown_message_is_stored_unlinked(app, client):
    r = send(client, {"MessageUUID": "nobody-knows", "Status": "failed", "ErrorCode": "30"}, path="/status")
    assert r.status_code == 200
    assert rows(app, "SELECT message_uuid, status, error_code, reply_id FROM reports") == [
        ("nobody-knows", "failed", "30", None)]


def test_same_report_twice_is_stored_once(app, client):
    report = {"MessageUUID": "p-1", "Status": "delivered", "Sequence": "2"}
    assert send(client, report, path="/status").status_code == 200
    assert send(client, report, path="/status").status_code == 200
    assert len(rows(app, "SELECT id FROM reports")) == 1


def test_report_without_uuid_is_a_400(client):
    r = send(client, {"Status": "delivered"}, path="/status")
    assert (r.status_code, r.get_data(as_text=True)) == (400, "missing MessageUUID\n")


# -- the database going away ------------------------------------------------------------------------
def test_unrecordable_message_gets_503_and_readyz_503(tmp_path, database):
    """A database that does not answer: 503 so Plivo retries, never an unrecorded 200."""
    if database.startswith("sqlite"):
        broken = f"sqlite:///{tmp_path}/no-schema.sqlite3"  # answers, but has no tables
    else:
        broken = "postgresql://postgres@127.0.0.1:1/none"   # nothing listens on port 1
    app = make_app(tmp_path, DATABASE_URL=broken)
    client = app.test_client()
    r = send(client, sms("hours"))
    assert (r.status_code, r.get_data(as_text=True)) == (503, "the message could not be recorded; try again\n")
    if database.startswith("postgresql"):
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json["reason"] == "database does not answer"
    r = send(client, {"MessageUUID": "x", "Status": "sent"}, path="/status")
    assert r.status_code == 503


# -- retention ------------------------------------------------------------------------------------------
def test_prune_deletes_old_rows_but_never_opt_outs(tmp_path):
    clock = Clock()
    app = make_app(tmp_path, CLOCK=clock)
    client = app.test_client()
    store = app.extensions["responder"].store
    send(client, sms("STOP", From="14155550111"))
    send(client, sms("hello"))
    send(client, {"MessageUUID": "p-1", "Status": "sent"}, path="/status")
    clock.advance(days=40)
    send(client, sms("hours"))
    counts = store.prune(30, now=clock.now)
    assert counts == {"outbox": 0, "messages": 2, "reports": 1, "seen": 5}  # 3 nonces, 2 MessageUUIDs
    assert [m["text"] for m in messages(app)] == ["hours"]
    assert len(rows(app, "SELECT id FROM replies")) == 1
    assert [o["number"] for o in store.list_optouts()] == ["14155550111"]
    assert store.prune(30, now=clock.now) == {"outbox": 0, "messages": 0, "reports": 0, "seen": 0}


# -- odd input never costs a message (review findings) ------------------------------------------
@pytest.mark.parametrize("uuid", ["x" * 65, "abc\x00def", "tab\there"])
def test_message_uuid_that_cannot_be_kept_is_a_400(client, uuid):
    r = send(client, sms("hours", MessageUUID=uuid))
    assert r.status_code == 400 and r.get_data(as_text=True).startswith("MessageUUID is not an id")


def test_odd_type_and_intent_are_recorded(app, client):
    r = send(client, sms("hours", Type="RCS-Business-Messaging-v2-extra\x00", MessageIntent="x" * 40))
    assert r.status_code == 200
    [m] = messages(app)
    assert m["type"] == "rcs-business-messaging-v2-extra"[:16] and m["intent"] is None


def test_long_forwards_and_rule_names_are_recorded(tmp_path):
    numbers = ", ".join(f'"1415555{i:04d}"' for i in range(40))
    app = make_app(tmp_path, f"""\
        version: 1
        rules:
          - name: "{'n' * 250}"
            forward: {{to: [{numbers}]}}
        """)
    r = send(app.test_client(), sms("hello"))
    assert r.status_code == 200
    [m] = messages(app)
    assert m["replies"][0]["dst"].count("<") == 39 and len(m["replies"][0]["rule"]) == 250


@pytest.mark.parametrize("report", [
    {"MessageUUID": "u" * 200, "Status": "delivered"},
    {"MessageUUID": "u-1", "Status": "s" * 40, "ParentMessageUUID": "p" * 100},
    {"MessageUUID": "u\x00-2", "Status": "deli\x00vered", "ErrorCode": "9" * 50, "Sequence": "9" * 80},
])
def test_odd_reports_are_stored(app, client, report):
    assert send(client, report, path="/status").status_code == 200


def test_report_with_an_absurd_reference_is_stored_unlinked(app, client):
    r = send(client, {"MessageUUID": "u-1", "Status": "sent"}, path="/status", query="ref=abc.99999999999999999999999")
    assert r.status_code == 200
    assert rows(app, "SELECT reply_id FROM reports") == [(None,)]


def test_every_nonce_of_a_request_is_claimed(app, client):
    """V2 and V3 headers with different nonces: neither can be replayed with another body."""
    url = "http://localhost/message"
    first = sms("hours")
    v3 = {k: v for k, v in signed_headers(url, first, nonce="2222").items() if "V3" in k}
    v2 = {k: v for k, v in signed_headers(url, first, nonce="1111").items() if "V2" in k}
    assert _post(client, first, {**v2, **v3}).status_code == 200
    forged = sms("I want my money back", From="14155550999")
    r = _post(client, forged, v2)  # the V2 headers alone (V2 does not sign the body)
    assert (r.status_code, r.get_data(as_text=True)) == (403, "replayed Plivo signature\n")


def test_long_nonces_are_told_apart(app, client):
    url = "http://localhost/message"
    prefix = "n" * 200
    for tail in ("a", "b"):
        params = sms("hours")
        assert _post(client, params, signed_headers(url, params, nonce=prefix + tail)).status_code == 200
    params = sms("hours")
    r = _post(client, params, signed_headers(url, params, nonce=prefix + "a"))
    assert r.status_code == 403


def test_opt_in_words_from_a_subscribed_sender_go_to_the_rules(app, client):
    assert texts(send(client, sms("yes"))) == [f"From {SENDER}: yes",
                                              "Thanks, we got your message. A person will answer soon."]
    assert messages(app)[0]["compliance"] is None
    send(client, sms("STOP"))
    assert texts(send(client, sms("Yes"))) == [OPTED_IN]
    newest = messages(app)[0]
    assert newest["compliance"] == "optin" and newest["rules"] == []
    assert texts(send(client, sms("yes"))) == [f"From {SENDER}: yes",
                                              "Thanks, we got your message. A person will answer soon."]


def test_leading_plus_in_numbers_is_dropped(app, client):
    send(client, sms("STOP", From="+14155550123"))
    assert app.extensions["responder"].store.list_optouts()[0]["number"] == SENDER
    assert texts(send(client, sms("hours"))) == []


def test_a_nonce_no_signature_covers_is_not_kept(app, client):
    """V3 decides; a V2 nonce header whose V2 signature does not match is not claimed."""
    url = "http://localhost/message"
    params = sms("hours")
    v3 = {k: v for k, v in signed_headers(url, params, nonce="3333").items() if "V3" in k}
    for made_up in ("a1", "a2", "a3"):
        headers = {**v3, "X-Plivo-Signature-V2": "bogus", "X-Plivo-Signature-V2-Nonce": made_up}
        assert _post(client, params, headers).status_code == 200
    assert [bytes(k) for (k,) in rows(app, "SELECT key FROM seen WHERE digest IS NOT NULL")] == [
        seen_key("nonce", "3333")]


def test_report_with_a_nul_in_its_reference_is_stored(app, client):
    r = send(client, {"MessageUUID": "u-1", "Status": "sent"}, path="/status", query="ref=ab%00c.1")
    assert r.status_code == 200


# -- what one message costs the database ------------------------------------------------------
class RoundTrips:
    """PostgreSQL: every round trip the store's connections make, read from libpq's own trace of
    the protocol (PQtrace: a frontend Query or Sync ends each one). SQLite: its transactions
    (SQLAlchemy's commit event), the database being in the process."""

    def __init__(self, store, path):
        self.store, self.path, self.commits = store, path, 0
        self._file = open(path, "w+")
        sa.event.listen(store.engine, "commit", self._commit)
        if store.postgres:
            sa.event.listen(store.engine, "checkout", self._trace)

    def _commit(self, _conn):
        self.commits += 1

    def _trace(self, dbapi_connection, _record, _proxy):
        from psycopg import pq
        dbapi_connection.pgconn.trace(self._file.fileno())
        dbapi_connection.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    def count(self) -> int:
        """Round trips since the last count."""
        self._file.flush()
        self._file.seek(0)
        lines = self._file.read().splitlines()
        self._file.seek(0)
        self._file.truncate()
        return sum(1 for line in lines
                   if line.split("\t")[:1] == ["F"] and line.split("\t")[2:3] in (["Query"], ["Sync"]))


def test_a_new_message_costs_at_most_four_round_trips(app, client, tmp_path):
    """PostgreSQL: BEGIN; the sender's lock, the nonce's claim and the retry's lookup in one
    statement; the state read and every insert in another; COMMIT. A retry: three. SQLite (no
    network): one write transaction."""
    store = app.extensions["responder"].store
    trips = RoundTrips(store, tmp_path / "trace")
    assert texts(send(client, sms("hours", From="14155550999"))) == [HOURS]  # compiles the shapes
    trips.count()
    params = sms("hours", From="14155550998")
    commits = trips.commits
    assert texts(send(client, params)) == [HOURS]
    assert trips.commits == commits + 1
    if store.postgres:
        assert trips.count() == 4
        assert texts(send(client, params)) == [HOURS]  # Plivo again: the stored answer
        assert trips.count() == 3
