"""The hostile corpus (tests/hostile/, format in tests/hostile/README.md), replayed byte for
byte over a raw socket against the real server (gunicorn through gunicorn.conf.py).

Each request case is sent as written, with its placeholders filled at replay time (the
server's address and port, a fresh MessageUUID, fresh signatures), and must get its expected
status (or be dropped, "closed"). After each case the server must still be healthy: GET
/healthz answers 200, the workers are the ones that started (none died or was replaced), and
the log has gained no traceback and none of the case's `log_excludes`.

Each rules-file case is written over a running server's rules file: the reload must be refused
with `path:line: message` lines, and the server must go on answering.

Replay by hand against a running service (signed with the test token):

    PLIVO_AUTH_TOKEN=MAtesttoken0000000000000000000000000000 ./scripts/serve &
    .venv/bin/python tests/test_hostile.py --port 8000 [case name ...]
"""

from __future__ import annotations

import os
import re
import socket
import sys
import time
import uuid as uuidlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import pytest
import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest, servers: also when run as a script

from conftest import FORM, TOKEN, sms

#: Every test here starts a real server or waits out deadlines of seconds (pyproject.toml).
pytestmark = pytest.mark.server

CORPUS = Path(__file__).resolve().parent / "hostile"
REQUESTS = CORPUS / "requests"
RULES_FILES = CORPUS / "rules-files"
PROFILES = CORPUS / "servers.yaml"

#: The phone numbers the cases use: no log line may hold one whole, whatever the case.
PHONE_NUMBERS = ("14155550123", "14155550100", "14155550999")
#: Seconds a case's response may take unless it says `within`.
DEFAULT_WITHIN = 5.0
#: The keys a request case may have (anything else is a typo in the corpus).
KEYS = {"why", "expect", "head", "body", "complete", "sign", "server", "then", "replay",
        "replay_body", "parallel", "within", "half_close", "log_excludes", "hold"}
SIGN_KEYS = {"url", "method", "versions", "token", "body"}
VERSION_HEADERS = {
    "V3": ("X-Plivo-Signature-V3", "X-Plivo-Signature-Ma-V3", "X-Plivo-Signature-V3-Nonce"),
    "V2": ("X-Plivo-Signature-V2", "X-Plivo-Signature-Ma-V2", "X-Plivo-Signature-V2-Nonce"),
}
SIGNATURE_FIELDS = ("signature", "v3", "v2", "nonce")

_REPEAT = re.compile(r"\{repeat:(\d+):((?:[^{}]|\{[^{}]*\})*)\}")
_PLACEHOLDER = re.compile(r"\{(host|port|length|uuid|signature|v3|v2|nonce|CR|LF|NUL|TAB|x:[0-9A-Fa-f ]+)\}")
_BYTES = {"CR": b"\r", "LF": b"\n", "NUL": b"\0", "TAB": b"\t"}
#: Anything that looks like a placeholder ({word} or {word:...}) must be one of the above.
_LOOKS_LIKE = re.compile(r"\{([A-Za-z]+)(?::[^{}]*)?\}")
_KNOWN = {"host", "port", "length", "uuid", "signature", "v3", "v2", "nonce", "CR", "LF", "NUL", "TAB", "x", "repeat"}


# --- the corpus ------------------------------------------------------------------------------

class CorpusError(ValueError):
    """A case file that does not follow tests/hostile/README.md."""


@dataclass
class Case:
    name: str
    path: Path
    expect: list                   # statuses (int) and/or "closed"
    head: str
    body: str = ""
    complete: bool = True
    sign: dict | None = None
    server: str = "default"
    then: list | None = None
    replay: list | None = None
    replay_body: str | None = None
    parallel: int = 1
    within: float = DEFAULT_WITHIN
    half_close: bool = False
    log_excludes: list = field(default_factory=list)
    hold: int = 0
    why: str = ""


def _statuses(value, where: str) -> list:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not (item == "closed" or (isinstance(item, int) and 100 <= item <= 599)):
            raise CorpusError(f"{where}: {item!r} is neither an HTTP status nor \"closed\"")
    return items


