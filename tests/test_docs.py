"""The documentation stays true to the code: the repository is self-contained (every link in
the README and docs/ points at a file that exists), every setting and command is in the
reference, and no comment sends the reader to a contract file that is not here."""

from __future__ import annotations

import re
import subprocess

import click
import pytest
from conftest import ROOT

import config

DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS, ROOT / "bench" / "README.md"]
_LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def _anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown page."""
    out = set()
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_point_at_files_in_the_repository(page):
    text = page.read_text(encoding="utf-8")
    for target, anchor in _LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path = (page.parent / target).resolve()
        assert path.exists(), f"{page.name}: link to {target} points at nothing"
        assert ROOT in path.parents or path == ROOT, f"{page.name}: link to {target} leaves the repository"
        if anchor and path.suffix == ".md":
            assert anchor[1:] in _anchors(path.read_text(encoding="utf-8")), \
                f"{page.name}: no heading for {target}{anchor}"


def test_in_page_anchors_exist():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    anchors = _anchors(text)
    for anchor in re.findall(r"\]\(#([^)\s]+)\)", text):
        assert anchor in anchors, f"README.md: no heading for #{anchor}"


def test_readme_links_the_reference():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in ("docs/rules.md", "docs/settings.md", "docs/endpoints.md", "docs/commands.md",
                 "docs/recordings.md"):
        assert f"]({page})" in text


def test_no_comment_cites_a_contract_that_is_not_here():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    offenders = []
    for name in tracked:
        if not name.endswith((".py", ".md", ".yaml", ".txt", ".sh", ".ini", ".toml")) and name != "Dockerfile":
            continue
        if name == "tests/test_docs.py":
            continue  # this test names what it looks for
        text = (ROOT / name).read_text(encoding="utf-8", errors="replace")
        if re.search(r"SPEC\b|SPEC\.md|shared/", text):
            offenders.append(name)
    assert offenders == []


def test_every_setting_is_in_the_reference():
    reference = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in [*config.DEFAULTS, "PORT", "WEB_CONCURRENCY", "GUNICORN_THREADS", "GUNICORN_ACCESS_LOG",
                 "GUNICORN_CONTROL_SOCKET", "PROMETHEUS_MULTIPROC_DIR", "REQUEST_READ_TIMEOUT", "HOST",
                 "GUNICORN_WORKER_CONNECTIONS"]:
        assert f"`{name}`" in reference, f"docs/settings.md does not describe {name}"
        assert f"`{name}`" in readme, f"README.md's settings table does not list {name}"


def test_every_command_is_in_the_reference(app):
    reference = (ROOT / "docs" / "commands.md").read_text(encoding="utf-8")
    names = []
    for name, command in app.cli.commands.items():
        if isinstance(command, click.Group):
            names += [f"{name} {sub}" for sub in command.commands]
        else:
            names.append(name)
    for name in names:
        if name in ("routes", "shell", "run"):
            continue  # Flask's own
        assert f"flask --app wsgi {name}" in reference, f"docs/commands.md does not describe `{name}`"
