"""The database: migrations, DATABASE_URL checks, start-up refusals and the state commands."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import PG_ADMIN_URL, ROOT, TOKEN, make_app, postgres_database, send, sms
from servers import run_gunicorn, server_env

from app.store import Claim, Needs, Replayed, Store, day_number, migrate, seen_key
from app.store.db import DatabaseUrlError, make_engine, parse_url
from app.store.schema import metadata


# -- migrations -------------------------------------------------------------------------------------
def _diff(url: str) -> list:
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    finally:
        engine.dispose()


def test_migrations_from_empty_reach_the_models_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path}/fresh.sqlite3"
    engine = make_engine(url, pool_size=1)
    assert migrate.upgrade(engine) == (None, migrate.head())
    assert migrate.upgrade(engine) == (migrate.head(), migrate.head())  # idempotent
    engine.dispose()
    assert _diff(url) == []


def test_migrations_from_empty_reach_the_models_on_postgresql():
    url = postgres_database()  # made empty for this run and migrated by Alembic alone
    assert _diff(url) == []
    engine = make_engine(url, pool_size=1)
    assert migrate.current(engine) == migrate.head()
    engine.dispose()


def test_downgrade_and_upgrade_again(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/d.sqlite3", pool_size=1)
    migrate.upgrade(engine)
    from alembic import command
    with engine.connect() as conn:
        command.downgrade(migrate._config(conn), "base")
        conn.commit()
    assert sa.inspect(engine).get_table_names() == ["alembic_version"]
    migrate.upgrade(engine)
    assert set(sa.inspect(engine).get_table_names()) >= {"messages", "replies", "reports", "optouts", "seen"}
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path):
    """A new, empty database (no schema) on each backend; PostgreSQL's dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/empty.sqlite3"
        return
    postgres_database()  # skips when PostgreSQL does not answer
    name = f"responder_mig_{os.getpid()}_{request.node.name[-12:].strip('[]').replace('-', '_')}"
    admin = sa.create_engine(parse_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield parse_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _old_message(conn, uuid: str, text: str, at: datetime) -> None:
    """A message row as the service wrote it before the migration under test."""
    conn.execute(sa.text(
        "INSERT INTO messages (uuid, received_at, from_number, to_number, type, text, intent, params, "
        "rules, possible_optout, held, deliveries, answer_status, answer_type, answer_body) VALUES "
        "(:uuid, :at, '14155550123', '14155550100', 'sms', :text, '', '{}', '[]', false, "
        "'[]', 1, 200, 'application/xml', :body)"), {"uuid": uuid, "text": text, "at": at, "body": b"<Response/>"})


def test_migration_0005_keeps_a_replys_numbers_as_a_list(empty_url):
    """Replies written before 0005 ('<'-joined numbers) read as lists after it, on both
    databases; the reply limit's index goes, Plivo's uuid index keeps only rows that have one."""
    engine = make_engine(empty_url, pool_size=1)
    try:
        migrate.upgrade(engine, "0004")
        with engine.begin() as conn:
            _old_message(conn, "u", "hi", datetime(2026, 1, 2))
            for position, dst in ((0, "14155550123"), (1, "14155550111<14155550122")):
                conn.execute(sa.text(
                    "INSERT INTO replies (message_id, position, kind, src, dst, sender, limited, text, via, "
                    "created_at) SELECT id, :p, 'forward', '14155550100', :dst, '14155550123', false, 't', 'xml', "
                    ":at FROM messages"),
                    {"p": position, "dst": dst, "at": datetime(2026, 1, 2)})
        migrate.upgrade(engine)
        store = Store(empty_url, pool_size=1)
        try:
            replies = store.list_messages(uuid="u")[0]["replies"]
        finally:
            store.dispose()
        assert [r["numbers"] for r in replies] == [["14155550123"], ["14155550111", "14155550122"]]
        assert [r["dst"] for r in replies] == ["14155550123", "14155550111<14155550122"]
        assert "ix_replies_sender_created_at" not in {i["name"] for i in sa.inspect(engine).get_indexes("replies")}
    finally:
        engine.dispose()


def test_migration_0003_carries_messages_uuids_and_nonces_over_to_seen(empty_url):
    """The keys the migration makes in SQL are those the service makes (app.store.seen_key):
    a message recorded before 0003, pruned after it, is still never decided again."""
    engine = make_engine(empty_url, pool_size=1)
    try:
        migrate.upgrade(engine, "0002")
        with engine.begin() as conn:
            _old_message(conn, "old-uuid-\u00e9", "STOP", datetime(2026, 1, 2, 23, 59, 59))
            for nonce, at in (("12345678901234567890", datetime(2026, 1, 3, 0, 0, 1)),
                              ("sha256:" + "ab" * 32, datetime(2026, 1, 3))):  # kept hashed: not carried
                conn.execute(sa.text("INSERT INTO nonces (nonce, message_uuid, seen_at) VALUES (:n, 'old-uuid', :at)"),
                             {"n": nonce, "at": at})
        migrate.upgrade(engine)
        with engine.connect() as conn:
            kept = {bytes(k): (d, day) for k, d, day in conn.exec_driver_sql("SELECT key, digest, day FROM seen")}
        assert kept == {seen_key("uuid", "old-uuid-\u00e9"): (None, day_number(datetime(2026, 1, 2))),
                        seen_key("nonce", "12345678901234567890"): (None, day_number(datetime(2026, 1, 3)))}
        assert "nonces" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    store = Store(empty_url, pool_size=1)
    try:
        assert store.prune(1, replay_days=4000)["messages"] == 1

        class Never:  # the work of a message that must not be decided again
            needs = Needs()

            def __init__(self, claim):
                self.claim = claim

            def finish(self, _state):
                raise AssertionError("decided again")
        claim = Claim(uuid="old-uuid-\u00e9", nonces=["another"], sender="14155550123", to="14155550100",
                      now=datetime(2026, 12, 1), digest=b"d" * 16)
        assert store.message(Never(claim)) == (None, False)
        claim.nonces, claim.uuid = ["12345678901234567890"], "new-uuid"  # the old nonce: never again
        with pytest.raises(Replayed):
            store.message(Never(claim))
    finally:
        store.dispose()


# -- DATABASE_URL -----------------------------------------------------------------------------------
@pytest.mark.parametrize("url, driver", [
    ("postgresql://u@h/db", "postgresql+psycopg"), ("postgres://u@h/db", "postgresql+psycopg"),
    ("postgresql+psycopg://u@h/db", "postgresql+psycopg"), ("sqlite:////tmp/x.db", "sqlite+pysqlite"),
])
def test_urls(url, driver):
    assert parse_url(url).drivername == driver


@pytest.mark.parametrize("url, says", [
    ("not a url", "DATABASE_URL is not a database URL"),
    ("mysql://u@h/db", "DATABASE_URL: 'mysql' databases are not supported"),
    ("postgresql+psycopg2://u@h/db", "DATABASE_URL: driver 'psycopg2' is not installed"),
    ("sqlite://", "DATABASE_URL: SQLite needs a file"),
    ("sqlite:///:memory:", "DATABASE_URL: SQLite needs a file"),
    ("sqlite:////tmp/x.db?mode=ro", "DATABASE_URL: SQLite takes no options here"),
])
def test_bad_urls(url, says):
    with pytest.raises(DatabaseUrlError) as info:
        parse_url(url)
    assert str(info.value).startswith(says)
    assert "\n" not in str(info.value)


def _start(tmp_path, **env):
    # plain text, to read the line as a person would (test_logs.py reads the JSON one)
    settings = server_env(PLIVO_AUTH_TOKEN=TOKEN, RULES_PATH=str(ROOT / "rules.yaml"), LOG_FORMAT="text", **env)
    return run_gunicorn(settings, timeout=60)


@pytest.mark.parametrize("url, says", [
    ("nonsense", "error: DATABASE_URL is not a database URL"),
    ("postgresql://postgres@127.0.0.1:1/none", "error: DATABASE_URL: cannot connect to the database: "),
    ("sqlite:////proc/no/such/dir/x.sqlite3", "error: DATABASE_URL"),
])
@pytest.mark.server
def test_server_refuses_to_start_with_one_line(tmp_path, url, says):
    result = _start(tmp_path, DATABASE_URL=url)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(says), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.server
def test_flask_command_with_bad_url_is_one_line(tmp_path):
    env = server_env(DATABASE_URL="mysql://x@y/z")
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "messages"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DATABASE_URL: 'mysql' databases are not supported" in result.stderr
    assert "Traceback" not in result.stderr


# -- commands -----------------------------------------------------------------------------------------
@pytest.fixture
def app(tmp_path, database):
    return make_app(tmp_path)


@pytest.mark.server
def test_db_upgrade_command(tmp_path):
    url = f"sqlite:///{tmp_path}/cmd.sqlite3"
    env = server_env(DATABASE_URL=url)
    run = [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"]
    first = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert f"upgraded from empty to {migrate.head()}" in first.stdout
    again = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert f"already at {migrate.head()}" in again.stdout


def test_messages_command(app):
    client = app.test_client()
    send(client, sms("Hours?"))
    params = sms("I want a refund", From="14155550555")
    send(client, params)
    send(client, params)
    send(client, sms("please stop texting me"))
    runner = app.test_cli_runner()
    result = runner.invoke(args=["messages", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [m["text"] for m in rows] == ["please stop texting me", "I want a refund", "Hours?"]
    for m in rows:
        assert {"uuid", "received_at", "from", "to", "type", "text", "intent", "rules", "deliveries",
                "replies"} <= set(m)
        assert m["received_at"].endswith("Z")
        for r in m["replies"]:
            assert {"dst", "text", "via", "status"} <= set(r)
    assert rows[1]["deliveries"] == 2 and rows[1]["rules"] == ["refund"]
    assert rows[0]["possible_optout"] is True

    only = json.loads(runner.invoke(args=["messages", "--json", "--from", "+1 (415) 555-0555"]).output)
    assert [m["text"] for m in only] == ["I want a refund"]
    assert len(json.loads(runner.invoke(args=["messages", "--json", "--limit", "1"]).output)) == 1

    table = runner.invoke(args=["messages"]).output
    assert "received (UTC)" in table and "Hours?" in table and "[possible opt-out]" in table
    assert "-> 14155550999<14155550998" in table
    bad = runner.invoke(args=["messages", "--from", "call me"])
    assert bad.exit_code == 2 and "is not a phone number" in bad.output
    assert runner.invoke(args=["messages", "--limit", "99999999999999999999"]).exit_code == 2


def test_empty_log(app):
    assert app.test_cli_runner().invoke(args=["messages"]).output == "no messages\n"
    assert app.test_cli_runner().invoke(args=["messages", "--json"]).output == "[]\n"


def test_optouts_commands(app):
    runner = app.test_cli_runner()
    assert runner.invoke(args=["optouts"]).output == "no opt-outs\n"
    result = runner.invoke(args=["optouts", "add", "+1 (415) 555-0100"])
    assert result.exit_code == 0 and result.output == "14155550100 opted out from every number\n"
    assert "already opted out" in runner.invoke(args=["optouts", "add", "14155550100"]).output
    result = runner.invoke(args=["optouts", "add", "14155550101", "--to", "+1 415 555 0200"])
    assert result.output == "14155550101 opted out from 14155550200\n"
    send(app.test_client(), sms("STOP", From="14155550102"))
    rows = json.loads(runner.invoke(args=["optouts", "--json"]).output)
    assert sorted((r["number"], r["to"], r["via"]) for r in rows) == [
        ("14155550100", None, "manual"), ("14155550101", "14155550200", "manual"),
        ("14155550102", None, "keyword")]
    assert all(r["since"].endswith("Z") for r in rows)
    assert "every number" in runner.invoke(args=["optouts"]).output

    # a manual opt-out holds for the service
    assert send(app.test_client(), sms("hours", From="14155550100")).data.endswith(b"<Response/>")

    result = runner.invoke(args=["optouts", "remove", "14155550101"])
    assert result.exit_code == 1 and "had no opt-out for every number" in result.output
    result = runner.invoke(args=["optouts", "remove", "14155550101", "--to", "14155550200"])
    assert result.exit_code == 0 and "opted in again" in result.output
    assert runner.invoke(args=["optouts", "remove", "1-415-555-0100"]).exit_code == 0
    assert [r["number"] for r in json.loads(runner.invoke(args=["optouts", "--json"]).output)] == ["14155550102"]
    for bad in ("abc", "1415555010\uff10", "1\x012", "0", "12"):
        assert runner.invoke(args=["optouts", "add", bad]).exit_code == 2, bad


def test_db_prune_command(app):
    send(app.test_client(), sms("hours"))
    result = app.test_cli_runner().invoke(args=["db", "prune", "--days", "30"])
    assert result.exit_code == 0 and "0 messages" in result.output


def test_store_survives_a_new_process(tmp_path, database):
    """Opt-outs, limits and answers live in the database, not in the process."""
    first = make_app(tmp_path)
    params = sms("hours")
    answer = send(first.test_client(), params).data
    send(first.test_client(), sms("STOP", From="14155550111"))
    first.extensions["responder"].store.dispose()
    second = make_app(tmp_path)
    assert send(second.test_client(), params).data == answer
    assert send(second.test_client(), sms("hours", From="14155550111")).data.endswith(b"<Response/>")


def test_store_repr_hides_the_password():
    store = Store("postgresql://user:secret@127.0.0.1:1/db")
    assert "secret" not in repr(store)
    store.dispose()


def test_sqlite_writer_turn_after_the_deadline_is_a_503(tmp_path, monkeypatch):
    """Another process holding SQLite's write turn too long: 503, not an answer after 8 s."""
    import fcntl
    import os
    import threading
    import time

    import app.store.writer as writer_module
    monkeypatch.setattr(writer_module, "WRITER_WAIT_S", 0.3)
    app = make_app(tmp_path)  # a fresh SQLite file
    path = app.config["DATABASE_URL"][len("sqlite:///"):] + ".writer-lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another open file: excludes the app as another process would
    release = threading.Timer(1.0, lambda: (fcntl.flock(fd, fcntl.LOCK_UN), os.close(fd)))
    release.start()
    started = time.monotonic()
    r = send(app.test_client(), sms("hours"))
    release.join()
    assert r.status_code == 503 and 0.9 < time.monotonic() - started < 3
    assert send(app.test_client(), sms("hours")).status_code == 200


def test_migrations_run_without_the_request_timeouts_and_give_them_back():
    url = postgres_database()
    store = Store(url, pool_size=1)
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "5s"
        migrate.upgrade(store.engine)  # would fail past 5 s otherwise; then the pool's defaults again
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "5s"
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "5s"
    finally:
        store.dispose()


@pytest.mark.server
def test_alembic_by_hand_reads_database_url_file_like_the_service(tmp_path):
    """`alembic -c migrations/alembic.ini upgrade head`, as the README allows, follows the
    secrets-as-files form of DATABASE_URL too (Docker and Kubernetes secrets)."""
    import subprocess
    import sys

    from conftest import ROOT
    target = tmp_path / "by-hand.sqlite3"
    secret = tmp_path / "database_url"
    secret.write_text(f"sqlite:///{target}\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_URL")}
    done = subprocess.run([sys.executable, "-m", "alembic", "-c", "migrations/alembic.ini", "upgrade", "head"],
                          cwd=ROOT, env={**env, "DATABASE_URL_FILE": str(secret)}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "seen" in sa.inspect(sa.create_engine(f"sqlite:///{target}")).get_table_names()


_TURNS = r'''
import os, sys, time
sys.path.insert(0, sys.argv[1])
from app.store.writer import WriteTurn
turn = WriteTurn(sys.argv[2])
fd = os.open(sys.argv[3], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
open(sys.argv[3] + "." + sys.argv[5], "w").close()          # ready
while not os.path.exists(sys.argv[3] + ".go"):
    time.sleep(0.001)
for _ in range(int(sys.argv[4])):
    with turn:
        os.write(fd, sys.argv[5].encode())
        end = time.perf_counter() + 0.0002                    # a turn's work: a few hundred microseconds
        while time.perf_counter() < end:
            pass
'''


@pytest.mark.server
def test_the_sqlite_write_turn_is_fair_between_processes(tmp_path):
    """Two processes that want SQLite's write turn all the time take it in turns: one that has
    just had it lets the other, already waiting, go first (an flock alone lets the holder take
    it again and again while the other sleeps between tries)."""
    from waiting import wait_until
    log, turns = tmp_path / "turns", 400
    procs = [subprocess.Popen([sys.executable, "-c", _TURNS, str(ROOT), str(tmp_path / "db.sqlite3"), str(log),
                               str(turns), name]) for name in "ab"]
    try:
        wait_until(lambda: all((tmp_path / f"turns.{n}").exists() for n in "ab"), 30, "both processes to start")
        (tmp_path / "turns.go").touch()
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            proc.kill()
    order = log.read_text()
    both = order[:min(order.rindex("a"), order.rindex("b")) + 1]  # while both still wanted turns
    runs = [len(run) for run in re.findall(r"a+|b+", both)]
    # Fair: the turn changes hands over and over (an flock alone: a few times, or never: one
    # process had all 400 turns before the other had one), and no process keeps it for long
    # while the other waits (a waiter that a busy machine does not wake in time is passed over).
    assert len(runs) > turns / 10 and max(runs) < turns / 2, runs


# -- batches of messages ---------------------------------------------------------------------
class _Work:
    """The work of one message as the pipeline hands it to the store (service.MessageWork's
    interface), with a fixed answer."""

    def __init__(self, uuid: str, nonce: str, sender: str = "14155550123", digest: bytes = b"d" * 16):
        from app.store import Needs
        self.claim = Claim(uuid=uuid, nonces=[nonce], sender=sender, to="14155550100",
                           now=datetime(2026, 12, 7, 12), digest=digest)
        self.needs = Needs([sender])
        self.finished = 0

    def finish(self, state):
        from app.store import Record, Stored
        self.finished += 1
        record = Record(message={"from_number": self.claim.sender, "to_number": self.claim.to, "type": "sms",
                                 "text": "hi", "intent": "", "params": {}, "rules": [], "compliance": None,
                                 "possible_optout": False, "held": []},
                        replies=[{"position": 0, "kind": "reply", "rule": "r", "src": self.claim.to,
                                  "dst": [self.claim.sender], "sender": self.claim.sender, "limited": True,
                                  "text": "answer " + self.claim.uuid, "via": "xml"}])
        return record, Stored(200, "application/xml", ("<Response>" + self.claim.uuid + "</Response>").encode())


def _batch(store, works):
    """`works` in one batch of the store's group commit, as the leader runs it: each outcome
    (a result or the error its thread would raise)."""
    from app.store.messages import ALONE
    from app.store.writer import Job
    jobs = [Job(w) for w in works]
    (store._postgres_batch if store.postgres else store._sqlite_batch)(jobs)
    outcomes = []
    for job in jobs:
        try:
            result = job.result()
            outcomes.append(store._message_postgres(job.work) if result is ALONE else result)
        except Exception as exc:  # noqa: BLE001 - what that message's thread would raise
            outcomes.append(exc)
    return outcomes


def test_a_batch_gives_each_message_its_own_outcome(database):
    """A new message, a replay of its nonce with another request, another new message and a
    retry of the first, in one batch: the two are recorded, the replay is refused and leaves
    nothing, the retry gets the stored answer byte for byte."""
    store = Store(database)
    try:
        a, c = _Work("uuid-a", "nonce-a"), _Work("uuid-c", "nonce-c", sender="14155550124")
        replay = _Work("uuid-b", "nonce-a", digest=b"e" * 16)
        retry = _Work("uuid-a", "nonce-a2")
        first, refused, third, again = _batch(store, [a, replay, c, retry])
        assert first == (a.finish(None)[1], True) and third == (c.finish(None)[1], True)
        assert isinstance(refused, Replayed)
        assert again == (first[0], False)
        listed = {m["uuid"]: m for m in store.list_messages()}
        assert set(listed) == {"uuid-a", "uuid-c"} and listed["uuid-a"]["deliveries"] == 2
        assert [r["numbers"] for r in listed["uuid-c"]["replies"]] == [["14155550124"]]
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM seen").scalar() == 3  # a, c, a2: not b's
    finally:
        store.dispose()


def test_a_postgresql_batch_never_waits_for_a_senders_lock():
    """Another transaction holds one sender's lock (a host paused mid-message): the batch
    answers the other sender at once; the held sender's message waits in its own thread."""
    import threading
    import time

    from conftest import empty_postgres

    from app.store.values import lock_key
    url = postgres_database()
    empty_postgres()
    store = Store(url)
    holder = sa.create_engine(parse_url(url))
    try:
        with holder.connect() as conn:
            conn.exec_driver_sql("BEGIN")
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%s)", (lock_key("14155550111"),))
            held = _Work("uuid-held", "n-held", sender="14155550111")
            free = _Work("uuid-free", "n-free", sender="14155550222")
            from app.store.messages import ALONE
            from app.store.writer import Job
            jobs = [Job(held), Job(free)]
            began = time.monotonic()
            store._postgres_batch(jobs)
            assert time.monotonic() - began < 2 and jobs[1].result() == (free.finish(None)[1], True)
            assert jobs[0].result() is ALONE
            outcome = []
            thread = threading.Thread(target=lambda: outcome.append(store._message_postgres(held)))
            thread.start()
            thread.join(0.3)
            assert thread.is_alive()  # waiting for the lock, in its own thread
            conn.exec_driver_sql("COMMIT")
        thread.join(10)
        assert outcome == [(held.finish(None)[1], True)]
    finally:
        holder.dispose()
        store.dispose()
        empty_postgres()
