"""The checkout is ruff-clean: `ruff check .` from the project root reports nothing.

The rules are pyproject.toml's ([tool.ruff]); ruff is the version pinned in
requirements-dev.txt, since another version can find other things. It runs as
`python -m ruff` from the interpreter running the suite, so the pinned one, not
whichever is on PATH. A finding fails the test with ruff's own report. Without ruff
installed the test fails too (a skip would let the lint go quietly unchecked): the
suite installs it. No cache is written into the checkout, and the whole run takes
well under a second.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_reports_nothing():
    try:
        version = importlib.metadata.version("ruff")
    except importlib.metadata.PackageNotFoundError:
        raise AssertionError(
            f"ruff is not installed for {sys.executable}: install requirements-dev.txt "
            "(./scripts/test does)") from None
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (
        f"ruff {version} (`ruff check .`, settings in pyproject.toml) exited {proc.returncode}:\n"
        f"{proc.stdout}{proc.stderr}")
