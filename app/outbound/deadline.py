"""A total deadline for one HTTP exchange made with `requests`.

`requests` has no total timeout: its (connect, read) timeouts bound each socket
read, so a server that sends one header line every few seconds, or trickles its
body, holds the caller as long as it likes. Here one watchdog thread per process
ends every exchange that outlives its deadline by shutting its socket down: the
read blocked in the caller's thread returns at once, `requests` raises, and the
broken connection is closed, not reused.

Use a `DeadlineAdapter` in the session (mounted for http:// and https://), and
make each exchange inside `within(seconds)`:

    with within(20.0) as watch:
        response = session.post(..., stream=True, timeout=(5, 15))
        data = read_body(response, limit)      # the body under the same deadline
        whole = watch.finish()                  # False: the deadline ended it, `data` may be cut
    # watch.expired: the deadline ended it; watch.sent: a byte of the request had gone to the socket

The adapter only swaps urllib3's connection classes for subclasses that tell the
watch which connection the current thread is using (through the documented
`HTTPAdapter.init_poolmanager` / `proxy_manager_for` and urllib3's public
`ConnectionCls` / `pool_classes_by_scheme`), and when the first byte of the
request goes to the socket (`HTTPConnection.send`, after the connection is
made: a connect that stalls is cut with `sent` still False, so the request is
known not to have left); the socket is shut down with the plain
`socket.socket.shutdown` (of the socket under a TLS-in-TLS proxy tunnel's
`SSLTransport`). A watch belongs to one thread, and the connection is only ever
shut down, under the lock, while that thread's exchange is still open.

An answer read whole before the deadline stands, even if the deadline expires
just after it (before `finish`): the cut can only come at or after the
deadline, so it did not touch what was read before it. The watchdog outlives
any error of one expiry (logged, at most once a minute), so a worker never
goes without its deadlines.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket
import threading
import time

import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

__all__ = ["DeadlineAdapter", "Watch", "within", "read_body", "BodyTooLarge"]

_local = threading.local()
log = logging.getLogger(__name__)
#: At most one log line of a failing expiry per this many seconds (it must not flood the log).
LOG_EVERY_S = 60.0


class BodyTooLarge(ValueError):
    """An answer's body was bigger than the caller accepts."""


