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
