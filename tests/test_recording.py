"""Recording real traffic (RECORD_DIR, RECORD_MASK) and `flask --app wsgi replay`.

Masking, the settings, atomic writes and the queue are tested on their own; then the
service records what it answers (in process, and a real gunicorn with two workers), the
recordings load as the test suite's recorded webhooks, replay to their own expected
answers in process, and `replay` sends them to another running service.
"""

from __future__ import annotations

import logging
import stat
import subprocess
import sys
import threading
import time
import unicodedata
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import pytest
import requests
import webhooks
from conftest import FORM, MONDAY_10AM, NY, ROOT, TOKEN, listening, make_app, send, signed_headers, sms
from servers import Server, refusing_port, run_gunicorn, server_env
from waiting import wait_until
from webhooks import check_answer, make_app_for, parse_messages, replay

import config
from app import signature
from app.recording import load, service_path
from app.recording import mask as masking
from app.recording import recorder as recorder_module
from app.recording.mask import METADATA_PARAMS, Masker, folder_key, mask_form, numbers_named
from app.recording.recorder import Arrival, Recorder
from app.service import Answer, HttpRequest

SENDER = "14155550177"        # a customer: never in a masked recording
SENDER_FORMATTED = "+1 (415) 555-0177"
LINE = "14155550100"          # the number that received the messages
FORM_XML = "application/xml; charset=utf-8"


def recordings(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json"))


# -- masking ------------------------------------------------------------------------------

def test_fakes_are_stable_in_a_folder_and_differ_between_folders(tmp_path):
    one, other = tmp_path / "one", tmp_path / "other"
    one.mkdir()
    other.mkdir()
    first, again = Masker(folder_key(one)), Masker(folder_key(one))  # two workers, or a restart
    fake = first.number(SENDER)
    assert fake == again.number(SENDER)
    assert Masker(folder_key(other)).number(SENDER) != fake
    assert len(fake) == len(SENDER) and fake[0] == SENDER[0] and fake.isdigit() and fake != SENDER
    # The same number written another way gets the same digits, its own shape kept.
    formatted = first.number(SENDER_FORMATTED)
    assert formatted == f"+{fake[0]} ({fake[1:4]}) {fake[4:7]}-{fake[7:]}"
    assert first.number("+" + SENDER) == "+" + fake
    key = one / masking.KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == masking.KEY_BYTES
    assert SENDER.encode() not in key.read_bytes()


@pytest.mark.server
def test_key_made_by_many_processes_at_once_is_one_key(tmp_path):
    script = ("import sys; sys.path.insert(0, sys.argv[2]); from app.recording.mask import folder_key; "
              "print(folder_key(sys.argv[1]).hex())")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(ROOT)], stdout=subprocess.PIPE,
                              text=True) for _ in range(4)]
    keys = {p.communicate(timeout=30)[0].strip() for p in procs}
    assert len(keys) == 1 and len(keys.pop()) == 2 * masking.KEY_BYTES
    assert [p.name for p in tmp_path.iterdir()] == [masking.KEY_FILE]  # no temporary file left


def test_a_damaged_key_is_refused_not_replaced(tmp_path):
    (tmp_path / masking.KEY_FILE).write_bytes(b"short")
    with pytest.raises(ValueError, match="remove it"):
        folder_key(tmp_path)


def test_numbers_inside_text_are_masked_dates_and_short_numbers_are_not():
    m = Masker(b"k" * 32)
    text = (f"Call {SENDER_FORMATTED} or 415.555.0188 (or {SENDER}) about order 98765, "
            "on 2026-11-28 at 10:30, id 0c8d379f-9212")
    masked = m.numbers_in(text)
    fake = m.fake_digits(SENDER)
    assert SENDER not in masked and "555-0177" not in masked and "555.0188" not in masked
    assert f"+{fake[0]} ({fake[1:4]}) {fake[4:7]}-{fake[7:]}" in masked
    assert f"(or {fake})" in masked  # the same number, written plainly: the same fake
    assert "order 98765" in masked and "2026-11-28 at 10:30" in masked and "0c8d379f-9212" in masked
    assert len(masked) == len(text)


def _same_shape(masked: str, text: str) -> bool:
    """Every character but the digits unchanged; each digit a digit of the same script."""
    return len(masked) == len(text) and all(
        (m == t) if not t.isdecimal() else
        (m.isdecimal() and ord(m) - unicodedata.decimal(m) == ord(t) - unicodedata.decimal(t))
        for m, t in zip(masked, text))


@pytest.mark.parametrize("text, number", [
    ("我的电话是13812345678谢谢", "13812345678"),             # glued to Chinese text
    ("電話は090-1234-5678です", "090-1234-5678"),             # glued to Japanese text
    ("call4155550123", "4155550123"),                         # glued to letters
    ("ph:4155550123x", "4155550123"),
    ("num_4155550123", "4155550123"),
    ("電話は０９０－１２３４－５６７８です", "０９０－１２３４－５６７８"),  # fullwidth digits and dashes
    ("تواصل معي ٤١٥٥٥٥٠١٧٧ شكرا", "٤١٥٥٥٥٠١٧٧"),              # Arabic-Indic digits
    ("Ｔｅｌ：＋１ ４１５ ５５５ ０１７７", "＋１ ４１５ ５５５ ０１７７"),
])
def test_numbers_touching_letters_or_in_other_scripts_are_masked(text, number):
    m = Masker(b"k" * 32)
    masked = m.numbers_in(text)
    assert number not in masked and _same_shape(masked, text), masked
    # The fake digits are those of the same number written in ASCII digits.
    ascii_digits = "".join(str(unicodedata.decimal(c)) for c in number if c.isdecimal())
    assert "".join(str(unicodedata.decimal(c)) for c in masked if c.isdecimal()) == m.fake_digits(ascii_digits)


