"""The responder: answers Plivo inbound messages from YAML reply rules.

`create_app` builds and wires the app and starts nothing. A process that serves starts its
background work with `app.serving.start_background`; wsgi.py decides, once, whether this
process serves or runs a `flask` command (app/serving.py says who calls what, and when).
"""

from __future__ import annotations

import logging
import os

from flask import Flask, Response
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

import config

from . import cli, logs, metrics, operator_page, web
from .hostcheck import HostCheck
from .outbound.sender import build_sender
from .rules import RulesHolder, sending_of
from .rules.holder import keep_dir
from .service import Responder
from .serving import COMMAND, role
from .store import DatabaseUrlError, Store
from .webhook_routes import Webhooks

log = logging.getLogger("app")

#: Keys of test_config that are not settings but test hooks.
_HOOKS = ("TESTING", "CLOCK", "INSTANCE_PATH", "METRICS_EVERY")


def create_app(test_config: dict | None = None, *, serving: bool | None = None) -> Flask:
    """Build and wire the app; start no thread (`app.serving.start_background` does, once per
    serving process, after any fork). Settings come from the environment, or only from `test_config`.

    `serving=False` is the app of a `flask` command (rules check, sign, messages, ...): it needs
    no token, logs only warnings, counts nothing, and leaves the rules to the command, so a
    broken file can still be checked. A bad setting raises config.ConfigError. Left out, it is
    what `app.serving.role` says (so `flask --app app rules check` is a command, as with wsgi).
    """
    if serving is None:
        serving = role() != COMMAND
    app = Flask(__name__, instance_relative_config=True, instance_path=(test_config or {}).get("INSTANCE_PATH"))
    _load_settings(app, test_config, serving=serving)
    _set_up_process(app.config, serving=serving)
    settings = app.config
    sending = sending_of(settings, serving=serving)
    # The last good rules are kept per rules file in the instance folder, shared by the workers.
    holder = RulesHolder(settings["RULES_PATH"], settings["RULES_RELOAD_INTERVAL"],
                         keep_dir=keep_dir(app.instance_path), sending=sending)
    if serving:
        holder.load()
    store = _store(settings)
    sender = app.extensions["outbox_sender"] = _outbox_sender(settings, store) if serving else None
    recorder = app.extensions["recorder"] = _recorder(settings) if serving else None
    responder = app.extensions["responder"] = Responder(
        tokens=settings["PLIVO_AUTH_TOKENS"], verify=settings["VERIFY_SIGNATURES"],
        public_url=settings["PUBLIC_URL"], holder=holder, store=store, clock=settings.get("CLOCK"),
        api=sending.api, webhooks=bool(settings["WEBHOOK_SECRET"]), hold=settings["OUTBOX_SENDER"] == "hold",
        on_queued=sender.wake if sender is not None else None,
        on_answered=recorder.submit if recorder is not None else None,
    )
    _wrap_for_webhooks(app, responder)
    app.register_blueprint(web.bp)
    app.register_blueprint(operator_page.bp)
    _register_errors(app)
    cli.register(app)
    app.extensions["metrics"] = metrics.Exporter(store, holder, token=settings["METRICS_TOKEN"],
                                                 every=settings.get("METRICS_EVERY", metrics.STATE_SECONDS))
    if metrics.counting():
        # Outermost, so every request is counted and timed: errors and unknown paths too.
        app.wsgi_app = metrics.Instrumented(app.wsgi_app, metrics.endpoints_of(
            (rule.rule, rule.endpoint, rule.strict_slashes) for rule in app.url_map.iter_rules()))
    return app


def _load_settings(app: Flask, test_config: dict | None, *, serving: bool) -> None:
    """The settings (config.py) into app.config; a command needs no token, it sends nothing."""
    environ = os.environ if test_config is None else test_config
    app.config.update(config.load(environ, require_token=serving))
    for key in _HOOKS:
        if test_config and key in test_config:
            app.config[key] = test_config[key]
    app.config["DATABASE_URL"] = config.database_url(app.config["DATABASE_URL"], app.instance_path)


