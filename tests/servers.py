"""A real gunicorn (started as the README starts it, through gunicorn.conf.py) for tests.

Shared by test_server.py and test_state_server.py.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import requests
from conftest import FORM, ROOT, TOKEN, signed_headers

from app.rules.holder import KEEP_FOLDER, kept_copy_path

GUNICORN = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")]
#: gunicorn through its script, as `gunicorn -c gunicorn.conf.py` starts it: a USR2 upgrade runs
#: the master's command line again, and `python .../gunicorn/__main__.py` (what `-m` leaves in
#: sys.argv) cannot start (the package's `http` shadows the standard library's).
GUNICORN_SCRIPT = [sys.executable, str(Path(sys.executable).with_name("gunicorn")), "-c",
                   str(ROOT / "gunicorn.conf.py")]


#: Starts of one Server, each on a fresh port while the one before was taken by someone else.
PORT_ATTEMPTS = 4


def free_port() -> int:
    """A port nothing listens on now (the kernel's choice); it may be taken again before it is
    used: Server starts again on another when that happens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def refusing_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections for as long as the block runs: a socket bound
    to it and never listening. (A free_port() may be taken and listened on by another test
    before the block ends; this one cannot be: the socket keeps it, without SO_REUSEADDR, so
    nobody else can bind it, and the kernel never picks a bound port for an outgoing connection.)"""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def _port_taken(output: str, port: int | str) -> bool:
    """Whether a gunicorn's output says its port was taken (by gunicorn.conf.py's check, or by
    gunicorn's own bind when someone took it after that check)."""
    return (f"port {port} is already in use" in output
            or re.search(rf"Connection in use: \('[^']*', {port}\)", output) is not None)


def run_gunicorn(env: dict[str, str], *, timeout: float = 30) -> subprocess.CompletedProcess:
    """gunicorn (GUNICORN, from the repository) run with `env` until it exits, its output captured
    as text: for the tests of a start it refuses.

    With no PORT in `env`, a free_port() of its own, and a run again on a fresh one (up to
    PORT_ATTEMPTS runs) when another process took it in between and the refusal says so rather
    than what the test is about. A PORT given is run once, as given."""
    def run(env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run(GUNICORN, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    if "PORT" in env:
        return run(env)
    for _ in range(PORT_ATTEMPTS - 1):
        port = str(free_port())
        result = run({**env, "PORT": port})
        if not _port_taken(result.stdout + result.stderr, port):
            return result
    return run({**env, "PORT": str(free_port())})


def server_env(**extra) -> dict[str, str]:
    """The test process's environment without the service's settings (and without the metrics
    folder of a gunicorn the tests may run under), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in (
        "PUBLIC_URL", "TRUSTED_PROXIES", "VERIFY_SIGNATURES", "RULES_PATH",
        "MAX_CONTENT_LENGTH", "DATABASE_URL", "LOG_LEVEL", "LOG_FORMAT", "PORT", "WEB_CONCURRENCY",
        "PROMETHEUS_MULTIPROC_DIR", "RESPONDER_METRICS_DIR_MADE", "HOST", "METRICS_TOKEN",
        "SECRET_KEY", "SECRET_KEY_FILE")
        and not k.startswith(("PLIVO_", "OUTBOX_", "WEBHOOK_", "RECORD_"))}
    env.update(extra)
    return env


class Server:
    def __init__(self, tmp: Path, *, rules: str | None = None, log_name: str = "server.log",
                 command: list[str] = GUNICORN, **settings):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.rules = tmp / "rules.yaml"
        if rules is None:
            shutil.copy(ROOT / "rules.yaml", self.rules)
        else:
            self.rules.write_text(rules, encoding="utf-8")
        settings.setdefault("WEB_CONCURRENCY", "2")
        settings.setdefault("MAX_CONTENT_LENGTH", "4096")
        settings.setdefault("DATABASE_URL", f"sqlite:///{tmp}/responder.sqlite3")
        # Its metric files under `tmp`, so a gunicorn killed before it can remove a folder of
        # its own leaves nothing in /tmp ("" or None lets gunicorn.conf.py make and remove one).
        settings.setdefault("PROMETHEUS_MULTIPROC_DIR", str(tmp / "metrics"))
        settings.setdefault("RULES_RELOAD_INTERVAL", "0.2")
        self.log_path = tmp / log_name
        # free_port() lets the port go before gunicorn binds it, and another process (a test in
        # another xdist worker, another run) may take it in between: gunicorn.conf.py then refuses
        # at once ("port N is already in use"), and the server starts again on a fresh port.
        for attempt in range(1, PORT_ATTEMPTS + 1):
            env = server_env(PLIVO_AUTH_TOKEN=TOKEN, PORT=str(self.port),
                             RULES_PATH=str(self.rules), LOG_FORMAT="json", **settings)
            # A setting given as None is left out of the environment altogether (unset, not "").
            env = {k: v for k, v in env.items() if v is not None}
            self.log = open(self.log_path, "wb")
            self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
            try:
                self._wait_ready(tmp, int(settings["WEB_CONCURRENCY"]),
                                 booted=settings.get("LOG_LEVEL", "INFO").upper() in ("DEBUG", "INFO"))
                return
            except BaseException as exc:
                self.stop()  # never leave a gunicorn running behind a failed start
                # An interrupt (Ctrl-C, pytest's exit) ends the start, whatever the log says.
                if (not isinstance(exc, Exception) or attempt == PORT_ATTEMPTS
                        or not self._port_was_taken()):
                    raise
            self.port = free_port()
            self.base = f"http://127.0.0.1:{self.port}"

    def _port_was_taken(self) -> bool:
        return _port_taken(self.log_path.read_text(errors="replace"), self.port)

    def _wait_ready(self, tmp: Path, workers: int, booted: bool = True) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log_path.read_text()}")
            try:
                ready = requests.get(self.base + "/readyz", timeout=1).status_code == 200
            except requests.RequestException:  # not listening yet, or a worker still booting (slow)
                ready = False
            # Forked is not booted: a worker writes "Booting worker" after the fork, and a test that
            # reads the log from here on must not see a first boot as a replaced worker.
            if (ready and len(self.workers()) == workers
                    and (not booted or self.log_path.read_text(errors="replace").count("Booting worker") >= workers)):
                return
            time.sleep(0.1)
        raise RuntimeError("gunicorn did not become ready in 30 s")

    def workers(self) -> set[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return {int(pid) for pid in children}

    def post(self, params, *, path="/message", token=TOKEN, headers=None, data=None):
        url = self.base + path
        all_headers = {**signed_headers(url, params, token=token), "Content-Type": FORM, **(headers or {})}
        return requests.post(url, data=urlencode(params) if data is None else data, headers=all_headers, timeout=10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.log.close()
        # Its rules' kept copy, in the repository's instance folder, goes with it.
        shutil.rmtree(kept_copy_path(str(ROOT / "instance" / KEEP_FOLDER), str(self.rules)), ignore_errors=True)


class Servers:
    """`start(url, **settings)` for a test: each gunicorn in a folder of its own under `tmp`, on
    DATABASE_URL=url with `defaults` under `settings`; every one stopped when the block ends."""

    def __init__(self, tmp: Path, **defaults):
        self.tmp = tmp
        self.defaults = defaults
        self.started: list[Server] = []

    def __call__(self, url: str, **settings) -> Server:
        folder = self.tmp / f"server{len(self.started)}"
        folder.mkdir()
        srv = Server(folder, DATABASE_URL=url, **{**self.defaults, **settings})
        self.started.append(srv)
        return srv

    def __enter__(self) -> "Servers":
        return self

    def __exit__(self, *exc) -> None:
        for srv in self.started:
            srv.stop()
