"""HTTP routes: thin adapters between Flask and `service.Responder`."""

from __future__ import annotations

import os

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import NotFound

from .metrics import CONTENT_TYPE
from .webhook_routes import METHODS

bp = Blueprint("responder", __name__)

WEBHOOK_METHODS = sorted(METHODS)


def _webhook(path: str, route: str) -> Response:
    """A webhook call that came through Flask: answered as `webhook_routes.Webhooks` answers
    the ones it takes before Flask (all of them, when the app was made by create_app).

    werkzeug also routes `//message` and `/%2Fmessage` here, and those are 404, so the path
    that was signed is the path that is served.
    """
    environ = request.environ
    served = environ.get("PATH_INFO", "")
    if served != path and served != path + "/":
        raise NotFound()
    answer = current_app.extensions["webhooks"].answer(environ, route)
    return Response(answer.body, answer.status, content_type=answer.content_type)


@bp.route("/message", methods=WEBHOOK_METHODS, strict_slashes=False, provide_automatic_options=False)
def message():
    return _webhook("/message", "handle_message")


@bp.route("/status", methods=WEBHOOK_METHODS, strict_slashes=False, provide_automatic_options=False)
def status():
    return _webhook("/status", "handle_status")


@bp.record_once
def _webhooks_answer_only_get_and_post(state) -> None:
    """werkzeug adds HEAD to every rule that has GET. Plivo sends only GET and POST, so the
    webhooks take exactly those: HEAD and OPTIONS get a 405 like any other method, and every
    405's `Allow: GET, POST` tells the truth. (Runs after the routes above are registered.)"""
    views = {message, status}
    for rule in state.app.url_map.iter_rules():
        if state.app.view_functions.get(rule.endpoint) in views:
            rule.methods.discard("HEAD")


@bp.get("/healthz")
def healthz():
    return Response("ok\n", 200, content_type="text/plain; charset=utf-8")


def _problems(error) -> list[str]:
    """The rules file's problems as `path:line: kind`: never their messages, which may quote the
    file (a URL with its password), since /readyz answers anyone. The log and `rules check` say more."""
    return [p.brief for p in error.problems[:20]] if error is not None else []


@bp.get("/readyz")
def readyz():
    responder = current_app.extensions["responder"]
    holder = responder.holder
    ruleset = holder.current()
    if ruleset is None:
        return jsonify(status="not ready", reason="rules not loaded", problems=_problems(holder.error)), 503
    if responder.store is not None and not responder.store.ping():
        return jsonify(status="not ready", reason="database does not answer"), 503
    # pid: which worker answered, so the digests of every worker can be compared.
    # outbox: OUTBOX_SENDER, so `replay` can tell a target that holds every item (`hold`).
    body = {"status": "ready", "rules": len(ruleset.rules), "digest": ruleset.digest, "pid": os.getpid(),
            "outbox": current_app.config["OUTBOX_SENDER"]}
    if holder.error is not None:
        body["reload_failed"] = _problems(holder.error)
    return jsonify(body), 200


@bp.get("/metrics")
def metrics():
    """Prometheus' text format: the counts of every worker, and the state read now."""
    exporter = current_app.extensions["metrics"]
    if not exporter.allows(request.headers.get("Authorization")):
        return Response("401 Unauthorized: /metrics needs Authorization: Bearer <METRICS_TOKEN>\n", 401,
                        headers={"WWW-Authenticate": "Bearer"}, content_type="text/plain; charset=utf-8")
    return Response(exporter.render(), 200, content_type=CONTENT_TYPE)
