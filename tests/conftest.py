"""Shared fixtures: an app on a given rules file and database, its client, its CLI runner.

Tests that take the `database` fixture (directly, or with
`pytestmark = pytest.mark.usefixtures("database")`) run twice: on SQLite, and on
PostgreSQL when a server answers at TEST_POSTGRES_URL (default: the local one,
postgresql://postgres@127.0.0.1:5432/test). One fresh PostgreSQL database is made
per run, migrated once, emptied before each test and dropped at the end; each
SQLite test gets a copy of a file migrated once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import textwrap
import uuid as uuidlib
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

# In-process tests count in this process's memory: a PROMETHEUS_MULTIPROC_DIR from the shell
# (a developer's, or a service's container) would put prometheus_client, which chooses once
# when first imported, in multiprocess mode and write this run's counts into that folder.
# Test servers get a folder of their own (servers.py).
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
os.environ.pop("RESPONDER_METRICS_DIR_MADE", None)

from app import create_app

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "MAtesttoken0000000000000000000000000000"
NY = ZoneInfo("America/New_York")
#: A Monday, 10:00 in New York: inside business hours, so time rules stay quiet.
MONDAY_10AM = datetime(2026, 11, 23, 10, 0, tzinfo=NY)


BACKENDS = ("sqlite", "postgresql")
PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
_TABLES = ("outbox", "api_slots", "reports", "replies", "messages", "optouts", "seen", "operators", "signin_failures")
_state: dict = {"url": None, "template": None, "apps": [], "pg": None, "pg_error": None}


def migrated_sqlite(directory: Path) -> str:
    """A SQLite URL for a new file in `directory`, already at the newest migration."""
    if _state["template"] is None:
        from app.store import migrate
        from app.store.db import make_engine
        folder = tempfile.mkdtemp(prefix="responder-template-")
        path = os.path.join(folder, "template.sqlite3")
        engine = make_engine(f"sqlite:///{path}", pool_size=1)
        migrate.upgrade(engine)
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()
        _state["template"] = path
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"db-{uuidlib.uuid4().hex[:8]}.sqlite3"
    shutil.copyfile(_state["template"], target)
    return f"sqlite:///{target}"


def postgres_database() -> str:
    """The URL of this run's PostgreSQL database (made and migrated once), or skip."""
    if _state["pg_error"]:
        pytest.skip(_state["pg_error"])
    if _state["pg"] is None:
        import sqlalchemy as sa

        from app.store import migrate
        from app.store.db import make_engine, parse_url
        name = f"responder_test_{os.getpid()}_{uuidlib.uuid4().hex[:6]}"
        try:
            admin = sa.create_engine(parse_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT",
                                     connect_args={"connect_timeout": 3})
            with admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        except Exception as exc:  # noqa: BLE001
            _state["pg_error"] = (f"PostgreSQL at {PG_ADMIN_URL} does not answer, so the PostgreSQL "
                                  f"half of the suite is skipped: {str(exc).splitlines()[0]}")
            pytest.skip(_state["pg_error"])
        url = parse_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        engine = make_engine(url, pool_size=1)
        migrate.upgrade(engine)
        _state["pg"] = {"url": url, "name": name, "admin": admin, "engine": engine}
    return _state["pg"]["url"]


def empty_postgres() -> None:
    with _state["pg"]["engine"].begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {', '.join(_TABLES)} RESTART IDENTITY CASCADE")


def drop_postgres() -> None:
    pg = _state["pg"]
    if pg is None:
        return
    pg["engine"].dispose()
    with pg["admin"].connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{pg["name"]}" WITH (FORCE)')
    pg["admin"].dispose()
    _state["pg"] = None


def pytest_sessionfinish(session, exitstatus):
    drop_postgres()
    if _state["template"]:
        shutil.rmtree(os.path.dirname(_state["template"]), ignore_errors=True)


