"""Slow sockets against a running responder, while signed messages are sent: `attack()`.

Three kinds of slow sockets, `per_kind` of each, held open for `duration` seconds:

- `byte`: sends one byte of a request line, then nothing;
- `headers`: sends a request's headers a byte a second, never finishing them;
- `body`: sends complete headers announcing a body, then the body a byte every 2 s.

A socket the server answers or closes is replaced at once by a new one of the same
kind, so the pressure stays constant. Meanwhile, correctly signed inbound SMS are sent
at a steady `rate` per second, each on a new connection, as Plivo would; with
`hostile_every=S`, one SMS of 32 `a` and a `!` (catastrophic backtracking for a rule
`regex: '^(a+)+$'`) every S seconds too, counted apart. `report()` tells the fraction of
the signed messages answered (200) within Plivo's 8 s, and their p50/p99 latency.

It lives in tests/ because tests/test_slow_clients.py runs it (tests import nothing from
bench/); bench/attack.py (`BENCH_ATTACK=1 bench/run`) runs the same attack for 60 s.
Every socket it opens is closed when it returns.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

KINDS = ("byte", "headers", "body")
#: Plivo gives up on a webhook after this many seconds.
PLIVO_WAIT = 8.0
HOSTILE_TEXT = "a" * 32 + "!"


def _slow_payload(kind: str, port: int) -> tuple[bytes, bytes, float]:
    """(sent at once, then dripped a byte at a time, seconds between drips) for a kind."""
    host = f"Host: 127.0.0.1:{port}\r\n".encode()
    if kind == "byte":
        return b"P", b"", 0.0
    if kind == "headers":
        return b"", b"POST /message HTTP/1.1\r\n" + host + b"X-Slow: " + b"a" * 4000, 1.0
    if kind == "body":
        head = (b"POST /message HTTP/1.1\r\n" + host
                + b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3000\r\n\r\n")
        return head, b"Text=" + b"a" * 2995, 2.0
    raise ValueError(kind)


class _Slow:
    __slots__ = ("kind", "sock", "drip", "every", "next_at", "pos")


class SlowClients:
    """Keeps `per_kind` slow sockets of each kind open against 127.0.0.1:port, in one thread."""

    def __init__(self, port: int, per_kind: int, kinds=KINDS):
        self.port = port
        self.per_kind = per_kind
        self.kinds = tuple(kinds)
        self.selector = selectors.DefaultSelector()
        self.open: set[_Slow] = set()
        self.stats = {"opened": 0, "closed_by_server": 0, "connect_failed": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)

    def _connect(self, kind: str) -> None:
        first, drip, every = _slow_payload(kind, self.port)
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            if first:
                sock.sendall(first)
            sock.setblocking(False)
        except OSError:
            self.stats["connect_failed"] += 1
            return
        slow = _Slow()
        slow.kind, slow.sock, slow.drip, slow.every, slow.pos = kind, sock, drip, every, 0
        slow.next_at = time.monotonic() + every
        self.open.add(slow)
        self.selector.register(sock, selectors.EVENT_READ, slow)
        self.stats["opened"] += 1

    def _drop(self, slow: _Slow) -> None:
        self.open.discard(slow)
        try:
            self.selector.unregister(slow.sock)
        except (KeyError, ValueError):
            pass
        slow.sock.close()

    def _top_up(self, limit: int) -> None:
        counts = {kind: 0 for kind in self.kinds}
        for slow in self.open:
            counts[slow.kind] += 1
        for kind in self.kinds:
            for _ in range(self.per_kind - counts[kind]):
                if limit <= 0 or self._stop.is_set():
                    return
                self._connect(kind)
                limit -= 1

    def start(self, within: float = 20.0) -> "SlowClients":
        """Open every socket (within `within` seconds at most), then keep them going."""
        deadline = time.monotonic() + within
        while len(self.open) < self.per_kind * len(self.kinds) and time.monotonic() < deadline:
            self._top_up(50)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.selector.select(timeout=0.1):
                slow = key.data
                try:
                    slow.sock.recv(4096)  # what it says does not matter: that it said anything
                except BlockingIOError:
                    continue
                except OSError:
                    pass  # a reset: the server closed it, which ends it too
                self.stats["closed_by_server"] += 1  # an answer (408) or a close: either ends it
                self._drop(slow)
            now = time.monotonic()
            for slow in list(self.open):
                if slow.drip and now >= slow.next_at and slow.pos < len(slow.drip):
                    try:
                        slow.sock.send(slow.drip[slow.pos:slow.pos + 1])
                        slow.pos += 1
                        slow.next_at = now + slow.every
                    except BlockingIOError:
                        pass
                    except OSError:
                        self.stats["closed_by_server"] += 1
                        self._drop(slow)
            self._top_up(50)

    def stop(self) -> dict:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for slow in list(self.open):
            self._drop(slow)
        self.selector.close()
        return dict(self.stats)


def _signed_sms(port: int, token: str, text: str) -> tuple[str, bytes, dict[str, str]]:
    from app.signature import sign_headers
    url = f"http://127.0.0.1:{port}/message"
    params = [("From", f"1415{uuid.uuid4().int % 10**7:07d}"), ("To", "14155550100"),
              ("Type", "sms"), ("Text", text), ("MessageUUID", str(uuid.uuid4())), ("Units", "1"),
              ("TotalRate", "0"), ("TotalAmount", "0"), ("MessageIntent", ""),
              ("PowerpackUUID", ""), ("MediaCount", "0")]
    headers = {**sign_headers(token, "POST", url, params),
               "Content-Type": "application/x-www-form-urlencoded"}
    return url, urlencode(params).encode(), headers


def send_signed(port: int, token: str, text: str, wait: float = PLIVO_WAIT + 2,
                since: float | None = None) -> tuple[float, int]:
    """Send one signed SMS on a new connection: (seconds until answered, counted from `since`
    (when it was due) or from now; status, 0 when none)."""
    import http.client
    url, body, headers = _signed_sms(port, token, text)
    started = time.monotonic() if since is None else since
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=wait)
    try:
        conn.request("POST", "/message", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        status = resp.status
    except (OSError, http.client.HTTPException):
        status = 0
    finally:
        conn.close()
    return time.monotonic() - started, status


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def attack(port: int, token: str, *, duration: float = 60, per_kind: int = 200, rate: float = 4,
           hostile_every: float = 0, text: str = "hours please", kinds=KINDS) -> dict:
    """Run the slow sockets for `duration` s while sending signed SMS at `rate`/s; the figures."""
    slow = SlowClients(port, per_kind, kinds)
    results: list[tuple[float, int]] = []
    hostile: list[tuple[float, int]] = []
    started = time.monotonic()
    try:
        slow.start()
        opened_in = time.monotonic() - started
        with ThreadPoolExecutor(max_workers=int(rate * (PLIVO_WAIT + 3)) + 4) as pool:
            futures, hostile_futures = [], []
            begin = time.monotonic()
            n = h = 0
            while True:
                now = time.monotonic()
                if now - begin >= duration:
                    break
                if now >= begin + n / rate:
                    futures.append(pool.submit(send_signed, port, token, text, since=now))
                    n += 1
                if hostile_every and now >= begin + h * hostile_every:
                    hostile_futures.append(pool.submit(send_signed, port, token, HOSTILE_TEXT, since=now))
                    h += 1
                time.sleep(min(0.02, max(0.0, begin + n / rate - time.monotonic())))
            results = [f.result() for f in futures]
            hostile = [f.result() for f in hostile_futures]
    finally:
        stats = slow.stop()
    in_time = [t for t, status in results if status == 200 and t <= PLIVO_WAIT]
    latencies = [t for t, status in results if status]
    return {
        "sent": len(results), "answered_in_time": len(in_time),
        "fraction": len(in_time) / len(results) if results else 0.0,
        "p50": _percentile(latencies, 0.50), "p99": _percentile(latencies, 0.99),
        "statuses": sorted({status for _, status in results}),
        "hostile_sent": len(hostile),
        "hostile_in_time": sum(1 for t, s in hostile if s == 200 and t <= PLIVO_WAIT),
        "hostile_p99": _percentile([t for t, s in hostile if s], 0.99),
        "slow_sockets": per_kind * len(kinds), "opened_in": round(opened_in, 2), **stats,
    }


def report(figures: dict) -> str:
    lines = [
        f"signed SMS answered within {PLIVO_WAIT:g} s: {figures['answered_in_time']}/{figures['sent']}"
        f" = {figures['fraction']:.1%}   p50 {figures['p50'] * 1000:.0f} ms   p99 {figures['p99'] * 1000:.0f} ms"
        f"   statuses {figures['statuses']}",
        f"slow sockets held: {figures['slow_sockets']} (opened {figures['opened']} in all, "
        f"{figures['closed_by_server']} ended by the server, {figures['connect_failed']} connects failed)",
    ]
    if figures["hostile_sent"]:
        lines.append(f"hostile texts ({HOSTILE_TEXT[:4]}...{HOSTILE_TEXT[-2:]}, {len(HOSTILE_TEXT)} chars): "
                     f"{figures['hostile_in_time']}/{figures['hostile_sent']} answered within {PLIVO_WAIT:g} s, "
                     f"p99 {figures['hostile_p99'] * 1000:.0f} ms")
    return "\n".join(lines)
