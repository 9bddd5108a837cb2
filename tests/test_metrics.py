"""/metrics: the names and labels, what each kind of request counts, the figures read from the
database; and under a real gunicorn with several workers, the same totals whichever worker
answers, a killed worker's counts kept, the metrics folder made, emptied and removed; and
commands, which count nothing. Also the version, delivery reports, and the outcomes the web workers'
outbox senders record."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import tomllib
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from conftest import ROOT, TOKEN, listening, make_app, send, signed_headers, sms
from plivo_standin import Answer, PlivoStandin
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families
from servers import GUNICORN_SCRIPT, Server
from test_outbox import Receiver, whatsapp
from waiting import wait_until

from app.outbound.sender import build_sender

RULES = """\
    version: 1
    rules:
      - {name: hours, when: {keyword: hours}, reply: "We are open."}
      - {name: order, when: {keyword: order}, reply: "On its way."}
"""
NAMES = ("responder_requests_total", "responder_request_seconds", "responder_signature_rejections_total",
         "responder_rule_matches_total", "responder_optouts_total", "responder_outbox_items",
         "responder_optedout_numbers", "responder_database_up", "responder_rules_info",
         "responder_messages_total", "responder_build_info")
#: pyproject.toml's version, which responder_build_info names.
with open(ROOT / "pyproject.toml", "rb") as _fh:
    VERSION = tomllib.load(_fh)["project"]["version"]


def parse(text: str) -> dict:
    """{(sample name, sorted label pairs): value} of one scrape."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(client) -> dict:
    r = client.get("/metrics")
    assert r.status_code == 200
    return parse(r.get_data(as_text=True))


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# -- in process ------------------------------------------------------------------------------
@pytest.mark.usefixtures("database")
def test_counts_of_each_kind_of_request(tmp_path):
    # METRICS_EVERY=0: the database figures are read at every scrape (they change between them here)
    app = make_app(tmp_path, RULES, PLIVO_AUTH_ID="MAMETRICS", METRICS_EVERY=0)
    client = app.test_client()
    before = scrape(client)

    hours = sms("hours")
    assert send(client, hours).status_code == 200
    assert send(client, hours).status_code == 200                     # Plivo's retry: the stored answer
    assert send(client, sms("order 12", From="14155550124"), method="GET").status_code == 200
    assert send(client, sms("hello")).status_code == 200               # nothing matches
    assert send(client, sms("STOP", From="14155550177")).status_code == 200
    assert send(client, sms("STOP", From="14155550177")).status_code == 200   # already out: no change
    assert send(client, sms("hours", Type="whatsapp", Text=None, Body="hours",
                            From="14155550188")).status_code == 200   # queued for the Message API
    assert send(client, sms("hours"), token="wrong").status_code == 403
    assert send(client, sms("hours"), sign=False).status_code == 403
    first = sms("hours")
    url = "http://localhost/message"
    headers = signed_headers(url, first, nonce="12345678901234567890")
    assert client.post("/message", data=first, headers=headers).status_code == 200
    again = sms("hours")
    headers = signed_headers(url, again, nonce="12345678901234567890")
    assert client.post("/message", data=again, headers=headers).status_code == 403   # replayed nonce
    assert client.get("/nowhere").status_code == 404
    assert client.put("/message").status_code == 405
    assert client.get("/healthz").status_code == 200

    after = scrape(client)
    d = lambda name, **labels: delta(before, after, name, **labels)  # noqa: E731
    assert d("responder_requests_total", endpoint="message", code="200") == 8
    assert d("responder_requests_total", endpoint="message", code="403") == 3
    assert d("responder_requests_total", endpoint="message", code="405") == 1
    assert d("responder_requests_total", endpoint="other", code="404") == 1
    assert d("responder_requests_total", endpoint="healthz", code="200") == 1
    assert d("responder_request_seconds_count", endpoint="message") == 12
    assert d("responder_request_seconds_bucket", endpoint="message", le="+Inf") == 12
    assert d("responder_request_seconds_bucket", endpoint="message", le="8.0") == 12
    assert d("responder_signature_rejections_total", reason="invalid") == 1
    assert d("responder_signature_rejections_total", reason="missing") == 1
    assert d("responder_signature_rejections_total", reason="replayed") == 1
    assert d("responder_rule_matches_total", rule="hours") == 3      # the retry is not a second match
    assert d("responder_rule_matches_total", rule="order") == 1
    assert d("responder_optouts_total", change="optout") == 1
    assert d("responder_messages_total", delivery="new") == 7
    assert d("responder_messages_total", delivery="repeat") == 1
    # read from this database when scraped
    assert value(after, "responder_database_up") == 1
    assert value(after, "responder_outbox_items", status="pending") == 1
    for status in ("sending", "sent", "failed", "unknown", "cancelled"):
        assert (("responder_outbox_items", (("status", status),))) in after
    assert value(after, "responder_optedout_numbers") == 1
    ruleset = app.extensions["responder"].holder.current()
    assert value(after, "responder_rules_info", digest=ruleset.digest) == 1
    assert value(after, "responder_rules") == 2

    assert send(client, sms("START", From="14155550177")).status_code == 200
    last = scrape(client)
    assert delta(after, last, "responder_optouts_total", change="optin") == 1
    assert value(last, "responder_optedout_numbers") == 0
    assert delta(after, last, "responder_requests_total", endpoint="metrics", code="200") == 1


