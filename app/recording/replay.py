"""Sending recorded webhooks to a running service, signed anew (`flask --app wsgi replay`).

Each recording is sent with its method, Content-Type and body to the URL given (when that
URL has no path: the path the recording's service was sent, its PUBLIC_URL path taken off;
and the recording's query string appended),
with fresh V2 and V3 signatures for that URL made with the token given. The service
answers it as it would answer Plivo.

Only to a service that sends nothing on (`OUTBOX_SENDER=hold`, which its `/readyz` says):
a recording of production traffic, replayed at a service that sends, would reach real
numbers and webhook receivers again. `target_holds` asks it before anything is sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ..inbound import InboundError, parse_form
from ..signature import sign_headers
from . import body_bytes, header, load, service_path

USER_AGENT = "responder-replay"


class ReplayError(Exception):
    """Nothing more can be sent (no recordings, or the service cannot be reached): one line."""


@dataclass(slots=True)
class Outcome:
    path: Path
    status: int | None  # None: the file could not be read, or no answer came
    reason: str = ""    # why it is not a 2xx: the answer's first line, or what went wrong

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def fixture_paths(fixtures: str | Path) -> list[Path]:
    """A recording file, or the *.json files of a folder, sorted by name."""
    path = Path(fixtures)
    if path.is_dir():
        paths = sorted(path.glob("*.json"))
        if not paths:
            raise ReplayError(f"{path}: no *.json recordings in this folder")
        return paths
    if not path.exists():
        raise ReplayError(f"{path}: no such file or folder")
    return [path]


def prepare(recording: dict, url: str, token: str) -> tuple[str, str, dict[str, str], bytes]:
    """(method, URL, headers, body) of the request that replays `recording` at `url`."""
    method = recording["method"].upper()
    recorded = urlsplit(recording["url"])
    given = urlsplit(url)
    path = given.path if given.path not in ("", "/") else service_path(recording)
    query = "&".join(q for q in (given.query, recorded.query) if q)
    full = urlunsplit((given.scheme, given.netloc, path, query, ""))
    body = body_bytes(recording)
    content_type = header(recording, "Content-Type")
    params: list[tuple[str, str]] = []
    if method != "GET" and body and (content_type or "").split(";")[0].strip().lower() == \
            "application/x-www-form-urlencoded":
        try:
            params = parse_form(body)
        except InboundError:
            params = []  # the service will refuse the body itself: send it as recorded
    headers = {"User-Agent": USER_AGENT, **sign_headers(token, method, full, params)}
    if content_type:
        headers["Content-Type"] = content_type
    return method, full, headers, body


def readyz_url(url: str) -> str:
    """The `/readyz` of the service that `url` reaches: beside its `/message` or `/status`
    (a path prefix of a proxy kept), else at the root."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    prefix = next((path[:-len(tail)] for tail in ("/message", "/status") if path.endswith(tail)), "")
    return urlunsplit((parts.scheme, parts.netloc, prefix + "/readyz", "", ""))


def target_holds(url: str, *, timeout: float = 10.0) -> str | None:
    """None when the service at `url` holds every outgoing item (its `/readyz` says
    `"outbox": "hold"`); otherwise why it cannot be taken to. Raises ReplayError when
    it cannot be reached at all."""
    import requests

    probe = readyz_url(url)
    try:
        response = requests.get(probe, timeout=timeout, allow_redirects=False,
                                headers={"User-Agent": USER_AGENT})
    except requests.exceptions.ConnectionError as exc:
        raise ReplayError(f"cannot reach {probe}: {_cause(exc)}") from None
    except requests.exceptions.RequestException as exc:
        return f"{probe} did not answer: {_cause(exc)}"
    try:
        said = response.json()
    except ValueError:
        said = None
    outbox = said.get("outbox") if isinstance(said, dict) else None
    if response.status_code == 200 and outbox == "hold":
        return None
    if response.status_code != 200:
        return f"{probe} answered {response.status_code}"
    if not isinstance(outbox, str):
        return f"{probe} does not say whether it holds its outbox (another service, or an older version)"
    return f"it runs with OUTBOX_SENDER={outbox[:20]}"


def replay(paths: list[Path], url: str, token: str, *, timeout: float = 10.0,
           require_hold: bool = True) -> Iterator[Outcome]:
    """Send each recording in turn; yield its outcome. Raises ReplayError when the service
    cannot be reached at all (nothing after that could be sent either), or, before the
    first request and with `require_hold`, when it does not say that it holds its outbox."""
    import requests  # only this command needs it in the web process's imports

    checked = not require_hold
    with requests.Session() as session:
        for path in paths:
            try:
                recording = load(path)
                method, full, headers, body = prepare(recording, url, token)
            except (OSError, ValueError) as exc:
                yield Outcome(path, None, f"cannot read: {_one_line(exc, path)}")
                continue
            if not checked:
                why = target_holds(url, timeout=timeout)
                if why is not None:
                    raise ReplayError(f"{url.split('?')[0]} may send on what it answers (WhatsApp and media "
                                      f"replies, forwards through the Message API, webhook calls): {why}; "
                                      "start it with OUTBOX_SENDER=hold and a database of its own, "
                                      "or pass --allow-sending")
                checked = True
            try:
                response = session.request(method, full, headers=headers, data=body, timeout=timeout,
                                           allow_redirects=False)
            except requests.exceptions.ConnectionError as exc:  # refused, unknown host, connect timeout
                raise ReplayError(f"cannot reach {full.split('?')[0]}: {_cause(exc)}") from None
            except requests.exceptions.Timeout:
                yield Outcome(path, None, f"no answer within {timeout:g} s")
                continue
            except requests.exceptions.RequestException as exc:
                raise ReplayError(f"cannot send to {full.split('?')[0]}: {_cause(exc)}") from None
            yield Outcome(path, response.status_code, "" if response.ok else _reason(response))


def _reason(response) -> str:
    """The first line of a short text answer, else the HTTP reason phrase."""
    if response.headers.get("Content-Type", "").startswith("text/plain"):
        line = response.text.strip().splitlines()[0] if response.text.strip() else ""
        if line:
            return line[:120]
    return response.reason or ""


def _one_line(exc: Exception, path: Path) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _cause(exc: Exception) -> str:
    """The innermost reason of a requests error ("Connection refused"), not its whole chain."""
    while exc.__context__ is not None or exc.__cause__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc)
    if "] " in text and text.startswith("[Errno"):
        text = text.split("] ", 1)[1]
    return text.splitlines()[0] if text else type(exc).__name__
