"""Helpers for bench/run (standard library, plus app.signature for signing and
app.store.db / psycopg for the bench databases).

Subcommands:
  free-ports N                       print N distinct free loopback TCP ports
  wait URL [--method M] [--timeout S] [--pid PID] [--any]
                                     poll URL until it answers 2xx (--any: any HTTP status;
                                     fail if PID dies)
  cpu PID                            CPU seconds used so far by the children of PID
  dbcpu DBNAME [--save F | --since F]
                                     CPU seconds used so far by the PostgreSQL backends
                                     serving database DBNAME (--since: since --save F)
  pool --port P --token T --out DIR [--type sms|whatsapp] --pool NAME:COUNT ...
                                     write DIR/request.lua (the wrk script), DIR/template.json
                                     and, per pool, DIR/pool-NAME.txt: COUNT distinct, signed
                                     Plivo-style inbound SMS (or WhatsApp messages) for
                                     http://127.0.0.1:P/message
  verify --template F --token T --port P [--bare | --peer] [--out F] [--standin URL --auth-id ID]
                                     send fresh requests built like the pool's, byte for byte,
                                     and check the answers (service: the Message XML, or for
                                     WhatsApp the empty <Response/> and the reply reaching the
                                     Plivo stand-in; the retry, a forged signature and a
                                     replayed nonce; the peer: the same but the replayed nonce)
  pg-create ADMIN_URL NAME           create database NAME; print its URL (exit 3: no server)
  pg-drop ADMIN_URL NAME             drop database NAME if it exists
  count DATABASE_URL                 print how many messages the database recorded
  standin-count URL --auth-id ID --token T [--wait S]
                                     print how many messages the Plivo stand-in has accepted
                                     (its message list); --wait: until it answers
  check FILE                         fail if a wrk output shows errors, non-2xx answers
                                     or a request pool that ran out
  recorded DIR DATABASE_URL [--sends N] [--target peer]
                                     check every 200 answer of DIR's service runs was recorded
                                     (and, with WhatsApp runs, that each WhatsApp message has
                                     its reply in the outbox; N: sends the stand-in received);
                                     --target peer: the same for the peer's runs and database
  report DIR [--title T]             read DIR/round*.wrk; print the table, write summary.json
  summary DIR [SECTION ...]          the ratios of DIR/SECTION/summary.json (default: all), one table
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import secrets
import socket
import statistics
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The bench message: an SMS "hours please" to our number 14155550100, from a
# different sender for each request (1415 and 7 digits). A WhatsApp bench message
# is the same with Type=whatsapp and the text in Body (Plivo's WhatsApp webhook has
# no Text), from senders 1416 and 7 digits (so no sender is shared with the SMS runs);
# its answer is an empty <Response/> and the reply goes through the outbox.
OUR_NUMBER = "14155550100"
TEXT = "hours please"
EXPECTED_REPLY = "We are open 9am-5pm, Monday to Friday."
BARE_SENDER = "14155550123"  # the bare app's fixed answer is addressed to this one
TYPES = ("sms", "whatsapp")
SENDER_PREFIX = {"sms": "1415", "whatsapp": "1416"}

# Fields that change per request, in the order of a pool line. Their widths are
# fixed, so every request has the same length (one Content-Length in the template).
FIELDS = ("from", "uuid", "nonce", "v2", "v3")
WIDTHS = {"from": 11, "uuid": 36, "nonce": 20, "v2": 44, "v3": 44}


def fail(msg: str, code: int = 1) -> None:
    print(f"bench: {msg}", file=sys.stderr)
    sys.exit(code)


# ---------------------------------------------------------------- free-ports


def cmd_free_ports(args: argparse.Namespace) -> None:
    socks = []
    try:
        for _ in range(args.n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        print(" ".join(str(s.getsockname()[1]) for s in socks))
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------------- wait


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_wait(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not _alive(args.pid):
            fail(f"server (pid {args.pid}) exited before {args.url} answered; see its log")
        req = urllib.request.Request(args.url, method=args.method)
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                if 200 <= resp.status < 300 or args.any:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            if args.any:  # the app answered (the peer has no health route: 403 unsigned)
                return
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    fail(f"{args.url} not ready after {args.timeout:g}s ({last})")


# ----------------------------------------------------------------------- cpu


def _proc_stats():
    """(pid, ppid, utime + stime in ticks) of every process we can read."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        yield int(entry), int(fields[1]), int(fields[11]) + int(fields[12])


def worker_cpu_seconds(master: int) -> float:
    """User + system CPU seconds used so far by the children (workers) of `master`."""
    hz = os.sysconf("SC_CLK_TCK")
    return sum(ticks for _, ppid, ticks in _proc_stats() if ppid == master) / hz


def cmd_cpu(args: argparse.Namespace) -> None:
    print(f"{worker_cpu_seconds(args.pid):.2f}")


def cmd_dbcpu(args: argparse.Namespace) -> None:
    """CPU of the PostgreSQL backends of one database (their title names it).

    With --save FILE the backends' own figures are kept; with --since FILE only the CPU
    used since then is printed: a backend that started meanwhile counts from zero, and
    one that exited meanwhile (a connection the pool closed) drops out instead of taking
    its whole past off the sum, so the figure is a slight undercount, never negative.
    """
    hz = os.sysconf("SC_CLK_TCK")
    now: dict[str, int] = {}
    needle = f" {args.dbname} ".encode()
    for pid, _, ticks in _proc_stats():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        if title.startswith(b"postgres: ") and needle in title:
            now[str(pid)] = ticks
    if args.save:
        Path(args.save).write_text(json.dumps(now), encoding="utf-8")
    if args.since:
        then = json.loads(Path(args.since).read_text(encoding="utf-8"))
        total = sum(max(0, ticks - then.get(pid, 0)) for pid, ticks in now.items())
    else:
        total = sum(now.values())
    print(f"{total / hz:.2f}")


