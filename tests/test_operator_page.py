"""The operator page's sign-in and sign-out (§11): off until an operator exists, CSRF on every
form, sessions that end (idle, sign-out, operator removed), limits on failed sign-ins shared by
every app on one database, strict headers, no open redirect, no name or password in the logs."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from conftest import MONDAY_10AM, listening, make_app

from app import operator_page
from app.operators import hash_password
from app.store import Store, migrate
from app.store.db import make_engine

PASSWORD = "correct horse battery"
HASH = hash_password(PASSWORD)
SECRET = "s" * 40


def page_app(tmp_path, operators=("ann",), **settings):
    settings.setdefault("SECRET_KEY", SECRET)
    app = make_app(tmp_path, **settings)
    for name in operators:
        app.extensions["responder"].store.add_operator(name, HASH)
    return app


def client_from(app, address: str):
    """A test client whose requests come from `address`."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def csrf_of(client, path="/operator/login") -> str:
    page = client.get(path)
    assert page.status_code == 200
    return re.search(r'name="csrf" value="([^"]+)"', page.get_data(as_text=True)).group(1)


def sign_in(client, name="ann", password=PASSWORD, **extra):
    form = {"csrf": csrf_of(client), "name": name, "password": password, **extra}
    return client.post("/operator/login", data=form)


def test_every_operator_url_is_404_while_no_operator_exists(tmp_path, database):
    client = page_app(tmp_path, operators=()).test_client()
    for path in ("/operator/", "/operator", "/operator/login", "/operator/static/operator.css", "/operator/nothing"):
        assert client.get(path).status_code == 404
    assert client.put("/operator/login").status_code == 404
    assert client.post("/operator/login", data={"name": "ann", "password": PASSWORD}).status_code == 404
    assert client.post("/operator/logout").status_code == 404


def test_the_home_page_redirects_to_sign_in_with_next(tmp_path, database):
    client = page_app(tmp_path).test_client()
    answer = client.get("/operator/")
    assert answer.status_code == 302
    assert answer.headers["Location"] == "/operator/login?next=/operator/"


def test_sign_in_shows_the_name_and_sign_out_ends_the_session(tmp_path, database):
    client = page_app(tmp_path).test_client()
    answer = sign_in(client, next="/operator/")
    assert answer.status_code == 303 and answer.headers["Location"] == "/operator/"
    home = client.get("/operator/")
    assert home.status_code == 200 and "Signed in as <strong>ann</strong>" in home.get_data(as_text=True)
    token = re.search(r'name="csrf" value="([^"]+)"', home.get_data(as_text=True)).group(1)
    assert client.get("/operator/logout").status_code == 303  # a GET never signs out
    assert client.get("/operator/").status_code == 200
    out = client.post("/operator/logout", data={"csrf": token})
    assert out.status_code == 303 and out.headers["Location"] == "/operator/login"
    assert client.get("/operator/").status_code == 302


def test_the_session_is_renewed_at_sign_in(tmp_path):
    client = page_app(tmp_path).test_client()
    before = csrf_of(client)
    sign_in(client)
    after = re.search(r'name="csrf" value="([^"]+)"', client.get("/operator/").get_data(as_text=True)).group(1)
    assert before != after


def test_a_wrong_password_or_unknown_name_is_refused_the_same_way(tmp_path, database, caplog):
    client = page_app(tmp_path).test_client()
    with listening(caplog, "app.operator"):
        wrong = sign_in(client, password="not the password")
        unknown = sign_in(client, name="nobody", password="not the password")
    for answer in (wrong, unknown):
        assert answer.status_code == 200 and "Wrong name or password." in answer.get_data(as_text=True)
    assert client.get("/operator/").status_code == 302
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "sign-in failed" in logged
    assert "ann" not in logged and "nobody" not in logged and "not the password" not in logged


def test_no_password_or_name_in_the_logs_of_a_good_sign_in(tmp_path, caplog):
    client = page_app(tmp_path, operators=("zelda",)).test_client()
    with listening(caplog, "app"):
        assert sign_in(client, name="zelda").status_code == 303
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "signed in" in logged and "zelda" not in logged and PASSWORD not in logged


