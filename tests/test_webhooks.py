"""Replay every recorded webhook in tests/webhooks/ against the real app.

The file format is described in app/recording/__init__.py; the synthetic recordings are
written by tests/make_webhooks.py, recordings of real traffic by the service (RECORD_DIR).
"""

from __future__ import annotations

import make_webhooks
import pytest
import webhooks
from webhooks import check_answer, load, make_app_for, parse_messages, replay

#: Every test here runs on SQLite and on PostgreSQL (conftest.py).
pytestmark = pytest.mark.usefixtures("database")

PATHS = webhooks.paths()


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in PATHS])
def test_replay(path, tmp_path):
    recording = load(path)
    app = make_app_for(tmp_path, recording)
    check_answer(replay(app.test_client(), recording), recording["expect"])


def test_enough_recordings():
    assert len(PATHS) >= 15
    assert len({p.stem for p in PATHS}) == len(PATHS)


def test_recordings_are_well_formed():
    for path in PATHS:
        recording = load(path)
        assert recording["method"] in ("GET", "POST"), path.name
        assert recording["url"].startswith(("https://", "http://")), path.name
        body = webhooks.body_bytes(recording)
        length = webhooks.header(recording, "Content-Length")
        if body:
            assert length == str(len(body)), path.name


def test_generator_reproduces_files(tmp_path):
    written = make_webhooks.write(tmp_path)
    assert written, "the generator wrote nothing"
    for new in written:
        old = webhooks.DIR / new.name
        assert old.exists(), f"{old.name} is missing: run tests/make_webhooks.py"
        assert old.read_bytes() == new.read_bytes(), f"{old.name} differs: run tests/make_webhooks.py"
    # Every synthetic file (it carries a token) comes from the generator: none is stale.
    generated = {p.name for p in written}
    stale = [p.name for p in PATHS if load(p).get("token") and p.name not in generated]
    assert not stale, f"not written by make_webhooks.py: {stale}"


def test_parse_messages():
    xml = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Message src="1" dst="2&lt;3" '
           b'type="sms">a &amp; b</Message><Message src="1" dst="2" type="sms"/></Response>')
    assert parse_messages(xml) == [
        {"src": "1", "dst": "2<3", "type": "sms", "text": "a & b"},
        {"src": "1", "dst": "2", "type": "sms", "text": ""},
    ]
    assert parse_messages(b"<Response/>") == []
    with pytest.raises(ValueError):
        parse_messages(b"<Response><Speak>hi</Speak></Response>")
    with pytest.raises(ValueError):
        parse_messages(b"<Reply/>")


def test_signatures_match_plivo_sdk():
    """The synthetic signatures are what Plivo sends, by the official SDK's own check
    (a test-only oracle): valid for the URL Plivo called, except where tampered with."""
    pytest.importorskip("plivo")
    from urllib.parse import parse_qsl

    from plivo.utils import validate_signature
    from plivo.utils.signature_v3 import validate_v3_signature

    checked = 0
    for path in PATHS:
        recording = load(path)
        token = recording.get("token")
        if not token:
            continue
        valid = recording["expect"]["status"] != 403
        url, method = recording["url"], recording["method"]
        for name in ("X-Plivo-Signature-V2", "X-Plivo-Signature-Ma-V2"):
            sig = webhooks.header(recording, name)
            if sig is not None:
                nonce = webhooks.header(recording, "X-Plivo-Signature-V2-Nonce")
                # V2 does not cover the body: a tampered body keeps a valid V2 signature.
                assert validate_signature(url, nonce, sig, token) is True, (path.name, name)
                checked += 1
        for name in ("X-Plivo-Signature-V3", "X-Plivo-Signature-Ma-V3"):
            sig = webhooks.header(recording, name)
            if sig is not None:
                nonce = webhooks.header(recording, "X-Plivo-Signature-V3-Nonce")
                params = None
                if method == "POST":
                    params = dict(parse_qsl(webhooks.body_bytes(recording).decode("utf-8"),
                                            keep_blank_values=True))
                assert validate_v3_signature(method, url, nonce, token, sig, params) is valid, \
                    (path.name, name)
                checked += 1
    assert checked >= 30
