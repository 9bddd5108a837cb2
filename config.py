"""Settings, read once from the environment (reference: docs/settings.md).

`load(environ)` turns environment-style strings into typed Flask config
values and raises `ConfigError` with one line naming the variable when a value
is wrong. It is called once per process by `create_app` and by the gunicorn
master before it forks, never per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line naming it."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
_LOG_FORMATS = {"json", "text"}
_OUTBOX_SENDERS = {"web", "off", "hold"}

DEFAULTS: dict[str, Any] = {
    "PLIVO_AUTH_TOKEN": None,
    "PLIVO_AUTH_ID": None,
    "PLIVO_API_URL": "https://api.plivo.com",
    "RULES_PATH": "rules.yaml",
    "DATABASE_URL": None,  # None: a SQLite file in the instance folder (see `database_url`)
    "PUBLIC_URL": None,
    "TRUSTED_PROXIES": 0,
    "VERIFY_SIGNATURES": True,
    "MAX_CONTENT_LENGTH": 65536,
    "LOG_LEVEL": "INFO",
    "LOG_FORMAT": "json",
    # Seconds between checks of the rules file for changes (0 to RULES_RELOAD_MAX); 0 turns reloading off.
    "RULES_RELOAD_INTERVAL": 5.0,
    # Messages, delivery reports and finished outbox items older than this many days are deleted.
    "RETENTION_DAYS": 90,
    # Days a used signature nonce and a MessageUUID are remembered (at least RETENTION_DAYS).
    "REPLAY_DAYS": 400,
    # Outbound: who sends the outbox, how fast, and the webhook action's key.
    "OUTBOX_SENDER": "web",
    "PLIVO_API_RATE": 5.0,
    "WEBHOOK_SECRET": None,
    # Seconds a sender may hold an item it claimed; after that its outcome is looked up.
    "OUTBOX_LEASE": 60.0,
    # The longest wait, in seconds, between two tries of an item that failed for a while.
    "OUTBOX_MAX_DELAY": 300.0,
    # Recording real traffic: the folder each signed inbound message is written to, and what is hidden.
    "RECORD_DIR": None,
    "RECORD_MASK": "numbers",
    # When set, /metrics answers only `Authorization: Bearer <METRICS_TOKEN>`.
    "METRICS_TOKEN": None,
    # Signs operator sessions; required at start once an operator exists (the same on every host).
    "SECRET_KEY": None,
}

#: Secret settings that may instead be given as a file, NAME_FILE=/run/secrets/... (Docker and
#: Kubernetes secrets): its content without the trailing newline. Giving both is an error.
SECRETS = ("PLIVO_AUTH_TOKEN", "WEBHOOK_SECRET", "DATABASE_URL", "METRICS_TOKEN", "SECRET_KEY")

#: The longest RULES_RELOAD_INTERVAL, seconds: an hour between looks at the file is already a long wait.
RULES_RELOAD_MAX = 3600
#: The shortest RULES_RELOAD_INTERVAL but 0 (off), seconds: each worker's watcher looks at the file
#: this often at most (0.0001 would make it stat the file 10,000 times a second).
RULES_RELOAD_MIN = 0.1

#: The SQLite file used when DATABASE_URL is not set, inside the instance folder.
SQLITE_FILE = "responder.sqlite3"


def database_url(value: str | None, instance_path: str) -> str:
    """DATABASE_URL, or the default: a SQLite file in Flask's instance folder."""
    if value:
        return value
    import os
    return "sqlite:///" + os.path.join(os.path.abspath(instance_path), SQLITE_FILE)


def _text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def whole_number(name: str, value: Any, minimum: int) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name} must be {minimum} or more, got {value!r}")
    return number


def _positive(name: str, value: Any, unit: str, low: float, high: float) -> float:
    """A finite number of `unit` between `low` and `high`."""
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number of {unit}, got {value!r}") from None
    if not low <= number <= high:  # also refuses nan and inf
        raise ConfigError(f"{name} must be a number of {unit} from {low:g} to {high:g}, got {value!r}")
    return number


