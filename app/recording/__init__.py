"""Recorded webhooks: the file format, shared by the service's recorder, `replay` and the tests.

A recorded webhook is one JSON file (UTF-8, one object) holding a request exactly as it
arrived at the service and what the service answered (or must answer) to it. The
synthetic recordings in ``tests/webhooks/`` are written by ``tests/make_webhooks.py``;
the service writes the same format from real traffic when ``RECORD_DIR`` is set
(`app.recording.recorder`), and ``flask --app wsgi replay`` sends recordings to a running
service (`app.recording.replay`). Keys:

``description`` (str)
    One line: what the recording shows. Recordings of real traffic say when they were
    made and what was masked (``recorded 2026-11-28T15:00:00Z, masked: numbers``).
``method`` (str)
    ``"POST"`` or ``"GET"`` (any method is replayed as given).
``url`` (str)
    The URL Plivo called, query string included, exactly as Plivo has it configured
    (``https://sms.example.com/message``). Its path and query are the request target sent
    to the service, byte for byte (percent-escapes kept as they are), less the path of
    ``settings.PUBLIC_URL`` when the URL starts with it: with ``PUBLIC_URL``
    ``https://example.com/sms`` (a proxy takes ``/sms`` off) the URL
    ``https://example.com/sms/message`` is sent to the service as ``/message``.
``scheme`` (str, optional)
    The scheme of the connection the service itself accepted, when it differs from the
    URL's: ``"http"`` behind a reverse proxy that ends TLS. Default: the URL's scheme.
``headers`` (object)
    The request headers as the service received them, names and values as text, in the
    order received (so behind a proxy: the internal ``Host`` and the ``X-Forwarded-*``
    headers the proxy added). ``Host`` is part of it; so are ``Content-Type`` and
    ``Content-Length`` when the request has a body. Recordings of real traffic hold only
    ``Host``, ``Content-Type``, ``Content-Length``, ``User-Agent``, ``X-Forwarded-For``,
    ``-Proto``, ``-Host``, ``-Port``, ``-Prefix``, ``Forwarded`` and ``X-Real-Ip``
    (whatever ``RECORD_MASK`` says: no signature, credential or copy of the query string),
    and give the ``Content-Length`` of the body as written.
``body`` (str) or ``body_base64`` (str)
    The raw request body: as text when it is valid UTF-8 (``""`` for none), otherwise as
    base64 under ``body_base64``. A form body stays form-encoded (``From=1415...&Text=Hi+there``).
``token`` (str, optional)
    Synthetic recordings only: the Plivo auth token the request was signed with. A
    recording of real traffic never holds a token; it is replayed with signature checks
    off (``VERIFY_SIGNATURES=false``).
``settings`` (object, optional)
    Settings the service ran with, by their environment names: ``PUBLIC_URL``,
    ``TRUSTED_PROXIES``...
``now`` (str, optional)
    The service clock when the request arrived, ISO 8601 with a UTC offset
    (``2026-11-23T10:00:00-05:00``, in the rules' timezone): it makes ``days``/``hours``
    rules and ``{{ now }}`` deterministic. Without it the replay uses the test suite's
    fixed clock (conftest's ``MONDAY_10AM``).
``expect`` (object)
    What the service answers: ``status`` (int) and ``content_type`` (str, the whole
    header value); for XML answers ``messages``: the ``<Message>`` elements of the
    ``<Response>``, in order, each an object of its attributes (``src``, ``dst``, ``type``,
    ``callbackUrl``, ``callbackMethod``...) plus ``text``, the element's text
    (``[]``: an empty ``<Response/>``); for other answers optionally ``body`` (str, the
    exact response body). A recording whose message text was masked
    (``RECORD_MASK=numbers,text``) has no ``messages``: the answer to a hidden text cannot
    be checked, only its status and type.

Recordings use the shipped ``rules.yaml`` (or the file ``RULES_PATH`` in ``settings`` names).
With ``RECORD_MASK=numbers`` every phone number is replaced by a stable fake one of the
same length (see `app.recording.mask`), in the request and in the expected answer alike,
so a masked recording replays to its own expected answer; the business's own numbers that
the rules file names (``to:`` conditions, ``forward.to``, numbers in its texts) are kept,
since rules match on them. Numbers ``from:`` conditions name are customers' and are masked:
a recording that matched such a rule replays to another one.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from lxml import etree

__all__ = ["KEYS", "dumps", "load", "body_bytes", "header", "service_path", "target", "base_url", "clock",
           "parse_messages"]

#: Every key a recording may have, in the order a recording is written.
KEYS = ("description", "method", "url", "scheme", "headers", "body", "body_base64",
        "token", "settings", "now", "expect")
_REQUIRED = ("description", "method", "url", "headers", "expect")


def dumps(recording: dict) -> str:
    """A recording as the text of its file (what the generator and the recorder write)."""
    return json.dumps(recording, indent=2, ensure_ascii=False) + "\n"


def load(path: str | Path) -> dict:
    """Read and check one recording file; ValueError (or OSError) says what is wrong."""
    try:
        recording = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from None
    if not isinstance(recording, dict):
        raise ValueError(f"{path}: a recording is a JSON object")
    unknown = set(recording) - set(KEYS)
    missing = [key for key in _REQUIRED if key not in recording]
    if unknown or missing:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}, missing keys {missing}")
    if ("body" in recording) == ("body_base64" in recording):
        raise ValueError(f"{path}: needs exactly one of body, body_base64")
    for key in ("description", "method", "url", "body", "body_base64", "token", "now"):
        if key in recording and not isinstance(recording[key], str):
            raise ValueError(f"{path}: {key} must be text")
    if not recording["url"].startswith(("https://", "http://")):
        raise ValueError(f"{path}: url must be an http(s) URL, got {recording['url']!r}")
    headers = recording["headers"]
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ValueError(f"{path}: headers must be an object of texts")
    expect = recording["expect"]
    if not isinstance(expect, dict) or not isinstance(expect.get("status"), int):
        raise ValueError(f"{path}: expect.status missing")
    return recording


def body_bytes(recording: dict) -> bytes:
    """The raw request body."""
    if "body_base64" in recording:
        return base64.b64decode(recording["body_base64"], validate=True)
    return recording["body"].encode("utf-8")


def header(recording: dict, name: str) -> str | None:
    """A recorded header's value, the name compared case-insensitively."""
    for key, value in recording["headers"].items():
        if key.lower() == name.lower():
            return value
    return None


