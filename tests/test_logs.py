"""Logs: with LOG_FORMAT=json every line a real gunicorn writes is JSON (its own error and
access logs too), and no line holds a whole phone number, a message's text, a token or a
signature (the scrubber's cases: numbers however written, extra fields, database errors). Also
the start refusals: each one line, JSON or plain; PORT out of range; a port already in use,
refused at once."""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests
from conftest import ROOT, TOKEN, signed_headers, sms
from servers import Server, run_gunicorn, server_env

from app.rules.holder import KEEP_FOLDER, kept_copy_path

SENDER = "14155557777"
OURS = "14155550100"
TEXTS = ("my secret words", "another private sentence", "pineapple")


def json_lines(text: str) -> list[dict]:
    """Every line of `text` as JSON; fails on the first line that is not."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(record, dict) and {"ts", "level", "logger", "msg"} <= set(record), line
        out.append(record)
    return out


@pytest.mark.server
def test_every_line_is_json_and_holds_no_number_text_token_or_signature(tmp_path):
    server = Server(tmp_path, LOG_LEVEL="DEBUG", GUNICORN_ACCESS_LOG="-")
    sent_signatures = []
    try:
        params = sms(TEXTS[0], From=SENDER)
        headers = signed_headers(server.base + "/message", params)
        sent_signatures += [v for k, v in headers.items() if not k.endswith("Nonce")]
        r = requests.post(server.base + "/message", data=urlencode(params),
                          headers={**headers, "Content-Type": "application/x-www-form-urlencoded"}, timeout=10)
        assert r.status_code == 200
        params = sms(TEXTS[1], From=SENDER)
        url = server.base + "/message?" + urlencode(params)
        headers = signed_headers(url, params, method="GET")
        sent_signatures += [v for k, v in headers.items() if not k.endswith("Nonce")]
        assert requests.get(url, headers=headers, timeout=10).status_code == 200
        assert server.post(sms(TEXTS[2], From=SENDER), token="notthetoken0123456789").status_code == 403
        assert requests.get(server.base + "/nope?" + urlencode({"From": SENDER, "Text": TEXTS[2]}),
                            timeout=10).status_code == 404
        assert server.post(sms("STOP", From=SENDER)).status_code == 200
        assert requests.get(server.base + "/metrics", timeout=10).status_code == 200
    finally:
        server.stop()
    text = server.log_path.read_text(encoding="utf-8")
    records = json_lines(text)
    loggers = {r["logger"] for r in records}
    assert {"gunicorn.error", "gunicorn.access", "app.service"} <= loggers, loggers
    access = [r for r in records if r["logger"] == "gunicorn.access"]
    assert {(r["method"], r["path"], r["status"]) for r in access} >= {
        ("POST", "/message", 200), ("GET", "/message", 200), ("POST", "/message", 403), ("GET", "/nope", 404),
        ("GET", "/metrics", 200)}
    for r in access:
        assert "?" not in r["path"] and r["remote"] == "127.0.0.1"
        assert isinstance(r["bytes"], int) and r["duration_ms"] >= 0
    assert any(r["msg"] == "Booting worker with pid: %d" % r["pid"] for r in records)  # the master's own
    for secret in (SENDER, SENDER[1:], OURS, TOKEN, "notthetoken0123456789", *TEXTS, *sent_signatures):
        assert secret not in text, f"{secret!r} is in the log"
    answered = [r for r in records if r["msg"] == "message answered"]
    assert len(answered) == 3 and all("uuid" in r for r in answered)


@pytest.mark.server
def test_warnings_dying_threads_and_ignored_exceptions_go_through_the_formatter():
    code = (
        "import threading, warnings\n"
        "from app import logs\n"
        "logs.configure('INFO', 'json')\n"
        "warnings.warn('careful now')\n"
        "t = threading.Thread(target=lambda: 1 / 0, name='worker-x')\n"
        "t.start(); t.join()\n"
        "import logging; logging.getLogger('somelib').warning('from +14155557777 at /x?Text=secret')\n"
        "class Closer:\n"
        "    def __del__(self):\n"
        "        raise ValueError('cannot close for +1 415 555 7777')\n"
        "Closer()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30,
                            env=server_env())
    assert result.returncode == 0, result.stderr
    records = json_lines(result.stderr)
    assert [r["logger"] for r in records] == ["py.warnings", "app", "somelib", "app"]
    assert "careful now" in records[0]["msg"]
    assert records[1]["msg"] == "uncaught exception in thread worker-x" and "ZeroDivisionError" in records[1]["exc"]
    assert records[2]["msg"] == "from …7777 at /x?…"
    assert records[3]["msg"].startswith("Exception ignored in: <function Closer.__del__")
    assert records[3]["level"] == "ERROR" and "ValueError: cannot close for …7777" in records[3]["exc"]


#: (text, scrubbed): phone numbers however written, down to their last four digits.
MASKED = [
    ("sent to 14155550123, uuid 6f1c2a3e-1234-4e5f-8a9b-123456789012",
     "sent to …0123, uuid 6f1c2a3e-1234-4e5f-8a9b-123456789012"),
    ("from 14155550100.", "from …0100."),
    ("id_14155550100", "id_…0100"),
    ("+1 415 555 0100", "…0100"),
    ("14155550100,14155550101.", "…0100,…0101."),
    ("'from': '+1 415 555 0123x' is not a phone number", "'from': '…0123x' is not a phone number"),
    ("call +1 (415) 555-0100 or (415) 555-0101 or 415-555-0102 or 415.555.0103",
     "call …0100 or …0101 or …0102 or …0103"),
    ("+44 20 7946 0958 and +33 6 12 34 56 78", "…0958 and …5678"),
    ("From=%2B14155550100&To=x", "From=…0100&To=x"),
    ("(14155550100) [+14155550100] 14155550100:", "(…0100) […0100] …0100:"),
    ("recorded 14155550100.json", "recorded …0100.json"),
    ("sent +14155550100 3 times", "sent …0100 3 times"),
]
#: Text with digits in it that is not a phone number, left as it is.
KEPT = [
    "listening at 0.0.0.0:8000 (pid 12345)",
    "Hours? we open at 9",
    "at 2026-11-23T10:00:00.123456+00:00, 2026-11-23 10:00:00Z, 20261123T100000Z",
    "uuid 6f1c2a3e-1234-4e5f-8a9b-123456789012 and 12345678-abcd-4e5f-8a9b-123456789012",
    "rules loaded (e994abb871cd), digest 0123456789ab, digest ab0123456789",
    "took 12.345 ms, duration_ms=1234.567, 1732370400.123 s",
    "version 1.2.12345678 at 192.168.100.100, port 65535",
    "nonce 12345678901234567890",
    "offset +00:00, +1 415",
]


def test_scrub_masks_numbers_however_written():
    from app.logs import scrub
    for text, scrubbed in MASKED:
        assert scrub(text) == scrubbed, text
        assert scrub(scrubbed) == scrubbed, text   # scrubbing twice changes nothing


def test_scrub_keeps_what_is_not_a_number():
    from app.logs import redact, scrub
    for text in KEPT:
        assert scrub(text) == text
    assert scrub("GET http://h/message?From=1&Text=hi there") == "GET http://h/message?… there"
    assert redact("ValueError: invalid literal for int() with base 10: 'twelve apples'", "order twelve apples") == (
        "ValueError: invalid literal for int() with base 10: '… …'")


def test_scrub_drops_the_credentials_of_urls():
    """A rules file's URL may hold a password or a token: no log line shows it (issue 13)."""
    from app.logs import hide_credentials, scrub
    text = "got 'htps://admin:S3cret@crm.example.com/hooks?api_key=k3y', and https://tok3n@h.example/x"
    assert scrub(text) == "got 'htps://…@crm.example.com/hooks?…', and https://…@h.example/x"
    assert scrub(scrub(text)) == scrub(text)
    assert scrub("mail bob@example.com, see http://h.example/a@b") == "mail bob@example.com, see http://h.example/a@b"
    # passwords as people type them: with @, /, ? or # in them; a port is no password
    assert scrub("https://admin:p@ss@crm.example/h") == "https://…@crm.example/h"
    assert scrub("'https://admin:pa/ss@crm.example/h'") == "'https://…@crm.example/h'"
    assert scrub("https://admin:a?b#c@crm.example/h") == "https://…@crm.example/h"
    assert scrub("http://h.example:8080/a@b") == "http://h.example:8080/a@b"
    # for the operator's own terminal (`rules check`): the credentials go, the numbers stay
    assert hide_credentials(text + " +14155550123") == scrub(text) + " +14155550123"