def load_case(path: Path) -> Case:
    name = str(path.relative_to(REQUESTS).with_suffix(""))
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise CorpusError(f"{path}: a case is a mapping (see tests/hostile/README.md)")
    unknown = set(data) - KEYS
    if unknown:
        raise CorpusError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(KEYS)}")
    for key in ("why", "expect", "head"):
        if key not in data:
            raise CorpusError(f"{path}: `{key}` is required")
    sign = data.get("sign")
    if sign is True:
        sign = {}
    elif sign is not None and not (isinstance(sign, dict) and set(sign) <= SIGN_KEYS):
        raise CorpusError(f"{path}: `sign` is true or a mapping of {sorted(SIGN_KEYS)}")
    text = data["head"] + str(data.get("body", ""))
    for m in _LOOKS_LIKE.finditer(text):
        if m.group(1) not in _KNOWN:
            raise CorpusError(f"{path}: unknown placeholder {m.group(0)!r}; known: {sorted(_KNOWN)}")
    if sign is None and any(f"{{{name}}}" in text for name in SIGNATURE_FIELDS):
        raise CorpusError(f"{path}: signature placeholders need `sign: true`")
    case = Case(
        name=name, path=path, why=data["why"], head=data["head"],
        expect=_statuses(data["expect"], f"{path}: expect"),
        body=str(data.get("body", "")), complete=bool(data.get("complete", True)), sign=sign,
        server=data.get("server", "default"),
        then=_statuses(data["then"], f"{path}: then") if "then" in data else None,
        replay=_statuses(data["replay"], f"{path}: replay") if "replay" in data else None,
        replay_body=str(data["replay_body"]) if "replay_body" in data else None,
        parallel=int(data.get("parallel", 1)), within=float(data.get("within", DEFAULT_WITHIN)),
        half_close=bool(data.get("half_close", False)), log_excludes=list(data.get("log_excludes", [])),
        hold=int(data.get("hold", 0)),
    )
    if case.hold and (case.then or case.replay or case.parallel != 1):
        raise CorpusError(f"{path}: `hold` cannot be combined with then, replay or parallel")
    if case.replay_body is not None and (case.replay is None or case.sign is None):
        raise CorpusError(f"{path}: `replay_body` needs `replay` and `sign`")
    return case


def load_cases() -> list[Case]:
    return [load_case(p) for p in sorted(REQUESTS.rglob("*.yaml"))]


def load_profiles() -> dict[str, dict]:
    return yaml.safe_load(PROFILES.read_text(encoding="utf-8"))


# --- building the bytes ----------------------------------------------------------------------

def _expand_repeats(text: str) -> str:
    while True:  # inner repeats come out of outer ones
        expanded = _REPEAT.sub(lambda m: m.group(2) * int(m.group(1)), text)
        if expanded == text:
            return text
        text = expanded


def _dechunk(data: bytes) -> bytes:
    """The payload of a well-formed chunked body (what a signer signs), else the bytes as
    they are."""
    out, rest = [], data
    try:
        while True:
            size_line, rest = rest.split(b"\r\n", 1)
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                return b"".join(out)
            out.append(rest[:size])
            rest = rest[size + 2:]
    except ValueError:
        return data


def _fill(text: str, values: dict[str, str]) -> bytes:
    """`text` (repeats expanded) as bytes, UTF-8, with every placeholder replaced."""
    out, last = [], 0
    for m in _PLACEHOLDER.finditer(text):
        out.append(text[last:m.start()].encode("utf-8"))
        key = m.group(1)
        if key in _BYTES:
            out.append(_BYTES[key])
        elif key.startswith("x:"):
            out.append(bytes.fromhex(key[2:]))
        else:
            out.append(values[key].encode("utf-8"))
        last = m.end()
    out.append(text[last:].encode("utf-8"))
    return b"".join(out)