def service_path(recording: dict) -> str:
    """The raw path the service itself was sent: the recorded URL's, less the path of the
    recording's ``PUBLIC_URL`` setting when it starts with it (the service builds the URL
    Plivo called as PUBLIC_URL + the path it was sent, so this is that path again)."""
    path = urlsplit(recording["url"]).path or "/"
    public = (recording.get("settings") or {}).get("PUBLIC_URL")
    if isinstance(public, str):
        prefix = urlsplit(public).path.rstrip("/")
        if prefix and (path == prefix or path.startswith(prefix + "/")):
            path = path[len(prefix):] or "/"
    return path


def target(recording: dict) -> str:
    """The request target the service received: `service_path` and the recorded URL's raw query."""
    query = urlsplit(recording["url"]).query
    return service_path(recording) + (f"?{query}" if query else "")


def base_url(recording: dict) -> str:
    """scheme://host as the service's own socket saw them (recorded Host header)."""
    parts = urlsplit(recording["url"])
    scheme = recording.get("scheme") or parts.scheme
    host = header(recording, "Host") or parts.netloc
    return f"{scheme}://{host}"


def clock(recording: dict) -> datetime | None:
    """The recorded service clock, or None."""
    now = recording.get("now")
    if now is None:
        return None
    moment = datetime.fromisoformat(now)
    if moment.tzinfo is None:
        raise ValueError(f"now must carry a UTC offset: {now!r}")
    return moment


def parse_messages(xml: bytes) -> list[dict]:
    """The <Message> elements of a Plivo <Response>, as {attribute: value, ..., "text": text}.

    Raises ValueError when the document is not a <Response> of <Message> elements.
    """
    root = etree.fromstring(xml)
    if root.tag != "Response":
        raise ValueError(f"root element is <{root.tag}>, not <Response>")
    if root.attrib:
        raise ValueError(f"<Response> has attributes {dict(root.attrib)}")
    if (root.text or "").strip():
        raise ValueError("<Response> holds text")
    messages = []
    for element in root:
        if element.tag != "Message":
            raise ValueError(f"<Response> holds <{element.tag}>, not <Message>")
        if len(element):
            raise ValueError("<Message> holds elements")
        if (element.tail or "").strip():
            raise ValueError("text between <Message> elements")
        if "text" in element.attrib:
            raise ValueError("<Message> has an attribute named text")
        message = dict(element.attrib)
        message["text"] = element.text or ""
        messages.append(message)
    return messages
