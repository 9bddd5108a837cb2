"""Recorded webhooks in the test suite: where they live, and replaying one against the app.

The file format is documented in ``app/recording/__init__.py`` (the service's recorder
writes it from real traffic, RECORD_DIR); its functions are re-exported here for the
tests and ``make_webhooks.py``.
"""

from __future__ import annotations

from pathlib import Path

from app.recording import (  # noqa: F401  (re-exported: the format, for the tests)
    base_url,
    body_bytes,
    clock,
    dumps,
    header,
    load,
    parse_messages,
    target,
)

HERE = Path(__file__).resolve().parent
#: Where the recordings live, one JSON file each.
DIR = HERE / "webhooks"


def paths(folder: Path = DIR) -> list[Path]:
    """Every recording in `folder` (default ``tests/webhooks/``), sorted by name."""
    return sorted(folder.glob("*.json"))


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


def check_answer(response, expect: dict) -> None:
    """Assert that a test client's response is the recording's expected answer."""
    assert response.status_code == expect["status"], response.get_data(as_text=True)
    assert response.headers["Content-Type"] == expect["content_type"]
    if "body" in expect:
        assert response.get_data(as_text=True) == expect["body"]
    if "messages" in expect:
        body = response.get_data()
        assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
        got = parse_messages(body)
        want = expect["messages"]
        # Element by element, attribute by attribute, so a failure names what differs.
        for i, (g, w) in enumerate(zip(got, want)):
            assert sorted(g) == sorted(w), f"Message {i}: attributes"
            for key in w:
                assert g[key] == w[key], f"Message {i}: {key}"
        assert len(got) == len(want), f"{len(got)} Messages, expected {len(want)}"
        assert got == want
