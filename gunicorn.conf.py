"""gunicorn settings, driven by environment variables (SPEC §3).

    gunicorn -c gunicorn.conf.py            # wsgi:app on 0.0.0.0:$PORT, $WEB_CONCURRENCY workers

Before any worker starts, the master checks the settings and the rules file
and refuses to start with a clear message if either is wrong, instead of
letting every worker die with a traceback.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)

import config as _config  # noqa: E402  (the project settings; gunicorn reads bare names as its own)

# Settings are checked here, before gunicorn logs anything, so a bad or missing one
# is a single line: `error: PLIVO_AUTH_TOKEN is not set: ...`.
try:
    _settings = _config.load(os.environ)
except _config.ConfigError as exc:
    sys.exit(f"error: {exc}")


def _int_env(name: str, default: int) -> int:
    """A whole-number setting (1 or more), checked like every other setting in config.py."""
    try:
        return _config.whole_number(name, os.environ.get(name, "").strip() or default, 1)
    except _config.ConfigError as exc:
        sys.exit(f"error: {exc}")


wsgi_app = "wsgi:app"
bind = [f"0.0.0.0:{_int_env('PORT', 8000)}"]
workers = _int_env("WEB_CONCURRENCY", 2)
# Threaded workers: each request is short CPU work (verify, match, render), but a
# sync worker also waits on whoever connected, so a few idle or slow connections
# would hold every worker until `timeout` (and Plivo waits only 8 s). With gthread
# a worker's main thread watches the connections and hands complete requests to
# its threads; idle keep-alive connections cost nothing.
worker_class = "gthread"
threads = _int_env("GUNICORN_THREADS", 8)
timeout = 30
graceful_timeout = 20
keepalive = 5

# Forwarded headers are trusted by the app alone, through TRUSTED_PROXIES
# (werkzeug's ProxyFix), so gunicorn must not act on X-Forwarded-Proto itself.
secure_scheme_headers = {}

# gunicorn's control socket (for `gunicornc`) is one fixed path per user, so several
# instances on one host would take it from each other: off unless a path is given.
if os.environ.get("GUNICORN_CONTROL_SOCKET"):
    control_socket = os.environ["GUNICORN_CONTROL_SOCKET"]
else:
    control_socket_disable = True

# Logs: gunicorn's own lines on stderr; the app logs one line per message, so the
# access log stays off unless asked for (GUNICORN_ACCESS_LOG=-).
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()


def on_starting(server):
    """Refuse to start on a bad rules file or database; migrate the database.

    A bad rules file gives `path:line: message` per problem; a DATABASE_URL that
    is malformed or does not answer gives one line naming it. Then the schema is
    brought up to date (`flask --app wsgi db upgrade`), before any worker forks.

    Only at start: after a HUP (or when a worker is replaced) the master must not
    exit over the file; workers that start while it is bad answer with the last
    good rules, kept in the instance folder, and /readyz lists the problems.
    """
    from app import outbound_settings
    from app.rules import RulesError, load

    settings = _settings
    if not settings["VERIFY_SIGNATURES"]:
        print("warning: VERIFY_SIGNATURES=false: requests are answered without checking that "
              "Plivo sent them; use this only for local experiments", file=sys.stderr, flush=True)
    try:
        load(settings["RULES_PATH"], outbound=outbound_settings(settings))
    except Exception as exc:  # noqa: BLE001 - any failure to load refuses the start, in one place
        problems = exc.problems if isinstance(exc, RulesError) else [
            f"{settings['RULES_PATH']}: cannot load: {type(exc).__name__}: {exc}"]
        for problem in problems:
            print(problem, file=sys.stderr, flush=True)
        print(f"error: {settings['RULES_PATH']} has {len(problems)} problem(s); "
              "fix them (flask --app wsgi rules check) and start again", file=sys.stderr, flush=True)
        sys.exit(1)
    _migrate(server, settings)


def worker_exit(server, worker):
    """Stop this worker's outbox sender: the request in flight ends (or its lease runs out)."""
    from app.outbound.sender import stop_all

    stop_all(timeout=max(1.0, graceful_timeout - 5))


def _migrate(server, settings):
    """Check DATABASE_URL and apply the migrations; the engine is gone before the fork."""
    from app.store import migrate
    from app.store.db import DatabaseUrlError, check_connection, display, make_engine

    url = _config.database_url(settings["DATABASE_URL"], os.path.join(_HERE, "instance"))
    try:
        engine = make_engine(url, pool_size=1)
        check_connection(engine)
    except DatabaseUrlError as exc:
        sys.exit(f"error: {exc}")
    try:
        before, after = migrate.upgrade(engine)
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback from the master
        sys.exit(f"error: DATABASE_URL: migrating {display(url)} failed: {type(exc).__name__}: {exc}")
    finally:
        engine.dispose()
    if before != after:
        server.log.info("database %s migrated from %s to %s", display(url), before or "empty", after)