def build(case: Case, host: str, port: int, token: str = TOKEN, *,
          reuse: dict | None = None, body_text: str | None = None) -> bytes:
    """The bytes of one sending of `case`: a fresh `{uuid}` and fresh signatures each time.

    `reuse`: an empty dict gets the signature values made; a filled one gives them, to send
    the same signature headers again (a replay). `body_text`: instead of the case's body."""
    from app.signature import sign_headers

    values = {"host": host, "port": str(port), "uuid": str(uuidlib.uuid4()),
              "signature": "", "v3": "", "v2": "", "nonce": ""}
    body = _fill(_expand_repeats(case.body if body_text is None else body_text), values)
    values["length"] = str(len(body))
    head = _expand_repeats(case.head)
    head = head[:-1] if head.endswith("\n") else head
    lines = head.split("\n")
    if case.sign is not None and reuse:
        values.update({k: reuse[k] for k in SIGNATURE_FIELDS})
    elif case.sign is not None:
        request_line = _fill(lines[0], values).decode("utf-8", "replace").split(" ")
        method = case.sign.get("method") or request_line[0]
        target = request_line[1] if len(request_line) > 1 else "/"
        url = case.sign.get("url")
        if url is None:
            url = target if target.startswith(("http://", "https://")) else f"http://{host}{target}"
        else:
            url = _fill(url, values).decode("utf-8")
        signed_body = body
        if case.sign.get("body") is not None:
            signed_body = _fill(_expand_repeats(case.sign["body"]), values)
        elif re.search(r"(?im)^transfer-encoding:\s*chunked\s*$", head):
            signed_body = _dechunk(body)
        params = parse_qsl(signed_body.decode("utf-8", "replace"), keep_blank_values=True) if method == "POST" else []
        signed = sign_headers(case.sign.get("token", token), method, url, params)
        versions = case.sign.get("versions", ["V3", "V2"])
        values["signature"] = "\r\n".join(f"{name}: {signed[name]}" for v in versions for name in VERSION_HEADERS[v])
        values["v3"] = signed["X-Plivo-Signature-V3"]
        values["v2"] = signed["X-Plivo-Signature-V2"]
        values["nonce"] = signed["X-Plivo-Signature-V3-Nonce"]
        if reuse is not None:
            reuse.update({k: values[k] for k in SIGNATURE_FIELDS})
    data = b"\r\n".join(_fill(line, values) for line in lines)
    return data + (b"\r\n\r\n" if case.complete else b"") + body


# --- sending and reading ---------------------------------------------------------------------

def _parse_responses(buffer: bytes, head_request: bool = False) -> tuple[list[int], bytes]:
    """Complete responses at the start of `buffer`: (their statuses, the bytes left).
    `head_request`: the answers to a HEAD have no body, whatever their Content-Length says."""
    statuses = []
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return statuses, buffer
        head = buffer[:end].decode("latin-1")
        m = re.match(r"HTTP/\d\.\d (\d{3})", head)
        if not m:
            raise AssertionError(f"not an HTTP response: {buffer[:200]!r}")
        length = re.search(r"(?im)^content-length:\s*(\d+)\s*$", head)
        status = int(m.group(1))
        if head_request or status < 200 or status in (204, 304):
            statuses.append(status)
            buffer = buffer[end + 4:]
            continue
        if length is None:  # no length: the body runs to the end of the connection
            statuses.append(int(m.group(1)))
            return statuses, b""
        total = end + 4 + int(length.group(1))
        if len(buffer) < total:
            return statuses, buffer
        statuses.append(int(m.group(1)))
        buffer = buffer[total:]


def exchange(port: int, data: bytes, *, within: float, half_close: bool = False,
             responses: int = 1, until_closed: bool = False) -> tuple[list, float]:
    """Send `data` on a new connection; (what came back, seconds to the first answer).

    What came back: the statuses of the responses read, then "closed" if the server closed
    the connection (or reset it), or "timeout" if nothing more came within `within` seconds.
    Stops after `responses` responses unless `until_closed`.
    """
    started = time.monotonic()
    deadline = started + within
    got: list = []
    first = None
    head_request = data.startswith(b"HEAD ")
    with socket.create_connection(("127.0.0.1", port), timeout=within) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered (and closed) before reading everything: read what it said
        buffer = b""
        while until_closed or len(got) < responses:
            left = deadline - time.monotonic()
            if left <= 0:
                got.append("timeout")
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                got.append("timeout")
                break
            except OSError:  # reset
                chunk = b""
            if chunk and first is None:
                first = time.monotonic() - started
            if not chunk:
                statuses, buffer = _parse_responses(buffer, head_request)
                got.extend(statuses)
                got.append("closed")
                break
            statuses, buffer = _parse_responses(buffer + chunk, head_request)
            got.extend(statuses)
    if first is None:
        first = time.monotonic() - started
    return got, first


def _probe(port: int, host: str, within: float) -> tuple:
    """A signed SMS on a new connection: (status or "closed"/"timeout", seconds)."""
    from app.signature import sign_headers

    body = urlencode(sms("hostile probe")).encode()
    url = f"http://{host}/message"
    headers = sign_headers(TOKEN, "POST", url, parse_qsl(body.decode(), keep_blank_values=True))
    head = ["POST /message HTTP/1.1", f"Host: {host}", f"Content-Type: {FORM}",
            f"Content-Length: {len(body)}", "Connection: close"] + [f"{k}: {v}" for k, v in headers.items()]
    got, seconds = exchange(port, "\r\n".join(head).encode() + b"\r\n\r\n" + body, within=within)
    return got[0], seconds


