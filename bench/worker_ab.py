"""The custom gunicorn worker against stock gthread: worker CPU per request, A/B.

    .venv/bin/python bench/worker_ab.py [--app bare|service] [--rounds 6] [--duration 8]

Two gunicorn masters run side by side with the project's gunicorn.conf.py and the same
workers and threads: one with its worker (`app.http_worker.DeadlineWorker`), the other
with `--worker-class gthread` (what the command line sets wins over the file). In each
round one wrk per server loads them all at once, so that whatever else runs on this shared
machine slows them alike (--one-at-a-time: one after the other, the order turning each
round), and the CPU the workers used in the run (utime + stime, /proc) is divided by the
requests answered. Medians are printed, and the difference, per round and its median: what
the custom worker costs per request on top of gthread.
With --base DIR (another checkout, e.g. `git worktree add /tmp/base HEAD~1`), that checkout's
custom worker runs as a third server in the same rounds: before and after a change, in one run.

--app bare: bench/bare.py (fixed XML, nothing checked), every request the same signed
Plivo-style POST the service bench sends (same headers and body). --app service: the
service (VERIFY_SIGNATURES, 1,000 rules, a new SQLite file each), every request a new
signed message; PUBLIC_URL is set to one URL so one pool of signed requests serves both
servers (each records it in its own database).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

import harness  # noqa: E402

from app.rules.holder import keep_dir, kept_copy_path  # noqa: E402

TOKEN = "bench-auth-token-not-a-secret"
CUSTOM, STOCK, BASE = "custom", "gthread", "base"

#: The same request again and again (the bare app checks nothing), 200s counted.
FIXED_LUA = """\
local REQUEST = {request}
local threads = {{}}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  ok200, other = 0, 0
end
function request()
  return REQUEST
end
function response(status, headers, body)
  if status == 200 then ok200 = ok200 + 1 else other = other + 1 end