def test_names_types_and_content_type(tmp_path):
    client = make_app(tmp_path, RULES).test_client()
    send(client, sms("hours"))
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=")
    text = r.get_data(as_text=True)
    types = {line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")}
    for name in NAMES:
        assert name in types, name
    assert types["responder_requests_total"] == "counter"
    assert types["responder_request_seconds"] == "histogram"
    assert types["responder_outbox_items"] == "gauge"
    assert types["responder_build_info"] == "gauge"
    assert "_created" not in text
    builds = [(labels, v) for (name, labels), v in parse(text).items() if name == "responder_build_info"]
    assert builds == [((("version", VERSION),), 1.0)]


def test_database_that_does_not_answer_leaves_its_figures_out(tmp_path, caplog):
    app = make_app(tmp_path, RULES, DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere")
    client = app.test_client()
    with listening(caplog, "app.metrics"):
        first = scrape(client)
        second = scrape(client)
    for samples in (first, second):
        assert value(samples, "responder_database_up") == 0
        assert not any(name == "responder_outbox_items" for name, _ in samples)
        assert value(samples, "responder_rules") == 2
    # (pytest may hand caplog one record twice: once from the logger, once from `app`)
    warnings = list({id(r): r for r in caplog.records if r.name == "app.metrics"}.values())
    assert len(warnings) == 1 and "did not answer" in warnings[0].getMessage()


def test_with_a_metrics_token_a_scrape_needs_it(tmp_path):
    secret = tmp_path / "metrics-token"
    secret.write_text("m3trics-t0ken\n", encoding="utf-8")
    client = make_app(tmp_path, RULES, METRICS_TOKEN_FILE=str(secret)).test_client()
    for authorization in (None, "Bearer wrong", "Bearer m3trics-t0ken-and-more", "Bearer m3trics-t0ke",
                          "m3trics-t0ken", "Basic bTN0cmljcy10MGtlbg==", "Bearer ", "Bearer m3trics-t0kén"):
        r = client.get("/metrics", headers={"Authorization": authorization} if authorization else {})
        assert r.status_code == 401, authorization
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert r.get_data(as_text=True) == "401 Unauthorized: /metrics needs Authorization: Bearer <METRICS_TOKEN>\n"
    for authorization in ("Bearer m3trics-t0ken", "bearer  m3trics-t0ken "):
        r = client.get("/metrics", headers={"Authorization": authorization})
        assert r.status_code == 200, authorization
        assert value(parse(r.get_data(as_text=True)), "responder_requests_total", endpoint="metrics",
                     code="401") == 8
    # without the setting, /metrics stays open
    (tmp_path / "open").mkdir()
    assert make_app(tmp_path / "open", RULES).test_client().get("/metrics").status_code == 200


def _database_reads(store) -> list[str]:
    """The statements `store` sends that read the figures a scrape shows (a real database's
    statements, seen through SQLAlchemy's event, nothing replaced)."""
    import sqlalchemy as sa
    seen: list[str] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        if "outbox" in statement.lower() or "optouts" in statement.lower():
            seen.append(statement)
    sa.event.listen(store.engine, "before_cursor_execute", before)
    return seen


def test_a_scrape_storm_reads_the_database_once_per_interval(tmp_path, database):
    """A worker reads the database figures at most once every STATE_SECONDS, however many threads
    scrape it; between reads it answers with the figures it read last."""
    import threading

    from app import metrics
    app = make_app(tmp_path, RULES, PLIVO_AUTH_ID="MAMETRICS")   # the service's interval
    store = app.extensions["responder"].store
    reads = _database_reads(store)
    answers, failures = [], []

    def storm():
        client = app.test_client()
        try:
            for _ in range(25):
                answers.append(value(scrape(client), "responder_outbox_items", status="pending"))
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
    started = time.monotonic()
    threads = [threading.Thread(target=storm) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures and len(answers) == 200
    if time.monotonic() - started < metrics.STATE_SECONDS:   # (a very slow machine may read twice)
        assert len(reads) == 2, reads   # the outbox's GROUP BY and the opted-out count, once
    assert len(reads) <= 2 * (1 + (time.monotonic() - started) // metrics.STATE_SECONDS)

    # on an injected monotonic clock: the figures are read again once they are `every` seconds old
    now = [1000.0]
    exporter = metrics.Exporter(store, every=5, clock=lambda: now[0])
    reads.clear()
    assert value(parse(exporter.render().decode()), "responder_outbox_items", status="pending") == 0
    assert len(reads) == 2
    assert send(app.test_client(), sms("hours", Type="whatsapp", Text=None, Body="hours")).status_code == 200
    reads.clear()
    now[0] += 4.9
    samples = parse(exporter.render().decode())
    assert value(samples, "responder_outbox_items", status="pending") == 0 and reads == []   # the last figures
    assert value(samples, "responder_database_up") == 1
    now[0] += 0.1
    assert value(parse(exporter.render().decode()), "responder_outbox_items", status="pending") == 1
    assert len(reads) == 2


def test_a_scrape_shows_no_rules_file_content_but_rule_names_and_the_digest(tmp_path):
    """A rules file may hold a password in a URL: a scrape names the rules and the file's digest, nothing more."""
    rules = """\
        version: 1
        rules:
          - name: crm
            when: {regex: '^(?P<word>private-pattern)-(\\d+)$'}
            reply: "reply-text-not-for-scrapes"
            webhook: "https://admin:S3cretPass@crm.example/hooks?api_key=K3yK3y"
          - {name: hours, when: {keyword: hours-keyword-here}, reply: "another-reply-text"}
    """
    app = make_app(tmp_path, rules, WEBHOOK_SECRET="w" * 32, METRICS_EVERY=0)
    client = app.test_client()
    assert send(client, sms("private-pattern-12")).status_code == 200
    assert send(client, sms("hours-keyword-here")).status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    for secret in ("S3cretPass", "K3yK3y", "crm.example", "admin", "private-pattern", "reply-text",
                   "hours-keyword-here", "another-reply", str(tmp_path)):
        assert secret not in text, secret
    ruleset = app.extensions["responder"].holder.current()
    assert value(parse(text), "responder_rules_info", digest=ruleset.digest) == 1
    # (in-process counts are the test process's: other tests' rule names may be there too)
    assert {dict(labels).get("rule") for name, labels in parse(text) if name == "responder_rule_matches_total"} \
        >= {"crm", "hours"}


def test_endpoint_labels_are_route_names():
    from app.metrics import endpoints_of
    paths = endpoints_of([("/message", "responder.message", False), ("/healthz", "responder.healthz", True),
                          ("/static/<path:filename>", "static", True)])
    assert paths == {"/message": "message", "/message/": "message", "/healthz": "healthz"}


def report(uuid: str, status: str | None, **extra) -> dict:
    params = {"MessageUUID": uuid, "Status": status, "To": "14155550123", "From": "14155550100", **extra}
    return {k: v for k, v in params.items() if v is not None}


@pytest.mark.usefixtures("database")
def test_delivery_reports_are_counted_once_by_a_bounded_status(tmp_path):
    client = make_app(tmp_path, RULES, METRICS_EVERY=0).test_client()
    before = scrape(client)
    for status in ("delivered", "Delivered", "sent", "queued", "undelivered", "failed", "read", "rejected",
                   "sent-ish", "x" * 200, "", None):
        assert send(client, report(f"u-{status!s:.20}", status), path="/status").status_code == 200, status
    # the same request again (Plivo's retry, same nonce): answered, stored once, counted once
    url = "http://localhost/status"
    first = report("u-retried", "delivered")
    headers = signed_headers(url, first, nonce="98765432109876543210")
    assert client.post("/status", data=first, headers=headers).status_code == 200
    assert client.post("/status", data=first, headers=headers).status_code == 200
    # that nonce on another report (a replay): refused, not counted
    other = report("u-replayed", "delivered")
    assert client.post("/status", data=other,
                       headers=signed_headers(url, other, nonce="98765432109876543210")).status_code == 403
    assert send(client, report("", "delivered"), path="/status").status_code == 400   # no MessageUUID
    assert send(client, report("u-unsigned", "delivered"), path="/status", sign=False).status_code == 403

    after = scrape(client)
    d = lambda status: delta(before, after, "responder_delivery_reports_total", status=status)  # noqa: E731
    assert d("delivered") == 3     # delivered, Delivered, and the retried report once
    for status in ("sent", "queued", "undelivered", "failed", "read", "rejected"):
        assert d(status) == 1, status
    assert d("other") == 4         # sent-ish, the long one, an empty and a missing Status
    statuses = {dict(labels)["status"] for name, labels in after if name == "responder_delivery_reports_total"}
    assert statuses <= {"queued", "sent", "delivered", "undelivered", "failed", "read", "rejected", "other"}


@pytest.fixture
def standin():
    with PlivoStandin(token=TOKEN) as s:
        yield s


SENDS = "responder_outbox_sends_total"


@pytest.mark.usefixtures("database")
def test_outbox_sends_are_counted_by_kind_and_result(tmp_path, standin):
    """A real sender against the stand-in (and a webhook receiver on loopback), told to count through
    on_result, as the web workers' are: each outcome it records, once."""
    from app import metrics
    receiver = Receiver()
    try:
        rules = f"""
            version: 1
            rules:
              - {{name: hours, when: {{keyword: hours}}, reply: "We are open."}}
              - {{name: lead, when: {{keyword: quote}}, webhook: "{receiver.url}"}}
        """
        app = make_app(tmp_path, rules, PLIVO_AUTH_ID=standin.auth_id, PLIVO_API_URL=standin.url,
                       OUTBOX_LEASE=5, OUTBOX_MAX_DELAY=0.2, PLIVO_API_RATE=200, WEBHOOK_SECRET="w" * 32,
                       METRICS_EVERY=0)
        client = app.test_client()
        store = app.extensions["responder"].store
        sender = build_sender(store, app.config, on_result=metrics.outbox_result)
        sender.lookup_every = timedelta(0)      # an unknown item may be looked up again at once
        before = scrape(client)

        def step(what: str):
            wait_until(sender.run_once, 10, what)

        # a 5xx, then sent
        standin.script(Answer(status=500))
        send(client, whatsapp("hours", From="14155550201"))
        step("the first attempt")
        step("the retry")
        # refused for good
        standin.script(Answer(status=400, error="invalid dst"))
        send(client, whatsapp("hours", From="14155550202"))
        step("the refused attempt")
        # made, but the answer lost: unknown, then found in the message list
        standin.script(Answer(drop=True))
        send(client, whatsapp("hours", From="14155550203"))
        step("the lost answer")
        sender.look_up_unknown()
        # nothing made, the connection lost: unknown; not in the list (yet), then (past the safe
        # delay) sent again; and another given up while unknown
        standin.script(Answer(status=503, drop=True))
        send(client, whatsapp("hours", From="14155550204"))
        step("the dropped connection")
        sender.look_up_unknown()
        safe_delay, sender.safe_delay = sender.safe_delay, timedelta(0)
        sender.look_up_unknown()
        sender.safe_delay = safe_delay
        step("the send after the look-up")
        standin.script(Answer(status=503, drop=True))
        send(client, whatsapp("hours", From="14155550205"))
        step("the second dropped connection")
        sender.give_up = timedelta(0)
        sender.look_up_unknown()
        sender.give_up = timedelta(days=1)
        # a webhook call: a 500, then taken
        receiver.answers = [500]
        send(client, sms("quote please"))
        step("the webhook call")
        step("the webhook call again")

        after = scrape(client)
        d = lambda kind, result: delta(before, after, SENDS, kind=kind, result=result)  # noqa: E731
        assert {(k, r): d(k, r) for k in ("message", "lookup", "webhook")
                for r in ("sent", "retry", "failed", "unknown") if d(k, r)} == {
            ("message", "retry"): 1, ("message", "sent"): 2, ("message", "failed"): 1, ("message", "unknown"): 3,
            ("lookup", "sent"): 1, ("lookup", "unknown"): 1, ("lookup", "retry"): 1, ("lookup", "failed"): 1,
            ("webhook", "retry"): 1, ("webhook", "sent"): 1}
        assert [(i.status) for i in sorted(store.list_outbox(100), key=lambda i: i.id)] == \
            ["sent", "failed", "sent", "sent", "failed", "sent"]
    finally:
        receiver.close()


def test_outbox_results_outside_the_known_labels_are_not_counted(tmp_path):
    from app import metrics
    client = make_app(tmp_path, RULES).test_client()
    before = scrape(client)
    metrics.outbox_result("message", "sent")
    metrics.outbox_result("message", "retry in 1.0 s")
    metrics.outbox_result("carrier-pigeon", "sent")
    after = scrape(client)
    assert delta(before, after, SENDS, kind="message", result="sent") == 1
    assert {labels for name, labels in after if name == SENDS} == {labels for name, labels in before
                                                                   if name == SENDS} | {
        (("kind", "message"), ("result", "sent"))}


# -- under gunicorn ------------------------------------------------------------------------------
def metric_files(pid: int) -> set[Path]:
    """The metric files a worker has open (prometheus_client keeps each one open)."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = Path(os.readlink(fd))
        except OSError:
            continue
        if target.suffix == ".db" and target.name.startswith(("counter_", "histogram_", "gauge_")):
            found.add(target)
    return found


def folder_of_workers(pids) -> Path:
    def found() -> Path | None:
        for pid in pids:
            files = metric_files(pid)
            if files:
                return next(iter(files)).parent
        return None
    return wait_until(found, 10, "a worker to have a metrics file open")


def folder_of(server: Server) -> Path:
    return folder_of_workers(server.workers())


def live_scrape(server: Server) -> dict:
    # a new connection each time, so the kernel hands scrapes to different workers
    r = requests.get(server.base + "/metrics", timeout=10, headers={"Connection": "close"})
    assert r.status_code == 200
    return parse(r.text)


@contextmanager
def only(server: Server, pid: int):
    """Every worker of `server` but `pid` stopped (SIGSTOP) while the block runs, so `pid`
    answers whatever is sent in it; all continue (SIGCONT) after, whatever happens."""
    others = server.workers() - {pid}
    stopped = []
    try:
        for other in others:
            os.kill(other, signal.SIGSTOP)
            stopped.append(other)
        yield
    finally:
        for other in stopped:
            try:
                os.kill(other, signal.SIGCONT)
            except ProcessLookupError:
                pass


def counted(folder: Path, pid: int, name: str, **labels) -> float:
    """One worker's own count, read from its counter file (0 when it has none)."""
    path = folder / f"counter_{pid}.db"
    if not path.exists():
        return 0.0
    want = (name, tuple(sorted(labels.items())))
    for key, number, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(path)):
        _metric, sample, sample_labels, _help = json.loads(key)
        if (sample, tuple(sorted(sample_labels.items()))) == want:
            return number
    return 0.0


def totals(samples: dict) -> tuple[float, float, float]:
    return (value(samples, "responder_requests_total", endpoint="message", code="200"),
            value(samples, "responder_rule_matches_total", rule="hours"),
            value(samples, "responder_request_seconds_count", endpoint="message"))


def replaced(server: Server, victim: int, workers: int) -> bool:
    current = server.workers()
    return victim not in current and len(current) == workers and server.proc.poll() is None


@pytest.mark.server
def test_every_worker_reports_the_same_totals_and_a_killed_worker_keeps_its_counts(tmp_path):
    server = Server(tmp_path, WEB_CONCURRENCY="3")
    folder = tmp_path / "metrics"
    try:
        assert folder_of(server) == folder
        workers = sorted(server.workers())
        # each worker answers its own messages (the others stopped), and counts them in its file
        for pid in workers:
            with only(server, pid):
                for _ in range(4):
                    assert server.post(sms("hours"), headers={"Connection": "close"}).status_code == 200
            assert counted(folder, pid, "responder_requests_total", endpoint="message", code="200") == 4
        sent = 4 * len(workers)
        # each worker in turn answers a scrape with every worker's totals
        for pid in workers:
            with only(server, pid):
                before = counted(folder, pid, "responder_requests_total", endpoint="metrics", code="200")
                samples = live_scrape(server)
            assert counted(folder, pid, "responder_requests_total", endpoint="metrics", code="200") == before + 1
            assert totals(samples) == (sent, sent, sent), pid
            assert value(samples, "responder_outbox_items", status="pending") == 0
            assert ("responder_outbox_items", (("status", "unknown"),)) in samples

        victim = workers[0]   # it counted 4 messages
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: replaced(server, victim, 3), 20, "gunicorn replaced the killed worker")
        assert (folder / f"counter_{victim}.db").exists()   # counters stay; only live gauges go
        for pid in sorted(server.workers()):   # the new worker too
            with only(server, pid):
                assert totals(live_scrape(server)) == (sent, sent, sent), pid
        assert server.post(sms("hours")).status_code == 200
        wait_until(lambda: value(live_scrape(server), "responder_requests_total", endpoint="message",
                                 code="200") == sent + 1, 5, "the new message counted")
    finally:
        server.stop()


@pytest.mark.server
def test_under_gunicorn_the_workers_senders_and_reports_are_counted(tmp_path, standin):
    """The wiring: each worker's sender counts what it records, a report on /status counts, and
    every worker answers with the version and the same totals."""
    server = Server(tmp_path, WEB_CONCURRENCY="2", PLIVO_AUTH_ID=standin.auth_id, PLIVO_API_URL=standin.url,
                    OUTBOX_LEASE="6", OUTBOX_MAX_DELAY="0.5", PLIVO_API_RATE="50")
    try:
        standin.script(Answer(status=503))
        assert server.post(whatsapp("hours", From="14155550301")).status_code == 200
        assert standin.wait_for_sends(1, 20)

        def sent_counted():
            samples = live_scrape(server)
            return samples if value(samples, SENDS, kind="message", result="sent") == 1 else None
        samples = wait_until(sent_counted, 20, "the send counted")
        assert value(samples, SENDS, kind="message", result="retry") == 1
        uuid = standin.sends[0].message_uuid
        assert server.post(report(uuid, "delivered"), path="/status").status_code == 200
        assert server.post(report(uuid, "carrier-said-so"), path="/status").status_code == 200
        for pid in sorted(server.workers()):
            with only(server, pid):
                samples = live_scrape(server)
            assert value(samples, "responder_delivery_reports_total", status="delivered") == 1, pid
            assert value(samples, "responder_delivery_reports_total", status="other") == 1, pid
            assert value(samples, SENDS, kind="message", result="sent") == 1, pid
            assert value(samples, "responder_build_info", version=VERSION) == 1, pid
            assert [k for k in samples if k[0] == "responder_build_info"] == [
                ("responder_build_info", (("version", VERSION),))]
    finally:
        server.stop()


def healthz_counted_by_every_worker(server: Server, calls: int) -> None:
    """`calls` /healthz answered, split unevenly between the workers (each answering its share
    alone), then every worker in turn answers two scrapes with the sum: a worker that reports
    only its own count reads less."""
    workers = sorted(server.workers())
    shares = [calls - (len(workers) - 1) * (calls // (2 * len(workers)))] + \
        [calls // (2 * len(workers))] * (len(workers) - 1)
    for pid, share in zip(workers, shares):
        with only(server, pid):
            for _ in range(share):
                assert requests.get(server.base + "/healthz", timeout=10,
                                    headers={"Connection": "close"}).status_code == 200
    for pid in workers:
        with only(server, pid):
            for _ in range(2):
                samples = live_scrape(server)
                assert value(samples, "responder_requests_total", endpoint="healthz", code="200") == calls, pid


@pytest.mark.server
def test_with_the_folder_unset_every_scrape_sums_every_worker(tmp_path):
    """PROMETHEUS_MULTIPROC_DIR truly absent from the environment (as scripts/serve and the image
    start the service): gunicorn.conf.py makes the folder before anything imports prometheus_client."""
    server = Server(tmp_path, WEB_CONCURRENCY="2", PROMETHEUS_MULTIPROC_DIR=None)
    try:
        assert "PROMETHEUS_MULTIPROC_DIR" not in environ_of(server.proc.pid)
        folder = folder_of(server)
        assert folder.name.startswith("responder-metrics-")
        healthz_counted_by_every_worker(server, 10)
    finally:
        server.stop()
    assert not folder.exists()   # made by the master, removed with it


@pytest.mark.server
def test_a_bad_or_missing_metrics_folder_never_stops_the_service(tmp_path):
    """An empty file (a worker killed as it made it) is skipped by every scrape, and removed with
    its dead worker; a folder removed under the running service is made again by the next
    worker that boots."""
    server = Server(tmp_path, rules=RULES, WEB_CONCURRENCY="2")
    folder = tmp_path / "metrics"
    try:
        assert server.post(sms("hours")).status_code == 200
        (folder / "counter_99999.db").write_bytes(b"")
        for pid in sorted(server.workers()):
            with only(server, pid):
                for _ in range(2):
                    samples = live_scrape(server)
                    assert value(samples, "responder_requests_total", endpoint="message", code="200") == 1
                    assert value(samples, "responder_rules") == 2
                    assert value(samples, "responder_database_up") == 1
        unreadable = [line for line in server.log_path.read_text().splitlines() if "counter_99999.db" in line]
        assert 1 <= len(unreadable) <= 2, unreadable   # once per worker that read it

        victim = min(server.workers())
        leftover = folder / f"summary_{victim}.db"
        leftover.write_bytes(b"")
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: replaced(server, victim, 2), 20, "gunicorn replaced the killed worker")
        wait_until(lambda: not leftover.exists(), 5, "child_exit removed the dead worker's empty file")
        assert (folder / f"histogram_{victim}.db").exists()   # its counts stay

        shutil.rmtree(folder)
        victim = min(server.workers())
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: replaced(server, victim, 2), 20, "gunicorn replaced the killed worker")
        wait_until(folder.is_dir, 20, "the new worker made the folder again as it booted")
        for pid in sorted(server.workers()):
            with only(server, pid):
                assert requests.get(server.base + "/metrics", timeout=10).status_code == 200
                assert server.post(sms("hours"), headers={"Connection": "close"}).status_code == 200
        assert server.proc.poll() is None
    finally:
        server.stop()
    assert "Worker failed to boot" not in server.log_path.read_text()


def new_master_of(server: Server, seconds: float = 20) -> int:
    """The master a USR2 upgrade started: the old master's child that gunicorn ran again
    (GUNICORN_PID in its environment), once its workers are up."""
    def find():
        for pid in server.workers():
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if any(e.startswith(b"GUNICORN_PID=") for e in environ) and len(children(pid)) == 2:
                return pid
        return None
    return wait_until(find, seconds, "the new master and its workers")


def children(pid: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def environ_of(pid: int) -> dict[str, str]:
    """The environment `pid` was started with."""
    pairs = (e.decode().partition("=") for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if e)
    return {k: v for k, _, v in pairs}


def gone(pid: int) -> bool:
    """Exited (a zombie counts: its exit handlers have run)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def stop_master(pid: int) -> None:
    if not gone(pid):
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: gone(pid), 30, f"master {pid} exited")


@pytest.mark.server
@pytest.mark.skipif(not Path(GUNICORN_SCRIPT[1]).exists(), reason="no gunicorn script next to this Python")
def test_a_usr2_upgrade_after_a_hup_never_takes_the_running_masters_folder(tmp_path):
    """The old master's environment at its last HUP (its folder and mark in it) is what a USR2
    upgrade starts the new master with: the new master makes its own folder, a rolled-back
    upgrade leaves the old master and its folder working, and each master removes its own."""
    server = Server(tmp_path, WEB_CONCURRENCY="2", PROMETHEUS_MULTIPROC_DIR="", command=GUNICORN_SCRIPT)
    master = server.proc.pid
    upgrades: list[int] = []
    try:
        old = folder_of(server)
        assert old.name.startswith("responder-metrics-")   # made at start: none was given
        assert server.post(sms("hours")).status_code == 200
        before = server.workers()
        os.kill(master, signal.SIGHUP)
        wait_until(lambda: not (server.workers() & before) and len(server.workers()) == 2, 20, "HUP: new workers")
        assert old.is_dir() and folder_of(server) == old

        os.kill(master, signal.SIGUSR2)
        upgrades.append(new := new_master_of(server))
        inherited = environ_of(new)
        assert inherited["RESPONDER_METRICS_DIR_MADE"] == f"{master}:{old}"   # the case this is about
        mine = folder_of_workers(children(new))
        assert mine != old and mine.name.startswith("responder-metrics-")
        # roll back: stop the new master
        stop_master(new)
        assert not mine.exists() and old.is_dir()
        wait_until(lambda: len(server.workers()) == 2, 10, "the old master's workers only")
        victim = min(server.workers())
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: replaced(server, victim, 2), 20, "the old master replaced a worker")
        for pid in sorted(server.workers()):
            with only(server, pid):
                assert value(live_scrape(server), "responder_requests_total", endpoint="message",
                             code="200") == 1

        # upgrade again and keep it: the old master exits and removes its folder, not the new one's
        os.kill(master, signal.SIGUSR2)
        upgrades.append(new := new_master_of(server))
        mine = folder_of_workers(children(new))
        assert mine != old
        server.proc.terminate()
        server.proc.wait(timeout=30)
        assert not old.exists()
        assert mine.is_dir() and server.post(sms("hours")).status_code == 200
        stop_master(new)
        assert not mine.exists()
    finally:
        for pid in upgrades:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
        server.stop()
    assert "Worker failed to boot" not in server.log_path.read_text()


def test_an_unreadable_file_leaves_the_other_figures_in_the_scrape(tmp_path, caplog):
    """In process, the collector a multiprocess scrape uses: a file it cannot read is left
    out (and logged once), the good ones are summed."""
    from app.metrics import _Multiprocess
    good = MmapedDict(str(tmp_path / "counter_1.db"))
    good.write_value(mmap_key("responder_messages", "responder_messages_total", ["delivery"], ["new"],
                              "Inbound messages"), 3.0, 0.0)
    good.close()
    (tmp_path / "counter_99999.db").write_bytes(b"")
    (tmp_path / "counter_99998.db").write_bytes(struct.pack("<i", 100) + bytes(8))   # says 100 bytes, has 12
    collector = _Multiprocess(str(tmp_path))
    with listening(caplog, "app.metrics"):
        for _ in range(3):
            samples = {(s.name, tuple(s.labels.items())): s.value for m in collector.collect() for s in m.samples}
            assert samples == {("responder_messages_total", (("delivery", "new"),)): 3.0}
    logged = sorted({r.getMessage() for r in caplog.records if r.name == "app.metrics"})
    assert len(logged) == 2 and "counter_99998.db" in logged[0] and "counter_99999.db" in logged[1]
    assert _Multiprocess(str(tmp_path / "gone")).collect() == []


@pytest.mark.server
def test_a_given_folder_is_emptied_at_start_and_kept(tmp_path):
    folder = tmp_path / "prom"
    folder.mkdir()
    (folder / "counter_1.db").write_bytes(b"stale from an earlier run")
    (folder / "notes.txt").write_text("not ours")
    server = Server(tmp_path, WEB_CONCURRENCY="2", PROMETHEUS_MULTIPROC_DIR=str(folder))
    try:
        assert not (folder / "counter_1.db").exists()
        assert server.post(sms("hours")).status_code == 200
        samples = live_scrape(server)
        assert value(samples, "responder_requests_total", endpoint="message", code="200") == 1
    finally:
        server.stop()
    assert folder.is_dir() and (folder / "notes.txt").exists()


# -- commands ----------------------------------------------------------------------------------
def _command_env(tmp_path, folder: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLIVO_", "RULES_", "DATABASE_"))}
    env.update(PROMETHEUS_MULTIPROC_DIR=str(folder), DATABASE_URL=f"sqlite:///{tmp_path / 'cmd.sqlite3'}")
    return env


@pytest.mark.server
def test_commands_count_nothing_and_make_no_metric_file(tmp_path):
    """`rules test` and `simulate` run the service's pipeline; where PROMETHEUS_MULTIPROC_DIR is set
    (as in the service's container) they must leave that folder as it was."""
    folder = tmp_path / "prom"
    folder.mkdir()
    env = _command_env(tmp_path, folder)
    commands = (["rules", "test"], ["rules", "check"],
                ["simulate", "hours?", "--from", "14155550123", "--to", "14155550100"],
                ["simulate", "STOP", "--from", "14155550123", "--to", "14155550100"])
    for args in commands:
        result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert sorted(p.name for p in folder.iterdir()) == [], args

    # The same folder and variable do make files in a process that counts: the check above can fail.
    counted = subprocess.run([sys.executable, "-c", "from app import metrics; metrics.decided(['hours'], None)"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert counted.returncode == 0, counted.stderr
    assert [p.name for p in folder.iterdir() if p.name.startswith("counter_")]