# ---------------------------------------------------------------------- pool
#
# wrk's LuaJIT has no HMAC, so the signed requests are made here. A pool line
# holds only what changes ("FROM UUID NONCE V2 V3"); the Lua script formats it
# into a raw HTTP request with one template, the same for every request. The
# template is a Lua string.format pattern that Python's % operator reads the
# same way (%s and %% only), so `verify` sends exactly the bytes wrk sends.


def plivo_form(sender: str, message_uuid: str, type_: str = "sms") -> list[tuple[str, str]]:
    """The form fields of an inbound SMS (or WhatsApp message: its text is in Body),
    in the order Plivo sends them."""
    return [
        ("From", sender),
        ("To", OUR_NUMBER),
        ("Type", type_),
        ("Body" if type_ == "whatsapp" else "Text", TEXT),
        ("MessageUUID", message_uuid),
        ("Units", "1"),
        ("TotalRate", "0.00000"),
        ("TotalAmount", "0.00000"),
        ("MessageIntent", ""),
        ("PowerpackUUID", ""),
        ("MediaCount", "0"),
    ]


def _signer():
    sys.path.insert(0, str(ROOT))
    try:
        from app.signature import sign_headers
    except ImportError as exc:
        fail(f"cannot import app.signature.sign_headers: {exc}")
    return sign_headers


class Generator:
    """Distinct signed requests: a random run id, then a counter.

    MessageUUID = the run id (64 bits) and the counter as one 128-bit UUID; nonce =
    8 random digits and the counter (20 digits, like Plivo's); sender = 1415 (WhatsApp:
    1416) and the counter's last 7 digits. So no uuid or nonce repeats within a run, nor
    (but for a 1e-8 chance) between runs on the same database.
    """

    def __init__(self, token: str, url: str, type_: str = "sms"):
        self.token = token
        self.url = url
        self.type = type_
        self.prefix = SENDER_PREFIX[type_]
        self.sign = _signer()
        self.run_uuid = secrets.randbits(64)
        self.run_nonce = secrets.randbelow(10 ** 8)
        self.counter = 0

    def next(self) -> dict[str, str]:
        n = self.counter
        self.counter += 1
        f = {
            "from": f"{self.prefix}{n % 10 ** 7:07d}",
            "uuid": str(uuid.UUID(int=(self.run_uuid << 64) | n)),
            "nonce": f"{self.run_nonce:08d}{n:012d}",
        }
        signed = self.sign(self.token, "POST", self.url, params=plivo_form(f["from"], f["uuid"], self.type),
                           nonce=f["nonce"])
        f["v2"] = signed["X-Plivo-Signature-V2"]
        f["v3"] = signed["X-Plivo-Signature-V3"]
        for k, width in WIDTHS.items():
            if len(f[k]) != width or " " in f[k]:
                fail(f"pool: {k} {f[k]!r} is not {width} characters")
        return f


def make_template(token: str, url: str, type_: str = "sms") -> dict:
    """The raw request as a %s template, and which field goes in each %s, in order."""
    parts = urllib.parse.urlsplit(url)
    marks = {k: f"\x01{k}\x01" for k in FIELDS}
    sample = Generator(token, url, type_).next()
    # The header names and their order come from sign_headers itself.
    signed = _signer()(token, "POST", url, params=plivo_form(sample["from"], sample["uuid"], type_),
                       nonce=sample["nonce"])
    per_header = {
        "X-Plivo-Signature-V2": "v2", "X-Plivo-Signature-Ma-V2": "v2",
        "X-Plivo-Signature-V3": "v3", "X-Plivo-Signature-Ma-V3": "v3",
        "X-Plivo-Signature-V2-Nonce": "nonce", "X-Plivo-Signature-V3-Nonce": "nonce",
    }
    if set(signed) != set(per_header):
        fail(f"pool: sign_headers gave headers {sorted(signed)}, expected {sorted(per_header)}")
    body = urllib.parse.urlencode(plivo_form(marks["from"], marks["uuid"], type_), safe="\x01")
    sample_body = urllib.parse.urlencode(plivo_form(sample["from"], sample["uuid"], type_))
    headers = [("Host", parts.netloc),
               ("Content-Type", "application/x-www-form-urlencoded"),
               ("Content-Length", str(len(sample_body.encode())))]  # the same for every request
    headers += [(name, marks[per_header[name]]) for name in signed]
    raw = f"POST {parts.path} HTTP/1.1\r\n"
    raw += "".join(f"{k}: {v}\r\n" for k, v in headers)
    raw += "\r\n" + body
    raw = raw.replace("%", "%%")
    order = [m.group(1) for m in re.finditer("\x01([a-z0-9]+)\x01", raw)]
    template = {"url": url, "type": type_, "template": re.sub("\x01[a-z0-9]+\x01", "%s", raw),
                "order": order}
    # The varying fields need no escaping, so the template gives exactly the signed form.
    if format_request(template, sample).decode().partition("\r\n\r\n")[2] != sample_body:
        fail("pool: the request template does not reproduce the signed form")
    return template


def format_request(template: dict, f: dict[str, str]) -> bytes:
    """The raw request for one pool entry: what the Lua script sends for its line."""
    return (template["template"] % tuple(f[k] for k in template["order"])).encode("utf-8")


def _lua_str(value: str) -> str:
    out = []
    for ch in value.encode("utf-8"):
        c = chr(ch)
        if c in '\\"':
            out.append("\\" + c)
        elif 32 <= ch < 127:
            out.append(c)
        else:
            out.append(f"\\{ch:03d}")
    return '"' + "".join(out) + '"'


