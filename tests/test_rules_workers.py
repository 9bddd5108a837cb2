"""Rules across the workers of a real gunicorn: every worker follows the file (busy or idle),
a broken file leaves every worker on the newest version that compiled, and the kept copy of one
service's rules is never used by another service running from the same folder.

Which worker answers a request is gunicorn's choice, so each check asks /readyz (which names
the worker's pid and its rules' digest) of one worker at a time, the others stopped meanwhile
(SIGSTOP, then SIGCONT). What each worker did and when is read from its JSON log lines (their
`pid` and `ts`), and the time a change took is measured from the file's change time to those
lines, so a slow test machine delays the checks but not the measure. The services run from the
repository, whose instance folder they share (as two services deployed from one checkout
would); the kept copies they write there go when they stop.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests
from conftest import ROOT, sms
from servers import Server
from waiting import wait_until

from app.rules import compile_text
from app.rules.holder import KEEP_FOLDER, kept_copy_path

#: Every test here starts a real server or waits out deadlines of seconds (pyproject.toml).
pytestmark = pytest.mark.server

INTERVAL = 0.2  # RULES_RELOAD_INTERVAL as tests/servers.py sets it
WORKERS = 3
INSTANCE = ROOT / "instance"
KEEP = INSTANCE / KEEP_FOLDER

CLOSE = {"Connection": "close"}  # a new connection per request, for gunicorn to hand to any worker


def rules(business: str, version: int) -> str:
    return ("version: 1\nrules:\n"
            f"  - {{name: price, when: {{keyword: price}}, reply: '{business} price list v{version}'}}\n")


BROKEN = "version: 1\nrules:\n  - {name: price, when: {regex: '('}, reply: broken}\n"


def digest(text: str) -> str:
    return compile_text(text).digest


def replace(path: Path, text: str) -> None:
    """Write the rules as an editor does: a new file renamed over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@pytest.fixture
def instance_as_found():
    """The repository's instance folder as it was: each Server removes its kept copy when it
    stops; the folders go too if this test made them and nothing else is there.

    Not under xdist: the other processes' gunicorns share these folders and may have just made
    one, empty still, to write their kept copy in; removing it then fails their start."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    existed = [folder for folder in (INSTANCE, KEEP) if folder.exists()]
    yield
    for folder in (KEEP, INSTANCE):
        if folder in existed:
            continue
        try:
            folder.rmdir()
        except OSError:
            pass


@pytest.fixture
def start(tmp_path, instance_as_found):
    started: list[Server] = []

    def start(name: str, text: str, **settings) -> Server:
        folder = tmp_path / name
        folder.mkdir()
        srv = Server(folder, rules=text, WEB_CONCURRENCY=str(WORKERS), **settings)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


#: How long a check may poll for what it waits for; the bounds a test claims are measured
#: from the log, not by this.
PATIENCE = 20.0


def stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (by SIGSTOP)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] in ("T", "t")


def each_worker(srv: Server) -> dict[int, dict]:
    """/readyz from every current worker of `srv`: {pid: answer}.

    Each worker is asked alone: the others are stopped (SIGSTOP) until it has answered, so
    only it can take the connection, and continued (SIGCONT) whatever happens.
    """
    workers = srv.workers()
    assert len(workers) == WORKERS
    seen: dict[int, dict] = {}
    for pid in sorted(workers):
        others = workers - {pid}
        try:
            for other in others:
                os.kill(other, signal.SIGSTOP)
            wait_until(lambda others=others: all(stopped(other) for other in others), 5, "the other workers to stop")
            r = requests.get(srv.base + "/readyz", headers=CLOSE, timeout=10)
        finally:
            for other in others:
                os.kill(other, signal.SIGCONT)
        assert r.status_code == 200, r.text
        assert r.json()["pid"] == pid, f"asked worker {pid} alone, answered by {r.json()['pid']}"
        seen[pid] = r.json()
    return seen


def price_answers(srv: Server, count: int) -> list[str]:
    """The replies to `count` signed messages, each a new conversation on a new connection."""
    out = []
    for _ in range(count):
        r = srv.post(sms("price", From=f"1415{random.randrange(10**7):07d}"), headers=CLOSE)
        assert r.status_code == 200, r.text
        out.append(r.text.split('type="sms">')[1].split("</Message>")[0])
    return out


def assert_every_worker_on(srv: Server, text: str, *, failed: bool = False) -> None:
    for pid, body in each_worker(srv).items():
        assert body["digest"] == digest(text), f"worker {pid} answers with other rules: {body}"
        assert ("reload_failed" in body) is failed, body


def log_size(srv: Server) -> int:
    """Where the service's log ends now: what it logs from here on is read from this offset."""
    return srv.log_path.stat().st_size