@pytest.mark.parametrize("token", [None, "", "forged"])
def test_a_post_without_the_sessions_csrf_token_is_400(tmp_path, token):
    client = page_app(tmp_path).test_client()
    csrf_of(client)
    form = {"name": "ann", "password": PASSWORD} | ({} if token is None else {"csrf": token})
    answer = client.post("/operator/login", data=form)
    assert answer.status_code == 400 and "reload it" in answer.get_data(as_text=True)
    assert answer.headers["Content-Security-Policy"].startswith("default-src 'self'")
    sign_in(client)
    refused = client.post("/operator/logout", data={} if token is None else {"csrf": token})
    assert refused.status_code == 400
    assert client.get("/operator/").status_code == 200  # still signed in


def test_a_token_from_another_session_is_refused(tmp_path):
    app = page_app(tmp_path)
    theirs = csrf_of(app.test_client())
    mine = app.test_client()
    csrf_of(mine)
    answer = mine.post("/operator/login", data={"csrf": theirs, "name": "ann", "password": PASSWORD})
    assert answer.status_code == 400


def test_five_failures_for_a_name_are_429_also_on_another_worker(tmp_path, database):
    first = page_app(tmp_path)
    second = make_app(tmp_path / "second", SECRET_KEY=SECRET)  # another worker: the same database
    client = client_from(first, "192.0.2.1")
    for _ in range(operator_page.MAX_BY_NAME):
        assert sign_in(client, password="wrong password").status_code == 200
    other = client_from(second, "192.0.2.2")
    refused = sign_in(other)  # the right password, from another address: the name is limited
    assert refused.status_code == 429 and "too many" in refused.get_data(as_text=True)
    assert refused.headers["Cache-Control"] == "no-store"
    assert sign_in(other, name="bob", password="wrong password").status_code == 200  # another name is not


def test_twenty_failures_from_an_address_are_429_also_on_another_worker(tmp_path, database):
    first = page_app(tmp_path)
    second = make_app(tmp_path / "second", SECRET_KEY=SECRET)
    client = client_from(first, "192.0.2.7")
    for number in range(operator_page.MAX_BY_ADDRESS):
        assert sign_in(client, name=f"guess{number}", password="wrong password").status_code == 200
    same_address = client_from(second, "192.0.2.7")
    assert sign_in(same_address).status_code == 429
    elsewhere = client_from(second, "192.0.2.8")
    assert sign_in(elsewhere).status_code == 303


def test_failures_older_than_the_window_no_longer_count_and_are_pruned(tmp_path, database):
    clock = [MONDAY_10AM]
    app = page_app(tmp_path, CLOCK=lambda: clock[0])
    store = app.extensions["responder"].store
    client = client_from(app, "192.0.2.9")
    for _ in range(operator_page.MAX_BY_NAME):
        sign_in(client, password="wrong password")
    assert sign_in(client).status_code == 429
    clock[0] = MONDAY_10AM + operator_page.WINDOW + timedelta(seconds=1)
    assert store.failures_since("ann", "192.0.2.9", MONDAY_10AM - timedelta(days=1)) == (5, 5)
    sign_in(client, name="bob", password="wrong password")  # recording prunes what is past the window
    assert store.failures_since("ann", "192.0.2.9", MONDAY_10AM - timedelta(days=1)) == (0, 1)
    assert sign_in(client).status_code == 303


def test_a_success_does_not_erase_failures(tmp_path):
    app = page_app(tmp_path)
    client = client_from(app, "192.0.2.10")
    for _ in range(operator_page.MAX_BY_NAME - 1):
        sign_in(client, password="wrong password")
    assert sign_in(client).status_code == 303
    assert app.extensions["responder"].store.failures_since("ann", "192.0.2.10", MONDAY_10AM - timedelta(1)) == (4, 4)


def test_the_dummy_hash_is_an_ordinary_operator_hash_that_nothing_matches():
    assert operator_page.DUMMY_HASH.split("$")[0] == HASH.split("$")[0]  # the same scrypt work
    assert not operator_page.password_matches(None, "")
    assert not operator_page.password_matches(None, PASSWORD)
    assert operator_page.password_matches(HASH, PASSWORD)


def test_store_counts_failures_by_name_and_by_address_within_the_window(database):
    store = Store(database, pool_size=1)
    try:
        at = MONDAY_10AM
        store.record_failure("ann", "192.0.2.1", at, operator_page.WINDOW)
        store.record_failure("ann", "192.0.2.2", at + timedelta(minutes=1), operator_page.WINDOW)
        store.record_failure("bob", "192.0.2.1", at + timedelta(minutes=2), operator_page.WINDOW)
        store.record_failure("x" * 200, "192.0.2.1", at + timedelta(minutes=3), operator_page.WINDOW)  # cut to 64
        assert store.failures_since("ann", "192.0.2.1", at) == (2, 3)
        assert store.failures_since("ann", "192.0.2.1", at + timedelta(seconds=30)) == (1, 2)
        assert store.failures_since("x" * 64, "198.51.100.1", at) == (1, 0)
        store.record_failure("bob", "192.0.2.9", at + timedelta(minutes=16), operator_page.WINDOW)  # prunes the first
        assert store.failures_since("ann", "192.0.2.1", at - timedelta(days=1)) == (1, 2)
    finally:
        store.dispose()