def test_extra_fields_are_scrubbed_too_strings_only():
    import logging

    from app.logs import formatter
    problems = ["rules.yaml:4: 'from': '+1 415 555 0123x' is not a phone number", "rules.yaml:9: fine"]
    record = logging.makeLogRecord({
        "name": "gunicorn.conf", "levelno": logging.ERROR, "levelname": "ERROR", "msg": "rules.yaml has 2 problem(s)",
        "args": (), "problems": problems, "numbers": {"from": "14155550100", "count": 14155550100},
        "pair": ("+14155550100", 3), "bytes": 123456789, "ok": True, "nothing": None, "where": Path("/x/14155550100"),
    })
    out = json.loads(formatter("json").format(record))
    assert out["problems"] == ["rules.yaml:4: 'from': '…0123x' is not a phone number", "rules.yaml:9: fine"]
    assert out["numbers"] == {"from": "…0100", "count": 14155550100}   # a number is kept as it is
    assert out["pair"] == ["…0100", 3] and out["bytes"] == 123456789 and out["ok"] is True
    assert out["nothing"] is None and out["where"] == "/x/…0100"
    text = formatter("text").format(record)
    assert "'…0123x'" in text and "415 555" not in text and "'from': '…0100'" in text and "bytes=123456789" in text
    assert "+1 415 555 0123x" in problems[0]   # the caller's list is not changed in place