LUA_TEMPLATE = """\
-- Generated by bench/harness.py pool: distinct signed Plivo-style inbound {kind}.
-- wrk -s request.lua URL -- POOL_FILE THREADS
-- Each wrk thread takes every THREADS-th line of POOL_FILE ("FROM UUID NONCE V2 V3")
-- and sends each once. A pool that runs out stops the thread and is reported
-- (BENCH_JSON "exhausted"): a request sent twice would be a Plivo retry, answered
-- from the database without being decided or recorded again.
local TEMPLATE = {template}
local PATTERN = "^(%S+) (%S+) (%S+) (%S+) (%S+)$"

local threads = {{}}
function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

function init(args)
  local path, nthreads = args[1], tonumber(args[2])
  if path == nil or nthreads == nil then
    error("usage: wrk -s request.lua URL -- POOL_FILE THREADS")
  end
  pool = {{}}
  local k = 0
  for line in io.lines(path) do
    if k % nthreads == thread_index then
      pool[#pool + 1] = line
    end
    k = k + 1
  end
  if #pool == 0 then
    error("empty request pool " .. path)
  end
  taken, pool_size, exhausted, non2xx, ok200 = 0, #pool, 0, 0, 0
end

function request()
  taken = taken + 1
  local line = pool[taken]
  if line == nil then
    exhausted = exhausted + 1
    wrk.thread:stop()
    line = pool[pool_size]
  end
  local {names} = line:match(PATTERN)
  return string.format(TEMPLATE, {args})
end

-- Count answers outside 2xx (wrk itself only counts status >= 400) and exact 200s.
function response(status, headers, body)
  if status == 200 then
    ok200 = ok200 + 1
  elseif status < 200 or status > 299 then
    non2xx = non2xx + 1
  end
end

function done(summary, latency, requests)
  local bad, ok, ex, used, size = 0, 0, 0, 0, 0
  for _, t in ipairs(threads) do
    bad = bad + (t:get("non2xx") or 0)
    ok = ok + (t:get("ok200") or 0)
    ex = ex + (t:get("exhausted") or 0)
    used = used + (t:get("taken") or 0)
    size = size + (t:get("pool_size") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {{"requests": %d, "duration_us": %d, "non2xx": %d, "ok200": %d, ' ..
    '"exhausted": %d, "pool_used": %d, "pool_size": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}}\\n',
    summary.requests, summary.duration, bad, ok, ex, used, size,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""


def cmd_pool(args: argparse.Namespace) -> None:
    url = f"http://127.0.0.1:{args.port}/message"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    template = make_template(args.token, url, args.type)
    (out / "template.json").write_text(json.dumps(template, indent=2) + "\n", encoding="utf-8")
    names = ", ".join(f"f_{k}" for k in FIELDS)
    (out / "request.lua").write_text(
        LUA_TEMPLATE.format(kind="WhatsApp messages" if args.type == "whatsapp" else "SMS",
                            template=_lua_str(template["template"]), names=names,
                            args=", ".join(f"f_{k}" for k in template["order"])),
        encoding="utf-8",
    )
    gen = Generator(args.token, url, args.type)
    first = None
    total = 0
    started = time.monotonic()
    for spec in args.pool:
        name, _, count = spec.partition(":")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or not count.isdigit() or int(count) < 1:
            fail(f"pool: bad --pool {spec!r}, expected NAME:COUNT")
        with open(out / f"pool-{name}.txt", "w", encoding="ascii") as fh:
            for _ in range(int(count)):
                f = gen.next()
                first = first or f
                fh.write(" ".join(f[k] for k in FIELDS) + "\n")
        total += int(count)
    # One request written out in full, for the record (the first of the first pool).
    raw = format_request(template, first).decode("utf-8")
    head, _, body = raw.partition("\r\n\r\n")
    (out / "request.json").write_text(json.dumps({
        "method": "POST", "url": url,
        "headers": dict(line.split(": ", 1) for line in head.split("\r\n")[1:]),
        "body": body,
        "varies_per_request": ["From", "MessageUUID", "nonces", "signatures"],
    }, indent=2) + "\n", encoding="utf-8")
    print(f"bench: {total} signed {'WhatsApp ' if args.type == 'whatsapp' else ''}requests "
          f"in {len(args.pool)} pools, "
          f"{time.monotonic() - started:.1f}s", file=sys.stderr)


# -------------------------------------------------------------------- verify


def _send_raw(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw request bytes on a fresh connection, the way wrk sends them."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        resp = http.client.HTTPResponse(sock, method="POST")
        resp.begin()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def _xml_answer(label: str, status: int, headers: dict[str, str], raw: bytes) -> str:
    """Fail unless the answer is a 200 in XML; the start of its body, for messages."""
    shown = raw.decode("utf-8", "replace")[:500]
    if status != 200:
        fail(f"{label}: expected 200, got {status}: {shown}")
    ctype = headers.get("content-type", "")
    if not ctype.lower().startswith(("application/xml", "text/xml")):
        fail(f"{label}: Content-Type {ctype!r}, expected application/xml")
    return shown


def _check_xml(label: str, status: int, headers: dict[str, str], raw: bytes, dst: str,
               declaration: bool = True) -> None:
    shown = _xml_answer(label, status, headers, raw)
    if declaration and not raw.lstrip().startswith(b"<?xml"):
        fail(f"{label}: answer has no XML declaration: {shown}")
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        fail(f"{label}: answer is not XML ({exc}): {shown}")
    messages = list(root)
    if root.tag != "Response" or len(messages) != 1 or messages[0].tag != "Message":
        fail(f"{label}: expected <Response> with one <Message>: {shown}")
    msg = messages[0]
    want = {"src": OUR_NUMBER, "dst": dst, "type": "sms"}
    got = {k: msg.get(k) for k in want}
    if got != want:
        fail(f"{label}: Message attributes {got}, expected {want}: {shown}")
    if (msg.text or "") != EXPECTED_REPLY:
        fail(f"{label}: Message text {msg.text!r}, expected {EXPECTED_REPLY!r}")


def _check_empty(label: str, status: int, headers: dict[str, str], raw: bytes) -> None:
    """A WhatsApp message's answer: 200 and an empty <Response/> (the reply goes through the API)."""
    shown = _xml_answer(label, status, headers, raw)
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        fail(f"{label}: answer is not XML ({exc}): {shown}")
    if root.tag != "Response" or len(root) or (root.text or "").strip():
        fail(f"{label}: expected an empty <Response/> for a WhatsApp message: {shown}")


