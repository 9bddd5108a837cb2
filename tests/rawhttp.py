"""Requests sent byte for byte over a socket, for what an HTTP client library would not send
(a Host with a path in it, a request line longer than any client allows, raw spaces)."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass


@dataclass
class Reply:
    status: int | None  # None: the server closed the connection without an answer
    head: str
    body: bytes


def exchange(port: int, request: bytes, *, timeout: float = 15.0) -> Reply:
    """Send `request` on a new connection to 127.0.0.1:`port` and read until the server
    closes it (send `Connection: close`), `timeout` seconds at most in all. A server that
    answers before reading everything and resets the connection still gives its answer
    when it arrived first."""
    deadline = time.monotonic() + timeout
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the whole request was read: the answer may be waiting
        while time.monotonic() < deadline:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = None
    if head.startswith(b"HTTP/1."):
        status = int(head.split(b" ", 2)[1])
    return Reply(status, head.decode("latin-1"), body)


def request(method: str, target: str, headers: list[tuple[str, str]] | dict, body: bytes = b"") -> bytes:
    """A request exactly as given: the Host header is one of `headers` (none is added), and
    `Content-Length` is added for a body; `Connection: close` always."""
    items = list(headers.items()) if isinstance(headers, dict) else list(headers)
    if body and not any(k.lower() == "content-length" for k, _ in items):
        items.append(("Content-Length", str(len(body))))
    items.append(("Connection", "close"))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in items) + "\r\n"
    return head.encode("latin-1") + body