def test_database_errors_do_not_show_their_parameters(tmp_path):
    import sqlalchemy as sa

    from app.store.db import make_engine, memory_engine
    for engine in (make_engine(f"sqlite:///{tmp_path / 'x.sqlite3'}", pool_size=1), memory_engine()):
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("CREATE TABLE t (n TEXT UNIQUE)")
                conn.execute(sa.text("INSERT INTO t VALUES (:n)"), {"n": "my secret words 14155550100"})
                with pytest.raises(sa.exc.IntegrityError) as failed:
                    conn.execute(sa.text("INSERT INTO t VALUES (:n)"), {"n": "my secret words 14155550100"})
        finally:
            engine.dispose()
        assert "secret" not in str(failed.value) and "hidden due to hide_parameters" in str(failed.value)


# -- start refusals -----------------------------------------------------------------------------
@pytest.fixture
def start(tmp_path):
    """Run gunicorn with `settings` until it exits: (result, seconds); with no PORT, on a free
    port (run_gunicorn: another if someone else takes it first). The rules are a copy under
    tmp_path, and the copy of them the master keeps in the repository's instance folder when
    they compile is removed after."""
    rules = tmp_path / "start" / "rules.yaml"
    rules.parent.mkdir()
    shutil.copy(ROOT / "rules.yaml", rules)
    used: set[str] = set()

    def start(timeout: float = 30, **settings) -> tuple[subprocess.CompletedProcess, float]:
        settings = {"PLIVO_AUTH_TOKEN": TOKEN, "RULES_PATH": str(rules), **settings}
        used.add(settings["RULES_PATH"])
        env = server_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"), **settings)
        started = time.monotonic()
        result = run_gunicorn(env, timeout=timeout)
        return result, time.monotonic() - started

    yield start
    for path in used:
        shutil.rmtree(kept_copy_path(str(ROOT / "instance" / KEEP_FOLDER), path), ignore_errors=True)


def only_line(result: subprocess.CompletedProcess) -> str:
    """The one line that says why the start was refused (after gunicorn's "Starting" line,
    for what the master checks once gunicorn runs)."""
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and all("Starting gunicorn" in line for line in lines[:-1]), result.stderr
    assert "Traceback" not in result.stderr
    return lines[-1]