def _standin_get(url: str, auth_id: str, token: str, query: dict[str, str]) -> dict:
    """GET the stand-in's message list (Plivo's GET /v1/Account/ID/Message/)."""
    path = f"/v1/Account/{urllib.parse.quote(auth_id, safe='')}/Message/"
    req = urllib.request.Request(f"{url.rstrip('/')}{path}?{urllib.parse.urlencode(query)}")
    credentials = base64.b64encode(f"{auth_id}:{token}".encode()).decode()
    req.add_header("Authorization", f"Basic {credentials}")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def standin_count(url: str, auth_id: str, token: str) -> int:
    """How many messages the stand-in has accepted (sends answered 2xx) since it started."""
    return int(_standin_get(url, auth_id, token, {"limit": 1})["meta"]["total_count"])


def _wait_for_replies(args: argparse.Namespace, senders: list[str], answered_at: float) -> None:
    """The WhatsApp replies to `senders` reach the stand-in: the outbox sender works."""
    deadline = time.monotonic() + args.standin_timeout
    missing = list(senders)
    while True:
        for sender in list(missing):
            found = _standin_get(args.standin, args.auth_id, args.token, {"to_number": sender, "limit": 20})
            if any(m.get("message_type") == "whatsapp" and m.get("from_number") == OUR_NUMBER
                   for m in found.get("objects", ())):
                missing.remove(sender)
        if not missing:
            break
        if time.monotonic() > deadline:
            fail(f"service: no WhatsApp reply to {', '.join(missing)} reached the Plivo stand-in at "
                 f"{args.standin} within {args.standin_timeout:g}s (is the outbox sender running? "
                 "see the service's log)")
        time.sleep(0.2)
    print(f"verified service (WhatsApp): the replies to both senders reached the Plivo stand-in "
          f"({time.monotonic() - answered_at:.1f}s after the second answer)")


def cmd_verify(args: argparse.Namespace) -> None:
    template = json.loads(Path(args.template).read_text(encoding="utf-8"))
    type_ = template.get("type", "sms")
    whatsapp = type_ == "whatsapp"
    gen = Generator(args.token, template["url"], type_)  # its own run id: fresh uuids and nonces
    label = "bare app" if args.bare else "peer" if args.peer else "service"
    if whatsapp:
        if args.bare or args.peer:
            fail("verify: the bare app and the peer are checked with SMS only")
        label = "service (WhatsApp)"

    def check(status, headers, raw, dst):
        if whatsapp:
            _check_empty(label, status, headers, raw)
        else:  # the SDK's plivoxml writes no XML declaration (Plivo needs none)
            _check_xml(label, status, headers, raw, dst, declaration=not args.peer)

    first, second = gen.next(), gen.next()
    status, headers, raw = _send_raw(args.port, format_request(template, first))
    check(status, headers, raw, BARE_SENDER if args.bare else first["from"])
    print(f"verified {label}: {status} {raw.decode('utf-8')!r}")
    if args.bare:
        return
    recorded = 1
    status, headers, raw2 = _send_raw(args.port, format_request(template, second))
    check(status, headers, raw2, second["from"])
    answered_at = time.monotonic()
    recorded += 1
    print(f"verified {label}: a second fresh request (sender {second['from']}) answered the same way")
    # The very same request again is a Plivo retry: the stored answer, byte for byte.
    status, _, again = _send_raw(args.port, format_request(template, first))
    if status != 200 or again != raw:
        fail(f"{label}: a retry got {status} {again[:200]!r}, expected the first answer again")
    print(f"verified {label}: a retry (same MessageUUID and nonce) gets the stored answer")
    # The bench must measure a service that checks signatures: a forged one is refused.
    forged = dict(gen.next(), v2="A" * 43 + "=", v3="A" * 43 + "=")
    status, _, raw = _send_raw(args.port, format_request(template, forged))
    if status != 403:
        fail(f"{label}: a forged signature got {status}, expected 403 "
             "(is VERIFY_SIGNATURES off?): " + raw.decode("utf-8", "replace")[:200])
    print(f"verified {label}: forged signature refused with 403")
    if args.peer:  # its handler, like the SDK docs', remembers no nonces: that check is the service's
        if args.out:
            Path(args.out).write_text(json.dumps({"recorded": recorded, "type": type_}) + "\n", encoding="utf-8")
        return
    # ... and remembers nonces: the first nonce with another MessageUUID is a replay.
    replay = dict(first, uuid=gen.next()["uuid"])
    signed = gen.sign(args.token, "POST", template["url"],
                      params=plivo_form(replay["from"], replay["uuid"], type_), nonce=replay["nonce"])
    replay.update(v2=signed["X-Plivo-Signature-V2"], v3=signed["X-Plivo-Signature-V3"])
    status, _, raw = _send_raw(args.port, format_request(template, replay))
    if status != 403 or b"replayed" not in raw:
        fail(f"service: a nonce reused with another MessageUUID got {status} "
             f"{raw.decode('utf-8', 'replace')[:200]!r}, expected 403 replayed Plivo signature")
    print(f"verified {label}: a nonce reused with another MessageUUID refused with 403 "
          f"{raw.decode().strip()!r}")
    if whatsapp and args.standin:
        _wait_for_replies(args, [first["from"], second["from"]], answered_at)
    if args.out:
        Path(args.out).write_text(json.dumps({"recorded": recorded, "type": type_}) + "\n", encoding="utf-8")