def test_a_number_in_fullwidth_digits_is_masked_not_dropped(tmp_path):
    rec = Recorder(tmp_path, "numbers")
    fullwidth = "４１５５５５０１７７"
    path = rec.record(arrival(text=f"電話は{fullwidth}です"))
    assert path is not None  # the recording is written, not lost to an encoding error
    body = dict(parse_qsl(load(path)["body"]))
    assert fullwidth not in body["Text"] and _same_shape(body["Text"], f"電話は{fullwidth}です")
    # The same number in From, in ASCII digits, gets the same fake digits.
    assert rec.masker.number(fullwidth).translate({0xFF10 + d: str(d) for d in range(10)}) == \
        rec.masker.number("4155550177")


def test_numbers_text_keeps_only_plivos_metadata():
    m = Masker(b"k" * 32)
    params = {
        "From": SENDER, "To": LINE, "Type": "whatsapp", "Body": "my secret",
        "Button": '{"Text": "Yes, cancel order 991", "Payload": "cancel-991"}',
        "Context": '{"Id": "wamid.HBgL", "From": "14155550100", "Text": "Your order shipped"}',
        "Media1": "https://media.example.com/secret-photo.jpg", "MediaCount": "1",
        "ContentType": "image/jpeg", "MimeType": "image/jpeg", "Units": "1", "TotalRate": "0.005",
        "TotalAmount": "0.005", "MessageIntent": "", "PowerpackUUID": "", "ErrorCode": "",
        "MessageUUID": "00000000-0000-4000-8000-000000000001", "SomethingPlivoAddsLater": "whose words?",
    }
    masked = dict(parse_qsl(mask_form(urlencode(params), m, text=True), keep_blank_values=True))
    assert masked["From"] == m.number(SENDER) and masked["To"] == m.number(LINE)
    kept = METADATA_PARAMS & set(params)
    assert len(kept) == 11 and all(masked[key] == params[key] for key in kept)
    for key in set(params) - kept - {"From", "To"}:
        assert masked[key] == "x" * len(params[key]), key
    # With numbers only, those values keep their words and lose their numbers.
    numbers_only = dict(parse_qsl(mask_form(urlencode(params), m, text=False), keep_blank_values=True))
    assert "cancel order 991" in numbers_only["Button"] and LINE not in numbers_only["Context"]


def test_only_the_business_numbers_the_rules_name_are_kept():
    rules = (ROOT / "rules.yaml").read_text(encoding="utf-8")
    named = numbers_named(rules)
    # Its lines (to:), where forwards go (forward.to), the number its help text gives out.
    assert {"14155550200", "14155550999", "14155550998", "4155550100"} <= named.keep
    # Customers the from: conditions name are not the business's: masked like any other.
    assert "14155550111" in named.senders and "1415555077" in named.sender_prefixes
    assert "14155550111" not in named.keep and not named.prefixes
    m = Masker(b"k" * 32)
    m.named(named.keep, named.prefixes)
    assert m.number("14155550999") == "14155550999" and m.number("+1 (415) 555-0200") == "+1 (415) 555-0200"
    assert m.dst(f"14155550999<{SENDER}") == f"14155550999<{m.fake_digits(SENDER)}"
    assert m.numbers_in("call 415-555-0100") == "call 415-555-0100"
    vip, prefixed = m.number("14155550111"), m.number("14155550772")
    assert vip != "14155550111" and not prefixed.startswith("1415555077")
    assert len(vip) == len(prefixed) == 11
    # A number named in from: and also forwarded to (the team's own) is the business's.
    team = numbers_named('rules:\n  - when: {not: {from: "14155550999"}}\n    forward: {to: "14155550999"}\n')
    assert team.keep == {"14155550999"} and not team.senders
    # A number in a text that a from: condition names stays a customer's.
    told = numbers_named('rules:\n  - when: {from: "14155550111"}\n    reply: "Hi 14155550111, or 14155550772"\n'
                         '  - when: {from: "1415555077*"}\n    reply: "hi"\n')
    assert told.keep == frozenset()
    # Comments are not values: a number only in a comment is masked.
    assert numbers_named("# try --from 14155550123\nversion: 1\n") == ((frozenset(),) * 4)