def pytest_generate_tests(metafunc):
    if "database" in metafunc.fixturenames:
        metafunc.parametrize("database", BACKENDS, indirect=True)


@pytest.fixture
def database(request, tmp_path):
    """A migrated, empty database on the backend of this run of the test: its URL."""
    if request.param == "postgresql":
        url = postgres_database()
        empty_postgres()
    else:
        url = migrated_sqlite(tmp_path / "db")
    _state["url"] = url
    yield url
    _state["url"] = None


@pytest.fixture(autouse=True)
def _close_apps():
    """Close the database pools of every app a test made (PostgreSQL counts connections)."""
    yield
    while _state["apps"]:
        store = _state["apps"].pop().extensions["responder"].store
        if store is not None:
            store.dispose()


def make_app(tmp_path: Path, rules: str | None = None, **settings):
    """An app on `rules` (YAML text; default: the shipped rules.yaml) with test settings.

    Its database is the test's `database` when it has one, else a fresh SQLite file.
    """
    if rules is None:
        rules_path = ROOT / "rules.yaml"
    else:
        rules_path = tmp_path / "rules.yaml"
        rules_path.write_text(textwrap.dedent(rules), encoding="utf-8")
    now = settings.pop("now", MONDAY_10AM)
    config = {
        "TESTING": True,
        "PLIVO_AUTH_TOKEN": TOKEN,
        "RULES_PATH": str(rules_path),
        "RULES_RELOAD_INTERVAL": 0,
        "LOG_FORMAT": "text",
        "CLOCK": lambda: now,
        "INSTANCE_PATH": str(tmp_path / "instance"),
    }
    config.update(settings)
    if not config.get("DATABASE_URL"):
        config["DATABASE_URL"] = _state["url"] or migrated_sqlite(tmp_path / "db")
    app = create_app(config)
    _state["apps"].append(app)
    return app


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


FORM = "application/x-www-form-urlencoded"


def sms(text: str = "hello", **extra) -> dict[str, str]:
    """Parameters of an inbound SMS as Plivo sends them (a new MessageUUID unless given)."""
    params = {
        "From": "14155550123", "To": "14155550100", "Type": "sms", "Text": text,
        "MessageUUID": str(uuidlib.uuid4()), "Units": "1",
        "TotalRate": "0", "TotalAmount": "0", "MessageIntent": "", "PowerpackUUID": "",
        "MediaCount": "0",
    }
    params.update(extra)
    return {k: v for k, v in params.items() if v is not None}


def signed_headers(url: str, params, method: str = "POST", token: str = TOKEN, nonce: str | None = None):
    from app.signature import sign_headers
    pairs = list(params.items()) if isinstance(params, dict) else list(params)
    return sign_headers(token, method, url, pairs if method == "POST" else [], nonce)


def send(client, params, *, method="POST", path="/message", token=TOKEN, host="localhost",
         query="", headers=None, sign=True):
    """Send a (signed) webhook through the Flask test client, as Plivo would."""
    from urllib.parse import urlencode
    full = path + (f"?{query}" if query else "")
    url = f"http://{host}{full}"
    body = urlencode(params)
    if method == "GET":
        full = path + "?" + "&".join(p for p in (query, body) if p)
        url = f"http://{host}{full}"
        body = ""
    all_headers = signed_headers(url, params, method, token) if sign else {}
    all_headers.update(headers or {})
    if method == "POST":
        all_headers.setdefault("Content-Type", FORM)
    return client.open(full, method=method, base_url=f"http://{host}", data=body.encode(), headers=all_headers)


@contextmanager
def listening(caplog, name: str):
    """caplog records of logger `name` at DEBUG, also once the app's loggers stop propagating
    (create_app configures logging, and another test may have called it first)."""
    import logging
    caplog.set_level(logging.DEBUG, logger=name)
    own = logging.getLogger(name)
    own.addHandler(caplog.handler)
    try:
        yield
    finally:
        own.removeHandler(caplog.handler)