class Watch:
    """One exchange under a deadline (monotonic seconds), in one thread."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.expired = False   # the watchdog ended the exchange
        self.sent = False      # a byte of the request had gone to the socket (it may have reached the server)
        self.done = False
        self.read_at: float | None = None  # when read_body saw the answer's end (monotonic)
        self._connection = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def finish(self) -> bool:
        """The caller read the whole answer just now: True if it did so before the deadline (a
        cut that came after that, before this call, did not touch it), False if the deadline
        ended the exchange. Call it right after the last read; the watch is done."""
        read_at = self.read_at if self.read_at is not None else time.monotonic()
        with _lock:
            self.done = True
            self._connection = None
            if read_at < self.deadline:
                self.expired = False  # the cut (at or after the deadline) came after the last read
            return not self.expired

    def _attach(self, connection, sending: bool) -> None:
        with _lock:
            self._connection = connection
            connection.responder_watch = self  # the connection's current exchange
            self.sent = self.sent or sending
            if self.expired and not self.done:  # the deadline passed before this connection was known
                _shut(connection)

    def _expire(self) -> None:
        with _lock:
            if self.done:
                return
            self.expired = True
            connection = self._connection
            # Back in the pool and taken by another exchange: not ours to end.
            if connection is not None and getattr(connection, "responder_watch", None) is self:
                _shut(connection)

    def _end(self) -> None:
        with _lock:
            self.done = True
            self._connection = None


def _shut(connection) -> None:
    sock = getattr(connection, "sock", None)
    # Through an https proxy to an https host, `sock` is urllib3's SSLTransport (TLS in TLS): the
    # socket is its `.socket` (an SSLSocket, whose plain socket is shut down as any other).
    sock = getattr(sock, "socket", sock)
    if sock is None:
        return
    try:
        # The plain socket's shutdown (not SSLSocket's, which also drops its TLS state under
        # the reading thread): the blocked read returns, the connection is not reused.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except Exception:  # noqa: BLE001 - already closed, never connected, or not a socket at all
        pass


# --- the watchdog ------------------------------------------------------------------

_lock = threading.Lock()
_due = threading.Condition(threading.Lock())
_heap: list[tuple[float, int, Watch]] = []
_seq = itertools.count()
_thread_pid: int | None = None
_logged_at = -LOG_EVERY_S


def _watchdog() -> None:
    """Ends each exchange at its deadline; never dies (a thread that ended would leave every
    later exchange of this process without a total deadline)."""
    global _logged_at
    while True:
        with _due:
            while not _heap or _heap[0][2].done:
                if _heap:
                    heapq.heappop(_heap)
                    continue
                _due.wait()
            wait = _heap[0][0] - time.monotonic()
            if wait > 0:
                _due.wait(wait)
                continue
            watch = heapq.heappop(_heap)[2]
        try:
            watch._expire()
        except Exception:  # one odd connection must not end every later deadline
            if time.monotonic() - _logged_at >= LOG_EVERY_S:
                _logged_at = time.monotonic()
                log.exception("HTTP deadline: could not end an exchange at its deadline")


def _start_watchdog() -> None:
    global _thread_pid
    if _thread_pid == os.getpid():
        return
    _thread_pid = os.getpid()  # after a fork the parent's thread is not in the child: start one here
    threading.Thread(target=_watchdog, name="responder-http-deadline", daemon=True).start()


def _after_fork() -> None:
    """A forked child has none of the parent's threads, and may have inherited a lock one of them
    held: start afresh (the watchdog starts again on first use)."""
    global _lock, _due, _heap, _thread_pid
    _lock = threading.Lock()
    _due = threading.Condition(threading.Lock())
    _heap = []
    _thread_pid = None


os.register_at_fork(after_in_child=_after_fork)


class within:
    """`with within(seconds) as watch:` every request this thread makes inside ends by then."""

    def __init__(self, seconds: float):
        self.watch = Watch(seconds)

    def __enter__(self) -> Watch:
        if getattr(_local, "watch", None) is not None:
            raise RuntimeError("one deadline at a time per thread")
        with _due:
            _start_watchdog()
            heapq.heappush(_heap, (self.watch.deadline, next(_seq), self.watch))
            _due.notify()
        _local.watch = self.watch
        return self.watch

    def __exit__(self, *exc) -> None:
        _local.watch = None
        self.watch._end()


def _current(connection, sending: bool) -> None:
    watch = getattr(_local, "watch", None)
    if watch is not None:
        watch._attach(connection, sending)


# --- the connection classes ----------------------------------------------------------

class _Watched:
    """Tells the current thread's watch which connection it is using."""

    def connect(self):
        _current(self, sending=False)
        return super().connect()

    def request(self, *args, **kwargs):
        _current(self, sending=False)  # over plain http the connection is only made in send()
        return super().request(*args, **kwargs)

    def send(self, data):
        if self.sock is None:
            self.connect()  # what http.client's send does first: a connect is not a request that left
        _current(self, sending=True)
        return super().send(data)


class WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class WatchedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = WatchedHTTPConnection


class WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = WatchedHTTPSConnection


_POOLS = {"http": WatchedHTTPConnectionPool, "https": WatchedHTTPSConnectionPool}


class DeadlineAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections a `within` deadline can end (proxies too, not SOCKS)."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is urllib3.ProxyManager:  # a SOCKS manager keeps its own pools
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


def read_body(response, limit: int, watch: Watch | None = None) -> bytes:
    """The whole body of a streamed `response`, undecoded chunks of at most 8 KiB, stopped past
    `limit` bytes (BodyTooLarge) or when `watch`'s deadline is over (TimeoutError)."""
    chunks, size = [], 0
    for chunk in response.iter_content(8192):
        size += len(chunk)
        if size > limit:
            response.close()
            raise BodyTooLarge(f"answer larger than {limit} bytes")
        if watch is not None and watch.remaining() <= 0:
            response.close()
            raise TimeoutError("deadline")
        chunks.append(chunk)
    if watch is not None:
        watch.read_at = time.monotonic()  # the answer's end: what `finish` compares with the deadline
    return b"".join(chunks)