def test_form_stays_form_encoded_and_untouched_fields_stay_byte_for_byte():
    m = Masker(b"k" * 32)
    raw = (f"From={SENDER}&To={LINE}&Text=Call+%2B1+%28415%29+555-0188%3F&MessageUUID=12345678-1234-4abc"
           "&Units=1&MessageIntent=&Extra=a%26b")
    masked = mask_form(raw, m, text=False)
    pairs = dict(parse_qsl(masked, keep_blank_values=True))
    assert pairs["From"] == m.number(SENDER) and pairs["To"] == m.number(LINE)
    assert pairs["Text"] == f"Call {m.number('+1 (415) 555-0188')}?"
    for field in ("MessageUUID=12345678-1234-4abc", "Units=1", "MessageIntent=", "Extra=a%26b"):
        assert field in masked.split("&")
    hidden = dict(parse_qsl(mask_form("Text=h%C3%A9llo+w%C3%B6rld&Body=", m, text=True), keep_blank_values=True))
    assert hidden == {"Text": "xxxxxxxxxxx", "Body": ""}  # as many characters as the text had


# -- settings -----------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (None, "numbers"), ("", "numbers"), ("none", "none"), ("NUMBERS", "numbers"),
    ("numbers,text", "numbers,text"), ("text, numbers", "numbers,text"), (" numbers , text ", "numbers,text"),
])
def test_record_mask_values(value, expected):
    env = {"PLIVO_AUTH_TOKEN": TOKEN}
    if value is not None:
        env["RECORD_MASK"] = value
    assert config.load(env)["RECORD_MASK"] == expected


@pytest.mark.parametrize("value", ["text", "numbers,none", "all", "numbers;text"])
def test_record_mask_refuses_other_values(value):
    with pytest.raises(config.ConfigError, match=r"^RECORD_MASK must be none, numbers or numbers,text"):
        config.load({"PLIVO_AUTH_TOKEN": TOKEN, "RECORD_MASK": value})


def test_record_dir_is_made_and_must_be_a_writable_folder(tmp_path):
    assert config.load({"PLIVO_AUTH_TOKEN": TOKEN})["RECORD_DIR"] is None
    made = tmp_path / "a" / "b"
    assert config.load({"PLIVO_AUTH_TOKEN": TOKEN, "RECORD_DIR": str(made)})["RECORD_DIR"] == str(made)
    assert made.is_dir()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for bad in (a_file, a_file / "sub"):
        with pytest.raises(config.ConfigError) as info:
            config.load({"PLIVO_AUTH_TOKEN": TOKEN, "RECORD_DIR": str(bad)})
        assert str(info.value).startswith(f"RECORD_DIR {bad} ") and "\n" not in str(info.value)
    # Commands do not serve: the folder is neither made nor checked for them.
    later = tmp_path / "later"
    assert config.load({"RECORD_DIR": str(later)}, require_token=False)["RECORD_DIR"] == str(later)
    assert not later.exists()


@pytest.mark.server
def test_gunicorn_refuses_to_start_on_a_bad_record_dir(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = run_gunicorn(server_env(PLIVO_AUTH_TOKEN=TOKEN, RECORD_DIR=str(a_file)))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"RECORD_DIR {a_file} is a file, not a folder" in lines[0]


# -- the recorder on its own --------------------------------------------------------------

class _Rules:
    """What the recorder reads of a rule set: its timezone, path and digest."""

    tz = NY
    path = str(ROOT / "rules.yaml")
    digest = "not-this-file"  # so no number is kept: everything is masked


def arrival(n: int = 0, *, method: str = "POST", text: str = "hi", status: int = 200) -> Arrival:
    params = sms(text, From=SENDER, To=LINE, MessageUUID=f"00000000-0000-4000-8000-{n:012d}")
    body, url = urlencode(params).encode(), "https://sms.example.com/message"
    if method == "GET":
        url, body = f"{url}?{body.decode()}", b""
    answer = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Message src="{LINE}" dst="{SENDER}" '
              f'type="sms">You wrote from {SENDER}</Message></Response>').encode()
    headers = [("HTTP_HOST", "sms.example.com"), ("CONTENT_TYPE", FORM), ("CONTENT_LENGTH", str(len(body))),
               ("HTTP_X_PLIVO_SIGNATURE_V3", "sig"), ("HTTP_AUTHORIZATION", "Basic secret")]
    return Arrival(method, url, body, headers, "https", status, FORM_XML, answer, MONDAY_10AM, _Rules())


def test_recording_holds_no_signature_token_or_real_number(tmp_path):
    rec = Recorder(tmp_path, "numbers", settings={"PUBLIC_URL": "https://sms.example.com", "TRUSTED_PROXIES": 0})
    path = rec.record(arrival())
    text = path.read_text(encoding="utf-8")
    recording = load(path)
    assert SENDER not in text and LINE not in text
    assert set(recording["headers"]) == {"Host", "Content-Type", "Content-Length"}
    assert recording["headers"]["Content-Length"] == str(len(webhooks.body_bytes(recording)))
    assert "token" not in recording and recording["settings"] == {"PUBLIC_URL": "https://sms.example.com"}
    assert recording["now"] == "2026-11-23T10:00:00-05:00"
    assert recording["description"] == "recorded 2026-11-23T15:00:00Z, masked: numbers"
    fake = rec.masker.number(SENDER)
    assert recording["expect"]["messages"] == [
        {"src": rec.masker.number(LINE), "dst": fake, "type": "sms", "text": f"You wrote from {fake}"}]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # customers' messages: the owner's only