@pytest.mark.server
def test_port_out_of_range_is_one_line(start):
    line = only_line(start(PORT="70000", LOG_FORMAT="text")[0])
    assert line == "error: PORT must be a port number from 1 to 65535, got '70000'"
    record = json.loads(only_line(start(PORT="http")[0]))   # LOG_FORMAT=json by default
    assert record["level"] == "ERROR" and record["msg"] == "PORT must be a port number from 1 to 65535, got 'http'"


def _listen_on_all(first: int, count: int) -> list[socket.socket]:
    """Listening sockets on 127.0.0.1 ports first .. first+count-1 (OSError if one is in use)."""
    sockets: list[socket.socket] = []
    try:
        for port in range(first, first + count):
            taken = socket.socket()
            sockets.append(taken)
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # TIME_WAIT is no use
            taken.bind(("127.0.0.1", port))
            taken.listen()
    except OSError:
        for taken in sockets:
            taken.close()
        raise
    return sockets


@contextmanager
def ports_taken(count: int):
    """`count` consecutive ports on 127.0.0.1, each with a listening socket: the first one's number.
    (Below the kernel's range for outgoing connections, where a run of free ports is likely.)"""
    for _ in range(50):
        first = random.randrange(20000, 32000 - count)
        try:
            sockets = _listen_on_all(first, count)
        except OSError:
            continue   # one of them was in use: another run of ports
        try:
            yield first
        finally:
            for taken in sockets:
                taken.close()
        return
    raise AssertionError(f"no {count} consecutive free ports")


@pytest.mark.server
def test_port_in_use_is_refused_at_once_with_a_port_that_is_free(start):
    with ports_taken(2) as port:   # the next one is taken too: it is not suggested
        result, seconds = start(timeout=20, PORT=str(port), LOG_FORMAT="text")
        as_json = start(timeout=20, PORT=str(port))[0]
    line = only_line(result)
    assert line.startswith(f"error: port {port} is already in use"), line
    suggested = int(re.search(r"PORT=(\d+) \./scripts/serve", line).group(1))
    assert port + 2 <= suggested <= port + 20, line
    assert seconds < 5, f"took {seconds:.1f} s (gunicorn's own retries take 5 s)"
    record = json.loads(only_line(as_json))
    assert record["level"] == "ERROR" and record["msg"].startswith(f"port {port} is already in use")


@pytest.mark.server
def test_port_in_use_suggests_none_when_the_next_ones_are_taken_too(start):
    with ports_taken(21) as port:
        line = only_line(start(timeout=20, PORT=str(port), LOG_FORMAT="text")[0])
    assert line == (f"error: port {port} is already in use (0.0.0.0:{port}): stop whatever listens there, "
                    "or start on another port (PORT)")


@pytest.mark.server
def test_host_is_the_listening_address_and_a_bad_one_is_one_line(tmp_path, start):
    line = only_line(start(HOST="localhost:80", LOG_FORMAT="text")[0])
    assert line == ("error: HOST must be an IP address to listen on (0.0.0.0 for every interface, 127.0.0.1 "
                    "for this host only (or localhost), :: or ::1 for IPv6), got 'localhost:80'")
    server = Server(tmp_path, HOST="localhost", WEB_CONCURRENCY="1")  # the same as 127.0.0.1
    try:
        assert requests.get(server.base + "/healthz", timeout=10).status_code == 200
        assert f"Listening at: http://127.0.0.1:{server.port} " in server.log_path.read_text()
        with socket.socket() as other:   # the other addresses are not taken: nothing listens there
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            other.bind(("127.0.0.2", server.port))
    finally:
        server.stop()