def log_records(srv: Server, since: int = 0) -> list[dict]:
    """The service's JSON log lines written after byte `since`, parsed."""
    with open(srv.log_path, "rb") as fh:
        fh.seek(since)
        text = fh.read().decode("utf-8", errors="replace")
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written as we read
        if isinstance(record, dict):
            records.append(record)
    return records


def messages(srv: Server, fragment: str, since: int = 0) -> list[str]:
    return [r["msg"] for r in log_records(srv, since) if fragment in r.get("msg", "")]


def when(record: dict) -> float:
    """The time of a log line, in seconds since the epoch."""
    return datetime.strptime(record["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def logged_by(srv: Server, fragment: str, since: int) -> dict[int, float]:
    """{pid: time of its first line holding `fragment`} over the lines written after `since`.

    By process, not by line: a worker that says it twice is still one worker.
    """
    first: dict[int, float] = {}
    for record in log_records(srv, since):
        if fragment in record.get("msg", ""):
            first.setdefault(record["pid"], when(record))
    return first


def changed_at(path: Path) -> float:
    """When the file last changed (its change time), in seconds since the epoch."""
    return os.stat(path).st_ctime


def every_worker_logs(srv: Server, fragment: str, since: int, changed: float, *, meanwhile=None,
                      interval: float = INTERVAL) -> None:
    """Wait until every current worker has logged `fragment` after `since`, then check that each
    did so within RULES_RELOAD_INTERVAL (`interval`) + 1 s of `changed` (by the lines' own times).
    `meanwhile()` is called while waiting (traffic, say)."""
    workers = srv.workers()
    deadline = time.monotonic() + PATIENCE
    while not workers <= set(logged_by(srv, fragment, since)) and time.monotonic() < deadline:
        if meanwhile is not None:
            meanwhile()
        else:
            time.sleep(0.02)
    said = logged_by(srv, fragment, since)
    assert workers <= set(said), f"workers {sorted(workers - set(said))} never logged {fragment!r}"
    took = {pid: round(said[pid] - changed, 3) for pid in workers}
    assert all(t <= interval + 1 for t in took.values()), \
        f"{fragment!r}: seconds after the change, by worker: {took} (allowed: {interval + 1})"


def kept_digest(rules_path: Path) -> str | None:
    """The digest of the newest version kept for `rules_path` (the last of its names), or None."""
    try:
        newest = max(n for n in os.listdir(kept_copy_path(str(KEEP), str(rules_path))) if not n.startswith("."))
        with open(os.path.join(kept_copy_path(str(KEEP), str(rules_path)), newest), encoding="utf-8") as fh:
            return json.load(fh)["digest"]
    except (OSError, ValueError):
        return None  # nothing kept yet (each version's file is written whole before it is named)


def bakery_edited_to_version_2(start) -> tuple[Server, int, str]:
    """A service on the bakery's rules version 1, every worker checked on them, then its file
    edited to version 2: the server, the size of its log before the edit, and the line each
    worker logs when it has reloaded."""
    srv = start("bakery", rules("bakery", 1))
    assert_every_worker_on(srv, rules("bakery", 1))
    since = log_size(srv)
    replace(srv.rules, rules("bakery", 2))
    return srv, since, f"rules reloaded: 1 rules from {srv.rules} ({digest(rules('bakery', 2))})"


# -- a. busy workers --------------------------------------------------------------------------

def test_busy_workers_all_answer_from_an_edit_within_the_interval_and_a_second(start):
    srv, since, reloaded = bakery_edited_to_version_2(start)

    def traffic():  # all along, as in production
        assert set(price_answers(srv, 1)) <= {"bakery price list v1", "bakery price list v2"}

    every_worker_logs(srv, reloaded, since, changed_at(srv.rules), meanwhile=traffic)
    assert set(price_answers(srv, 60)) == {"bakery price list v2"}
    assert_every_worker_on(srv, rules("bakery", 2))


# -- b. idle workers ---------------------------------------------------------------------------

def test_idle_workers_follow_the_file_without_a_request(start):
    srv, since, reloaded = bakery_edited_to_version_2(start)
    # Nothing is sent: each worker's watcher reloads by itself (its log line says so).
    every_worker_logs(srv, reloaded, since, changed_at(srv.rules))
    assert_every_worker_on(srv, rules("bakery", 2))
    assert set(price_answers(srv, 20)) == {"bakery price list v2"}


# -- c. a good edit, then quickly a broken one --------------------------------------------------
#: RULES_RELOAD_INTERVAL of that test: long enough that a worker often has not looked yet.
SLOW_LOOKS = 1.0


def test_a_good_edit_then_a_broken_one_leaves_every_worker_on_the_good_one(start):
    """The file breaks right after the first worker compiled the good edit, before the others
    looked: they never see it in the file, yet all end on it (not on the version before).

    The workers look every second here, not every 0.2 s: the file breaks a poll (20 ms) after
    the good edit is kept, and on a busy machine that took long enough for every worker to
    look at 0.2 s, round after round; at 1 s most rounds have a worker that missed it."""
    srv = start("bakery", rules("bakery", 1), RULES_RELOAD_INTERVAL=str(SLOW_LOOKS))
    assert_every_worker_on(srv, rules("bakery", 1))
    switched: list[str] = []
    for version in range(2, 12, 2):  # a few rounds, in case every worker looked in the short window
        good = rules("bakery", version)
        replace(srv.rules, good)
        wait_until(lambda good=good: kept_digest(srv.rules) == digest(good), PATIENCE,
                   f"version {version} to be kept")
        since = log_size(srv)
        replace(srv.rules, BROKEN)                      # at once: most workers have not looked yet
        # No request in between: each worker finds the file broken at its next look, and logs
        # which rules it answers with from then on (its own, or the kept ones).
        every_worker_logs(srv, "reload failed", since, changed_at(srv.rules), interval=SLOW_LOOKS)
        assert_every_worker_on(srv, good, failed=True)
        assert set(price_answers(srv, 20)) == {f"bakery price list v{version}"}
        kept_at = kept_copy_path(str(KEEP), str(srv.rules))
        switched = messages(srv, f"answering with the last good rules kept at {kept_at} ({digest(good)})", since)
        if switched:
            break
        since = log_size(srv)
        replace(srv.rules, rules("bakery", version + 1))  # fixed; all agree again before the next round
        reloaded = f"rules reloaded: 1 rules from {srv.rules} ({digest(rules('bakery', version + 1))})"
        every_worker_logs(srv, reloaded, since, changed_at(srv.rules), interval=SLOW_LOOKS)
    assert switched, "no round had a worker that missed the good edit"
    assert all("newer than the rules in use" in line for line in switched)


# -- d. a HUP with a broken file, next to another service ---------------------------------------

def test_a_hup_with_a_broken_file_answers_with_this_services_rules_not_the_neighbours(start):
    bakery = start("bakery", rules("bakery", 1))
    garage = start("garage", rules("garage", 1))        # same checkout, same instance folder
    assert bakery.rules != garage.rules
    # The garage's rules are kept after the bakery's (one shared file would now hold the garage's).
    replace(garage.rules, rules("garage", 2))
    wait_until(lambda: kept_digest(garage.rules) == digest(rules("garage", 2)), PATIENCE,
               "the garage's rules to be kept")
    assert kept_digest(bakery.rules) == digest(rules("bakery", 1))

    before = bakery.workers()
    since = log_size(bakery)
    replace(bakery.rules, BROKEN)
    os.kill(bakery.proc.pid, signal.SIGHUP)              # new workers start while the file is bad
    wait_until(lambda: len(bakery.workers()) == WORKERS and not bakery.workers() & before, PATIENCE,
               "the workers to be replaced")

    assert_every_worker_on(bakery, rules("bakery", 1), failed=True)
    for body in each_worker(bakery).values():
        assert "bad regex" in body["reload_failed"][0] and str(bakery.rules) in body["reload_failed"][0]
    assert set(price_answers(bakery, 30)) == {"bakery price list v1"}
    assert bakery.workers() <= set(logged_by(bakery, "rules not loaded from the file: " + str(bakery.rules), since))
    assert set(price_answers(garage, 10)) == {"garage price list v2"}
    assert_every_worker_on(garage, rules("garage", 2))


# -- rule warnings: once per start and once per new version, not per worker (issue 13) ------------

def warned_rules(business: str, version: int) -> str:
    """`rules()` and a second rule that can never match (a warning at its line, 4)."""
    return rules(business, version) + f"  - {{name: again-v{version}, when: {{keyword: price}}, reply: never}}\n"


def test_rule_warnings_are_logged_once_at_start_and_once_per_new_version(start):
    srv = start("bakery", warned_rules("bakery", 1))
    # At start the master logs them; the workers compile the same file and say nothing more.
    said = [r for r in log_records(srv) if "warning: rule 'again-v1' can never match" in r["msg"]]
    assert len(said) == 1 and said[0]["level"] == "WARNING", said
    assert said[0]["msg"] == (f"{srv.rules}:4: warning: rule 'again-v1' can never match: rule 'price' (line 3) "
                              "matches first and stops")
    since = log_size(srv)

    def every_worker_loaded(text: str) -> None:  # (how fast is the business of other tests)
        fragment = f"({digest(text)})"
        wait_until(lambda: srv.workers() <= set(logged_by(srv, fragment, since)), PATIENCE,
                   f"every worker to log {fragment}")

    replace(srv.rules, warned_rules("bakery", 2))
    every_worker_loaded(warned_rules("bakery", 2))
    # Every worker is done with version 2 (offered it to the kept copy) once each has loaded a third.
    replace(srv.rules, rules("bakery", 3))
    every_worker_loaded(rules("bakery", 3))
    assert len(messages(srv, "warning: rule 'again-v2' can never match", since)) == 1
    assert messages(srv, "again-v1", since) == []