#: Headers a proxy or an identity layer may add that repeat the query (with the message in
#: it) or carry a credential: never in a recording, whatever RECORD_MASK says.
_LEAKY = {
    "HTTP_X_ORIGINAL_URI": f"/message?From={SENDER}&Text=my+secret",         # ingress-nginx
    "HTTP_X_ENVOY_ORIGINAL_PATH": f"/message?From={SENDER}&Text=my+secret",
    "HTTP_X_FORWARDED_URI": f"/message?From={SENDER}&Text=my+secret",         # Traefik
    "HTTP_REFERER": f"https://sms.example.com/message?From={SENDER}&Text=my+secret",
    "HTTP_CF_ACCESS_JWT_ASSERTION": "eyJ.secret-jwt",
    "HTTP_X_AMZN_OIDC_DATA": "eyJ.secret-oidc",
    "HTTP_X_API_KEY": "secret-api-key",
    "HTTP_AUTHORIZATION": "Basic c2VjcmV0",
    "HTTP_PROXY_AUTHORIZATION": "Basic c2VjcmV0",
    "HTTP_COOKIE": "session=secret-cookie",
    "HTTP_X_PLIVO_SIGNATURE_V3": "secret-signature",
}
#: What a trusted proxy adds and a replay needs to rebuild the URL Plivo called.
_PROXY = {
    "HTTP_X_FORWARDED_FOR": "203.0.113.7", "HTTP_X_FORWARDED_PROTO": "https",
    "HTTP_X_FORWARDED_HOST": "sms.example.com", "HTTP_X_FORWARDED_PORT": "443", "HTTP_X_FORWARDED_PREFIX": "/",
    "HTTP_FORWARDED": "for=203.0.113.7;proto=https", "HTTP_X_REAL_IP": "203.0.113.7",
}


@pytest.mark.parametrize("mask", ["none", "numbers", "numbers,text"])
def test_only_the_headers_a_replay_needs_are_recorded(tmp_path, mask):
    rec = Recorder(tmp_path, mask)
    item = arrival()
    request = _request(item)
    request.environ.update(_LEAKY)
    request.environ.update(_PROXY)
    assert rec.submit(request, Answer(200, item.answer, FORM_XML), _Rules())
    assert rec.drain() == 1
    (path,) = recordings(tmp_path)
    headers = load(path)["headers"]
    assert list(headers) == ["Host", "Content-Type", "Content-Length", "User-Agent", "X-Forwarded-For",
                             "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port", "X-Forwarded-Prefix",
                             "Forwarded", "X-Real-Ip"]
    assert headers["X-Forwarded-For"] == "203.0.113.7" and headers["User-Agent"] == "PlivoHttpClient/1.0"
    text = path.read_text(encoding="utf-8")
    assert "secret" not in text and "c2VjcmV0" not in text and "Original" not in text


def test_get_query_is_masked(tmp_path):
    rec = Recorder(tmp_path, "numbers,text")
    recording = load(rec.record(arrival(method="GET", text=f"call {SENDER_FORMATTED}")))
    assert recording["body"] == "" and "Content-Length" in recording["headers"]
    query = dict(parse_qsl(recording["url"].split("?", 1)[1], keep_blank_values=True))
    assert query["From"] == rec.masker.number(SENDER) and query["Text"] == "x" * len(f"call {SENDER_FORMATTED}")
    assert SENDER not in recording["url"]
    # The answer to a hidden text cannot be checked: only its status and type are kept.
    assert recording["expect"] == {"status": 200, "content_type": FORM_XML}
    assert "masked: numbers and text" in recording["description"]


def test_mask_none_keeps_the_request_as_it_came(tmp_path):
    rec = Recorder(tmp_path, "none")
    item = arrival()
    recording = load(rec.record(item))
    assert webhooks.body_bytes(recording) == item.body and recording["url"] == item.url
    assert not (tmp_path / masking.KEY_FILE).exists()  # nothing to mask with


def test_files_appear_whole_or_not_at_all(tmp_path):
    rec = Recorder(tmp_path, "numbers")
    seen_partial: list[str] = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            for path in recordings(tmp_path):
                try:
                    load(path)
                except FileNotFoundError:
                    pass
                except ValueError as exc:
                    seen_partial.append(str(exc))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        rec.start()
        for n in range(150):
            assert rec.submit(_request(arrival(n)), Answer(200, arrival(n).answer, FORM_XML), _Rules())
        wait_until(lambda: len(recordings(tmp_path)) == 150, 15, "150 recordings")
    finally:
        done.set()
        watcher.join(10)
        rec.stop(5)
    assert not seen_partial
    assert [p.name for p in tmp_path.glob(".*") if p.name != masking.KEY_FILE] == []  # no temporary files
    assert len({p.name for p in recordings(tmp_path)}) == 150


def _request(item: Arrival) -> HttpRequest:
    return HttpRequest(item.method, item.url, b"", item.body, FORM, {}, environ={
        "wsgi.url_scheme": "https", "HTTP_HOST": "sms.example.com", "CONTENT_TYPE": FORM,
        "CONTENT_LENGTH": str(len(item.body)), "HTTP_USER_AGENT": "PlivoHttpClient/1.0",
        "HTTP_X_PLIVO_SIGNATURE_V3": "sig"})


