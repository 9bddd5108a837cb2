"""Logging set-up: one JSON object per line (LOG_FORMAT=json) or plain text.

Configured once per process. Extra fields given with `extra={...}` appear as
keys of the JSON object; nothing here ever logs a token or a signature.
"""

from __future__ import annotations

import json
import logging
import sys
import time

# Attributes every LogRecord has; anything else was passed with `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}
        if extras:
            text += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return text


def formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure(level: str, fmt: str) -> None:
    """Send the `app` loggers to stderr in the chosen format (idempotent)."""
    logger = logging.getLogger("app")
    logger.setLevel(level)
    handler = next((h for h in logger.handlers if getattr(h, "_responder", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._responder = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    handler.setFormatter(formatter(fmt))
    logger.propagate = False
    # urllib3 (under requests) logs each request line at DEBUG, query string included, and a
    # webhook URL's query can hold the receiver's token: its lines stop at INFO whatever LOG_LEVEL.
    logging.getLogger("urllib3").setLevel(max(logging.INFO, logging.getLevelName(level)))
