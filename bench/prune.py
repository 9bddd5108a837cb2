"""Inbound messages while a large retention prune runs: latency before and during it.

    python bench/prune.py [--databases sqlite,postgresql] [--rows 1000000] [--rate 200]
                          [--before 10] [--prune-timeout 900] [--postgres-url URL] [--json FILE]

For each database: a new one (SQLite: a file in a temporary folder; PostgreSQL: a database
`responder_prune_<pid>` made through --postgres-url and dropped at the end), migrated, then
filled in bulk with `--rows` messages 400 days old and what they leave behind (a reply, a
delivery report, and its nonce and MessageUUID in `seen` each, a finished webhook call for
every tenth: tests/old_rows.py).
Then the real service (gunicorn.conf.py, RETENTION_DAYS=3650 so its own hourly prune finds
nothing) gets correctly signed SMS at a steady `--rate` per second, each on a new connection
and each a new message (decided and recorded): a warm-up of 3 s, `--before` seconds measured,
then `flask --app wsgi db prune --days 30` runs in its own process, as an operator runs it
(with REPLAY_DAYS=30, so the nonces and MessageUUIDs kept against replays go too), while the
load goes on. It prints, before and during the prune, the inbound p50, p99, max and
answered requests per second (latency counted from when each request was due, so a stalled
service shows), and how long the prune took. Afterwards it checks that no old message is left
and that every message answered 200 is recorded.

Bounded: the prune is killed after --prune-timeout seconds (the bench then fails), each request
after 10 s. Used by `BENCH_PRUNE=1 bench/run`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE, os.path.join(ROOT, "tests")]

from attack import _percentile, send_signed  # noqa: E402
from serve import TOKEN, StartFailed, serve  # noqa: E402

RULES = """version: 1
rules:
  - name: hours
    when: {keyword: [hours]}
    reply: "We are open 9am-5pm, Monday to Friday."
