"""HTTP routes: thin adapters between Flask and `service.Responder`."""

from __future__ import annotations

import os
from urllib.parse import quote

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import BadRequest, NotFound, RequestEntityTooLarge

from .metrics import CONTENT_TYPE
from .signature import SIGNATURE_HEADERS
from .service import Answer, HttpRequest, called_url

bp = Blueprint("responder", __name__)

WEBHOOK_METHODS = ["GET", "POST"]

#: (header name, WSGI environ key) of the headers the pipeline reads: six dict look-ups
#: per request instead of walking every header.
_ENVIRON_KEYS = tuple((name, "HTTP_" + name.upper().replace("-", "_")) for name in SIGNATURE_HEADERS)


def _body(environ: dict, limit: int) -> bytes:
    """The raw body; over MAX_CONTENT_LENGTH (`limit`) is a 413, chunked bodies included.

    Read straight from the WSGI input: gunicorn bounds it by Content-Length or ends
    it at the last chunk. (werkzeug's limited stream would stop a chunked body at the
    limit and return what it read, cutting the message short without an error.)
    """
    coding = environ.get("HTTP_TRANSFER_ENCODING")
    if coding is not None and coding.strip().lower() != "chunked":
        # gzip, chunked (or any other coding) would reach the app still encoded: a proxy in
        # front and this service would then read two different bodies. Plivo sends none.
        raise BadRequest("unsupported Transfer-Encoding")
    try:
        return _read(environ["wsgi.input"], environ.get("CONTENT_LENGTH"), limit,
                     environ.get("wsgi.input_terminated"))
    except (BadRequest, RequestEntityTooLarge):
        raise
    except Exception:  # noqa: BLE001 - the server's own parse errors: bad chunk sizes, a cut-off body
        raise BadRequest("malformed body") from None


def _read(stream, length, limit: int, terminated) -> bytes:
    if length:
        try:
            size = int(length)
        except ValueError:
            raise BadRequest("bad Content-Length") from None
        if size > limit:
            raise RequestEntityTooLarge()
        data = stream.read(size) if size > 0 else b""
        if len(data) != size:  # the client stopped early: never check a signature on part of a body
            raise BadRequest("body shorter than Content-Length")
        return data
    if not terminated:
        return b""  # no length and a server that does not end the stream: nothing to read safely
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise RequestEntityTooLarge()
    return data


def _http_request(environ: dict, config, path: str) -> HttpRequest:
    """The request as the pipeline sees it, read from the WSGI environ once.

    `path` is the webhook's own path: werkzeug also routes `//message` and `/%2Fmessage`
    here, and those are 404, so the path that was signed is the path that is served.

    ProxyFix (TRUSTED_PROXIES) has already rewritten the scheme and Host here.
    """
    # The path exactly as sent (gunicorn: RAW_URI; werkzeug's server: REQUEST_URI), because
    # the signature covers it byte for byte; werkzeug's request.url is decoded and re-quoted.
    served = environ.get("PATH_INFO", "")
    if served != path and served != path + "/":
        raise NotFound()
    raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    query = environ.get("QUERY_STRING", "")
    if not raw_uri:
        raw_uri = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")) + (f"?{query}" if query else "")
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
    method = environ["REQUEST_METHOD"]
    return HttpRequest(
        method=method,
        url=called_url(environ["wsgi.url_scheme"], host, raw_uri, config["PUBLIC_URL"]),
        query=query.encode("latin-1"),
        body=_body(environ, config["MAX_CONTENT_LENGTH"]) if method == "POST" else b"",
        content_type=environ.get("CONTENT_TYPE"),
        headers={name: environ[key] for name, key in _ENVIRON_KEYS if key in environ},
        environ=environ,
    )


def _response(answer: Answer) -> Response:
    return Response(answer.body, answer.status, content_type=answer.content_type)


@bp.route("/message", methods=WEBHOOK_METHODS, strict_slashes=False, provide_automatic_options=False)
def message():
    app = current_app._get_current_object()  # one proxy look-up, not one per attribute
    req = _http_request(request.environ, app.config, "/message")
    return _response(app.extensions["responder"].handle_message(req))


@bp.route("/status", methods=WEBHOOK_METHODS, strict_slashes=False, provide_automatic_options=False)
def status():
    app = current_app._get_current_object()
    req = _http_request(request.environ, app.config, "/status")
    return _response(app.extensions["responder"].handle_status(req))


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
