"""gunicorn settings, driven by environment variables (reference: docs/settings.md).

    gunicorn -c gunicorn.conf.py            # wsgi:app on $HOST:$PORT (0.0.0.0:8000), $WEB_CONCURRENCY workers

Before any worker starts, the master checks the settings and the rules file
and refuses to start with a clear message if either is wrong, instead of
letting every worker die with a traceback.

Every line the master and its workers write goes through the app's log
formatter (LOG_FORMAT), gunicorn's own error and access logs included. The
workers keep their metric counts in PROMETHEUS_MULTIPROC_DIR (a temporary
folder made here when it is not set, removed when the master exits), so a
scrape of /metrics adds up every worker's counts whichever worker answers.
The variable is set before anything imports the app: keep every `from app`
import below `_metrics_folder()`.
"""

import errno
import glob
import ipaddress
import os
import shutil
import socket
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)

import config as _config  # noqa: E402  (the project settings; gunicorn reads bare names as its own)
import metrics_folder as _folders  # noqa: E402

#: The format of the master's own lines before its logger exists: LOG_FORMAT when it is
#: valid, else plain text (`error: LOG_FORMAT must be json or text, ...`).
_FORMAT = str(os.environ.get("LOG_FORMAT") or _config.DEFAULTS["LOG_FORMAT"]).strip().lower()
#: Whose the metrics folder is and whether to empty it at start (see metrics_folder.py).
_METRICS = None


def _metrics_folder() -> None:
    """PROMETHEUS_MULTIPROC_DIR for the workers' metric files, set before anything imports
    prometheus_client (it picks multiprocess mode once, at import): the folder the operator
    gave (made if missing, never removed), or a temporary one made by this master, marked
    with its pid and removed when it exits.

    This file is read again on a HUP; the master finds its own mark and keeps its folder.
    A master started by a USR2 upgrade finds the old master's mark instead (gunicorn hands
    it the environment as it was at the last HUP) and makes a folder of its own.
    """
    global _METRICS
    _METRICS = choice = _folders.choose(os.environ, os.getpid())
    path = choice.path
    if path is None:
        path = _temporary_folder()
    else:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            _refuse(f"PROMETHEUS_MULTIPROC_DIR: cannot make the folder {path}: {exc.strerror}")
        if not os.access(path, os.W_OK | os.X_OK):
            _refuse(f"PROMETHEUS_MULTIPROC_DIR: the folder {path} is not writable")
    os.environ[_folders.VARIABLE] = path
    if choice.owned:
        os.environ[_folders.MARK] = _folders.mark(os.getpid(), path)
    else:
        os.environ.pop(_folders.MARK, None)


def _temporary_base() -> str | None:
    """Where to make temporary files: the temporary folder (TMPDIR, /tmp, /var/tmp, the working
    folder, the first one writable), else /dev/shm (a tmpfs that stays writable in a container
    whose root filesystem is read-only), else None."""
    try:
        return tempfile.gettempdir()
    except OSError:
        pass
    if os.path.isdir(_folders.SHM) and os.access(_folders.SHM, os.W_OK | os.X_OK):
        return _folders.SHM
    return None


def _temporary_folder() -> str:
    """A new folder for the metric files, or one line naming what to set when there is nowhere
    to make it."""
    if _TMP is not None:
        try:
            return tempfile.mkdtemp(prefix="responder-metrics-", dir=_TMP)
        except OSError:
            pass
    _refuse(f"{_folders.VARIABLE} is not set and there is no writable temporary folder "
            f"(TMPDIR, /tmp, /var/tmp, {_folders.SHM}) to keep the workers' metric files in: set "
            f"{_folders.VARIABLE} to a writable folder, or mount a writable /tmp (a tmpfs)")


def _remove_metrics_folder() -> None:
    """Remove the metrics folder if this master made it (never another master's, never
    the operator's)."""
    path = _folders.removable(os.environ, os.getpid())
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
        os.environ.pop(_folders.MARK, None)