"""
WARMUP_S = 3.0
REQUEST_TIMEOUT_S = 10.0
KEEP_DAYS = 30


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class Load:
    """Signed SMS at a steady rate, each on a new connection, until stopped: (due, latency, status)."""

    def __init__(self, port: int, rate: float):
        self.port = port
        self.rate = rate
        self.results: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=64)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self, due: float) -> None:
        latency, status = send_signed(self.port, TOKEN, "hours please", wait=REQUEST_TIMEOUT_S, since=due)
        self.results.append((due, latency, status))

    def _run(self) -> None:
        begin = time.monotonic()
        n = 0
        while not self._stop.is_set():
            due = begin + n / self.rate
            now = time.monotonic()
            if now >= due:
                self._pool.submit(self._one, due)
                n += 1
            else:
                time.sleep(min(0.01, due - now))

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)

    def phase(self, start: float, end: float) -> dict:
        """Figures of the requests due in [start, end)."""
        rows = [r for r in self.results if start <= r[0] < end]
        latencies = [lat for _, lat, status in rows if status]
        # throughput: answers (200) that came back within the phase, whenever they were due
        done = sum(1 for due, lat, status in self.results if status == 200 and start <= due + lat < end)
        seconds = max(end - start, 1e-9)
        return {"seconds": round(seconds, 2), "sent": len(rows), "answered_200_per_second": round(done / seconds, 1),
                "not_200": sum(1 for _, _, status in rows if status != 200),
                "p50_ms": round(_percentile(latencies, 0.50) * 1000, 1),
                "p99_ms": round(_percentile(latencies, 0.99) * 1000, 1),
                "max_ms": round(max(latencies, default=float("nan")) * 1000, 1)}


def pg_create(admin_url: str, name: str) -> str:
    import psycopg
    from harness import _pg_drop
    from psycopg import sql
    from sqlalchemy.engine import make_url
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
        _pg_drop(conn, name)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_url(admin_url).set(drivername="postgresql", database=name).render_as_string(hide_password=False)


def pg_drop(admin_url: str, name: str) -> None:
    import psycopg
    from harness import _pg_drop
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
            _pg_drop(conn, name)
    except psycopg.Error as exc:
        log(f"could not drop database {name}: {str(exc).strip()}; drop it by hand")


def count(url: str, sql: str) -> int:
    import sqlalchemy as sa

    from app.store.db import make_engine
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql)).scalar_one()
    finally:
        engine.dispose()


def run_one(database: str, url: str, work: str, args: argparse.Namespace) -> dict:
    from old_rows import fill

    from app.store import migrate
    from app.store.db import display, make_engine

    engine = make_engine(url, pool_size=1)
    migrate.upgrade(engine)
    engine.dispose()
    log(f"{database}: writing {args.rows:,} old messages and their rows ({display(url)})")
    started = time.monotonic()
    written = fill(url, args.rows, progress=lambda n, s: log(f"{database}:   {n:,} messages in {s:.0f} s")
                   if n % 200_000 == 0 else None)
    fill_s = time.monotonic() - started
    log(f"{database}: filled in {fill_s:.0f} s: {written}")
    figures: dict = {"database": database, "rows": written, "fill_s": round(fill_s, 1), "rate": args.rate}
    with serve(work, RULES, DATABASE_URL=url, RETENTION_DAYS="3650") as svc:
        load = Load(svc.port, args.rate).start()
        try:
            t0 = time.monotonic()
            time.sleep(WARMUP_S + args.before)
            t1 = time.monotonic()
            log(f"{database}: {args.before:g} s of {args.rate:g} SMS/s measured; pruning "
                f"(flask --app wsgi db prune --days {KEEP_DAYS})")
            # The whole backlog, replay protection's `seen` rows too (REPLAY_DAYS as short as allowed).
            env = dict(svc.env, RETENTION_DAYS=str(KEEP_DAYS), REPLAY_DAYS=str(KEEP_DAYS))
            prune = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "flask"), "--app", "wsgi",
                                      "db", "prune", "--days", str(KEEP_DAYS)], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                output, _ = prune.communicate(timeout=args.prune_timeout)
            except subprocess.TimeoutExpired:
                raise SystemExit(f"bench: {database}: the prune did not end within {args.prune_timeout:g} s") from None
            finally:
                if prune.poll() is None:
                    prune.kill()
                    prune.wait()
            t2 = time.monotonic()
        finally:
            load.stop()
        if prune.returncode != 0:
            raise SystemExit(f"bench: {database}: the prune failed:\n{output}")
        figures.update(before=load.phase(t0 + WARMUP_S, t1), during=load.phase(t1, t2),
                       prune_s=round(t2 - t1, 1), prune_output=output.strip().splitlines()[-1])
        answered = sum(1 for _, _, status in load.results if status == 200)
        first_due = min((r[0] for r in load.results), default=t0)
        figures["warmup"] = load.phase(first_due, t0 + WARMUP_S)
    old = count(url, "SELECT count(*) FROM messages WHERE uuid LIKE 'old-%'")
    recorded = count(url, "SELECT count(*) FROM messages WHERE uuid NOT LIKE 'old-%'")
    figures.update(old_left=old, recorded=recorded, answered_200=answered)
    if old:
        raise SystemExit(f"bench: {database}: {old} old messages are left after the prune")
    if recorded < answered:
        raise SystemExit(f"bench: {database}: {answered} messages answered 200 but only {recorded} recorded")
    return figures


def report(all_figures: list[dict]) -> str:
    lines = []
    for f in all_figures:
        rows = sum(f["rows"].values())
        lines.append(f"{f['database']}: {f['rows']['messages']:,} old messages ({rows:,} rows) written in "
                     f"{f['fill_s']:.0f} s; inbound SMS at {f['rate']:g}/s, each a new message")
        lines.append(f"  {'':14} {'seconds':>8} {'sent':>6} {'200/s':>7} {'p50':>9} {'p99':>9} {'max':>9} "
                     f"{'not 200':>8}")
        for name in ("before", "during"):
            p = f[name]
            lines.append(f"  {name + (' prune' if name == 'during' else ''):14} {p['seconds']:8.1f} {p['sent']:6d} "
                         f"{p['answered_200_per_second']:7.1f} {p['p50_ms']:6.1f} ms {p['p99_ms']:6.1f} ms "
                         f"{p['max_ms']:6.0f} ms {p['not_200']:8d}")
        lines.append(f"  prune: {f['prune_s']:.1f} s ({f['prune_output']})")
        lines.append(f"  checked: no old message left; {f['recorded']:,} new messages recorded, "
                     f"{f['answered_200']:,} answered 200")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--rows", type=int, default=1_000_000, help="old messages to write (default 1,000,000)")
    parser.add_argument("--rate", type=float, default=200, help="inbound SMS per second (default 200)")
    parser.add_argument("--before", type=float, default=10, help="seconds measured before the prune (default 10)")
    parser.add_argument("--prune-timeout", type=float, default=900)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the service, drop the database
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    if not databases or any(d not in ("sqlite", "postgresql") for d in databases):
        parser.error("--databases takes sqlite and/or postgresql")
    if args.rows < 1 or args.rate <= 0 or args.before <= 0 or args.prune_timeout <= 0:
        parser.error("--rows, --rate, --before and --prune-timeout must be above 0")
    results = []
    for database in databases:
        work = tempfile.mkdtemp(prefix=f"responder-prune-{database}-")
        name = f"responder_prune_{os.getpid()}"
        made = False
        try:
            if database == "sqlite":
                url = f"sqlite:///{work}/service.sqlite3"
            else:
                try:
                    url = pg_create(args.postgres_url, name)
                except Exception as exc:  # noqa: BLE001 - no server: say so and go on
                    log(f"postgresql skipped: no server at {args.postgres_url} ({str(exc).strip().splitlines()[0]})")
                    continue
                made = True
            results.append(run_one(database, url, work, args))
            print(report(results[-1:]), flush=True)
        except StartFailed as exc:
            raise SystemExit(f"bench: {database}: {exc}") from None
        finally:
            if made:
                pg_drop(args.postgres_url, name)
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(results, out, indent=1)


if __name__ == "__main__":
    main()
