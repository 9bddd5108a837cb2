"""The responder: answers Plivo inbound messages from YAML reply rules."""

from __future__ import annotations

import logging
import os

import click
from flask import Flask, Response
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

import config

from . import cli, logs, metrics, web
from .hostcheck import HostCheck
from .maintenance import Pruner
from .outbound.sender import build_sender
from .rules import RulesHolder, outbound_settings
from .rules.holder import keep_dir
from .service import Responder
from .store import DatabaseUrlError, Store
from .webhook_routes import Webhooks

log = logging.getLogger("app")

#: Keys of test_config that are not settings but test hooks.
_HOOKS = ("TESTING", "CLOCK", "INSTANCE_PATH", "METRICS_EVERY")


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app. Settings come from the environment, or only from `test_config`."""
    instance_path = (test_config or {}).get("INSTANCE_PATH")
    app = Flask(__name__, instance_relative_config=True, instance_path=instance_path)
    # Inside the `flask` command (rules check, sign, ...) a token is not needed and the
    # rules are loaded by the command itself, so a broken file can still be checked.
    ctx = click.get_current_context(silent=True)
    in_cli = ctx is not None and ctx.info_name != "run"  # `flask run` serves: same rules as gunicorn
    environ = os.environ if test_config is None else test_config
    try:
        app.config.update(config.load(environ, require_token=not in_cli))
    except config.ConfigError as exc:
        _refuse(exc, ctx)
    for key in _HOOKS:
        if test_config and key in test_config:
            app.config[key] = test_config[key]
    app.config["DATABASE_URL"] = config.database_url(app.config["DATABASE_URL"], app.instance_path)

    level = app.config["LOG_LEVEL"]
    if in_cli and level in ("DEBUG", "INFO"):
        level = "WARNING"  # commands print their own results; keep the per-message log lines out
    logs.configure(level, app.config["LOG_FORMAT"])
    # The master made and checked the folder; if it is gone or unusable by the time a worker
    # boots, the worker serves uncounted rather than failing its boot (which would halt the
    # master). A missing folder is simply made again.
    problem = None if in_cli else metrics.check_folder()
    if problem is not None:
        log.error("metrics: %s; this process counts nothing", problem)
        metrics.stop_counting()
    if in_cli:
        # A command serves no traffic: it counts nothing and makes no file in the
        # service's PROMETHEUS_MULTIPROC_DIR, so `rules test` or `simulate` run inside
        # the service's container leave the service's figures as they were.
        metrics.stop_counting()
    if not app.config["VERIFY_SIGNATURES"] and not in_cli:
        log.warning("VERIFY_SIGNATURES=false: requests are answered without checking that Plivo sent "
                    "them; use this only for local experiments")

    # The last good rules are kept per rules file in the instance folder, shared by the workers.
    holder = RulesHolder(app.config["RULES_PATH"], app.config["RULES_RELOAD_INTERVAL"],
                         keep_dir=keep_dir(app.instance_path), outbound=outbound_settings(app.config, serving=not in_cli))
    if not in_cli:
        holder.load()
        if not app.testing:
            # One watcher thread per worker, started after the fork (the app is not preloaded),
            # so an idle worker follows the file as closely as a busy one.
            holder.start()
    try:
        # Made here, in each gunicorn worker (the app is not preloaded), so no pool crosses a fork.
        store = Store(app.config["DATABASE_URL"])
    except DatabaseUrlError as exc:
        _refuse(config.ConfigError(str(exc)), ctx)
    if ctx is not None and ctx.info_name == "run":
        from .store import migrate  # `flask run` serves like gunicorn: bring the schema up first
        from .store.db import check_connection
        try:
            check_connection(store.engine)
            migrate.upgrade(store.engine)
        except DatabaseUrlError as exc:
            _refuse(config.ConfigError(str(exc)), ctx)
    api = outbound_settings(app.config, serving=not in_cli).api
    sender = None
    if not in_cli and not app.testing:
        Pruner(store, app.config["RETENTION_DAYS"], replay_days=app.config["REPLAY_DAYS"]).start()
        if app.config["OUTBOX_SENDER"] == "web":
            # One sender (its lane threads) per worker, started here, after the fork (the app is not preloaded).
            # It counts what it records in this worker's metrics (`flask outbox run` counts nothing).
            sender = build_sender(store, app.config, on_result=metrics.outbox_result)
            if sender.kinds:  # nothing to send with (no PLIVO_AUTH_ID, no WEBHOOK_SECRET): no thread
                sender.start()
                if app.config["OUTBOX_LEASE"] < 30:
                    log.warning("OUTBOX_LEASE=%g s is meant for tests: with short timeouts more sends end "
                                "'unknown', and one not yet in Plivo's message list %g s later is sent again",
                                app.config["OUTBOX_LEASE"], 2 * app.config["OUTBOX_LEASE"])
            else:
                sender = None
        elif app.config["OUTBOX_SENDER"] == "hold":
            log.warning("OUTBOX_SENDER=hold: nothing is sent; Message API sends and webhook calls are "
                        "recorded as held outbox items (a replay target, not a service)")
        if not api and holder.ruleset is not None and holder.ruleset.answers_whatsapp:
            log.warning("PLIVO_AUTH_ID is not set: WhatsApp messages will be recorded but get no replies "
                        "(Plivo takes WhatsApp replies only through its Message API)")
    app.extensions["outbox_sender"] = sender
    recorder = app.extensions["recorder"] = _recorder(app.config, serving=not in_cli, start=not app.testing)
    app.extensions["responder"] = Responder(
        tokens=app.config["PLIVO_AUTH_TOKENS"], verify=app.config["VERIFY_SIGNATURES"],
        public_url=app.config["PUBLIC_URL"], holder=holder, store=store, clock=app.config.get("CLOCK"),
        api=api, webhooks=bool(app.config["WEBHOOK_SECRET"]), hold=app.config["OUTBOX_SENDER"] == "hold",
        on_queued=sender.wake if sender is not None else None,
        on_answered=recorder.submit if recorder is not None else None,
    )

    # The two webhook routes are answered in front of Flask (app/webhook_routes.py); the
    # blueprint's views answer through the same object when Flask is reached.
    app.extensions["webhooks"] = webhooks = Webhooks(
        app.wsgi_app, app.extensions["responder"], public_url=app.config["PUBLIC_URL"],
        limit=app.config["MAX_CONTENT_LENGTH"])
    # Inside ProxyFix: the Host and scheme the app will use must be plain `host[:port]` and
    # http(s), checked before any signature work (a Host with a path or a query would move
    # them into the URL the signature is checked against).
    app.wsgi_app = HostCheck(webhooks)
    proxies = app.config["TRUSTED_PROXIES"]
    if proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)

    app.register_blueprint(web.bp)
    _register_errors(app)
    cli.register(app)

    app.extensions["metrics"] = metrics.Exporter(store, holder, token=app.config["METRICS_TOKEN"],
                                                 every=app.config.get("METRICS_EVERY", metrics.STATE_SECONDS))
    if metrics.counting():
        # Outermost, so every request is counted and timed: errors and unknown paths too.
        app.wsgi_app = metrics.Instrumented(app.wsgi_app, metrics.endpoints_of(
            (rule.rule, rule.endpoint, rule.strict_slashes) for rule in app.url_map.iter_rules()))
    return app


def _recorder(settings, *, serving: bool, start: bool):
    """The RECORD_DIR recorder of this process, or None; its writer thread is started here,
    in each worker after the fork, like the outbox sender's (tests drain it themselves)."""
    if not settings["RECORD_DIR"] or not serving:
        return None
    from .recording.recorder import Recorder
    try:
        recorder = Recorder(settings["RECORD_DIR"], settings["RECORD_MASK"], clock=settings.get("CLOCK"),
                            settings={"PUBLIC_URL": settings["PUBLIC_URL"],
                                      "TRUSTED_PROXIES": settings["TRUSTED_PROXIES"]})
    except (OSError, ValueError) as exc:  # the masking key cannot be made or read: record nothing
        log.error("RECORD_DIR: recording is off: %s", exc)
        return None
    if start:
        recorder.start()
    return recorder


def _refuse(exc: config.ConfigError, ctx) -> None:
    """A bad setting: one line and exit 1 under the `flask` command, else the exception."""
    if ctx is not None:
        raise SystemExit(f"error: {exc}") from None
    raise exc


def _short(status: int, message: str, headers=None) -> Response:
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
        return _short(413, f"request body too large (limit {limit} bytes)")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        message = (exc.name or "error").lower()
        if exc.description and exc.description != type(exc).description:
            message = exc.description  # a short reason given where it was raised
        return _short(exc.code or 500, message, exc.get_headers())

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unexpected error")
        return _short(500, "internal error")