def replay(case: Case, port: int, host: str | None = None) -> list[str]:
    """Send `case` to the server on `port`; the list of what differs from what it expects."""
    host = host or f"127.0.0.1:{port}"
    if case.hold:
        return _replay_hold(case, port, host)

    signatures: list[dict] = []

    def one(_):
        reuse: dict = {}
        signatures.append(reuse)
        data = build(case, host, port, reuse=reuse)
        got, seconds = exchange(port, data, within=case.within, half_close=case.half_close,
                                responses=1 + len(case.then or []),
                                until_closed="closed" in (case.then or []))
        return data, got, seconds

    problems = []
    with ThreadPoolExecutor(case.parallel) as pool:
        results = list(pool.map(one, range(case.parallel)))
    for data, got, seconds in results:
        if got[0] not in case.expect:
            problems.append(f"expected {' or '.join(map(str, case.expect))}, got {got[0]} "
                            f"(sent {len(data)} bytes: {data[:160]!r}{'...' if len(data) > 160 else ''})")
        elif seconds > case.within:
            problems.append(f"answered {got[0]} after {seconds:.1f} s, more than {case.within} s")
        if case.then is not None and got[1:] != case.then:
            problems.append(f"expected then {case.then}, got {got[1:]}")
    if case.replay is not None:
        if case.replay_body is None:
            data, what = results[0][0], "the same bytes sent again"
        else:
            data = build(case, host, port, reuse=signatures[0], body_text=case.replay_body)
            what = "the same signature headers sent again with another body"
        got, _ = exchange(port, data, within=case.within)
        if got[0] not in case.replay:
            problems.append(f"{what}: expected {' or '.join(map(str, case.replay))}, got {got[0]}")
    return problems


def _replay_hold(case: Case, port: int, host: str) -> list[str]:
    """`hold` slow clients that send the case's bytes and then nothing; meanwhile a signed SMS
    must get `expect` within `within` seconds."""
    held = []
    try:
        for _ in range(case.hold):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            held.append(sock)
            try:
                sock.sendall(build(case, host, port))
            except OSError:
                pass  # the server dropped it: fine, that is one way to survive
        status, seconds = _probe(port, host, case.within)
    finally:
        for sock in held:
            sock.close()
    if status not in case.expect or seconds > case.within:
        return [f"with {case.hold} slow connections open, a signed SMS got {status} after {seconds:.1f} s "
                f"(expected {' or '.join(map(str, case.expect))} within {case.within} s)"]
    return []


# --- the tests -------------------------------------------------------------------------------

CASES = load_cases()
RULES_CASES = sorted(RULES_FILES.glob("*.yaml"))


