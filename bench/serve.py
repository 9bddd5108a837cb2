"""The real service for a bench that drives it from Python: gunicorn through gunicorn.conf.py.

    with serve(work, rules_text, DATABASE_URL=...) as svc:   # svc.port, svc.env, svc.log_path
        ...

Starts it in `work` (a folder of the caller's) on a free loopback port with the bench's
token and the given settings, waits until `/readyz` answers 200, and stops it at the end
(SIGTERM, then SIGKILL after 30 s), removing the rules' kept copy it leaves in instance/.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "bench-auth-token-not-a-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    port: int
    env: dict[str, str]
    log_path: str
    proc: subprocess.Popen


class StartFailed(RuntimeError):
    """The service exited or did not answer in time; the message holds its log."""


def service_env(**settings: str) -> dict[str, str]:
    """This process's environment without the service's own settings, plus `settings`."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PUBLIC_URL", "TRUSTED_PROXIES", "DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR",
                        "RESPONDER_METRICS_DIR_MADE", "GUNICORN_CMD_ARGS", "RETENTION_DAYS")
           and not k.startswith(("PLIVO_", "OUTBOX_", "WEBHOOK_", "RECORD_"))}
    env.update(settings)
    return env


@contextmanager
def serve(work: str, rules_text: str, *, ready_timeout: float = 60, **settings: str):
    rules = os.path.join(work, "rules.yaml")
    with open(rules, "w", encoding="utf-8") as out:
        out.write(rules_text)
    port = free_port()
    env = service_env(PLIVO_AUTH_TOKEN=TOKEN, PORT=str(port), RULES_PATH=rules, LOG_LEVEL="WARNING",
                      VERIFY_SIGNATURES="true", DATABASE_URL=f"sqlite:///{work}/service.sqlite3",
                      PROMETHEUS_MULTIPROC_DIR=os.path.join(work, "metrics"))
    env.update(settings)
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    log_path = os.path.join(work, "service.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([gunicorn, "-c", os.path.join(ROOT, "gunicorn.conf.py"),
                                 "--bind", f"127.0.0.1:{port}"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    with open(log_path, encoding="utf-8", errors="replace") as text:
                        raise StartFailed(f"the service did not start:\n{text.read()}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                time.sleep(0.2)
            yield Service(port, env, log_path, proc)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
            try:
                sys.path.insert(0, ROOT)
                from app.rules.holder import keep_dir, kept_copy_path
                kept = kept_copy_path(keep_dir(os.path.join(ROOT, "instance")), rules)
                if os.path.exists(kept):
                    os.remove(kept)
            except Exception:  # noqa: BLE001 - leaving the copy behind is harmless
                pass