# ----------------------------------------------------------------- databases


def cmd_pg_create(args: argparse.Namespace) -> None:
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    try:
        conn = psycopg.connect(args.admin_url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()
        fail(f"no PostgreSQL server answers at {args.admin_url}: "
             f"{reason[0] if reason else type(exc).__name__}", code=3)
    with conn:
        _pg_drop(conn, args.name)  # a leftover of a bench that was killed hard
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(args.name)))
    url = make_url(args.admin_url).set(drivername="postgresql", database=args.name)
    print(url.render_as_string(hide_password=False))


def _pg_drop(conn, name: str) -> None:
    import psycopg
    from psycopg import sql

    try:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    except psycopg.errors.SyntaxError:  # before PostgreSQL 13: end the sessions, then drop
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def cmd_pg_drop(args: argparse.Namespace) -> None:
    import psycopg

    try:
        with psycopg.connect(args.admin_url, autocommit=True, connect_timeout=3) as conn:
            _pg_drop(conn, args.name)
    except psycopg.Error as exc:
        fail(f"could not drop database {args.name}: {str(exc).strip()}")


def count_messages(url: str) -> int:
    sys.path.insert(0, str(ROOT))
    import sqlalchemy as sa

    from app.store.db import make_engine

    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM messages")).scalar_one()
    finally:
        engine.dispose()


def count_by_type(url: str) -> tuple[dict[str, int], dict[str, int]]:
    """(messages per type, WhatsApp reply rows of the outbox per status)."""
    sys.path.insert(0, str(ROOT))
    import sqlalchemy as sa

    from app.store.db import make_engine

    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            messages = dict(conn.execute(sa.text("SELECT type, count(*) FROM messages GROUP BY type")).all())
            outbox = dict(conn.execute(sa.text(
                "SELECT status, count(*) FROM outbox WHERE kind = 'message' AND type = 'whatsapp' "
                "GROUP BY status")).all())
        return messages, outbox
    finally:
        engine.dispose()


def cmd_count(args: argparse.Namespace) -> None:
    print(count_messages(args.url))


