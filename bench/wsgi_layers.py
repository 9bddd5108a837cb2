"""In-process CPU per message of each WSGI layer in front of the service (no gunicorn).

    .venv/bin/python bench/wsgi_layers.py [--messages 3000] [--proxies 1] [--no-store] [--profile] [--gc off]

Builds the app as gunicorn's workers do (`wsgi:app`: signatures verified, 1,000 rules, a
new SQLite file, metrics in multiprocess mode) and sends it distinct signed POST /message
environs, each entering at a different depth of the WSGI stack: the app as gunicorn calls
it, then each wrapper inside it (metrics.Instrumented, ProxyFix with --proxies, HostCheck,
...), then Flask's own wsgi_app, and at the bottom `Responder.handle_message` given a ready
HttpRequest (what the service does whatever serves it). Entry points take turns in small
batches, so a busy machine slows them alike; the CPU time of this thread per message is
the median over the batches, and each layer's cost is the difference with the one inside.

--no-store leaves the database out (the message is decided, not recorded): less noise in
the figures of the layers, which do not depend on it. --profile: cProfile (this thread's CPU)
of the full stack instead (SORT=cumulative, LINES=60 to change what it prints).
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import gc
import io
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOKEN = "bench-auth-token-not-a-secret"
URL = "http://127.0.0.1:8000/message"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=3000, help="messages per entry point")
    p.add_argument("--batch", type=int, default=50, help="messages per turn of an entry point")
    p.add_argument("--rules", type=int, default=1000)
    p.add_argument("--proxies", type=int, default=0, help="TRUSTED_PROXIES (0: no ProxyFix)")
    p.add_argument("--no-store", action="store_true", help="decide each message without recording it")
    p.add_argument("--profile", action="store_true", help="cProfile the full stack instead")
    p.add_argument("--gc", choices=("on", "off", "freeze"), default="on",
                   help="the garbage collector: on (as in a worker), off, or on with the app's objects frozen")
    args = p.parse_args()

    tmp = tempfile.mkdtemp(prefix="responder-wsgi-layers.")
    atexit.register(shutil.rmtree, tmp, True)
    os.environ.update(PLIVO_AUTH_TOKEN=TOKEN, LOG_LEVEL="WARNING", VERIFY_SIGNATURES="true",
                      PROMETHEUS_MULTIPROC_DIR=tmp, DATABASE_URL=f"sqlite:///{tmp}/db.sqlite3",
                      RULES_PATH=f"{tmp}/rules.yaml", TRUSTED_PROXIES=str(args.proxies))
    for name in ("PUBLIC_URL", "PLIVO_AUTH_ID", "RECORD_DIR"):
        os.environ.pop(name, None)
    subprocess.run([sys.executable, str(HERE / "make_rules.py"), str(args.rules), f"{tmp}/rules.yaml"], check=True)
    sys.path[:0] = [str(ROOT), str(HERE)]
    import harness

    from app.service import HttpRequest
    from app.signature import SIGNATURE_HEADERS
    from app.store import migrate
    from app.store.db import make_engine

    migrate.upgrade(make_engine(os.environ["DATABASE_URL"]))
    import wsgi
    from app.rules.holder import keep_dir, kept_copy_path
    from app.serving import start_background

    app = wsgi.app
    start_background(app)  # as gunicorn.conf.py's post_worker_init does in each worker
    # The app kept a copy of this run's rules in the checkout's instance folder: gone at exit.
    atexit.register(lambda: Path(kept_copy_path(keep_dir(app.instance_path), f"{tmp}/rules.yaml")).unlink(
        missing_ok=True))
    responder = app.extensions["responder"]
    if args.no_store:
        responder.store = None
    gen = harness.Generator(TOKEN, URL)

    def environ() -> dict:
        f = gen.next()
        form = urllib.parse.urlencode(harness.plivo_form(f["from"], f["uuid"])).encode()
        e = {"REQUEST_METHOD": "POST", "PATH_INFO": "/message", "QUERY_STRING": "", "SCRIPT_NAME": "",
             "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
             "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(form), "wsgi.errors": sys.stderr,
             "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
             "CONTENT_TYPE": "application/x-www-form-urlencoded", "CONTENT_LENGTH": str(len(form)),
             "HTTP_HOST": "127.0.0.1:8000", "RAW_URI": "/message", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000",
             "HTTP_USER_AGENT": "PlivoHTTP/1.0", "HTTP_ACCEPT_ENCODING": "gzip", "HTTP_CONNECTION": "keep-alive"}
        if args.proxies:
            e.update(HTTP_X_FORWARDED_FOR="203.0.113.9", HTTP_X_FORWARDED_PROTO="http",
                     HTTP_X_FORWARDED_HOST="127.0.0.1:8000")
        for key, name in (("v2", "V2"), ("v2", "MA_V2"), ("v3", "V3"), ("v3", "MA_V3"),
                          ("nonce", "V2_NONCE"), ("nonce", "V3_NONCE")):
            e[f"HTTP_X_PLIVO_SIGNATURE_{name}"] = f[key]
        return e

    def as_request(e: dict) -> HttpRequest:
        headers = {name: e["HTTP_" + name.upper().replace("-", "_")] for name in SIGNATURE_HEADERS}
        return HttpRequest(method="POST", url=URL, query=b"", body=e["wsgi.input"].getvalue(),
                           content_type=e["CONTENT_TYPE"], headers=headers, environ=e)

    def call(entry, e: dict) -> None:
        statuses = []
        body = b"".join(entry(e, lambda status, headers, exc_info=None: statuses.append(status)))
        assert statuses[0].startswith("200"), (statuses, body)

    # The stack, outermost first: what gunicorn calls, each wrapper's `.app` inside it, then Flask.
    entries = [("gunicorn calls app", app)]
    layer = app.wsgi_app
    while hasattr(layer, "app") and callable(layer.app):
        entries.append((type(layer).__name__, layer))
        layer = layer.app
    entries.append(("Flask.wsgi_app", layer))

    for _ in range(200):  # warm-up: caches, the database file, the metric files
        call(app, environ())
    if args.gc == "off":
        gc.disable()
    elif args.gc == "freeze":
        gc.freeze()
    if args.profile:
        envs = [environ() for _ in range(args.messages)]
        prof = cProfile.Profile(time.thread_time)  # CPU of this thread: not the time other threads hold the GIL
        prof.enable()
        for e in envs:
            call(app, e)
        prof.disable()
        pstats.Stats(prof).sort_stats(os.environ.get("SORT", "tottime")).print_stats(int(os.environ.get("LINES", "40")))
        return

    def run_service(envs: list[dict]) -> float:
        batch = [as_request(e) for e in envs]  # made before the clock starts: the service's own work only
        started = time.thread_time()
        answers = [responder.handle_message(req) for req in batch]
        elapsed = time.thread_time() - started
        assert all(a.status == 200 for a in answers), answers[0]
        return elapsed

    def run_entry(entry) -> Callable[[list[dict]], float]:
        def run(envs: list[dict]) -> float:
            started = time.thread_time()
            for e in envs:
                call(entry, e)
            return time.thread_time() - started
        return run

    runs = [(name, run_entry(entry)) for name, entry in entries] + [("Responder.handle_message", run_service)]
    per_batch: dict[str, list[float]] = {name: [] for name, _ in runs}
    turns = max(1, args.messages // args.batch)
    for turn in range(turns):
        for name, run in (runs if turn % 2 else runs[::-1]):
            per_batch[name].append(run([environ() for _ in range(args.batch)]) / args.batch * 1e6)
    med = {name: statistics.median(v) for name, v in per_batch.items()}
    print(f"POST /message in process, {turns} turns x {args.batch} messages per entry point, "
          f"{'no database' if args.no_store else 'SQLite'}, TRUSTED_PROXIES={args.proxies}")
    print(f"  {'entry point':28} {'us/message':>10} {'this layer':>11}")
    names = [name for name, _ in runs]
    for i, name in enumerate(names):
        inner = med[names[i + 1]] if i + 1 < len(names) else None
        own = f"{med[name] - inner:+10.1f}" if inner is not None else f"{'':>10}"
        print(f"  {name:28} {med[name]:10.1f} {own:>11}")
    print(f"  WSGI layers in all (gunicorn's call down to handle_message): "
          f"{med[names[0]] - med[names[-1]]:.1f} us per message")


if __name__ == "__main__":
    main()
