"""/message and /status, GET and POST, answered in plain WSGI in front of Flask.

Plivo calls these two routes for every message and every delivery report. Flask's request
context, URL adapter (made twice), signals, teardown and Response objects cost about a
third of what the whole service does per message (`bench/wsgi_layers.py`), and none of it
is needed: the pipeline takes an `HttpRequest` read from the environ and gives back an
`Answer`. `Webhooks` does just that for exactly these paths and methods, with the status
lines and headers Flask gives the same answers; every other request (another path or
another spelling of these ones, such as `//message`, another method, such as HEAD) goes on
to Flask as before. The blueprint's views answer through `Webhooks.answer` too, so a
webhook gets the same answer whichever way it comes (tests/test_web.py compares them).

It sits inside HostCheck and ProxyFix (the Host and scheme it uses are checked, and with
TRUSTED_PROXIES they are the proxy's) and inside metrics.Instrumented, which counts and
times its answers like any other request's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from urllib.parse import quote

from werkzeug.http import HTTP_STATUS_CODES

from .service import Answer, HttpRequest, Rejected, called_url, text_answer
from .signature import SIGNATURE_HEADERS

__all__ = ["METHODS", "ROUTES", "Webhooks", "http_request"]

#: Flask's error handlers log to the app's logger; an unexpected error here is logged the same way.
log = logging.getLogger("app")

METHODS = frozenset({"GET", "POST"})
#: PATH_INFO -> the Responder's method for it (the routes take a trailing slash too).
ROUTES = {"/message": "handle_message", "/message/": "handle_message",
          "/status": "handle_status", "/status/": "handle_status"}

#: (header name, WSGI environ key) of the headers the pipeline reads: six dict look-ups
#: per request instead of walking every header.
_ENVIRON_KEYS = tuple((name, "HTTP_" + name.upper().replace("-", "_")) for name in SIGNATURE_HEADERS)
#: "403 FORBIDDEN": werkzeug's status line for a status code, which Flask sends.
_STATUS_LINES: dict[int, str] = {}
_INTERNAL_ERROR = text_answer(500, "internal error")


def _status_line(code: int) -> str:
    line = _STATUS_LINES.get(code)
    if line is None:
        line = _STATUS_LINES[code] = f"{code} {HTTP_STATUS_CODES.get(code, 'unknown').upper()}"
    return line


class Webhooks:
    """WSGI middleware: answers the webhook routes (see the module), passes the rest to `app`.

    `responder` is the app's `service.Responder`; `public_url` and `limit` are PUBLIC_URL and
    MAX_CONTENT_LENGTH.
    """

    def __init__(self, app: Callable, responder, *, public_url: str | None, limit: int):
        self.app = app
        self.responder = responder
        self.public_url = public_url
        self.limit = limit

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        route = ROUTES.get(environ.get("PATH_INFO"))
        if route is None or environ.get("REQUEST_METHOD") not in METHODS:
            return self.app(environ, start_response)
        try:
            answer = self.answer(environ, route)
        except Exception:  # what Flask's handler for any exception answers
            log.exception("unexpected error")
            answer = _INTERNAL_ERROR
        body = answer.body
        start_response(_status_line(answer.status),
                       [("Content-Type", answer.content_type), ("Content-Length", str(len(body)))])
        return [body]

    def answer(self, environ: dict, route: str) -> Answer:
        """The answer to one call of a webhook route (`ROUTES` value): a short error for a body
        that cannot be read, else the pipeline's."""
        try:
            req = http_request(environ, self.public_url, self.limit)
        except Rejected as exc:
            return exc.answer
        return getattr(self.responder, route)(req)


def http_request(environ: dict, public_url: str | None, limit: int) -> HttpRequest:
    """The request as the pipeline sees it, read from the WSGI environ once; `Rejected` with a
    400 or 413 answer when its body cannot be read (`limit`: MAX_CONTENT_LENGTH).

    ProxyFix (TRUSTED_PROXIES) has already rewritten the scheme and Host here.
    """
    # The path exactly as sent (gunicorn: RAW_URI; werkzeug's server: REQUEST_URI), because
    # the signature covers it byte for byte; werkzeug's request.url is decoded and re-quoted.
    raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    query = environ.get("QUERY_STRING", "")
    if not raw_uri:
        raw_uri = quote(environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")) + (f"?{query}" if query else "")
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
    method = environ["REQUEST_METHOD"]
    return HttpRequest(
        method=method,
        url=called_url(environ["wsgi.url_scheme"], host, raw_uri, public_url),
        query=query.encode("latin-1"),
        body=_body(environ, limit) if method == "POST" else b"",
        content_type=environ.get("CONTENT_TYPE"),
        headers={name: environ[key] for name, key in _ENVIRON_KEYS if key in environ},
        environ=environ,
    )


def _refused(status: int, message: str) -> Rejected:
    return Rejected(text_answer(status, message))


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
        raise _refused(400, "unsupported Transfer-Encoding")
    try:
        return _read(environ["wsgi.input"], environ.get("CONTENT_LENGTH"), limit,
                     environ.get("wsgi.input_terminated"))
    except Rejected:
        raise
    except Exception:  # noqa: BLE001 - the server's own parse errors: bad chunk sizes, a cut-off body
        raise _refused(400, "malformed body") from None


def _read(stream, length, limit: int, terminated) -> bytes:
    if length:
        try:
            size = int(length)
        except ValueError:
            raise _refused(400, "bad Content-Length") from None
        if size > limit:
            raise _too_large(limit)
        data = stream.read(size) if size > 0 else b""
        if len(data) != size:  # the client stopped early: never check a signature on part of a body
            raise _refused(400, "body shorter than Content-Length")
        return data
    if not terminated:
        return b""  # no length and a server that does not end the stream: nothing to read safely
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise _too_large(limit)
    return data


def _too_large(limit: int) -> Rejected:
    """The 413 Flask's handler gives (app/__init__.py), here without Flask."""
    return _refused(413, f"request body too large (limit {limit} bytes)")
