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
    # watch.expired: the deadline ended it; watch.sent: the request had started to go

The adapter only swaps urllib3's connection classes for subclasses that tell the
watch which connection the current thread is using (through the documented
`HTTPAdapter.init_poolmanager` / `proxy_manager_for` and urllib3's public
`ConnectionCls` / `pool_classes_by_scheme`); the socket is shut down with the
plain `socket.socket.shutdown`. A watch belongs to one thread, and the
connection is only ever shut down while that thread's exchange is still open.
"""

from __future__ import annotations

import heapq
import itertools
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


class BodyTooLarge(ValueError):
    """An answer's body was bigger than the caller accepts."""


class Watch:
    """One exchange under a deadline (monotonic seconds), in one thread."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.expired = False   # the watchdog ended the exchange
        self.sent = False      # the request had started to go out (a byte may have reached the server)
        self.done = False
        self._connection = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def _attach(self, connection, sending: bool) -> None:
        with _lock:
            self._connection = connection
            connection.responder_watch = self  # the connection's current exchange
            self.sent = self.sent or sending
            expired = self.expired
        if expired:  # the deadline passed before this connection was known: end it now
            _shut(connection)

    def _expire(self) -> None:
        with _lock:
            if self.done:
                return
            self.expired = True
            connection = self._connection
            if connection is not None and getattr(connection, "responder_watch", None) is not self:
                connection = None  # back in the pool and taken by another exchange: not ours to end
        if connection is not None:
            _shut(connection)

    def _end(self) -> None:
        with _lock:
            self.done = True
            self._connection = None


def _shut(connection) -> None:
    sock = getattr(connection, "sock", None)
    if sock is None:
        return
    try:
        # The plain socket's shutdown (not SSLSocket's, which also drops its TLS state under
        # the reading thread): the blocked read returns, the connection is not reused.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


# --- the watchdog ------------------------------------------------------------------

_lock = threading.Lock()
_due = threading.Condition(threading.Lock())
_heap: list[tuple[float, int, Watch]] = []
_seq = itertools.count()
_thread_pid: int | None = None


def _watchdog() -> None:
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
        watch._expire()


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
        _current(self, sending=True)
        return super().request(*args, **kwargs)


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
    return b"".join(chunks)