def _say(level: str, message: str, prefix: bool = True, **fields) -> None:
    """One line of the master's own on stderr: JSON with LOG_FORMAT=json, else plain
    (`error: ...`; `prefix=False` for lines that speak for themselves, `path:line: ...`)."""
    if _FORMAT == "json":
        import logging

        from app import logs
        text = logs.line(getattr(logging, level.upper()), message, "json", **fields)
    else:
        text = f"{level}: {message}" if prefix else message
    print(text, file=sys.stderr, flush=True)


def _refuse(message: str, **fields) -> None:
    """Stop the start with one line saying why."""
    _say("error", message, **fields)
    _remove_metrics_folder()
    sys.exit(1)


# Settings are checked here, before gunicorn logs anything, so a bad or missing one
# is a single line: `error: PLIVO_AUTH_TOKEN is not set: ...`.
try:
    _settings = _config.load(os.environ)
except _config.ConfigError as exc:
    if _FORMAT not in ("json", "text"):
        _FORMAT = "text"
    _refuse(str(exc))
_FORMAT = _settings["LOG_FORMAT"]

# Metrics: the folder is set before anything imports the app, and with it prometheus_client
# (which picks multiprocess mode once, at import, from this variable): with it set only
# later, each worker would count alone and a scrape would show one worker's counts.
_TMP = _temporary_base()
_metrics_folder()
# Each worker's heartbeat file (made and unlinked at once): gunicorn's default is the temporary
# folder, which a read-only root filesystem may not have; then the metrics folder, writable.
worker_tmp_dir = _TMP or os.environ[_folders.VARIABLE]


def _int_env(name: str, default: int) -> int:
    """A whole-number setting (1 or more), checked like every other setting in config.py."""
    try:
        return _config.whole_number(name, os.environ.get(name, "").strip() or default, 1)
    except _config.ConfigError as exc:
        _refuse(str(exc))


def _port() -> int:
    """PORT: 1 to 65535 (default 8000)."""
    given = os.environ.get("PORT", "")
    text = given.strip() or "8000"
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        _refuse(f"PORT must be a port number from 1 to 65535, got {given!r}")
    return int(text)


def _host() -> str:
    """HOST: the IP address to listen on (default 0.0.0.0, every interface; 127.0.0.1 for a
    proxy on the same host), in gunicorn's form (IPv6 in brackets)."""
    given = os.environ.get("HOST", "")
    text = given.strip().removeprefix("[").removesuffix("]") or "0.0.0.0"
    if text.lower() == "localhost":  # what people write for "this host only"
        text = "127.0.0.1"
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        _refuse(f"HOST must be an IP address to listen on (0.0.0.0 for every interface, 127.0.0.1 for "
                f"this host only (or localhost), :: or ::1 for IPv6), got {given!r}")
    return f"[{address}]" if address.version == 6 else str(address)


wsgi_app = "wsgi:app"
bind = [f"{_host()}:{_port()}"]
workers = _int_env("WEB_CONCURRENCY", 2)
# Threaded workers whose threads only ever see whole requests (app/http_worker.py).
# Each request is short CPU work (verify, match, render); what must not hold a thread
# is whoever connected: gthread gives a thread to every new connection and lets it
# read with no deadline, so a few dozen clients sending a byte now and then would
# hold every thread (and Plivo waits only 8 s). This worker reads each request in the
# worker's main loop, next to accept, and hands it to a thread once it has arrived
# whole; a request must arrive whole within REQUEST_READ_TIMEOUT seconds (408
# otherwise). Slow and idle keep-alive connections cost a file descriptor, not a thread.
worker_class = "app.http_worker.DeadlineWorker"
threads = _int_env("GUNICORN_THREADS", 8)
# Connections per worker, slow ones included (each a file descriptor: keep it under `ulimit -n`).
worker_connections = _int_env("GUNICORN_WORKER_CONNECTIONS", 1000)


def _seconds_env(name: str, default: float, low: float, high: float) -> float:
    """A number of seconds from `low` to `high` (decimals allowed)."""
    given = os.environ.get(name, "").strip()
    if not given:
        return default
    try:
        value = float(given)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # nan and inf fail too
        _refuse(f"{name} must be a number of seconds from {low:g} to {high:g}, got {given!r}")
    return value


from app import http_worker as _http_worker  # noqa: E402

_http_worker.configure(request_read_timeout=_seconds_env("REQUEST_READ_TIMEOUT", 5.0, 0.5, 300),
                       max_body=_settings["MAX_CONTENT_LENGTH"])