def _reload_interval(value: Any) -> float:
    """RULES_RELOAD_INTERVAL: 0 turns reloading off, else RULES_RELOAD_MIN to RULES_RELOAD_MAX
    seconds. nan, inf and negatives are refused rather than silently turning it off too."""
    problem = f"RULES_RELOAD_INTERVAL must be 0 (off) or a number of seconds from {RULES_RELOAD_MIN:g} to " \
              f"{RULES_RELOAD_MAX:g}, got {value!r}"
    try:
        seconds = _positive("RULES_RELOAD_INTERVAL", value, "seconds", 0, RULES_RELOAD_MAX)
    except ConfigError:
        raise ConfigError(problem) from None
    if 0 < seconds < RULES_RELOAD_MIN:
        raise ConfigError(problem)
    return seconds


def _url(name: str, value: Any) -> str | None:
    text = _text(name, value)
    if text is None:
        return None
    if not (text.startswith("https://") or text.startswith("http://")) or "?" in text or "#" in text:
        raise ConfigError(f"{name} must be an http(s) base URL without query, got {value!r}")
    return text.rstrip("/")


#: What a recording can hide, as RECORD_MASK accepts it (in any order, with spaces).
RECORD_MASKS = {frozenset({"none"}): "none", frozenset({"numbers"}): "numbers",
                frozenset({"numbers", "text"}): "numbers,text"}


def record_mask(value: Any) -> str:
    """RECORD_MASK as `none`, `numbers` or `numbers,text` ("text, numbers" is the last one too)."""
    text = _text("RECORD_MASK", value)
    if text is None:
        return DEFAULTS["RECORD_MASK"]
    parts = frozenset(p.strip().lower() for p in text.split(",") if p.strip())
    if parts not in RECORD_MASKS:
        raise ConfigError(f"RECORD_MASK must be none, numbers or numbers,text, got {value!r}")
    return RECORD_MASKS[parts]


def record_dir(value: Any, *, make: bool) -> str | None:
    """RECORD_DIR as an absolute path; with `make`, the folder is created if missing and
    must take a file, else the process refuses to start."""
    import os
    import tempfile

    text = _text("RECORD_DIR", value)
    if text is None:
        return None
    path = os.path.abspath(os.path.expanduser(text))
    if not make:
        return path
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except FileExistsError:
        raise ConfigError(f"RECORD_DIR {path} is a file, not a folder") from None
    except OSError as exc:
        raise ConfigError(f"RECORD_DIR {path} is not a writable folder: {exc.strerror or exc}") from None
    return path


