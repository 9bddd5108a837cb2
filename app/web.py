"""HTTP routes: thin adapters between Flask and `service.Responder`."""

from __future__ import annotations

from urllib.parse import quote

from flask import Blueprint, Request, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from .service import Answer, HttpRequest, called_url

bp = Blueprint("responder", __name__)


def _body(req: Request) -> bytes:
    """The raw body; over MAX_CONTENT_LENGTH is a 413, chunked bodies included.

    For a chunked body (no Content-Length) werkzeug's limited stream stops at the
    limit and returns what it read, so the body would be cut short silently; read
    one byte past the limit from the server-terminated stream to tell.
    """
    limit = req.max_content_length
    if req.content_length is None and limit is not None and req.environ.get("wsgi.input_terminated"):
        data = req.input_stream.read(limit + 1)
        if len(data) > limit:
            raise RequestEntityTooLarge()
        return data
    return req.get_data(cache=False)


def _http_request(req: Request) -> HttpRequest:
    environ = req.environ
    # The path exactly as sent (gunicorn: RAW_URI; werkzeug's server: REQUEST_URI), because
    # the signature covers it byte for byte; werkzeug's request.url is decoded and re-quoted.
    raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    query = environ.get("QUERY_STRING", "")
    if not raw_uri:
        raw_uri = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")) + (f"?{query}" if query else "")
    return HttpRequest(
        method=req.method,
        url=called_url(req.scheme, req.host, raw_uri, current_app.config["PUBLIC_URL"]),
        query=query.encode("latin-1"),
        body=_body(req) if req.method == "POST" else b"",
        content_type=req.content_type,
        headers=req.headers,
    )


def _response(answer: Answer) -> Response:
    return Response(answer.body, answer.status, content_type=answer.content_type)


@bp.route("/message", methods=["GET", "POST"], strict_slashes=False)
def message():
    responder = current_app.extensions["responder"]
    return _response(responder.handle_message(_http_request(request)))


@bp.route("/status", methods=["GET", "POST"], strict_slashes=False)
def status():
    responder = current_app.extensions["responder"]
    return _response(responder.handle_status(_http_request(request)))


@bp.get("/healthz")
def healthz():
    return Response("ok\n", 200, content_type="text/plain; charset=utf-8")


@bp.get("/readyz")
def readyz():
    holder = current_app.extensions["responder"].holder
    ruleset = holder.current()
    if ruleset is None:
        return jsonify(status="not ready", reason="rules not loaded",
                       problems=[str(p) for p in holder.error.problems[:20]] if holder.error else []), 503
    body = {"status": "ready", "rules": len(ruleset.rules), "digest": ruleset.digest}
    if holder.error is not None:
        body["reload_failed"] = [str(p) for p in holder.error.problems[:20]]
    return jsonify(body), 200