timeout = 30
# A worker told to stop (restart, HUP, deploy) first writes its queued recordings (2 s at most),
# then lets its outbox sender finish the Message API request or webhook call in flight: that
# ends within its total deadline (OUTBOX_LEASE / 2, at most 20 s), and its outcome is written
# (a few seconds more if the database is busy): worker_exit waits for that. A worker killed
# before (graceful_timeout) loses the outcome: the item comes back `unknown` after its lease and
# is looked up. 30 s covers 2 + 20 + _STOP_MARGIN_S.
graceful_timeout = 30
#: Seconds past the HTTP deadline a stopping worker waits for its sender to write the outcome.
_STOP_MARGIN_S = 5.0
keepalive = 5

# Forwarded headers are trusted by the app alone, through TRUSTED_PROXIES
# (werkzeug's ProxyFix), so gunicorn must not act on X-Forwarded-Proto itself.
secure_scheme_headers = {}

# Request limits. A GET webhook carries the whole message in its request line, percent-
# encoded (3 bytes per UTF-8 byte). The longest texts, at their worst:
#   SMS, GSM-7: 1,600 characters of 2 UTF-8 bytes (é, Ä, Greek capitals)  1,600 x 6 =  9,600
#     (800 '€', 2 GSM units each: 7,200; 737 UCS-2 characters as 4-byte emoji: 737 x 12 = 8,844)
#   MMS: 1,600 characters as 4-byte emoji                                  1,600 x 12 = 19,200
#   WhatsApp: 4,096 characters as 4-byte emoji                             4,096 x 12 = 49,152
# and every other parameter at its longest (numbers of 15 digits, uuids, Units, rates, the
# intent, MediaCount and 10 media URLs of about 164 bytes each): 1,963 bytes, plus
# "GET /message?" and " HTTP/1.1": 51,137 bytes for the WhatsApp text, 11,585 for an SMS.
# 65,536 takes all of them with room for a longer path; longer lines get gunicorn's 414.
# (gunicorn's default of 4,094 loses a GET of 450 Chinese characters.)
limit_request_line = 65536
# Plivo sends about 12 headers, none over 100 bytes (two signatures in one header while a
# token rotates); proxies and CDNs in front add up to about 20. More is refused with 431.
limit_request_fields = 50
limit_request_field_size = 8190


def _raise_request_line_cap(limit: int) -> None:
    """gunicorn cuts any limit_request_line above its MAX_REQUEST_LINE (8,190) down to it;
    its parser reads that cap for each request, so raising it here, in the master before
    the workers fork, lets the limit above hold (tests/test_long_get.py checks both ends)."""
    from gunicorn.http import message

    if getattr(message, "MAX_REQUEST_LINE", limit) < limit:
        message.MAX_REQUEST_LINE = limit


_raise_request_line_cap(limit_request_line)

# gunicorn's control socket (for `gunicornc`) is one fixed path per user, so several
# instances on one host would take it from each other: off unless a path is given.
if os.environ.get("GUNICORN_CONTROL_SOCKET"):
    control_socket = os.environ["GUNICORN_CONTROL_SOCKET"]
else:
    control_socket_disable = True

# Logs: gunicorn's own lines on stderr; the app logs one line per message, so the
# access log stays off unless asked for (GUNICORN_ACCESS_LOG=-, on stdout). Both go
# through the app's formatter (LOG_FORMAT), the access log as fields without the query.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
loglevel = _settings["LOG_LEVEL"].lower()

from gunicorn.glogging import Logger as _GunicornLogger  # noqa: E402

from app import logs as _logs  # noqa: E402


class _Logger(_GunicornLogger):
    """gunicorn's error and access logs through the app's formatter.

    The access log is one line of fields per request (method, path without the
    query string, status, bytes, duration_ms, remote); `access_log_format` is not used.
    """

    def setup(self, cfg):
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if getattr(handler, "_gunicorn", False):
                    handler.setFormatter(_logs.formatter(_FORMAT))
        # Its lines about a request it refused quote the request line (a GET's query holds
        # the message): they say what was wrong, not what was received.
        _logs.hide_request_data(self.error_log)
        _logs.configure_process(_settings["LOG_LEVEL"], _FORMAT)

    def access(self, resp, req, environ, request_time):
        if self.access_log_enabled:
            self.access_log.info("request", extra=_logs.access_fields(
                environ, resp.status, getattr(resp, "sent", None), request_time.total_seconds()))