@pytest.mark.server
def test_refusals_are_json_lines_by_default(tmp_path, start):
    record = json.loads(only_line(start(PLIVO_AUTH_TOKEN="")[0]))
    assert record["level"] == "ERROR" and "PLIVO_AUTH_TOKEN" in record["msg"]
    bad = tmp_path / "rules.yaml"
    bad.write_text("version: 1\nrules:\n  - {name: a, when: {keyword: hi}, reply: '{{ nope }}'}\n")
    record = json.loads(only_line(start(RULES_PATH=str(bad))[0]))
    assert "1 problem(s)" in record["msg"] and len(record["problems"]) == 1
    assert record["problems"][0].startswith(f"{bad}:3: unknown name 'nope'")
    record = json.loads(only_line(start(DATABASE_URL="nonsense")[0]))
    assert record["msg"].startswith("DATABASE_URL is not a database URL")
    # an invalid LOG_FORMAT cannot choose its own format: plain text
    line = only_line(start(LOG_FORMAT="yaml")[0])
    assert line == "error: LOG_FORMAT must be json or text, got 'yaml'"


# -- privacy of every log path: good and bad requests, the server's own refusals ------------------
#: Words no log line has any other reason to hold, one text each, and a sender's number.
PRIVATE_WORDS = ("marmalade", "zeppelin", "quokka", "walrus", "tangerine", "lighthouse", "porcupine", "saxophone",
                 "gooseberry", "trombone", "armadillo", "pistachio", "kumquat", "narwhal", "xylophone", "dromedary",
                 "persimmon", "accordion", "platypus", "rhubarb", "tambourine", "wombat", "clementine", "harpsichord")
PRIVATE_SENDER = "14155558888"


@pytest.mark.server
def test_no_log_line_holds_a_text_or_a_number_whatever_the_request(tmp_path):
    from rawhttp import exchange, request
    from test_long_get import LINE_LIMIT

    server = Server(tmp_path, LOG_LEVEL="DEBUG", GUNICORN_ACCESS_LOG="-", WEB_CONCURRENCY="1")
    port, words = server.port, iter(PRIVATE_WORDS)
    host = ("Host", f"127.0.0.1:{port}")

    def text() -> str:
        return f"my {next(words)} is 4321"

    def params(**extra) -> dict:
        return sms(text(), From=PRIVATE_SENDER, **extra)

    def query(**extra) -> str:
        return urlencode(params(**extra))

    try:
        # A refused signature first, so this worker works out its hint for it: a forwarded
        # host nobody trusts, carrying a query, must not reach the hint.
        forged = params()
        r = exchange(port, request("POST", "/message", [
            host, ("Content-Type", "application/x-www-form-urlencoded"),
            ("X-Forwarded-Host", f"evil.example/x?Text={next(words)}"), ("X-Forwarded-Proto", "https"),
            *signed_headers(server.base + "/message", forged, token="notthetoken0123456789").items()],
            urlencode(forged).encode()))
        assert r.status == 403
        q = query()  # a GET with a bad signature
        assert requests.get(f"{server.base}/message?{q}", headers=signed_headers(
            f"{server.base}/message?{q}", {}, method="GET", token="notthetoken0123456789"),
            timeout=10).status_code == 403
        assert server.post(params()).status_code == 200  # good POST
        q = query()  # good GET
        assert requests.get(f"{server.base}/message?{q}", headers=signed_headers(
            f"{server.base}/message?{q}", {}, method="GET"), timeout=10).status_code == 200
        # a Host carrying a query: 400 before anything else
        r = exchange(port, request("GET", f"/message?{query()}", [("Host", f"127.0.0.1:{port}/message?{query()}#")]))
        assert r.status == 400
        assert server.post(params(To=None)).status_code == 400  # signed, but no To
        big = params(Text=text() + " " + "x" * 5000)
        assert server.post(big).status_code == 413  # over MAX_CONTENT_LENGTH (4096 in these tests)
        long_line = f"/message?{query()}&pad={'x' * LINE_LIMIT}"
        assert exchange(port, request("GET", long_line, [host])).status == 414
        assert exchange(port, request("PUT", f"/message?{query()}", [host])).status == 405
        assert requests.get(f"{server.base}/nope?{query()}", timeout=10).status_code == 404
        # gunicorn's own refusals, which quote what they got: raw spaces in the request line,
        # a header name that is no name.
        line = f"GET /message?From={PRIVATE_SENDER}&Text=my {next(words)} is 4321 HTTP/1.1\r\nHost: x\r\n\r\n"
        assert exchange(port, line.encode()).status == 400
        r = exchange(port, request("GET", "/healthz", [host, (f"{next(words)} {PRIVATE_SENDER}", "x")]))
        assert r.status == 400
        # a client that goes away in the middle of its request line
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(f"GET /message?From={PRIVATE_SENDER}&Text={next(words)}".encode())
        assert exchange(port, request("GET", "/healthz", [host])).status == 200
    finally:
        server.stop()
    output = server.log_path.read_text(encoding="utf-8")
    records = json_lines(output)
    statuses = {r.get("status") for r in records if r["logger"] == "gunicorn.access"}
    assert {200, 400, 403, 404, 405, 413} <= statuses, statuses
    refused = [r["msg"] for r in records if r["msg"].startswith("Invalid request from ip=")]
    # They say what was wrong, without what was received.
    assert {"Invalid request from ip=127.0.0.1: Invalid HTTP Version",
            "Invalid request from ip=127.0.0.1: Invalid HTTP header name"} <= set(refused), refused
    assert any(m.startswith("Invalid request from ip=127.0.0.1: Request Line is too large") for m in refused), refused
    hints = [r for r in records if r["msg"].startswith("signature rejected")]
    assert len(hints) == 2 and hints[0].get("likely_wrong") and "?" not in hints[0]["checked_url"]
    assert "evil.example" not in hints[0]["msg"]
    for secret in (PRIVATE_SENDER, PRIVATE_SENDER[1:], OURS, *PRIVATE_WORDS):
        assert secret not in output, f"{secret!r} is in the log: " + next(
            line for line in output.splitlines() if secret in line)


