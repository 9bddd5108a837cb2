"""Operators (the people who may sign in to the operator page): their table, the store's
functions on both databases, the `operators` commands, password hashing, and the start's
refusal without SECRET_KEY once an operator exists."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from conftest import ROOT, TOKEN, listening, make_app
from servers import Server, run_gunicorn, server_env

from app import operators
from app.store import Exists, Store, migrate
from app.store.db import make_engine

PASSWORD = "correct horse battery"


# -- the pure module ------------------------------------------------------------------------------
def test_a_hash_is_scrypt_salted_and_checks_only_its_password():
    first, second = operators.hash_password(PASSWORD), operators.hash_password(PASSWORD)
    assert first.startswith("scrypt:") and second.startswith("scrypt:")
    assert PASSWORD not in first and first != second  # salted: the same password, two hashes
    assert operators.check_password(first, PASSWORD) and operators.check_password(second, PASSWORD)
    assert not operators.check_password(first, PASSWORD + "!")
    assert not operators.check_password(None, PASSWORD)


@pytest.mark.parametrize("name", ["a", "ann", "Ann.Lee", "ops_2", "x-y", "z" * 64])
def test_names_that_are_accepted(name):
    assert operators.name_problem(name) is None


@pytest.mark.parametrize("name", ["", "z" * 65, "ann lee", "ann\n", "<b>", "änn", "аnn", "ann@shop", "a/b"])
def test_names_that_are_refused(name):
    assert operators.name_problem(name).endswith("1 to 64 characters, letters, digits, '.', '_' or '-' only")


def test_passwords_that_are_refused_say_why_without_the_password():
    assert operators.password_problem("") == "the password is empty"
    assert operators.password_problem("seven77") == "the password is shorter than 8 characters"
    assert operators.password_problem("eight888") is None


# -- the store, on both databases ---------------------------------------------------------------
@pytest.fixture
def store(database):
    store = Store(database, pool_size=1)
    yield store
    store.dispose()


def test_store_adds_lists_finds_and_removes_operators(store):
    assert not store.has_operators() and store.list_operators() == []
    store.add_operator("bob", "scrypt:bob-hash", now=datetime(2026, 12, 8, 9, 30))
    store.add_operator("ann", "scrypt:ann-hash", now=datetime(2026, 12, 8, 10, 0))
    assert store.has_operators() and store.count_operators() == 2
    assert store.list_operators() == [("ann", datetime(2026, 12, 8, 10, 0)), ("bob", datetime(2026, 12, 8, 9, 30))]
    assert store.operator_hash("ann") == "scrypt:ann-hash"
    assert store.operator_hash("nobody") is None
    assert store.remove_operator("ann") is True
    assert store.remove_operator("ann") is False
    assert store.list_operators() == [("bob", datetime(2026, 12, 8, 9, 30))]


def test_a_name_taken_is_exists_and_keeps_the_first_hash(store):
    store.add_operator("ann", "scrypt:first")
    with pytest.raises(Exists, match="an operator named 'ann' exists already"):
        store.add_operator("ann", "scrypt:second")
    assert store.operator_hash("ann") == "scrypt:first"
    store.add_operator("bob", "scrypt:bob")  # the store is still usable after the refusal


def test_downgrade_to_0005_drops_the_table_and_upgrade_makes_it_again(tmp_path):
    import sqlalchemy as sa
    from alembic import command
    engine = make_engine(f"sqlite:///{tmp_path}/d.sqlite3", pool_size=1)
    migrate.upgrade(engine)
    assert "operators" in sa.inspect(engine).get_table_names()
    with engine.connect() as conn:
        command.downgrade(migrate._config(conn), "0005")
        conn.commit()
    assert "operators" not in sa.inspect(engine).get_table_names()
    assert migrate.upgrade(engine) == ("0005", migrate.head())
    assert "operators" in sa.inspect(engine).get_table_names()
    engine.dispose()


# -- the commands -------------------------------------------------------------------------------
def _app(tmp_path, **settings):
    return make_app(tmp_path, **settings)


def test_add_with_password_stdin_stores_a_scrypt_hash_and_never_shows_the_password(tmp_path, database, caplog):
    app = _app(tmp_path, SECRET_KEY="k" * 32)
    with listening(caplog, "app"):
        result = app.test_cli_runner().invoke(args=["operators", "add", "ann", "--password-stdin"],
                                              input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "operator ann added\n"
    assert result.stderr == ""  # SECRET_KEY is set: no note
    stored = app.extensions["responder"].store.operator_hash("ann")
    assert stored.startswith("scrypt:") and stored != PASSWORD
    assert operators.check_password(stored, PASSWORD)  # the newline is not part of it
    for text in (result.output, caplog.text):
        assert PASSWORD not in text and stored not in text


def test_add_asks_twice_without_echo(tmp_path, database, caplog):
    app = _app(tmp_path, SECRET_KEY="k" * 32)
    with listening(caplog, "app"):
        result = app.test_cli_runner().invoke(args=["operators", "add", "ann"], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert "Password: " in result.output and "Repeat for confirmation: " in result.output
    stored = app.extensions["responder"].store.operator_hash("ann")
    assert operators.check_password(stored, PASSWORD)
    assert PASSWORD not in result.output and PASSWORD not in caplog.text


def test_add_without_secret_key_works_and_says_the_service_will_need_it(tmp_path, database):
    app = _app(tmp_path)
    result = app.test_cli_runner().invoke(args=["operators", "add", "ann", "--password-stdin"],
                                          input=PASSWORD + "\r\n")
    assert result.exit_code == 0, result.output
    assert operators.check_password(app.extensions["responder"].store.operator_hash("ann"), PASSWORD)
    assert result.stderr.startswith("note: SECRET_KEY is not set: the service will not start")


@pytest.mark.parametrize("password, says", [
    ("", "error: the password is empty\n"),
    ("\n", "error: the password is empty\n"),
    ("seven77\n", "error: the password is shorter than 8 characters\n"),
])
def test_add_refuses_an_empty_or_short_password_in_one_line(tmp_path, database, password, says):
    app = _app(tmp_path)
    result = app.test_cli_runner().invoke(args=["operators", "add", "ann", "--password-stdin"], input=password)
    assert result.exit_code == 1
    assert result.stderr == says
    assert not app.extensions["responder"].store.has_operators()


def test_add_refuses_a_bad_name_and_a_name_taken(tmp_path, database):
    app = _app(tmp_path, SECRET_KEY="k" * 32)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["operators", "add", "ann lee", "--password-stdin"], input=PASSWORD)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: 'ann lee' is not an operator name") and result.stderr.count("\n") == 1
    assert runner.invoke(args=["operators", "add", "ann", "--password-stdin"], input=PASSWORD).exit_code == 0
    first = app.extensions["responder"].store.operator_hash("ann")
    again = runner.invoke(args=["operators", "add", "ann", "--password-stdin"], input="another password\n")
    assert again.exit_code == 1
    assert again.stderr == ("error: an operator named ann exists already (remove it first to change its "
                            "password)\n")
    assert app.extensions["responder"].store.operator_hash("ann") == first


def test_remove_and_list(tmp_path, database):
    app = _app(tmp_path)
    runner = app.test_cli_runner()
    assert runner.invoke(args=["operators", "list"]).output == "no operators\n"
    assert runner.invoke(args=["operators", "list", "--json"]).output == "[]\n"
    for name in ("bob", "ann"):
        assert runner.invoke(args=["operators", "add", name, "--password-stdin"], input=PASSWORD).exit_code == 0
    listed = runner.invoke(args=["operators", "list"])
    assert listed.exit_code == 0
    lines = listed.output.splitlines()
    assert lines[0].split() == ["name", "added", "(UTC)"]
    assert [line.split()[0] for line in lines[1:]] == ["ann", "bob"]
    rows = json.loads(runner.invoke(args=["operators", "list", "--json"]).output)
    assert [r["name"] for r in rows] == ["ann", "bob"]
    assert all(set(r) == {"name", "created_at"} and r["created_at"].endswith("Z") for r in rows)
    assert "scrypt" not in listed.output and PASSWORD not in listed.output

    removed = runner.invoke(args=["operators", "remove", "ann"])
    assert removed.exit_code == 0 and removed.output == "operator ann removed\n"
    missing = runner.invoke(args=["operators", "remove", "ann"])
    assert missing.exit_code == 1
    assert missing.stderr == "error: there is no operator named ann\n"


# -- SECRET_KEY ------------------------------------------------------------------------------------
def test_the_app_carries_secret_key(tmp_path):
    assert _app(tmp_path, SECRET_KEY="s3cret-key-for-sessions").config["SECRET_KEY"] == "s3cret-key-for-sessions"
    assert _app(tmp_path / "other").config["SECRET_KEY"] is None


def _with_operator(tmp_path) -> str:
    url = f"sqlite:///{tmp_path}/responder.sqlite3"
    engine = make_engine(url, pool_size=1)
    migrate.upgrade(engine)
    engine.dispose()
    store = Store(url, pool_size=1)
    store.add_operator("ann", operators.hash_password(PASSWORD))
    store.add_operator("bob", operators.hash_password(PASSWORD))
    store.dispose()
    return url


@pytest.mark.server
def test_the_service_refuses_to_start_without_secret_key_once_an_operator_exists(tmp_path):
    url = _with_operator(tmp_path)
    result = run_gunicorn(server_env(PLIVO_AUTH_TOKEN=TOKEN, RULES_PATH=str(ROOT / "rules.yaml"),
                                     LOG_FORMAT="text", DATABASE_URL=url), timeout=60)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == ("error: SECRET_KEY is not set and 2 operator(s) exist: set SECRET_KEY (the same on every "
                         "host) or remove them (flask --app wsgi operators remove NAME)"), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.server
def test_the_service_starts_with_secret_key_and_operators(tmp_path):
    url = _with_operator(tmp_path)
    server = Server(tmp_path, DATABASE_URL=url, SECRET_KEY="k" * 32, WEB_CONCURRENCY="1")
    try:
        assert server.proc.poll() is None
    finally:
        server.stop()