end
function done(summary, latency, requests)
  local bad, ok = 0, 0
  for _, t in ipairs(threads) do
    bad = bad + (t:get("other") or 0)
    ok = ok + (t:get("ok200") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {{"requests": %d, "duration_us": %d, "non2xx": %d, "ok200": %d, "exhausted": 0, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, ' ..
    '"p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, bad, ok, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def start(name: str, port: int, work: Path, env: dict, args, extra: list[str], root: Path = ROOT) -> subprocess.Popen:
    app = ["--pythonpath", str(root / "bench"), "bare:app"] if args.app == "bare" else ["wsgi:app"]
    cmd = [str(ROOT / ".venv/bin/gunicorn"), "-c", str(root / "gunicorn.conf.py"), "--bind", f"127.0.0.1:{port}",
           "--workers", str(args.workers), "--threads", str(args.threads),
           "--control-socket", str(work / f"{name}.ctl"), *extra, *app]
    env = dict(env, PORT=str(port), DATABASE_URL=f"sqlite:///{work}/{name}.sqlite3")
    log = open(work / f"{name}.log", "wb")
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(proc: subprocess.Popen, port: int, path: str, timeout: float = 60) -> None:
    subprocess.run([sys.executable, str(HERE / "harness.py"), "wait", f"http://127.0.0.1:{port}{path}",
                    "--pid", str(proc.pid), "--timeout", str(timeout)], check=True, stdout=subprocess.DEVNULL)


def start_wrk(args, port: int, master: int, script: Path, pool: Path | None, out: Path) -> tuple:
    cpu0 = harness.worker_cpu_seconds(master)
    cmd = ["wrk", "--latency", "-t1", f"-c{args.connections}", f"-d{args.duration}s", "--timeout", "5s",
           "-s", str(script), f"http://127.0.0.1:{port}/message"]
    if pool is not None:
        cmd += ["--", str(pool), "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, master, cpu0, out


def finish_wrk(args, started: tuple) -> dict:
    proc, master, cpu0, out = started
    stdout, _ = proc.communicate(timeout=args.duration + 60)
    cpu1 = harness.worker_cpu_seconds(master)
    out.write_text(stdout, encoding="utf-8")
    found = re.search(r"^BENCH_JSON (.*)$", stdout, re.M)
    if proc.returncode != 0 or found is None:
        harness.fail(f"wrk failed, see {out}")
    stats = json.loads(found.group(1))
    bad = {k: stats[k] for k in ("non2xx", "exhausted", "connect", "read", "write", "status", "timeout") if stats[k]}
    if bad or not stats["requests"]:
        harness.fail(f"{out}: {bad or 'no requests'}")
    stats["cpu_us"] = (cpu1 - cpu0) / stats["requests"] * 1e6
    stats["rps"] = stats["requests"] / (stats["duration_us"] / 1e6)
    return stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--app", choices=("bare", "service"), default="bare")
    p.add_argument("--rounds", type=int, default=6, help="timed runs per worker, interleaved")
    p.add_argument("--duration", type=int, default=8, help="seconds per timed run")
    p.add_argument("--warmup", type=int, default=3, help="seconds of untimed load per server first")
    p.add_argument("--connections", type=int, default=8, help="wrk connections (kept alive)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=8, help="gunicorn threads per worker")
    p.add_argument("--max-rate", type=int, default=3000, help="service: req/s the request pools are sized for")
    p.add_argument("--rules", type=int, default=1000, help="service: keyword rules")
    p.add_argument("--rate", type=int, default=0,
                   help="requests per second per server (each connection waits between requests; 0: as fast as "
                        "they are answered). Below saturation the CPU per request does not depend on how much "
                        "throughput each server got")
    p.add_argument("--base", type=Path, help="another checkout whose custom worker runs too (before/after)")
    p.add_argument("--one-at-a-time", action="store_true",
                   help="load one server after the other in each round (default: all at once, so that whatever "
                        "else runs on the machine slows them alike)")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="responder-worker-ab."))
    port_a, port_b, port_c = map(int, subprocess.check_output(
        [sys.executable, str(HERE / "harness.py"), "free-ports", "3"], text=True).split())
    url = f"http://127.0.0.1:{port_a}/message"
    env = dict(os.environ, PLIVO_AUTH_TOKEN=TOKEN, LOG_LEVEL="WARNING", VERIFY_SIGNATURES="true",
               WEB_CONCURRENCY=str(args.workers), RULES_PATH=str(work / "rules.yaml"))
    for name in ("PLIVO_AUTH_ID", "PLIVO_API_URL", "PROMETHEUS_MULTIPROC_DIR", "TRUSTED_PROXIES"):
        env.pop(name, None)
    subprocess.run([sys.executable, str(HERE / "make_rules.py"), str(args.rules), str(work / "rules.yaml")],
                   check=True)
    pools: dict[str, Path] = {}
    if args.app == "bare":
        template = harness.make_template(TOKEN, url)
        raw = harness.format_request(template, harness.Generator(TOKEN, url).next()).decode()
        script = work / "fixed.lua"
        script.write_text(FIXED_LUA.format(request=harness._lua_str(raw)), encoding="utf-8")
        ready = "/message"
    else:
        env["PUBLIC_URL"] = f"http://127.0.0.1:{port_a}"  # what the pool is signed for, on both servers
        names = ["warmup"] + [f"round{r}" for r in range(1, args.rounds + 1)]
        seconds = {n: args.warmup if n == "warmup" else args.duration for n in names}
        subprocess.run([sys.executable, str(HERE / "harness.py"), "pool", "--port", str(port_a), "--token", TOKEN,
                        "--out", str(work), *[a for n in names if seconds[n] > 0
                                               for a in ("--pool", f"{n}:{seconds[n] * args.max_rate + 1000}")]],
                       check=True)
        script = work / "request.lua"
        pools = {n: work / f"pool-{n}.txt" for n in names}
        ready = "/healthz"
    if args.rate:
        # wrk waits delay() ms before each request of a connection: connections / delay per second, about.
        paced = work / "paced.lua"
        paced.write_text(script.read_text(encoding="utf-8")
                         + f"\nfunction delay()\n  return {1000 * args.connections / args.rate:.3f}\nend\n",
                         encoding="utf-8")
        script = paced

    servers = {CUSTOM: (port_a, start(CUSTOM, port_a, work, env, args, [])),
               STOCK: (port_b, start(STOCK, port_b, work, env, args, ["--worker-class", "gthread"]))}
    if args.base is not None:
        servers[BASE] = (port_c, start(BASE, port_c, work, env, args, [], root=args.base.resolve()))
    names = list(servers)
    results: dict[str, list[dict]] = {n: [] for n in names}
    try:
        for port, proc in servers.values():
            wait_ready(proc, port, ready)
        if args.warmup:
            warm = dict_args(args, duration=args.warmup)
            for started in [start_wrk(warm, port, proc.pid, script, pools.get("warmup"), work / f"warmup-{name}.wrk")
                            for name, (port, proc) in servers.items()]:
                finish_wrk(warm, started)
        for r in range(1, args.rounds + 1):
            order = names[r % len(names):] + names[:r % len(names)]  # each goes first in turn
            order = order if r % 2 else order[::-1]
            groups = [[name] for name in order] if args.one_at_a_time else [order]
            for group in groups:
                runs = {name: start_wrk(args, servers[name][0], servers[name][1].pid, script, pools.get(f"round{r}"),
                                        work / f"round{r}-{name}.wrk") for name in group}
                for name, started in runs.items():
                    stats = finish_wrk(args, started)
                    results[name].append(stats)
                    print(f"round {r}: {name:8} {stats['rps']:7.0f} req/s  {stats['cpu_us']:6.1f} us CPU/req  "
                          f"p99 {stats['p99_us'] / 1000:.2f} ms", flush=True)
    finally:
        for _, proc in servers.values():
            proc.send_signal(signal.SIGTERM)
        for _, proc in servers.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    for pool in pools.values():
        pool.unlink(missing_ok=True)  # megabytes each; the wrk outputs and server logs stay
    # Each master kept a copy of this run's rules in its checkout's instance folder: gone with them.
    for root in {ROOT, *([args.base.resolve()] if args.base is not None else [])}:
        kept = Path(kept_copy_path(keep_dir(str(root / "instance")), str(work / "rules.yaml")))
        for path in (kept, *kept.parent.glob(kept.name + ".*.tmp")):
            path.unlink(missing_ok=True)
    med = {n: statistics.median(s["cpu_us"] for s in results[n]) for n in results}
    rps = {n: statistics.median(s["rps"] for s in results[n]) for n in results}
    print(f"\n{args.app} under gunicorn, {args.workers} workers x {args.threads} threads, "
          f"wrk -t1 -c{args.connections}, "
          f"{args.rounds} x {args.duration}s, " + ("one server at a time" if args.one_at_a_time else "all at once")
          + (f", paced at {args.rate} req/s per server" if args.rate else ", as fast as answered"))
    for n in names:
        print(f"  {n:8} worker CPU/req median {med[n]:6.1f} us   req/s median {rps[n]:7.0f}"
              + (f"   ({args.base})" if n == BASE else ""))
    for n in names[:1] + names[2:]:
        # Per round pairs: the spread of the difference says how far to trust it.
        diffs = [a["cpu_us"] - b["cpu_us"] for a, b in zip(results[n], results[STOCK])]
        print(f"  {n} - gthread: {med[n] - med[STOCK]:+.1f} us per request (per round: "
              + ", ".join(f"{d:+.1f}" for d in diffs) + f"; median {statistics.median(diffs):+.1f})")
    print(f"  raw output: {work}")


def dict_args(args, **changes):
    return argparse.Namespace(**{**vars(args), **changes})


if __name__ == "__main__":
    main()