def _tokens(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        parts = value
    else:
        parts = str(value).split(",")
    return tuple(p.strip() for p in parts if p and p.strip())


def secret_files(environ: Mapping[str, Any]) -> dict[str, str]:
    """{NAME: the content of NAME_FILE} for the secrets given as files, read once at start."""
    out = {}
    for name in SECRETS:
        path = _text(f"{name}_FILE", environ.get(f"{name}_FILE"))
        if path is None:
            continue
        if _text(name, environ.get(name)) is not None:
            raise ConfigError(f"{name} and {name}_FILE are both set: give one of them")
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{name}_FILE: {path} is not UTF-8 text") from None
        out[name] = text[:-1] if text.endswith("\n") else text
    return out


def load(environ: Mapping[str, Any], *, require_token: bool = True) -> dict[str, Any]:
    """Typed settings from `environ` (strings, or already-typed values in tests).

    Besides the documented names the result holds `PLIVO_AUTH_TOKENS`, the tuple of
    tokens that signatures are checked against.
    """
    raw = {**DEFAULTS, **{k: v for k, v in environ.items() if k in DEFAULTS}, **secret_files(environ)}
    out: dict[str, Any] = {}
    out["PLIVO_AUTH_TOKENS"] = _tokens(raw["PLIVO_AUTH_TOKEN"])
    out["PLIVO_AUTH_TOKEN"] = ",".join(out["PLIVO_AUTH_TOKENS"]) or None
    out["PLIVO_AUTH_ID"] = _text("PLIVO_AUTH_ID", raw["PLIVO_AUTH_ID"])
    out["PLIVO_API_URL"] = _url("PLIVO_API_URL", raw["PLIVO_API_URL"]) or DEFAULTS["PLIVO_API_URL"]
    out["RULES_PATH"] = _text("RULES_PATH", raw["RULES_PATH"]) or DEFAULTS["RULES_PATH"]
    out["DATABASE_URL"] = _text("DATABASE_URL", raw["DATABASE_URL"])
    out["PUBLIC_URL"] = _url("PUBLIC_URL", raw["PUBLIC_URL"])
    out["TRUSTED_PROXIES"] = whole_number("TRUSTED_PROXIES", raw["TRUSTED_PROXIES"], 0)
    out["VERIFY_SIGNATURES"] = _bool("VERIFY_SIGNATURES", raw["VERIFY_SIGNATURES"])
    out["MAX_CONTENT_LENGTH"] = whole_number("MAX_CONTENT_LENGTH", raw["MAX_CONTENT_LENGTH"], 1)
    level = str(raw["LOG_LEVEL"]).strip().upper()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(sorted(_LOG_LEVELS))}, got {raw['LOG_LEVEL']!r}")
    out["LOG_LEVEL"] = level
    fmt = str(raw["LOG_FORMAT"]).strip().lower()
    if fmt not in _LOG_FORMATS:
        raise ConfigError(f"LOG_FORMAT must be json or text, got {raw['LOG_FORMAT']!r}")
    out["LOG_FORMAT"] = fmt
    out["RETENTION_DAYS"] = whole_number("RETENTION_DAYS", raw["RETENTION_DAYS"], 1)
    out["REPLAY_DAYS"] = whole_number("REPLAY_DAYS", raw["REPLAY_DAYS"], 1)
    if "REPLAY_DAYS" not in environ:  # a longer retention alone keeps what it keeps, no refusal
        out["REPLAY_DAYS"] = max(out["REPLAY_DAYS"], out["RETENTION_DAYS"])
    if out["REPLAY_DAYS"] < out["RETENTION_DAYS"]:
        raise ConfigError(f"REPLAY_DAYS must be at least RETENTION_DAYS ({out['RETENTION_DAYS']}), "
                          f"got {raw['REPLAY_DAYS']!r}: a pruned message could be replayed")
    out["RULES_RELOAD_INTERVAL"] = _reload_interval(raw["RULES_RELOAD_INTERVAL"])
    sender = str(raw["OUTBOX_SENDER"]).strip().lower()
    if sender not in _OUTBOX_SENDERS:
        raise ConfigError(f"OUTBOX_SENDER must be web, off or hold, got {raw['OUTBOX_SENDER']!r}")
    out["OUTBOX_SENDER"] = sender
    out["PLIVO_API_RATE"] = _positive("PLIVO_API_RATE", raw["PLIVO_API_RATE"], "requests per second", 0.01, 1000)
    out["WEBHOOK_SECRET"] = _text("WEBHOOK_SECRET", raw["WEBHOOK_SECRET"])
    out["OUTBOX_LEASE"] = _positive("OUTBOX_LEASE", raw["OUTBOX_LEASE"], "seconds", 5, 3600)
    out["OUTBOX_MAX_DELAY"] = _positive("OUTBOX_MAX_DELAY", raw["OUTBOX_MAX_DELAY"], "seconds", 0.1, 86400)
    # Only a process that serves (require_token) makes the recording folder and checks it.
    out["RECORD_DIR"] = record_dir(raw["RECORD_DIR"], make=require_token)
    out["RECORD_MASK"] = record_mask(raw["RECORD_MASK"])
    out["METRICS_TOKEN"] = _text("METRICS_TOKEN", raw["METRICS_TOKEN"])
    # Flask's own name: app.config["SECRET_KEY"] signs its sessions. Whether it is needed depends
    # on the database (an operator exists), so the gunicorn master checks it after migrating.
    out["SECRET_KEY"] = _text("SECRET_KEY", raw["SECRET_KEY"])
    if require_token and out["VERIFY_SIGNATURES"] and not out["PLIVO_AUTH_TOKENS"]:
        raise ConfigError(
            "PLIVO_AUTH_TOKEN is not set: set it to your Plivo auth token "
            "(several separated by commas), or VERIFY_SIGNATURES=false for local experiments"
        )
    return out
