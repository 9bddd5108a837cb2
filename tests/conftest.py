"""Shared fixtures: an app on a given rules file, its client, its CLI runner."""

from __future__ import annotations

import textwrap
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from app import create_app

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "MAtesttoken0000000000000000000000000000"
NY = ZoneInfo("America/New_York")
#: A Monday, 10:00 in New York: inside business hours, so time rules stay quiet.
MONDAY_10AM = datetime(2026, 11, 23, 10, 0, tzinfo=NY)


def make_app(tmp_path: Path, rules: str | None = None, **settings):
    """An app on `rules` (YAML text; default: the shipped rules.yaml) with test settings."""
    if rules is None:
        rules_path = ROOT / "rules.yaml"
    else:
        rules_path = tmp_path / "rules.yaml"
        rules_path.write_text(textwrap.dedent(rules), encoding="utf-8")
    now = settings.pop("now", MONDAY_10AM)
    config = {
        "TESTING": True,
        "PLIVO_AUTH_TOKEN": TOKEN,
        "RULES_PATH": str(rules_path),
        "RULES_RELOAD_INTERVAL": 0,
        "LOG_FORMAT": "text",
        "CLOCK": lambda: now,
        "INSTANCE_PATH": str(tmp_path / "instance"),
    }
    config.update(settings)
    return create_app(config)


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


FORM = "application/x-www-form-urlencoded"


def sms(text: str = "hello", **extra) -> dict[str, str]:
    """Parameters of an inbound SMS as Plivo sends them."""
    params = {
        "From": "14155550123", "To": "14155550100", "Type": "sms", "Text": text,
        "MessageUUID": "4e6b1f3a-8a8e-11ef-9c7d-0242ac110002", "Units": "1",
        "TotalRate": "0", "TotalAmount": "0", "MessageIntent": "", "PowerpackUUID": "",
        "MediaCount": "0",
    }
    params.update(extra)
    return {k: v for k, v in params.items() if v is not None}


def signed_headers(url: str, params, method: str = "POST", token: str = TOKEN, nonce: str | None = None):
    from app.signature import sign_headers
    pairs = list(params.items()) if isinstance(params, dict) else list(params)
    return sign_headers(token, method, url, pairs if method == "POST" else [], nonce)


def send(client, params, *, method="POST", path="/message", token=TOKEN, host="localhost",
         query="", headers=None, sign=True):
    """Send a (signed) webhook through the Flask test client, as Plivo would."""
    from urllib.parse import urlencode
    full = path + (f"?{query}" if query else "")
    url = f"http://{host}{full}"
    body = urlencode(params)
    if method == "GET":
        full = path + "?" + "&".join(p for p in (query, body) if p)
        url = f"http://{host}{full}"
        body = ""
    all_headers = signed_headers(url, params, method, token) if sign else {}
    all_headers.update(headers or {})
    if method == "POST":
        all_headers.setdefault("Content-Type", FORM)
    return client.open(full, method=method, base_url=f"http://{host}", data=body.encode(), headers=all_headers)