def _set_up_process(settings, *, serving: bool) -> None:
    """Logging and metrics, which belong to the process, and the warning about unsigned requests."""
    level = settings["LOG_LEVEL"]
    if not serving and level in ("DEBUG", "INFO"):
        level = "WARNING"  # commands print their own results; keep the per-message log lines out
    logs.configure(level, settings["LOG_FORMAT"])
    if not serving:
        # A command serves no traffic: it counts nothing and makes no file in the
        # service's PROMETHEUS_MULTIPROC_DIR, so `rules test` or `simulate` run inside
        # the service's container leave the service's figures as they were.
        metrics.stop_counting()
        return
    # The master made and checked the folder; if it is gone or unusable by the time a worker
    # boots, the worker serves uncounted rather than failing its boot (which would halt the
    # master). A missing folder is simply made again.
    problem = metrics.check_folder()
    if problem is not None:
        log.error("metrics: %s; this process counts nothing", problem)
        metrics.stop_counting()
    if not settings["VERIFY_SIGNATURES"]:
        log.warning("VERIFY_SIGNATURES=false: requests are answered without checking that Plivo sent "
                    "them; use this only for local experiments")


def _store(settings) -> Store:
    """The database. Made here, in each gunicorn worker (the app is not preloaded), so no pool
    crosses a fork."""
    try:
        return Store(settings["DATABASE_URL"])
    except DatabaseUrlError as exc:
        raise config.ConfigError(str(exc)) from None


def _outbox_sender(settings, store: Store):
    """This process's outbox sender (OUTBOX_SENDER=web), not started; None when another sends
    (off), nothing is sent (hold), or there is nothing to send with (no PLIVO_AUTH_ID, no
    WEBHOOK_SECRET). It counts what it records in this worker's metrics (`flask outbox run`
    counts nothing)."""
    if settings["OUTBOX_SENDER"] != "web":
        return None
    sender = build_sender(store, settings, on_result=metrics.outbox_result)
    return sender if sender.kinds else None


def _recorder(settings):
    """The RECORD_DIR recorder of this process, not started (tests drain it themselves), or None."""
    if not settings["RECORD_DIR"]:
        return None
    from .recording.recorder import Recorder
    try:
        return Recorder(settings["RECORD_DIR"], settings["RECORD_MASK"], clock=settings.get("CLOCK"),
                        settings={"PUBLIC_URL": settings["PUBLIC_URL"],
                                  "TRUSTED_PROXIES": settings["TRUSTED_PROXIES"]})
    except (OSError, ValueError) as exc:  # the masking key cannot be made or read: record nothing
        log.error("RECORD_DIR: recording is off: %s", exc)
        return None


def _wrap_for_webhooks(app: Flask, responder: Responder) -> None:
    """The WSGI layers in front of Flask: the webhooks, the Host check, the trusted proxies."""
    # The two webhook routes are answered in front of Flask (app/webhook_routes.py); the
    # blueprint's views answer through the same object when Flask is reached.
    app.extensions["webhooks"] = webhooks = Webhooks(
        app.wsgi_app, responder, public_url=app.config["PUBLIC_URL"], limit=app.config["MAX_CONTENT_LENGTH"])
    # Inside ProxyFix: the Host and scheme the app will use must be plain `host[:port]` and
    # http(s), checked before any signature work (a Host with a path or a query would move
    # them into the URL the signature is checked against).
    app.wsgi_app = HostCheck(webhooks)
    proxies = app.config["TRUSTED_PROXIES"]
    if proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)


def _text_response(status: int, message: str, headers=None) -> Response:
    response = Response(message + "\n", status, content_type="text/plain; charset=utf-8")
    for name, value in headers or ():
        if name.lower() == "allow":  # werkzeug builds it from a set: the same order every time
            value = ", ".join(sorted(m.strip() for m in value.split(",")))
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _register_errors(app: Flask) -> None:
    limit = app.config["MAX_CONTENT_LENGTH"]

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc):
        return _text_response(413, f"request body too large (limit {limit} bytes)")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        message = (exc.name or "error").lower()
        if exc.description and exc.description != type(exc).description:
            message = exc.description  # a short reason given where it was raised
        return _text_response(exc.code or 500, message, exc.get_headers())

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unexpected error")
        return _text_response(500, "internal error")