logger_class = _Logger
_logs.log_uncaught()


def on_starting(server):
    """Refuse to start on a bad rules file or database; migrate the database.

    A bad rules file gives `path:line: message` per problem; a DATABASE_URL that
    is malformed or does not answer gives one line naming it. Then the schema is
    brought up to date (`flask --app wsgi db upgrade`), before any worker forks. Once an
    operator exists, SECRET_KEY is required.

    Only at start: after a HUP (or when a worker is replaced) the master must not
    exit over the file; workers that start while it is bad answer with the last
    good rules, kept in the instance folder, and /readyz lists the problems. The
    version compiled here is kept too, so workers that boot after the file broke
    answer from it.
    """
    from app import logs
    from app.rules import RulesError, sending_of
    from app.rules.holder import WARNED_ENV, compile_and_keep, keep_dir

    _check_listening(server)
    from app import metrics
    if not metrics.MULTIPROCESS:  # each worker would count alone: a scrape would show one worker
        _refuse(f"metrics: prometheus_client was imported before {_folders.VARIABLE} was set "
                "(gunicorn.conf.py must set it first)")
    if _METRICS.empty:  # not after a USR2 upgrade: the old workers still write in the folder
        _empty_metrics_folder()
    settings = _settings
    engine, url = _engine(settings)  # before the rules: a database that cannot be used is one line
    if not settings["VERIFY_SIGNATURES"]:
        _say("warning", "VERIFY_SIGNATURES=false: requests are answered without checking that "
             "Plivo sent them; use this only for local experiments")
    try:
        ruleset = compile_and_keep(settings["RULES_PATH"], keep_dir(os.path.join(_HERE, "instance")),
                                   sending=sending_of(settings))
    except Exception as exc:  # noqa: BLE001 - any failure to load refuses the start, in one place
        problems = exc.problems if isinstance(exc, RulesError) else [
            f"{settings['RULES_PATH']}: cannot load: {type(exc).__name__}: {exc}"]
        if _FORMAT != "json":  # JSON: one line, the problems a list in it (scrubbed by its formatter)
            for problem in problems:
                _say("error", logs.scrub(str(problem)), prefix=False)
        _refuse(f"{settings['RULES_PATH']} has {len(problems)} problem(s); "
                "fix them (flask --app wsgi rules check) and start again", problems=[str(p) for p in problems])
    _migrate(server, engine, url)
    _require_secret_key(settings, engine, url)
    # The warnings once per start, here, once nothing can refuse it; the workers compile the
    # same file and say nothing more.
    for warning in ruleset.warnings:
        _say("warning", logs.scrub(f"{warning.where}: warning: {warning.message}"), prefix=False,
             rules_path=warning.path, digest=ruleset.digest)
    os.environ[WARNED_ENV] = ruleset.digest


def _check_listening(server):
    """Refuse at once, in one line, when an address to listen on is taken or not allowed.

    (gunicorn would try five times, a second apart, saying only "Connection in use".)
    Skipped when the sockets come from elsewhere: a USR2 upgrade, systemd, reuse_port.
    """
    if server.LISTENERS or os.environ.get("GUNICORN_FD") or os.environ.get("LISTEN_FDS") or server.cfg.reuse_port:
        return
    for address in server.cfg.address:
        if not isinstance(address, tuple):
            continue  # a unix socket: gunicorn replaces a stale one itself
        host, port = address[0], address[1]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            _probe(family, host, port)
        except OSError as exc:
            where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
            if exc.errno == errno.EADDRINUSE:
                free = _free_port_after(family, host, port)
                _refuse(f"port {port} is already in use ({where}): stop whatever listens there, or start "
                        + (f"on another port, e.g. PORT={free} ./scripts/serve" if free is not None
                           else "on another port (PORT)"))
            _refuse(f"cannot listen on {where}: {exc.strerror or exc}")