def test_a_write_error_is_logged_once_and_leaves_no_temporary_file(tmp_path, caplog, monkeypatch):
    rec = Recorder(tmp_path, "numbers")

    def fail(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(recorder_module.os, "replace", fail)
    with listening(caplog, "app.recording"):
        assert rec.record(arrival(1)) is None
        assert rec.record(arrival(2)) is None
    errors = {id(r): r for r in caplog.records if r.levelno == logging.ERROR}  # one record, however reached
    assert len(errors) == 1 and "Permission denied" in errors.popitem()[1].getMessage()
    assert sorted(p.name for p in tmp_path.iterdir()) == [masking.KEY_FILE]


def test_a_full_queue_drops_without_blocking_and_warns_once(tmp_path, caplog):
    rec = Recorder(tmp_path, "numbers", queue_size=1)  # no writer thread: nothing empties it
    item = arrival()
    request, answer = _request(item), Answer(200, item.answer, FORM_XML)
    with listening(caplog, "app.recording"):
        assert rec.submit(request, answer, _Rules()) is True
        started = time.monotonic()
        assert not any(rec.submit(request, answer, _Rules()) for _ in range(100))
        assert time.monotonic() - started < 0.5
    warnings = {id(r): r.getMessage() for r in caplog.records if r.levelno == logging.WARNING}
    assert len(warnings) == 1 and "not recorded" in warnings.popitem()[1]
    assert rec.drain() == 1
    # Refused requests are not recorded.
    assert rec.submit(request, Answer(403, b"invalid Plivo signature\n"), _Rules()) is False


def test_stop_writes_what_is_queued(tmp_path):
    rec = Recorder(tmp_path, "numbers")
    rec.start()
    for n in range(20):
        item = arrival(n)
        rec.submit(_request(item), Answer(200, item.answer, FORM_XML), _Rules())
    rec.stop(10)
    assert len(recordings(tmp_path)) == 20


def test_recordings_lost_at_stop_are_counted_and_logged(tmp_path, caplog):
    rec = Recorder(tmp_path, "numbers")
    release = threading.Event()
    written = []

    def slow_record(item):  # a disk that does not answer until released
        release.wait(30)
        written.append(item)

    rec.record = slow_record
    rec.start()
    try:
        for n in range(5):
            item = arrival(n)
            assert rec.submit(_request(item), Answer(200, item.answer, FORM_XML), _Rules())
        wait_until(lambda: rec._writing, 15, "the writer to be busy")
        with listening(caplog, "app.recording"):
            started = time.monotonic()
            assert rec.stop(0.2) == 5  # one being written, four waiting
            assert time.monotonic() - started < 5
        warnings = {id(r): r.getMessage() for r in caplog.records if r.levelno == logging.WARNING}
        assert list(warnings.values()) == ["recorder stopped after 0.2 s with 5 recording(s) not written: "
                                           "they are lost"]
    finally:
        release.set()
    wait_until(lambda: not rec._thread.is_alive(), 15, "the writer to end")
    assert len(written) == 5 and rec.stop(1) == 0


# -- the service records what it answers (in process) --------------------------------------

#: Tests that run on SQLite and on PostgreSQL (conftest.py).
uses_database = pytest.mark.usefixtures("database")


def _recorder_of(app) -> Recorder:
    return app.extensions["recorder"]


@uses_database
def test_service_records_signed_messages_only(tmp_path):
    folder = tmp_path / "rec"
    app = make_app(tmp_path, RECORD_DIR=str(folder))
    client = app.test_client()
    assert send(client, sms("Hours?", From=SENDER)).status_code == 200
    assert send(client, sms("hours", From=SENDER), method="GET").status_code == 200
    assert send(client, sms("hours", From=SENDER), token="wrong").status_code == 403
    assert send(client, sms("hours", From=SENDER, To=None)).status_code == 400
    assert _recorder_of(app).drain() == 2
    files = recordings(folder)
    assert len(files) == 2
    for path in files:
        recording = load(path)
        assert SENDER not in path.read_text(encoding="utf-8")
        assert not any(name.lower().startswith("x-plivo-signature") for name in recording["headers"])
        assert recording["expect"]["status"] == 200 and recording["expect"]["messages"]
    assert [load(p)["method"] for p in files] == ["POST", "GET"]


def test_a_retry_is_not_recorded_again(tmp_path):
    """Plivo's retry of a MessageUUID gets the stored answer of the first decision, made at
    another time: only the first delivery is written (its file replays to that answer)."""
    folder = tmp_path / "rec"
    app = make_app(tmp_path, RECORD_DIR=str(folder))
    client = app.test_client()
    first = sms("Hours?", From=SENDER)
    answers = [send(client, first) for _ in range(3)]  # new nonces, same MessageUUID
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len({a.data for a in answers}) == 1
    assert _recorder_of(app).drain() == 1
    assert len(recordings(folder)) == 1


@pytest.mark.parametrize("mask", ["none", "numbers", "numbers,text"])
def test_every_shipped_recording_recorded_again_replays_to_its_answer(tmp_path, mask):
    """Each answered recording in tests/webhooks/ is sent through an app that records it; the
    new recording (masked or not) replays, in a fresh app, to its own expected answer, except
    that a masked sender no longer matches the from: rule that named it (it gets another answer).
    (Every app here has a database of its own, as each recording assumes a fresh service.)"""
    checked = from_rules = 0
    allowed = {name.lower() for name in recorder_module.RECORDED_HEADERS}
    for n, path in enumerate(webhooks.paths()):
        original = load(path)
        if not 200 <= original["expect"]["status"] < 300:
            continue
        rules_path = Path((original.get("settings") or {}).get("RULES_PATH", ROOT / "rules.yaml"))
        named = numbers_named(rules_path.read_text(encoding="utf-8"))
        sender = _params(original)["From"].lstrip("+")
        by_sender = mask != "none" and sender not in named.keep and (
            sender in named.senders or sender.startswith(tuple(named.sender_prefixes)))
        folder = tmp_path / f"rec{n}"
        settings = dict(original.get("settings") or {})
        if original.get("token"):
            settings["PLIVO_AUTH_TOKEN"] = original["token"]
        app = make_app(tmp_path / f"app{n}", RECORD_DIR=str(folder), RECORD_MASK=mask,
                       now=webhooks.clock(original) or MONDAY_10AM, **settings)
        assert replay(app.test_client(), original).status_code == original["expect"]["status"]
        assert _recorder_of(app).drain() == 1, path.name
        (new_path,) = recordings(folder)
        recording = load(new_path)
        assert "token" not in recording
        if mask == "none":
            assert recording["url"] == original["url"] and recording["method"] == original["method"]
            assert webhooks.body_bytes(recording) == webhooks.body_bytes(original), path.name
            assert recording.get("scheme") in (None, original.get("scheme")), path.name
            assert recording["expect"] == original["expect"], path.name
            kept = {k: v for k, v in original["headers"].items() if k.lower() in allowed}
            assert recording["headers"] == kept, path.name
        else:
            text = new_path.read_text(encoding="utf-8")
            assert "14155550123" not in text and sender not in text, path.name
        replayed = replay(make_app_for(tmp_path / f"again{n}", recording).test_client(), recording)
        if by_sender and "messages" in recording["expect"]:
            assert replayed.status_code == 200, path.name
            assert parse_messages(replayed.get_data()) != recording["expect"]["messages"], path.name
            from_rules += 1
        else:
            check_answer(replayed, recording["expect"])
        checked += 1
    assert checked >= 15
    assert from_rules == (1 if mask == "numbers" else 0)  # sms-vip-prefix.json


def _params(recording: dict) -> dict[str, str]:
    """A recording's form parameters, the body's and the query's."""
    body = webhooks.body_bytes(recording).decode("utf-8", "replace")
    query = recording["url"].partition("?")[2]
    return dict(parse_qsl(query, keep_blank_values=True)) | dict(parse_qsl(body, keep_blank_values=True))


# -- a real gunicorn, and `replay` against another ------------------------------------------

def _flask(*args, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.server
def test_real_server_records_and_replay_sends_to_another(tmp_path):
    folder = tmp_path / "recordings"
    (tmp_path / "a").mkdir()
    recording_server = Server(tmp_path / "a", RECORD_DIR=str(folder), WEB_CONCURRENCY="2")
    try:
        assert recording_server.post(sms("Hours?", From=SENDER)).status_code == 200
        params = sms(f"call me at {SENDER_FORMATTED}", From=SENDER)
        url = recording_server.base + "/message?" + urlencode(params)
        assert requests.get(url, headers=signed_headers(url, params, method="GET"), timeout=10).status_code == 200
        assert recording_server.post(sms("hours", From=SENDER), token="wrong").status_code == 403
        files = wait_until(lambda: recordings(folder) if len(recordings(folder)) >= 2 else None,
                           15, "two recordings")
    finally:
        recording_server.stop()
    assert len(recordings(folder)) == 2  # the 403 was not recorded
    assert [p.name for p in folder.glob(".*") if p.name != masking.KEY_FILE] == []
    for path in files:
        text = path.read_text(encoding="utf-8")
        recording = load(path)
        assert SENDER not in text and "555-0177" not in text and TOKEN not in text
        assert "token" not in recording
        assert not any(name.lower().startswith("x-plivo-signature") for name in recording["headers"])
        datetime.fromisoformat(recording["now"]).astimezone(timezone.utc)  # with its offset

    # The round trip: a recording, copied into a test folder, is asserted by the test suite's replay.
    suite = tmp_path / "suite"
    suite.mkdir()
    for path in files:
        (suite / path.name).write_bytes(path.read_bytes())
    for path in webhooks.paths(suite):
        recording = webhooks.load(path)
        check_answer(replay(make_app_for(tmp_path / path.stem, recording).test_client(), recording),
                     recording["expect"])

    (tmp_path / "b").mkdir()
    target = Server(tmp_path / "b", OUTBOX_SENDER="hold")  # `replay` sends only to a target that holds
    try:
        env = server_env(PLIVO_AUTH_TOKEN=TOKEN, DATABASE_URL=f"sqlite:///{tmp_path}/cli.sqlite3",
                         LOG_FORMAT="text")
        sent = _flask("replay", str(folder), "--url", target.base + "/message", env=env)
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.splitlines() == [f"{p}: 200" for p in files] + ["2 recording(s): 2 answered 2xx, 0 not"]

        wrong = _flask("replay", str(files[0]), "--url", target.base, "--token", "wrong", env=env)
        assert wrong.returncode == 1
        assert wrong.stdout.splitlines()[0] == f"{files[0]}: 403 invalid Plivo signature"

        # The shipped recordings include requests the service must refuse (400): exit 1.
        shipped = _flask("replay", str(webhooks.DIR), "--url", target.base, env=env)
        assert shipped.returncode == 1
        lines = shipped.stdout.splitlines()
        assert f"{webhooks.DIR / 'rejected-missing-to.json'}: 400 missing To" in lines
        assert f"{webhooks.DIR / 'sms-keyword-hours.json'}: 200" in lines
    finally:
        target.stop()


@uses_database
def test_replay_command_errors(tmp_path):
    app = make_app(tmp_path)
    runner = app.test_cli_runner()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.json").write_text("{not json", encoding="utf-8")
    # A port that refuses connections throughout (bound, never listening): a free_port() could be
    # taken by another test's server before the replays below try it.
    with refusing_port() as port:
        free = f"http://127.0.0.1:{port}/message"

        result = runner.invoke(args=["replay", str(broken), "--url", free])
        assert result.exit_code == 1
        assert result.output.splitlines()[0].startswith(f"{broken / 'a.json'}: - cannot read: not JSON")

        good = webhooks.DIR / "sms-keyword-hours.json"
        result = runner.invoke(args=["replay", str(good), "--url", free])
        assert result.exit_code == 1 and "error: cannot reach http://127.0.0.1:" in result.output
        assert "Traceback" not in result.output

        result = runner.invoke(args=["replay", str(tmp_path / "missing"), "--url", free])
        assert result.exit_code == 1 and "no such file or folder" in result.output

        no_token = make_app(tmp_path / "other", PLIVO_AUTH_TOKEN="", VERIFY_SIGNATURES=False)
        result = no_token.test_cli_runner().invoke(args=["replay", str(good), "--url", free])
        assert result.exit_code == 2 and "give --token or set PLIVO_AUTH_TOKEN" in result.output


def test_replay_request_is_signed_for_the_url_given(tmp_path):
    from app.recording.replay import prepare
    from app.signature import verify

    recording = load(webhooks.DIR / "get-query-string.json")
    method, url, headers, body = prepare(recording, "http://127.0.0.1:9/", "tok")
    assert method == "GET" and body == b""
    assert url == "http://127.0.0.1:9/message?" + recording["url"].split("?", 1)[1]
    assert verify(["tok"], method, url, headers) == "V3"
    recording = load(webhooks.DIR / "sms-keyword-hours.json")
    method, url, headers, body = prepare(recording, "http://127.0.0.1:9/hooks/sms", "tok")
    assert url == "http://127.0.0.1:9/hooks/sms" and headers["Content-Type"] == FORM
    params = parse_qsl(body.decode(), keep_blank_values=True)
    assert verify(["tok"], method, url, headers, params) == "V3"
    # The V2 signature (a service that checks only V2 still accepts it) is for the same URL.
    only_v2 = {k: v for k, v in headers.items() if k in (signature.HEADER_V2, signature.HEADER_V2_NONCE)}
    assert len(only_v2) == 2 and verify(["tok"], method, url, only_v2, params) == "V2"
    only_ma_v2 = {k: v for k, v in headers.items() if k in (signature.HEADER_MA_V2, signature.HEADER_V2_NONCE)}
    assert verify(["tok"], method, url, only_ma_v2, params) == "Ma-V2"
    with pytest.raises(signature.BadSignature):
        verify(["tok"], method, "http://127.0.0.1:9/message", only_v2, params)
    with pytest.raises(signature.BadSignature):
        verify(["other"], method, url, only_v2, params)


# -- what the service records, in process, replayed ------------------------------------------
# (Each app on a SQLite file of its own: a replay is a fresh service, not a repeat of a
# MessageUUID the recording service already answered.)

def test_a_whatsapp_tap_recorded_with_numbers_text_holds_none_of_it_and_replays(tmp_path):
    folder = tmp_path / "rec"
    app = make_app(tmp_path, RECORD_DIR=str(folder), RECORD_MASK="numbers,text")
    params = sms("Yes, cancel it", From=SENDER, Type="whatsapp", Body="Yes, cancel it", Text=None,
                 Button='{"Text": "Yes, cancel it", "Payload": "cancel-991"}', Context='{"Id": "wamid.X"}',
                 Media1="https://media.example.com/photo-991.jpg", MediaCount="1")
    assert send(app.test_client(), params).status_code == 200
    assert _recorder_of(app).drain() == 1
    (path,) = recordings(folder)
    text = path.read_text(encoding="utf-8")
    for secret in ("cancel", "wamid", "photo-991", SENDER):
        assert secret not in text
    recording = load(path)
    check_answer(replay(make_app_for(tmp_path / "again", recording).test_client(), recording), recording["expect"])


def test_public_url_with_a_path_replays_to_the_path_the_service_serves(tmp_path):
    """PUBLIC_URL https://example.com/sms: a proxy takes /sms off and the service serves
    /message. The recording holds the URL Plivo called; the suite's replay and `replay`
    send /message."""
    from app.recording.replay import prepare
    from app.signature import verify

    folder = tmp_path / "rec"
    app = make_app(tmp_path, RECORD_DIR=str(folder), PUBLIC_URL="https://example.com/sms")
    params = sms("Hours?", From=SENDER)
    called = "https://example.com/sms/message"
    response = app.test_client().post("/message", base_url="http://10.0.0.5:8000", data=urlencode(params),
                                      headers={**signed_headers(called, params), "Content-Type": FORM})
    assert response.status_code == 200
    assert _recorder_of(app).drain() == 1
    (path,) = recordings(folder)
    recording = load(path)
    assert recording["url"] == called and recording["settings"] == {"PUBLIC_URL": "https://example.com/sms"}
    assert webhooks.target(recording) == "/message"
    replayed = replay(make_app_for(tmp_path / "again", recording).test_client(), recording)
    check_answer(replayed, recording["expect"])
    assert recording["expect"]["messages"][0]["callbackUrl"].startswith("https://example.com/sms/status?ref=")

    # `replay --url` without a path sends the service's own path, signed for that URL.
    method, url, headers, body = prepare(recording, "http://127.0.0.1:8000", "tok")
    assert url == "http://127.0.0.1:8000/message"
    assert verify(["tok"], method, url, headers, parse_qsl(body.decode(), keep_blank_values=True)) == "V3"
    assert prepare(recording, "http://127.0.0.1:8000/", "tok")[1] == "http://127.0.0.1:8000/message"
    assert prepare(recording, "http://127.0.0.1:8000/in/message", "tok")[1] == "http://127.0.0.1:8000/in/message"

    # Only a whole leading PUBLIC_URL path is taken off.
    public = {"PUBLIC_URL": "https://example.com/sms"}
    assert service_path({"url": "https://example.com/smsx/message", "settings": public}) == "/smsx/message"
    assert service_path({"url": "https://example.com/sms", "settings": public}) == "/"
    assert service_path({"url": "https://example.com/sms/message"}) == "/sms/message"
    assert service_path({"url": "https://example.com/sms/message",
                         "settings": {"PUBLIC_URL": "https://example.com"}}) == "/sms/message"


def test_a_crlf_rules_file_keeps_the_numbers_it_names(tmp_path):
    from app.rules.compiler import load as load_rules

    rules = tmp_path / "rules.yaml"
    rules.write_bytes(b'version: 1\r\nrules:\r\n  - name: line\r\n    when: {to: "+1 415 555 0100"}\r\n'
                      b'    reply: "hi"\r\n')
    ruleset = load_rules(str(rules))
    folder = tmp_path / "rec"
    folder.mkdir()
    item = arrival()
    item.ruleset = ruleset
    body = dict(parse_qsl(load(Recorder(folder, "numbers").record(item))["body"]))
    assert body["To"] == LINE and body["From"] != SENDER  # the business's line kept, the customer masked


def test_the_recorded_clock_is_the_time_the_rules_decided_at(tmp_path):
    """Decided at 16:59:59.998 (business hours), recorded at 17:00:00.001 (after hours): the
    recording says when the rules decided, so it replays to the answer it recorded."""
    decided = datetime(2026, 11, 23, 16, 59, 59, 998000, tzinfo=NY)
    later = decided + timedelta(milliseconds=3)
    moments: list[datetime] = []
    folder = tmp_path / "rec"
    app = make_app(tmp_path, RECORD_DIR=str(folder), CLOCK=lambda: moments.pop() if moments else later)
    moments.append(decided)  # the next reading of the clock, and only that one
    assert send(app.test_client(), sms("hello", From=SENDER)).status_code == 200
    assert _recorder_of(app).drain() == 1
    (path,) = recordings(folder)
    recording = load(path)
    assert recording["now"] == "2026-11-23T16:59:59.998000-05:00"
    assert "A person will answer soon" in recording["expect"]["messages"][-1]["text"]
    check_answer(replay(make_app_for(tmp_path / "again", recording).test_client(), recording), recording["expect"])


def test_with_the_real_clock_the_recording_replays_to_its_own_answer(tmp_path):
    """Whatever the time is now (weekend, evening, business hours), the recorded clock is the
    one the rules saw."""
    folder = tmp_path / "rec"
    app = make_app(tmp_path, RECORD_DIR=str(folder), CLOCK=None)
    before = datetime.now(timezone.utc)
    assert send(app.test_client(), sms("hello", From=SENDER)).status_code == 200
    after = datetime.now(timezone.utc)
    assert _recorder_of(app).drain() == 1
    (path,) = recordings(folder)
    recording = load(path)
    assert before <= datetime.fromisoformat(recording["now"]) <= after
    check_answer(replay(make_app_for(tmp_path / "again", recording).test_client(), recording), recording["expect"])


def test_replay_asks_the_readyz_beside_the_path_it_sends_to():
    from app.recording.replay import readyz_url

    assert readyz_url("http://127.0.0.1:8000/message") == "http://127.0.0.1:8000/readyz"
    assert readyz_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/readyz"
    assert readyz_url("https://example.com/in/message/?tenant=a") == "https://example.com/in/readyz"
    assert readyz_url("https://example.com/in/status") == "https://example.com/in/readyz"
    assert readyz_url("https://example.com/hooks/sms") == "https://example.com/readyz"