def test_gunicorns_lines_about_a_refused_request_keep_what_was_wrong_not_what_was_sent():
    import logging

    from app.logs import ServerLineFilter, formatter

    def shown(msg, *args):
        record = logging.makeLogRecord({"name": "gunicorn.error", "levelno": logging.WARNING,
                                        "levelname": "WARNING", "msg": msg, "args": args})
        assert ServerLineFilter().filter(record)
        return json.loads(formatter("json").format(record))["msg"]

    assert shown("Invalid request from ip=10.0.0.5: Invalid HTTP Version: 'my quokka is 4321 HTTP/1.1'") == (
        "Invalid request from ip=10.0.0.5: Invalid HTTP Version")
    assert shown("Invalid request from ip=::1: Invalid HTTP request line: 'GET /m?Text=my walrus'") == (
        "Invalid request from ip=::1: Invalid HTTP request line")
    assert shown('Invalid request from ip=10.0.0.5: Invalid HTTP header name: "my wombat\'s"') == (
        "Invalid request from ip=10.0.0.5: Invalid HTTP header name")
    assert shown("Invalid request from ip=10.0.0.5: Request Line is too large (70000 > 65536)") == (
        "Invalid request from ip=10.0.0.5: Request Line is too large (70000 > 65536)")
    assert shown("Error handling request %s %s", "GET", "/message?Text=my+narwhal") == (
        "Error handling request GET /message")
    from gunicorn.http.errors import NoMoreData
    assert shown("Ignored premature client disconnection. %s", NoMoreData(b"GET /message?Text=my platypus")) == (
        "Ignored premature client disconnection. NoMoreData")
    assert shown("Booting worker with pid: %s", 123) == "Booting worker with pid: 123"
    assert shown("Ignoring connection error: %s", ConnectionResetError(104, "Connection reset by peer")) == (
        "Ignoring connection error: [Errno 104] Connection reset by peer")


def test_werkzeugs_request_lines_lose_the_whole_query():
    import logging

    from app.logs import _RequestLineFilter
    record = logging.makeLogRecord({"msg": '%s - - "%s" %s', "args": (
        "127.0.0.1", "GET /message?From=14155550123&Text=it's+my+secret HTTP/1.1", "200")})
    assert _RequestLineFilter().filter(record)
    assert record.getMessage() == '127.0.0.1 - - "GET /message?… HTTP/1.1" 200'