def test_downgrade_to_0006_drops_the_failures_and_upgrade_makes_them_again(tmp_path):
    import sqlalchemy as sa
    from alembic import command
    engine = make_engine(f"sqlite:///{tmp_path}/d.sqlite3", pool_size=1)
    migrate.upgrade(engine)
    assert "signin_failures" in sa.inspect(engine).get_table_names()
    with engine.connect() as conn:
        command.downgrade(migrate._config(conn), "0006")
        conn.commit()
    assert "signin_failures" not in sa.inspect(engine).get_table_names()
    assert "operators" in sa.inspect(engine).get_table_names()
    assert migrate.upgrade(engine) == ("0006", migrate.head())
    assert {ix["name"] for ix in sa.inspect(engine).get_indexes("signin_failures")} == {
        "ix_signin_failures_name_at", "ix_signin_failures_address_at", "ix_signin_failures_at"}
    engine.dispose()


@pytest.mark.parametrize(("public_url", "secure"), [(None, False), ("http://sms.example", False),
                                                    ("https://sms.example", True)])
def test_the_session_cookie_flags(tmp_path, public_url, secure):
    client = page_app(tmp_path, PUBLIC_URL=public_url).test_client()
    answer = sign_in(client)
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert ("Secure" in cookie) is secure


def test_an_idle_session_ends(tmp_path):
    clock = [MONDAY_10AM]
    client = page_app(tmp_path, CLOCK=lambda: clock[0]).test_client()
    sign_in(client)
    clock[0] += operator_page.IDLE - timedelta(seconds=1)
    assert client.get("/operator/").status_code == 200  # activity moves the idle deadline on
    clock[0] += operator_page.IDLE - timedelta(seconds=1)
    assert client.get("/operator/").status_code == 200
    clock[0] += operator_page.IDLE + timedelta(seconds=1)
    assert client.get("/operator/").status_code == 302


def test_a_removed_operators_session_is_refused(tmp_path, database):
    app = page_app(tmp_path, operators=("ann", "bob"))
    client = app.test_client()
    sign_in(client)
    assert client.get("/operator/").status_code == 200
    app.extensions["responder"].store.remove_operator("ann")
    assert client.get("/operator/").status_code == 302


def test_every_answer_carries_the_strict_headers(tmp_path):
    client = page_app(tmp_path).test_client()
    for answer in (client.get("/operator/"), client.get("/operator/login"), client.get("/operator/nothing"),
                   client.put("/operator/login"), client.get("/operator/static/operator.css")):
        assert answer.headers["Content-Security-Policy"] == (
            "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self' data:; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Referrer-Policy"] == "same-origin"
        assert answer.headers["Cache-Control"] == "no-store"
    assert "<script" not in client.get("/operator/login").get_data(as_text=True)


@pytest.mark.parametrize("target", ["//evil.example", "//evil.example/operator/", "https://evil.example/",
                                    "/\\evil.example", "javascript:alert(1)", "evil.example", "/\\/evil.example"])
def test_next_never_leads_to_another_site(tmp_path, target):
    client = page_app(tmp_path).test_client()
    assert f'value="{target}"' not in client.get("/operator/login", query_string={"next": target}).get_data(
        as_text=True)
    answer = sign_in(client, next=target)
    assert answer.status_code == 303 and answer.headers["Location"] == "/operator/"


def test_a_typed_name_is_never_echoed_as_markup(tmp_path):
    client = page_app(tmp_path).test_client()
    answer = sign_in(client, name="<script>alert(1)</script>", password="wrong password",
                     next='/operator/"><script>x</script>')
    page = answer.get_data(as_text=True)
    assert answer.status_code == 200 and "<script" not in page
    assert "&lt;script&gt;" in page or "script" not in page


def test_the_webhooks_are_not_part_of_the_page(tmp_path):
    client = page_app(tmp_path).test_client()
    answer = client.get("/healthz")
    assert answer.status_code == 200 and "Content-Security-Policy" not in answer.headers