def _probe(family, host: str, port: int) -> None:
    """Bind `host:port` as gunicorn will and let go at once; OSError when that fails."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        probe.bind((host, port))


def _bindable(family, host: str, port: int) -> bool:
    try:
        _probe(family, host, port)
    except OSError:
        return False
    return True


def _free_port_after(family, host: str, port: int, tries: int = 20) -> int | None:
    """The first of the next `tries` ports that is free at this moment, or None."""
    return next((p for p in range(port + 1, min(port + tries, 65535) + 1) if _bindable(family, host, p)), None)


def _empty_metrics_folder():
    """prometheus_client needs a clean folder per run: the files of an earlier run would
    add their counts (and a dead run's gauges) to this one's."""
    for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            _refuse(f"PROMETHEUS_MULTIPROC_DIR: cannot empty the folder: {path}: {exc.strerror}")


def child_exit(server, worker):
    """A worker is gone (stopped, crashed, killed): drop its live gauges and any empty file
    it left (killed between creating a file and sizing it); its counts stay."""
    from prometheus_client import multiprocess

    folder = os.environ.get(_folders.VARIABLE, "")
    if not os.path.isdir(folder):
        return
    multiprocess.mark_process_dead(worker.pid, folder)
    for path in _folders.dead_worker_leftovers(folder, worker.pid):
        try:
            os.remove(path)
        except OSError:
            pass


def on_exit(server):
    """Remove the metrics folder if this master made it. After a USR2 upgrade the new master
    has a folder of its own, so the old one removes its own as it exits, either way."""
    _remove_metrics_folder()


def post_worker_init(worker):
    """Start this worker's background work (app/serving.py), now that it has forked and built
    its app from wsgi:app. bench/run also serves a bare Flask app with these settings: it has none."""
    from app.serving import start_background

    if "responder" in getattr(worker.wsgi, "extensions", {}):
        start_background(worker.wsgi)


def worker_exit(server, worker):
    """Stop this worker's background work: its queued recordings are written (2 s at most; what
    is left is lost, and the recorder logs how many), then the outbox request in flight ends by
    its deadline and its outcome is written."""
    from app.outbound.sender import timeouts
    from app.serving import stop_background

    stop_background(record_timeout=2.0,
                    send_timeout=timeouts(_settings["OUTBOX_LEASE"])[2] + _STOP_MARGIN_S)


def _engine(settings):
    """(engine, url) for DATABASE_URL, or a refusal in one line: a malformed URL, or a SQLite
    file this user cannot write. Nothing is connected yet."""
    from app.store.db import DatabaseUrlError, make_engine

    url = _config.database_url(settings["DATABASE_URL"], os.path.join(_HERE, "instance"))
    try:
        return make_engine(url, pool_size=1), url
    except DatabaseUrlError as exc:
        _refuse(str(exc))


def _migrate(server, engine, url):
    """Check that the database answers and apply the migrations; the engine is gone before the fork."""
    from app.store import migrate
    from app.store.db import DatabaseUrlError, check_connection, display

    try:
        check_connection(engine)
    except DatabaseUrlError as exc:
        engine.dispose()
        _refuse(str(exc))
    try:
        before, after = migrate.upgrade(engine)
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback from the master
        _refuse(f"DATABASE_URL: migrating {display(url)} failed: {type(exc).__name__}: {exc}")
    finally:
        engine.dispose()
    if before != after:
        server.log.info("database %s migrated from %s to %s", display(url), before or "empty", after)


def _require_secret_key(settings, engine, url):
    """Refuse to start without SECRET_KEY once an operator exists: the operator page signs its
    sessions with it (a key made up per process would differ between workers and hosts, and
    sign everyone out at each restart). Asked after migrating, when the table is sure to be there."""
    if settings["SECRET_KEY"]:
        return
    import sqlalchemy as sa

    from app.store.db import display
    from app.store.schema import operators
    try:
        with engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(operators)).scalar_one()
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback from the master
        _refuse(f"DATABASE_URL: cannot count the operators in {display(url)}: {type(exc).__name__}: {exc}")
    finally:
        engine.dispose()
    if count:
        _refuse(f"SECRET_KEY is not set and {count} operator(s) exist: set SECRET_KEY (the same on every "
                "host) or remove them (flask --app wsgi operators remove NAME)")