def cmd_standin_count(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.wait
    while True:
        try:
            print(standin_count(args.url, args.auth_id, args.token))
            return
        except (OSError, ValueError, KeyError) as exc:
            if time.monotonic() > deadline:
                fail(f"the Plivo stand-in at {args.url} does not answer its message list: {exc}")
        time.sleep(0.2)


# -------------------------------------------------------------------- report


def _bench_json(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    match = re.search(r"^BENCH_JSON (\{.*\})$", text, re.M)
    if not match:
        fail(f"{path}: no BENCH_JSON line (wrk failed?)\n{text}")
    data = json.loads(match.group(1))
    for key, pattern in (("cpu_s", r"^BENCH_CPU ([0-9.]+)$"), ("dbcpu_s", r"^BENCH_DBCPU ([0-9.]+)$")):
        found = re.search(pattern, text, re.M)
        data[key] = float(found.group(1)) if found else None
    return data


def _runs(directory: Path) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for path in sorted(directory.glob("round*-*.wrk")):
        target = path.stem.split("-", 1)[1]
        data = _bench_json(path)
        data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
        data["cpu_us"] = data["cpu_s"] * 1e6 / data["requests"] if data["cpu_s"] is not None else None
        data["dbcpu_us"] = (data["dbcpu_s"] * 1e6 / data["requests"]
                            if data["dbcpu_s"] is not None else None)
        data["file"] = path.name
        runs.setdefault(target, []).append(data)
    return runs


def cmd_check(args: argparse.Namespace) -> None:
    """Fail if the given wrk output shows any error, non-2xx answer or an exhausted pool."""
    path = Path(args.file)
    d = _bench_json(path)
    text = path.read_text(encoding="utf-8")
    if d["exhausted"]:
        fail(f"{args.file}: the pool of {d['pool_size']} signed requests ran out "
             f"({d['requests']} requests answered): a request sent twice would be a retry, "
             "so this run does not count; raise BENCH_MAX_RATE\n" + text)
    errors = {k: d[k] for k in ("non2xx", "connect", "read", "write", "status", "timeout") if d[k]}
    if d["requests"] == 0:
        fail(f"{args.file}: no request completed\n{text}")
    if errors:
        fail(f"{args.file}: {d['requests']} requests with errors {errors}\n{text}")
    if d["ok200"] != d["requests"]:
        fail(f"{args.file}: {d['requests']} answers but {d['ok200']} with status 200\n{text}")


def _answered(directory: Path, pattern: str, verify_file: str) -> tuple[int, int]:
    """(200 answers wrk counted in the files matching `pattern`, fresh messages of the verification)."""
    answered = sum(_bench_json(p)["ok200"] for p in sorted(directory.glob(pattern)))
    verify = directory / verify_file
    verified = json.loads(verify.read_text(encoding="utf-8"))["recorded"] if verify.exists() else 0
    return answered, verified


def cmd_recorded(args: argparse.Namespace) -> None:
    """Every message answered 200 (wrk's count, plus the verification's) is in the database."""
    directory = Path(args.dir)
    peer = args.target == "peer"
    if not peer and (list(directory.glob("*-whatsapp.wrk")) or (directory / "verify-whatsapp.json").exists()):
        return _recorded_by_type(directory, args)
    # The peer's table is called `messages` too (bench/peer.py), one row per message.
    answered, verified = _answered(directory, "*-peer.wrk" if peer else "*service*.wrk",
                                   "verify-peer.json" if peer else "verify.json")
    stored = count_messages(args.url)
    line = (f"{'peer ' if peer else ''}recorded: {stored} messages in {'its' if peer else 'the'} database; "
            f"{answered} answers 200 counted by wrk + {verified} verification messages = {answered + verified}")
    if stored < answered + verified:
        fail(line + ": some answered messages were NOT recorded")
    extra = stored - answered - verified
    print(line + (f" (+{extra} answered after wrk stopped counting)" if extra else " (exactly)"))
    (directory / ("recorded-peer.json" if peer else "recorded.json")).write_text(json.dumps(
        {"messages": stored, "wrk_200": answered, "verification": verified}) + "\n", encoding="utf-8")


def _recorded_by_type(directory: Path, args: argparse.Namespace) -> None:
    """SMS and WhatsApp runs: each type's 200 answers are recorded as messages of that type, and
    every WhatsApp message recorded has its reply in the outbox (written in the same transaction)."""
    messages, outbox = count_by_type(args.url)
    summary: dict = {"messages": sum(messages.values()), "by_type": messages}
    lines, problems = [], []
    for type_, pattern, verify_file in (("sms", "*-service.wrk", "verify.json"),
                                        ("whatsapp", "*-whatsapp.wrk", "verify-whatsapp.json")):
        answered, verified = _answered(directory, pattern, verify_file)
        stored = messages.get(type_, 0)
        line = (f"{stored} {'SMS' if type_ == 'sms' else 'WhatsApp'} messages; {answered} answers 200 "
                f"counted by wrk + {verified} verification messages = {answered + verified}")
        extra = stored - answered - verified
        if extra < 0:
            problems.append(f"{type_}: some answered messages were NOT recorded")
        lines.append(line + (f" (+{extra} answered after wrk stopped counting)" if extra > 0
                             else " (exactly)" if extra == 0 else " (MISSING)"))
        summary[type_] = {"messages": stored, "wrk_200": answered, "verification": verified}
    others = {t: n for t, n in messages.items() if t not in ("sms", "whatsapp")}
    if others:
        problems.append(f"messages of other types: {others}")
    queued = sum(outbox.values())
    whatsapp = messages.get("whatsapp", 0)
    shown = ", ".join(f"{status} {n}" for status, n in sorted(outbox.items(), key=lambda kv: -kv[1])) or "none"
    line = f"outbox: {queued} WhatsApp replies queued for {whatsapp} WhatsApp messages ({shown})"
    if queued != whatsapp:
        problems.append("the outbox does not hold exactly one reply per WhatsApp message recorded")
    lines.append(line)
    if args.sends is not None:
        sent = outbox.get("sent", 0)
        note = ("as many as the outbox has sent" if args.sends == sent
                else f"outbox says {sent} sent: {'MORE' if args.sends > sent else 'fewer'} than it received")
        lines.append(f"the Plivo stand-in accepted {args.sends} sends from this section's service ({note})")
        summary["standin_sends"] = args.sends
    summary["outbox"] = outbox
    print("recorded: " + "\n          ".join(lines))
    if problems:
        fail("; ".join(problems))
    (directory / "recorded.json").write_text(json.dumps(summary) + "\n", encoding="utf-8")


def _ms(us: float) -> str:
    return f"{us / 1000:.2f} ms"


def _median(values):
    values = list(values)
    return statistics.median(values) if values and all(v is not None for v in values) else None


def _total_cpu(m: dict) -> float | None:
    """CPU per request of a server, workers plus (PostgreSQL) its database backends."""
    if m["cpu"] is None:
        return None
    return m["cpu"] + (m["dbcpu"] or 0.0)


def _peer_ratios(med: dict) -> dict | None:
    """The service against the peer: throughput, CPU per recorded message, p99."""
    if "peer" not in med:
        return None
    svc, peer = med["service"], med["peer"]
    cpu = None
    if _total_cpu(svc) and _total_cpu(peer):
        cpu = _total_cpu(peer) / _total_cpu(svc)
    return {"throughput": svc["rps"] / peer["rps"], "cpu": cpu, "p99": svc["p99"] / peer["p99"]}


def cmd_report(args: argparse.Namespace) -> None:
    directory = Path(args.dir)
    runs = _runs(directory)
    names = [n for n in ("bare", "peer", "service", "whatsapp") if n in runs]
    if "service" not in names or "bare" not in names:
        fail(f"{directory}: need runs for both service and bare, found {sorted(runs)}")
    med = {
        n: {
            "rps": statistics.median(r["rps"] for r in runs[n]),
            "p50": statistics.median(r["p50_us"] for r in runs[n]),
            "p99": statistics.median(r["p99_us"] for r in runs[n]),
            "each": [r["rps"] for r in runs[n]],
            "requests": sum(r["requests"] for r in runs[n]),
            "cpu": _median(r["cpu_us"] for r in runs[n]),
            "dbcpu": _median(r["dbcpu_us"] for r in runs[n]) if n != "bare" else None,
        }
        for n in names
    }
    ratio = med["service"]["rps"] / med["bare"]["rps"]
    with_db = med["service"]["dbcpu"] is not None
    lines = [""]
    if args.title:
        lines.append(args.title)
    lines.append(f"{'':10} {'req/s (median)':>15} {'p50':>10} {'p99':>10} {'worker CPU/req':>15}"
                 + (f" {'db CPU/req':>11}" if with_db else "") + "   req/s per round")
    for n in names:
        m = med[n]
        each = ", ".join(f"{x:.0f}" for x in m["each"])
        cpu = f"{m['cpu']:.0f} us" if m["cpu"] is not None else "?"
        db = (f" {m['dbcpu']:>8.0f} us" if m["dbcpu"] is not None else f" {'':>11}") if with_db else ""
        lines.append(
            f"{n:10} {m['rps']:>15.0f} {_ms(m['p50']):>10} {_ms(m['p99']):>10} {cpu:>15}{db}   {each}"
        )
    lines.append("")
    lines.append(f"ratio service/bare throughput: {ratio:.3f}")
    cpu_ratio = None
    if med["service"]["cpu"] and med["bare"]["cpu"]:
        cpu_ratio = med["bare"]["cpu"] / med["service"]["cpu"]
        lines.append(f"ratio bare/service worker CPU per request: {cpu_ratio:.3f}"
                     "  (steadier on a busy machine)")
    peer = _peer_ratios(med)
    if peer is not None:
        lines.append(f"ratio service/peer throughput: {peer['throughput']:.3f}")
        if peer["cpu"] is not None:
            lines.append(f"ratio peer/service CPU per recorded message{' (worker + db)' if with_db else ''}: "
                         f"{peer['cpu']:.3f}  (>= 1.0, the service costs no more than the peer: "
                         f"{'yes' if peer['cpu'] >= 1.0 else 'NO'})")
        lines.append(f"ratio service/peer p99: {peer['p99']:.3f}  (<= 1.0, the service's p99 no worse: "
                     f"{'yes' if peer['p99'] <= 1.0 else 'NO'})")
    wa = None
    if "whatsapp" in med:
        # Rounds pair up (round r of each): the per-round ratios show the spread.
        sms_rounds = {r["file"].split("-")[0]: r["rps"] for r in runs["service"]}
        per_round = [w["rps"] / sms_rounds[w["file"].split("-")[0]] for w in runs["whatsapp"]
                     if w["file"].split("-")[0] in sms_rounds]
        wa = {"ratio": med["whatsapp"]["rps"] / med["service"]["rps"], "rounds": per_round, "cpu_ratio": None}
        lines.append(f"whatsapp/sms throughput: {wa['ratio']:.2f} (within 10%: "
                     f"{'yes' if wa['ratio'] >= 0.90 else 'NO'})   per round: "
                     + ", ".join(f"{x:.2f}" for x in per_round))
        if med["service"]["cpu"] and med["whatsapp"]["cpu"]:
            wa["cpu_ratio"] = med["service"]["cpu"] / med["whatsapp"]["cpu"]
            lines.append(f"ratio sms/whatsapp worker CPU per request: {wa['cpu_ratio']:.3f}"
                         "  (1.0: a WhatsApp message costs the workers what an SMS does)")
        lines.append("(service: SMS, answered with Message XML; whatsapp: the same service answering WhatsApp "
                     "messages with an empty <Response/>, the reply queued in the outbox for a slow Plivo)")
    if peer is not None:
        lines.append("(peer: bench/peer.py, the handler a Plivo user writes from the SDK docs, on its own database)")
    if with_db:
        lines.append("(db CPU/req: the PostgreSQL backends of each server's own database, on top of the workers')")
    noisy = [n for n in names
             if len(med[n]["each"]) > 1
             and (max(med[n]["each"]) - min(med[n]["each"])) / med[n]["rps"] > 0.15]
    if noisy:
        lines.append(f"WARNING: req/s varied more than 15% between rounds ({', '.join(noisy)}): "
                     "the machine was busy; take the figures as rough, or run again")
    lines.append(
        "(p50/p99: median over rounds of each round's percentile; "
        + " + ".join(str(med[n]["requests"]) for n in names) + " requests timed, "
        "all 200, no socket errors, each request sent once)"
    )
    summary = {
        n: {"rps": round(med[n]["rps"], 1), "p50_us": med[n]["p50"], "p99_us": med[n]["p99"],
            "worker_cpu_us_per_request": med[n]["cpu"] and round(med[n]["cpu"], 1),
            "rps_rounds": [round(x, 1) for x in med[n]["each"]]}
        for n in names
    }
    if with_db:
        for n in names:
            if med[n]["dbcpu"] is not None:
                summary[n]["db_cpu_us_per_request"] = round(med[n]["dbcpu"], 1)
    if wa is not None:
        summary["whatsapp_ratio"] = round(wa["ratio"], 4)
        summary["whatsapp_ratio_rounds"] = [round(x, 4) for x in wa["rounds"]]
        summary["whatsapp_cpu_ratio"] = wa["cpu_ratio"] and round(wa["cpu_ratio"], 4)
        summary["whatsapp_within_10pct"] = wa["ratio"] >= 0.90
    summary["ratio"] = round(ratio, 4)
    summary["cpu_ratio"] = cpu_ratio and round(cpu_ratio, 4)
    if peer is not None:
        for n in ("peer", "service"):
            total = _total_cpu(med[n])
            summary[n]["cpu_us_per_request"] = total and round(total, 1)  # worker + db
        summary["peer_ratio"] = round(peer["throughput"], 4)
        summary["peer_cpu_ratio"] = peer["cpu"] and round(peer["cpu"], 4)
        summary["peer_p99_ratio"] = round(peer["p99"], 4)
        summary["peer_cpu_no_more"] = peer["cpu"] is not None and peer["cpu"] >= 1.0
        summary["peer_p99_no_worse"] = peer["p99"] <= 1.0
    summary["noisy"] = noisy
    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print("\n".join(lines))


def _us(value) -> str:
    return f"{value:.0f} us" if value is not None else ""


def cmd_summary(args: argparse.Namespace) -> None:
    directory = Path(args.dir)
    rows = {}
    for name in args.sections or sorted(p.parent.name for p in directory.glob("*/summary.json")):
        rows[name] = json.loads((directory / name / "summary.json").read_text(encoding="utf-8"))
    if not rows:
        fail(f"{directory}: no */summary.json")
    lines = ["", f"{'database':12} {'server':8} {'req/s':>7} {'p50':>10} {'p99':>10} {'worker CPU/req':>15} "
             f"{'db CPU/req':>11}"]
    for name, s in rows.items():
        for i, n in enumerate(n for n in ("bare", "peer", "service") if n in s):
            m = s[n]
            lines.append(f"{name if i == 0 else '':12} {n:8} {m['rps']:>7.0f} {_ms(m['p50_us']):>10} "
                         f"{_ms(m['p99_us']):>10} {_us(m['worker_cpu_us_per_request']):>15} "
                         f"{_us(m.get('db_cpu_us_per_request')):>11}")
    with_peer = any("peer" in s for s in rows.values())
    lines += ["", f"{'database':12} {'service/bare':>12} {'CPU bare/service':>17}"
              + (f" {'service/peer':>13} {'CPU peer/service':>17} {'p99 service/peer':>17}" if with_peer else "")]
    for name, s in rows.items():
        cpu = f"{s['cpu_ratio']:.3f}" if s.get("cpu_ratio") else "?"
        line = f"{name:12} {s['ratio']:>12.3f} {cpu:>17}"
        if "peer" in s:
            pcpu = (f"{s['peer_cpu_ratio']:.3f} {'(ok)' if s['peer_cpu_no_more'] else '(NO)'}"
                    if s.get("peer_cpu_ratio") else "?")
            p99 = f"{s['peer_p99_ratio']:.3f} {'(ok)' if s['peer_p99_no_worse'] else '(NO)'}"
            line += f" {s['peer_ratio']:>13.3f} {pcpu:>17} {p99:>17}"
        lines.append(line + ("  (noisy)" if s.get("noisy") else ""))
    if with_peer:
        lines.append("(CPU peer/service: CPU per recorded message, worker + db, >= 1.0 (ok) when the service costs "
                     "no more; p99 service/peer <= 1.0 (ok) when its p99 is no worse)")
    if any("whatsapp" in s for s in rows.values()):
        lines += ["", "WhatsApp against SMS, the same service (the inbound answer must not wait for the "
                      "Message API):",
                  f"{'database':12} {'sms req/s':>10} {'whatsapp req/s':>15} {'whatsapp p50':>13} "
                  f"{'whatsapp p99':>13} {'CPU ratio':>10}   whatsapp/sms throughput"]
        for name, s in rows.items():
            if "whatsapp" not in s:
                continue
            w = s["whatsapp"]
            cpu = f"{s['whatsapp_cpu_ratio']:.3f}" if s.get("whatsapp_cpu_ratio") else "?"
            lines.append(f"{name:12} {s['service']['rps']:>10.0f} {w['rps']:>15.0f} {_ms(w['p50_us']):>13} "
                         f"{_ms(w['p99_us']):>13} {cpu:>10}   {s['whatsapp_ratio']:.2f} (within 10%: "
                         f"{'yes' if s['whatsapp_within_10pct'] else 'NO'})"
                         + ("  (noisy)" if s.get("noisy") else ""))
    (directory / "summary.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print("\n".join(lines))


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("free-ports")
    p.add_argument("n", type=int)
    p.set_defaults(func=cmd_free_ports)

    p = sub.add_parser("wait")
    p.add_argument("url")
    p.add_argument("--method", default="GET")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--pid", type=int)
    p.add_argument("--any", action="store_true", help="any HTTP answer means ready")
    p.set_defaults(func=cmd_wait)

    p = sub.add_parser("cpu")
    p.add_argument("pid", type=int)
    p.set_defaults(func=cmd_cpu)

    p = sub.add_parser("dbcpu")
    p.add_argument("dbname")
    p.add_argument("--save", metavar="FILE", help="keep each backend's figure in FILE")
    p.add_argument("--since", metavar="FILE", help="print only the CPU used since --save FILE")
    p.set_defaults(func=cmd_dbcpu)

    p = sub.add_parser("pool")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--type", choices=TYPES, default="sms")
    p.add_argument("--pool", action="append", required=True, metavar="NAME:COUNT")
    p.set_defaults(func=cmd_pool)

    p = sub.add_parser("verify")
    p.add_argument("--template", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--port", type=int, required=True)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--bare", action="store_true")
    which.add_argument("--peer", action="store_true", help="the peer (bench/peer.py)")
    p.add_argument("--out")
    p.add_argument("--standin", metavar="URL", help="WhatsApp: wait for the replies to reach this stand-in")
    p.add_argument("--auth-id", help="the stand-in's account (PLIVO_AUTH_ID)")
    p.add_argument("--standin-timeout", type=float, default=30.0)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("pg-create")
    p.add_argument("admin_url")
    p.add_argument("name")
    p.set_defaults(func=cmd_pg_create)

    p = sub.add_parser("pg-drop")
    p.add_argument("admin_url")
    p.add_argument("name")
    p.set_defaults(func=cmd_pg_drop)

    p = sub.add_parser("count")
    p.add_argument("url")
    p.set_defaults(func=cmd_count)

    p = sub.add_parser("standin-count")
    p.add_argument("url")
    p.add_argument("--auth-id", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--wait", type=float, default=0.0)
    p.set_defaults(func=cmd_standin_count)

    p = sub.add_parser("check")
    p.add_argument("file")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("recorded")
    p.add_argument("dir")
    p.add_argument("url")
    p.add_argument("--sends", type=int, help="sends the Plivo stand-in accepted during the section")
    p.add_argument("--target", choices=("service", "peer"), default="service",
                   help="whose runs and database: the service's, or the peer's (bench/peer.py)")
    p.set_defaults(func=cmd_recorded)

    p = sub.add_parser("report")
    p.add_argument("dir")
    p.add_argument("--title")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("summary")
    p.add_argument("dir")
    p.add_argument("sections", nargs="*")
    p.set_defaults(func=cmd_summary)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
