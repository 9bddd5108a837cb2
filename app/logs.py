"""Logging set-up: one JSON object per line (LOG_FORMAT=json) or plain text.

Configured once per process: the app's loggers, every other library's (through
the root logger), Python warnings, exceptions that end a thread and exceptions
Python can only ignore ("Exception ignored in ...") all go through the same
formatter; gunicorn.conf.py puts gunicorn's error and access logs through it
too. Extra fields given with `extra={...}` appear as keys of the JSON object.

Privacy: a log line never holds a token, a signature or a message's text, and
phone numbers appear as their last four digits (`…0123`). Code logs neither
whole numbers nor texts; as a second line of defence the formatters cut any
phone number in a message, a traceback or the strings of an extra field to its
last four digits and drop query strings from URLs in them (a GET webhook
carries From, To and Text there). Database errors never show their statement's
parameters (the engines hide them). gunicorn's own lines about a request it refused say
what was wrong without quoting what was received (`ServerLineFilter`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time

from . import phone

# Attributes every LogRecord has; anything else was passed with `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}

#: A URL's user information (`https://admin:S3cret@host`: a password, or a token given as the
#: user name) and a query string (`?a=b...`) after a URL or path: both can hold credentials.
#: A user name and a password may hold `@`, `/`, `?` or `#` as people type them
#: (`https://admin:p@ss/w@host`): after `user:` (not a port: `host:8080/`), everything up to
#: the last `@` of the URL goes; without a colon, the user part up to the first `@`.
_USERINFO = (r"""(?P<userinfo>(?<=://)(?:[^\s/?#@"'<>:]*:(?!\d+(?:[/?#\s"'<>]|$))[^\s"'<>]*@"""
             r"""|[^\s/?#@"'<>]+@))""")
_QUERY = r"""(?P<query>(?<=[^\s?])\?[^\s"'<>?]*=[^\s"'<>]*)"""
_CREDENTIALS = re.compile(f"{_USERINFO}|{_QUERY}")

#: What `_CREDENTIALS` finds, or a phone number as logs judge one (`phone.STANDING_ALONE`).
_PRIVATE = re.compile(_USERINFO + "|" + _QUERY + "|" + phone.STANDING_ALONE, re.VERBOSE)


def _hide(match: re.Match) -> str:
    if match.group("userinfo") is not None:
        return "…@"
    if match.group("query") is not None:
        return "?…"
    return phone.last_four(match.group())


def scrub(text: str) -> str:
    """`text` with URLs' user information and query strings dropped and phone numbers cut to
    their last four digits."""
    return _PRIVATE.sub(_hide, text)


def hide_credentials(text: str) -> str:
    """`text` with the user information (`user:password@`) and query strings of URLs in it
    replaced by `…`, and nothing else changed: for what an operator reads about their own
    file (`rules check`), which may show numbers but should not show a password."""
    return _CREDENTIALS.sub(_hide, text)


def scrub_value(value, depth: int = 0):
    """`value` (an `extra=` field) with every string in it scrubbed, inside lists, tuples and
    dicts too (keys included); numbers, booleans and None as they are."""
    if isinstance(value, str):
        return scrub(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if depth >= 8:  # deeper than any field we log (or a structure that holds itself)
        return scrub(str(value))
    if isinstance(value, dict):
        return {scrub_value(k, depth + 1) if isinstance(k, str) else k: scrub_value(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [scrub_value(v, depth + 1) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    return value


def _as_text(value) -> str:
    """A non-JSON value (an exception, a path, ...) as scrubbed text."""
    return scrub(str(value))


def redact(message: str, *values: str | None) -> str:
    """`message` (an exception's, say) without any of `values` (a message's text, its
    numbers) or their words of three characters or more, then `scrub`bed."""
    parts: set[str] = set()
    for value in values:
        if value:
            parts.add(value)
            parts.update(word for word in value.split() if len(word) >= 3)
    for part in sorted(parts, key=len, reverse=True):
        if part in message:
            message = message.replace(part, "…")
    return scrub(message)


def _extras(record: logging.LogRecord) -> dict:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "msg": scrub(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = scrub_value(value)
        if record.exc_info:
            out["exc"] = scrub(self.formatException(record.exc_info))
        elif record.stack_info:
            out["stack"] = scrub(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=_as_text)


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = scrub(super().format(record))
        extras = _extras(record)
        if extras:
            text += " " + " ".join(f"{k}={v if isinstance(v, (bool, int, float)) else _as_text(v)}"
                                   for k, v in extras.items())
        return text


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def _handler(logger: logging.Logger, fmt: str) -> logging.Handler:
    """This module's stderr handler on `logger` (added once), set to `fmt`."""
    handler = next((h for h in logger.handlers if getattr(h, "_responder", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._responder = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    handler.setFormatter(formatter(fmt))
    return handler


def configure(level: str, fmt: str) -> None:
    """Send the `app` loggers, and every other logger through the root, to stderr in the
    chosen format (idempotent)."""
    logger = logging.getLogger("app")
    logger.setLevel(level)
    _handler(logger, fmt)
    logger.propagate = False
    configure_process(level, fmt)


def configure_process(level: str, fmt: str) -> None:
    """What is not the app's: other libraries (root logger), warnings, thread deaths.

    Called by `configure`, and by the gunicorn master, which has no app.
    """
    root = logging.getLogger()
    root.setLevel(level)
    _handler(root, fmt)
    # urllib3 (under requests) logs each request line at DEBUG, query string included, and a
    # webhook URL's query can hold the receiver's token: its lines stop at INFO whatever LOG_LEVEL.
    logging.getLogger("urllib3").setLevel(max(logging.INFO, logging.getLevelName(level)))
    # alembic says which database driver it found at every migration check; only at DEBUG.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # werkzeug's development server (`flask run`) logs each request line, query string included.
    werkzeug = logging.getLogger("werkzeug")
    if not any(isinstance(f, _RequestLineFilter) for f in werkzeug.filters):
        werkzeug.addFilter(_RequestLineFilter())
    logging.captureWarnings(True)
    threading.excepthook = _thread_died
    # "Exception ignored in ..." (an error in __del__, say) too; a hook someone else set
    # (pytest's, which turns these into test failures) is left in place.
    if sys.unraisablehook in (sys.__unraisablehook__, _unraisable):
        sys.unraisablehook = _unraisable


class _RequestLineFilter(logging.Filter):
    """Drops the query string from the arguments of werkzeug's request lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and isinstance(record.args, tuple):
            # A request line's query runs to the next space, quotes included (`Text=it's`).
            record.args = tuple(scrub(_LINE_QUERY.sub("?…", a)) if isinstance(a, str) else a
                                for a in record.args)
        return True


_LINE_QUERY = re.compile(r"\?\S*")


def _thread_died(args: threading.ExceptHookArgs) -> None:
    """An exception that ended a thread: one log line, not a traceback on stderr."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("app").critical("uncaught exception in thread %s", name,
                                      exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def _unraisable(unraisable) -> None:
    """An exception Python could not raise (in `__del__`, a callback, at exit): one log line,
    not its "Exception ignored in" text on stderr."""
    heading = unraisable.err_msg or "Exception ignored in"
    if unraisable.object is not None:
        try:
            heading = f"{heading}: {unraisable.object!r}"
        except Exception:  # noqa: BLE001 - an object whose repr fails: its type is enough
            heading = f"{heading}: <{type(unraisable.object).__name__} object>"
    exc_info = None
    if unraisable.exc_type is not None:
        exc_info = (unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
    logging.getLogger("app").error("%s", heading, exc_info=exc_info)


def log_uncaught() -> None:
    """An exception that ends the process goes through the logger too (the gunicorn master)."""
    sys.excepthook = _process_died


def _process_died(exc_type, exc_value, exc_traceback) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc_value, exc_traceback)
        return
    logging.getLogger("app").critical("uncaught exception", exc_info=(exc_type, exc_value, exc_traceback))


def access_fields(environ: dict, status, sent, seconds: float) -> dict:
    """The fields of one access-log line: never the query string, which holds message data."""
    path = environ.get("RAW_URI") or environ.get("PATH_INFO") or ""
    if "?" in path:
        path = path.split("?", 1)[0]
    if isinstance(status, str):
        status = status.split(None, 1)[0]
    try:
        status = int(status)
    except (TypeError, ValueError):
        pass
    return {
        "method": environ.get("REQUEST_METHOD", ""),
        "path": path,
        "status": status,
        "bytes": sent if sent is not None else 0,
        "duration_ms": round(seconds * 1000, 3),
        "remote": environ.get("REMOTE_ADDR", ""),
    }


def line(level: int, message: str, fmt: str, name: str = "gunicorn.conf", **fields) -> str:
    """One formatted line, for code that runs before any logger is set up."""
    record = logging.makeLogRecord({"name": name, "levelno": level, "levelname": logging.getLevelName(level),
                                    "msg": message, "args": (), **fields})
    return formatter(fmt).format(record)


#: gunicorn's line for a request it refused itself (a bad request line or header, a line
#: over limit_request_line, ...): `Invalid request from ip=<addr>: <what, then what it got>`.
_INVALID_REQUEST = "Invalid request from ip="
#: Where the quoted part of gunicorn's description of a refused request starts.
_QUOTED = re.compile(r":\s|['\"]")


class ServerLineFilter(logging.Filter):
    """On gunicorn's error log: its lines about a request it could not serve quote what the
    client sent (the request line with its query string, a header, the bytes read before a
    disconnection), which for a GET webhook is the message itself. They keep what went
    wrong and leave out what was received: `Invalid request from ip=10.0.0.5: Invalid HTTP
    request line`; a URI given as an argument loses its query; one of gunicorn's own
    exceptions given as an argument is named by its type."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        if isinstance(msg, str) and msg.startswith(_INVALID_REQUEST):
            head, sep, detail = msg.partition(": ")
            record.msg = head + sep + _QUOTED.split(detail, 1)[0].rstrip()
        if record.args and isinstance(record.args, tuple):
            record.args = tuple(_server_arg(a) for a in record.args)
        return True


def _server_arg(value):
    if isinstance(value, BaseException) and type(value).__module__.startswith("gunicorn."):
        return type(value).__name__  # its parse errors quote what was received (NoMoreData: all of it)
    if isinstance(value, str) and "?" in value:
        return value.split("?", 1)[0]
    return value


def hide_request_data(logger: logging.Logger) -> None:
    """Put a `ServerLineFilter` on `logger` (gunicorn's error log), once."""
    if not any(isinstance(f, ServerLineFilter) for f in logger.filters):
        logger.addFilter(ServerLineFilter())