class Fleet:
    """One server per profile of tests/hostile/servers.yaml, started on first use."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.profiles = load_profiles()
        self.servers: dict = {}
        self.log_start: dict[str, int] = {}  # where each log stands once its server is ready

    def get(self, name: str):
        from servers import Server

        if name not in self.servers:
            if name not in self.profiles:
                raise CorpusError(f"server profile {name!r} is not in {PROFILES}")
            settings = {k: str(v) for k, v in (self.profiles[name] or {}).items()}
            rules = settings.pop("rules", None)
            folder = self.tmp / name
            folder.mkdir()
            srv = Server(folder, rules=(CORPUS / rules).read_text(encoding="utf-8") if rules else None, **settings)
            self.servers[name] = (srv, srv.workers(), srv.rules.read_bytes())
            self.log_start[name] = srv.log_path.stat().st_size
        return self.servers[name]

    def stop(self):
        for srv, _, _ in self.servers.values():
            srv.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    fleet = Fleet(tmp_path_factory.mktemp("hostile"))
    yield fleet
    fleet.stop()


def _still_healthy(srv, workers: set[int], log_from: int, excludes=()) -> list[str]:
    problems = []
    try:
        health = requests.get(srv.base + "/healthz", timeout=5).status_code
    except requests.RequestException as exc:
        health = type(exc).__name__
    if health != 200:
        problems.append(f"GET /healthz answered {health} after the case")
    now = srv.workers()
    if now != workers:
        problems.append(f"workers changed: {sorted(workers)} at start, {sorted(now)} now")
    with open(srv.log_path, "rb") as log:
        log.seek(log_from)
        text = log.read().decode("utf-8", "replace")
    for bad in ("Traceback", "was sent SIGKILL", "Booting worker", "WORKER TIMEOUT", *excludes):
        if bad in text:
            line = next(line for line in text.splitlines() if bad in line)
            problems.append(f"the log has {bad!r}: {line[:300]}")
    return problems


def test_corpus_is_well_formed():
    assert len(CASES) >= 50, "the corpus lost its cases"
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    profiles = load_profiles()
    assert {c.server for c in CASES} <= set(profiles)
    for case in CASES:  # each builds: placeholders known (checked at load), repeats well formed
        build(case, "127.0.0.1:1", 1)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request(case, fleet):
    srv, workers, _ = fleet.get(case.server)
    log_from = srv.log_path.stat().st_size
    problems = replay(case, srv.port)
    problems += _still_healthy(srv, workers, log_from, (*PHONE_NUMBERS, *case.log_excludes))
    assert not problems, f"{case.path.name}: {case.why}\n" + "\n".join(problems)


def _write_at_once(path: Path, data: bytes) -> None:
    """Replace the file in one step: the reloader never sees it empty or half written."""
    part = path.with_name(path.name + ".part")
    part.write_bytes(data)
    os.replace(part, path)


def _every_worker(srv, workers: set[int], want, seconds: float = 15) -> dict[int, dict] | None:
    """Poll /readyz until every worker (told apart by the `pid` it reports) has answered a
    body for which `want(body)` holds: those bodies by pid, or None at the deadline."""
    seen: dict[int, dict] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        body = requests.get(srv.base + "/readyz", timeout=5).json()
        if want(body):
            seen[body["pid"]] = body
            if set(seen) >= workers:
                return seen
        else:
            seen.pop(body.get("pid"), None)
        time.sleep(0.05)
    return None


@pytest.mark.parametrize("path", RULES_CASES, ids=[p.stem for p in RULES_CASES])
def test_hostile_rules_file(path, fleet):
    """A hostile rules file written over the running server's: every worker refuses it with
    path:line: messages and keeps the last good rules; no traceback, no worker lost."""
    srv, workers, good = fleet.get("rules")
    log_from = srv.log_path.stat().st_size
    line = re.compile(re.escape(str(srv.rules)) + r":\d+: \S")
    problems = []
    try:
        _write_at_once(srv.rules, path.read_bytes())
        refused = _every_worker(srv, workers, lambda body: bool(body.get("reload_failed")))
        if refused is None:
            problems.append("the reload was not refused by every worker within 15 s "
                            "(/readyz lists no reload_failed)")
        else:
            for pid, body in refused.items():
                bad = [p for p in body["reload_failed"] if not line.match(p) or "Traceback" in p]
                if bad:
                    problems.append(f"worker {pid}: not path:line: message: {bad[:3]}")
                if body.get("status") != "ready":
                    problems.append(f"worker {pid} is not ready on its last good rules: {body}")
        problems += _still_healthy(srv, workers, log_from)
    finally:
        # The good rules back on every worker, so the next case's refusal is its own.
        _write_at_once(srv.rules, good)
        restored = _every_worker(
            srv, workers, lambda body: body.get("status") == "ready" and not body.get("reload_failed"))
    assert not problems, f"{path.name}\n" + "\n".join(problems)
    assert restored is not None, "the good rules file was not taken back by every worker within 15 s"


def test_whole_logs_stay_clean(fleet):
    """Last: the whole log of every server used since it was ready (lines written after a
    case's own check too) holds no traceback, no killed or rebooted worker and no whole phone number."""
    problems = []
    for name, (srv, workers, _) in fleet.servers.items():
        problems += [f"{name}: {p}" for p in _still_healthy(srv, workers, fleet.log_start[name], PHONE_NUMBERS)]
    assert not problems, "\n".join(problems)


# --- by hand ---------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Replay the hostile corpus against a running service.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", help="the Host header to use (default 127.0.0.1:PORT)")
    parser.add_argument("names", nargs="*", help="case names (default: all, of every server profile)")
    args = parser.parse_args(argv)
    failed = 0
    for case in CASES:
        if args.names and case.name not in args.names:
            continue
        problems = replay(case, args.port, args.host)
        failed += bool(problems)
        print(f"{'FAIL' if problems else 'ok  '} {case.name} [{case.server}]"
              + "".join(f"\n     {p}" for p in problems))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
