"""Slow clients (and hostile texts) against a running responder, while signed messages are sent.

    python bench/attack.py --port PORT --token TOKEN [--duration 60] [--per-kind 200]
                           [--rate 4] [--hostile-every 5] [--text "hours please"]
    python bench/attack.py --serve [...]    # starts (and stops) the service itself

Three kinds of slow sockets, `--per-kind` of each, held open for `--duration` seconds:

- `byte`: sends one byte of a request line, then nothing;
- `headers`: sends a request's headers a byte a second, never finishing them;
- `body`: sends complete headers announcing a body, then the body a byte every 2 s.

A socket the server answers or closes is replaced at once by a new one of the same
kind, so the pressure stays constant. Meanwhile, correctly signed inbound SMS are sent
at a steady `--rate` per second, each on a new connection, as Plivo would; with
`--hostile-every S`, one SMS of 32 `a` and a `!` (catastrophic backtracking for a rule
`regex: '^(a+)+$'` and `'^(a|aa)+$'`, which takes seconds without a bound) every S
seconds too, counted apart. It prints the fraction of the signed messages answered
(200) within Plivo's 8 s, and their p50/p99 latency.

Used by `BENCH_ATTACK=1 bench/run`. The sockets and the senders are tests/slow_sockets.py's,
which tests/test_slow_clients.py runs for 20 s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.append(os.path.join(ROOT, "tests"))  # last: its modules shadow nothing of the service's
from serve import TOKEN, StartFailed, serve  # noqa: E402
from slow_sockets import KINDS, attack, report  # noqa: E402

#: The rules of `--serve`: the answering rule, and one whose regex backtracks catastrophically
#: on HOSTILE_TEXT (how long such a text may take is bounded by the rules engine, or not).
SERVE_RULES = """version: 1
rules:
  - name: hours
    when: {keyword: [hours]}
    reply: "We are open 9am-5pm."
  - name: backtracking
    when: {regex: '^(a+)+$'}
    reply: "only a's"
  - name: backtracking-alternation
    when: {regex: '^(a|aa)+$'}
    reply: "only a's, again"
"""
SERVE_TOKEN = TOKEN


def serve_and_attack(args: argparse.Namespace) -> int:
    """Start the service (gunicorn.conf.py, SQLite in a temporary folder), attack it, stop it."""
    import shutil
    import tempfile

    work = tempfile.mkdtemp(prefix="responder-attack-")
    try:
        with serve(work, SERVE_RULES) as svc:
            print(f"bench: under attack for {args.duration:g} s: {args.per_kind} slow sockets of each "
                  f"kind ({', '.join(KINDS)}), a hostile text every {args.hostile_every:g} s, "
                  f"signed SMS at {args.rate:g}/s", file=sys.stderr, flush=True)
            figures = attack(svc.port, SERVE_TOKEN, duration=args.duration, per_kind=args.per_kind,
                             rate=args.rate, hostile_every=args.hostile_every, text=args.text)
            print(f"responder under attack: gunicorn.conf.py, WEB_CONCURRENCY={svc.env.get('WEB_CONCURRENCY', '2')}, "
                  f"REQUEST_READ_TIMEOUT={svc.env.get('REQUEST_READ_TIMEOUT', '5 (default)')}, SQLite")
            print(report(figures), flush=True)
            if args.json:
                with open(args.json, "w", encoding="utf-8") as out:
                    json.dump(figures, out, indent=1)
        return 0
    except StartFailed as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true",
                        help="start the service itself (SQLite, a rule with a backtracking regex) and stop it after")
    parser.add_argument("--port", type=int)
    parser.add_argument("--token")
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--per-kind", type=int, default=200)
    parser.add_argument("--rate", type=float, default=4)
    parser.add_argument("--hostile-every", type=float, default=0)
    parser.add_argument("--text", default="hours please")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.duration <= 0 or args.rate <= 0 or args.per_kind < 0 or args.hostile_every < 0:
        parser.error("--duration and --rate must be above 0, --per-kind and --hostile-every 0 or more")
    if args.serve:
        sys.exit(serve_and_attack(args))
    if args.port is None or args.token is None:
        parser.error("give --port and --token of a running service, or --serve")
    figures = attack(args.port, args.token, duration=args.duration, per_kind=args.per_kind,
                     rate=args.rate, hostile_every=args.hostile_every, text=args.text)
    print(report(figures), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(figures, out, indent=1)


if __name__ == "__main__":
    main()
