"""A serving process's background work, and the one test of whether this process serves.

`create_app` only builds and wires; nothing runs beside the requests until `start_background`
is called, once per serving process, after any fork (a thread does not survive one):

- a gunicorn worker: gunicorn.conf.py's post_worker_init, once the worker has forked and
  imported wsgi:app (the app is not preloaded, so each worker builds its own);
- `flask --app wsgi run`: wsgi.py, through `serve_from_flask_run`, which first brings the
  schema up to date (under gunicorn the master does that, before any worker forks).

Any other `flask` command (rules check, messages, sign, ...) serves nothing: wsgi.py builds
its app with `serving=False` and starts nothing, and the commands never ask. Tests build
apps with conftest's make_app and start nothing either: they drive each part themselves.
"""

from __future__ import annotations

import logging

import click
from flask import Flask

import config

from .maintenance import Pruner
from .store import DatabaseUrlError

log = logging.getLogger("app")

#: What this process does with the app wsgi.py builds (`role`).
SERVE = "serve"          # a WSGI server imported wsgi.py: gunicorn's workers
FLASK_RUN = "flask run"  # `flask --app wsgi run`: serves too, with no gunicorn master before it
COMMAND = "command"      # any other `flask --app wsgi ...` command: serves nothing


def role() -> str:
    """SERVE, FLASK_RUN or COMMAND: the one place that tells a command from a server.

    The `flask` command loads wsgi.py inside a click context: `run` serves, every other
    command (Flask's own `routes` and `shell` too) does not. gunicorn imports it outside any.
    """
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return SERVE
    return FLASK_RUN if ctx.info_name == "run" else COMMAND


def start_background(app: Flask) -> None:
    """Start this process's background work: the rules watcher, the pruner, the outbox sender,
    the recorder's writer; and say once what the settings leave off.

    One of each per serving process, started after the fork, so an idle worker follows the
    rules file as closely as a busy one and sends its share of the outbox.
    """
    settings = app.config
    responder = app.extensions["responder"]
    holder = responder.holder
    holder.start()
    Pruner(responder.store, settings["RETENTION_DAYS"], replay_days=settings["REPLAY_DAYS"]).start()
    sender = app.extensions["outbox_sender"]
    if sender is not None:
        sender.start()
        if settings["OUTBOX_LEASE"] < 30:
            log.warning("OUTBOX_LEASE=%g s is meant for tests: with short timeouts more sends end "
                        "'unknown', and one not yet in Plivo's message list %g s later is sent again",
                        settings["OUTBOX_LEASE"], 2 * settings["OUTBOX_LEASE"])
    elif settings["OUTBOX_SENDER"] == "hold":
        log.warning("OUTBOX_SENDER=hold: nothing is sent; Message API sends and webhook calls are "
                    "recorded as held outbox items (a replay target, not a service)")
    if not responder.api and holder.ruleset is not None and holder.ruleset.answers_whatsapp:
        log.warning("PLIVO_AUTH_ID is not set: WhatsApp messages will be recorded but get no replies "
                    "(Plivo takes WhatsApp replies only through its Message API)")
    recorder = app.extensions["recorder"]
    if recorder is not None:
        recorder.start()


def stop_background(*, record_timeout: float, send_timeout: float) -> None:
    """Finish the background work that holds something in memory (gunicorn's worker_exit).

    What is still queued for RECORD_DIR is written first, within `record_timeout` (the rest is
    lost, and the recorder logs how many); then the outbox sender's request in flight ends, by
    its deadline, and its outcome is written, within `send_timeout`. The rules watcher and the
    pruner hold nothing: their daemon threads end with the process.
    """
    from .outbound.sender import stop_all as stop_senders
    from .recording.recorder import stop_all as write_recordings

    write_recordings(timeout=record_timeout)
    stop_senders(timeout=send_timeout)


def serve_from_flask_run(app: Flask) -> None:
    """`flask run` serves like a gunicorn worker, with no master before it: bring the schema
    up to date first (as gunicorn.conf.py's on_starting does), then start the background work.
    A database that does not answer is a config.ConfigError."""
    from .store import migrate
    from .store.db import check_connection

    engine = app.extensions["responder"].store.engine
    try:
        check_connection(engine)
        migrate.upgrade(engine)
    except DatabaseUrlError as exc:
        raise config.ConfigError(str(exc)) from None
    start_background(app)
