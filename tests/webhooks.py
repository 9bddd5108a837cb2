"""Recorded webhooks (SPEC §8): the file format, and replaying a recording against the app.

A recorded webhook is one JSON file (UTF-8, one object) holding a request exactly as it
arrived at the service and what the service must answer to it. The synthetic recordings in
``tests/webhooks/`` are written by ``tests/make_webhooks.py``; the service's recording
switch writes the same format from real traffic. Keys:

``description`` (str)
    One line: what the recording shows.
``method`` (str)
    ``"POST"`` or ``"GET"`` (any method is replayed as given).
``url`` (str)
    The URL Plivo called, query string included, exactly as Plivo has it configured
    (``https://sms.example.com/message``). Its path and query are the request target sent
    to the service, byte for byte (percent-escapes kept as they are).
``scheme`` (str, optional)
    The scheme of the connection the service itself accepted, when it differs from the
    URL's: ``"http"`` behind a reverse proxy that ends TLS. Default: the URL's scheme.
``headers`` (object)
    The request headers as the service received them, names and values as text, in the
    order received (so behind a proxy: the internal ``Host`` and the ``X-Forwarded-*``
    headers the proxy added). ``Host`` is part of it; so are ``Content-Type`` and
    ``Content-Length`` when the request has a body.
``body`` (str) or ``body_base64`` (str)
    The raw request body: as text when it is valid UTF-8 (``""`` for none), otherwise as
    base64 under ``body_base64``. A form body stays form-encoded (``From=1415...&Text=Hi+there``).
``token`` (str, optional)
    Synthetic recordings only: the Plivo auth token the request was signed with. A
    recording of real traffic never holds a token; it is replayed with signature checks
    off (``VERIFY_SIGNATURES=false``).
``settings`` (object, optional)
    App settings (SPEC §3 names) the service ran with: ``PUBLIC_URL``, ``TRUSTED_PROXIES``...
``now`` (str, optional)
    The service clock when the request arrived, ISO 8601 with a UTC offset
    (``2026-11-23T10:00:00-05:00``): it makes ``days``/``hours`` rules and ``{{ now }}``
    deterministic. Without it the replay uses the test suite's fixed clock (conftest's
    ``MONDAY_10AM``).
``expect`` (object)
    What the service answers: ``status`` (int) and ``content_type`` (str, the whole
    header value); for XML answers ``messages``: the ``<Message>`` elements of the
    ``<Response>``, in order, each an object of its attributes (``src``, ``dst``, ``type``,
    ``callbackUrl``, ``callbackMethod``...) plus ``text``, the element's text
    (``[]``: an empty ``<Response/>``); for other answers optionally ``body`` (str, the
    exact response body).

Recordings use the shipped ``rules.yaml`` (or the file ``RULES_PATH`` in ``settings`` names).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from lxml import etree

HERE = Path(__file__).resolve().parent
#: Where the recordings live, one JSON file each.
DIR = HERE / "webhooks"

_KEYS = {"description", "method", "url", "scheme", "headers", "body", "body_base64",
         "token", "settings", "now", "expect"}
_REQUIRED = ("description", "method", "url", "headers", "expect")


def paths() -> list[Path]:
    """Every recording in ``tests/webhooks/``, sorted by name."""
    return sorted(DIR.glob("*.json"))


def dumps(recording: dict) -> str:
    """A recording as the text of its file (what the generator and a recorder write)."""
    return json.dumps(recording, indent=2, ensure_ascii=False) + "\n"


def load(path: str | Path) -> dict:
    """Read and check one recording file."""
    recording = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(recording, dict):
        raise ValueError(f"{path}: a recording is a JSON object")
    unknown = set(recording) - _KEYS
    missing = [key for key in _REQUIRED if key not in recording]
    if unknown or missing:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}, missing keys {missing}")
    if ("body" in recording) == ("body_base64" in recording):
        raise ValueError(f"{path}: needs exactly one of body, body_base64")
    if "status" not in recording["expect"]:
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


def target(recording: dict) -> str:
    """The request target the service received: the recorded URL's raw path and query."""
    parts = urlsplit(recording["url"])
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


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


def make_app_for(tmp_path: Path, recording: dict):
    """The app as it ran for this recording: its token, settings and clock."""
    from conftest import make_app  # tests/ is on sys.path under pytest

    settings = dict(recording.get("settings") or {})
    if recording.get("token"):
        settings["PLIVO_AUTH_TOKEN"] = recording["token"]
    else:
        settings["VERIFY_SIGNATURES"] = False
    now = clock(recording)
    if now is not None:
        settings["now"] = now
    return make_app(tmp_path, **settings)


def replay(client, recording: dict):
    """Send the recorded request through a Flask/werkzeug test client, unchanged.

    Method, request target (raw path and query), headers (Host included) and body bytes
    are sent as recorded; the connection's scheme and host come from ``base_url``, so the
    URL the service rebuilds (Host, or X-Forwarded-* behind trusted proxies, or
    PUBLIC_URL) is the one a deployment would see.
    """
    raw = target(recording)
    path, _, query = raw.partition("?")
    headers = list(recording["headers"].items())
    return client.open(
        path,
        method=recording["method"],
        base_url=base_url(recording),
        query_string=query or None,
        headers=headers,
        data=body_bytes(recording),
        # What gunicorn (RAW_URI) and werkzeug's server (REQUEST_URI) hand the app.
        environ_overrides={"RAW_URI": raw, "REQUEST_URI": raw},
    )


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
