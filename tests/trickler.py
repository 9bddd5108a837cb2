"""A receiver that never quite answers: a tiny socket server on 127.0.0.1 that reads a
request, then sends its answer's header lines (or its body) one line every `every` seconds,
each read well inside any client's read timeout. Bounded: at most `lines` lines, then the
answer ends (`204`, or the body's end); every connection ends at `close()`.
"""

from __future__ import annotations

import socket
import threading
import time


class Trickler:
    def __init__(self, every: float = 1.0, lines: int = 60, where: str = "headers"):
        self.every, self.lines, self.where = every, lines, where
        self.requests: list[tuple[float, bytes]] = []  # (time.monotonic() when it came, the request's head)
        self.ended: list[float] = []                    # when each connection ended (client or server)
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                with self._lock:
                    self.requests.append((time.monotonic(), head))
                if self.where == "headers":
                    conn.sendall(b"HTTP/1.1 204 No Content\r\n")
                    for n in range(self.lines):
                        if self._closing.wait(self.every):
                            return
                        conn.sendall(b"X-Still-Thinking: %d\r\n" % n)
                    conn.sendall(b"Content-Length: 0\r\n\r\n")
                else:  # the body, after complete headers
                    conn.sendall(b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n{" % (self.lines + 2))
                    for _ in range(self.lines):
                        if self._closing.wait(self.every):
                            return
                        conn.sendall(b" ")
                    conn.sendall(b"}")
                self._closing.wait(1.0)
            except OSError:
                pass  # the client cut it: what a deadline does
            finally:
                with self._lock:
                    self.ended.append(time.monotonic())

    def close(self) -> None:
        self._closing.set()
        self._sock.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(10)

    def __enter__(self) -> Trickler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
