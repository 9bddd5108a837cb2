"""A stand-in for Plivo's Message API: a real HTTP server on 127.0.0.1, in a thread of the test.

Tests (and gunicorn processes started by tests, through PLIVO_API_URL) send to it
as they would to https://api.plivo.com. It answers the way Plivo does, and it
can be told to answer otherwise (`script`, `default`) or to go away for a while
(`stop_listening`/`start_listening`).

Like Plivo, it creates a message the moment it accepts a send: the send is in
`sends` (and in the message list) before any scripted delay or dropped
connection. That is what lets a test prove that a client which lost the answer,
or was killed while waiting for it, does not send the same message twice.

Standard library only, so that bench/ can run it on its own:

    python tests/plivo_standin.py --port 9999 --delay 1.0
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import http
import json
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

__all__ = ["PlivoStandin", "Answer", "Call", "AUTH_ID", "TOKEN"]

AUTH_ID = "MAXXXXXXXXXXXXXXXXXX"
TOKEN = "standin-token"
MESSAGE_TYPES = ("sms", "mms", "whatsapp")
LIST_LIMIT = 20
_TIME_FILTERS = {"message_time__gte": lambda t, x: t >= x, "message_time__gt": lambda t, x: t > x,
                 "message_time__lte": lambda t, x: t <= x, "message_time__lt": lambda t, x: t < x}


@dataclass(frozen=True)
class Answer:
    """How to answer one request.

    status: None is the normal success (202 for a send, 200 for the message list).
    A send is created (recorded in `sends`) only when the status is 2xx; with
    `drop` it is created and then the connection closes without an answer
    ("sent, answer lost"), and `Answer(status=503, drop=True)` closes it without
    creating anything. `drop="reset"` resets the connection (RST) instead of
    closing it. `delay` seconds pass before the answer (or the drop); they end
    early when the stand-in closes. `error` (a string or a dict) is Plivo's
    `error` field of an error answer; `body` replaces the whole body; `headers`
    are added to the answer's (a Content-Length that does not match the body
    sends a truncated answer and closes the connection).
    """

    status: int | None = None
    error: str | dict | None = None
    retry_after: str | None = None
    delay: float = 0.0
    drop: bool | str = False
    body: bytes | str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Call:
    """One request the stand-in received."""

    time: float                  # time.monotonic() when the request line arrived
    wall: float                  # time.time() at the same moment
    method: str
    path: str
    query: dict[str, str]
    headers: Message             # case-insensitive: call.headers["user-agent"]
    json: Any                    # the parsed body, or None
    authorized: bool
    peer: tuple[str, int]
    body: bytes = b""
    answered_status: int | None = None  # None: no answer (dropped, or still in progress)
    message_uuids: tuple[str, ...] = ()  # a created message's uuids, one per destination

    @property
    def peer_port(self) -> int:
        return self.peer[1]

    @property
    def message_uuid(self) -> str | None:
        return self.message_uuids[0] if self.message_uuids else None


def _digits(number: Any) -> str:
    return "".join(c for c in str(number or "") if c.isdigit())


def _plivo_time(wall: float) -> str:
    return datetime.fromtimestamp(int(wall), timezone.utc).strftime("%Y-%m-%d %H:%M:%S+00:00")


def _parse_time(value: str) -> float:
    """Seconds since the epoch of Plivo's filter format 'YYYY-MM-DD HH:MM[:SS[.ffffff]]' (UTC)."""
    for fmt in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"):
        try:
            return datetime.strptime(value.strip(), fmt).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            continue
    raise ValueError(value)


class _Server(ThreadingHTTPServer):
    daemon_threads = False   # server_close() joins the handler threads: close() leaves nothing behind
    block_on_close = True
    allow_reuse_address = True  # listen again on the same port after stop_listening()
    request_queue_size = 128

    def __init__(self, standin: PlivoStandin, port: int):
        self.standin = standin
        super().__init__(("127.0.0.1", port), _Handler)

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)) or (isinstance(error, OSError) and self.standin.closing):
            return  # the client went away, or close() cut the connection: not the stand-in's fault
        self.standin.errors.append(error)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so tests can see the client reuse its connection
    server_version = "PlivoStandin/1"
    timeout = 120  # an idle kept-alive connection is closed after this long
    disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stall per answer
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.standin._lock:
            self.server.standin._connections[self.connection] = False  # idle

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.standin._lock:
                self.server.standin._connections.pop(self.connection, None)

    def log_message(self, format: str, *args) -> None:  # quiet: tests read `calls`, not stderr
        pass

    def parse_request(self) -> bool:
        self._arrived = (time.monotonic(), time.time())
        with self.server.standin._lock:
            self.server.standin._connections[self.connection] = True  # busy: not cut by stop_listening()
        return super().parse_request()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        finally:
            standin = self.server.standin
            if standin.closing or standin._server is not self.server:
                self.close_connection = True  # stop_listening() ran meanwhile: this connection ends here
            with standin._lock:
                if self.connection in standin._connections:
                    standin._connections[self.connection] = False

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    # --- one request ------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self) -> None:
        standin = self.server.standin
        parts = urlsplit(self.path)
        body = self._read_body()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        monotonic, wall = self._arrived
        call = Call(time=monotonic, wall=wall, method=self.command, path=parts.path,
                    query=dict(parse_qsl(parts.query, keep_blank_values=True)), headers=self.headers,
                    json=parsed, authorized=standin._authorized(self.headers.get("Authorization")),
                    peer=self.client_address[:2], body=body)
        standin._add_call(call)
        if not call.authorized:
            return self._answer(call, 401, error="authentication failed",
                                headers={"WWW-Authenticate": 'Basic realm="plivo"'})
        if unquote(parts.path) != f"/v1/Account/{standin.auth_id}/Message/":
            return self._answer(call, 404, error="not found")
        if self.command == "POST":
            return self._send(call, body)
        if self.command == "GET":
            return self._list(call)
        return self._answer(call, 405, error="method not allowed", headers={"Allow": "GET, POST"})

    def _send(self, call: Call, body: bytes) -> None:
        standin = self.server.standin
        problem = _invalid_send(self.headers.get("Content-Type"), body, call.json)
        if problem:
            return self._answer(call, 400, error=problem)
        answer = standin._next_send_answer()
        status = answer.status or 202
        payload: dict = {}
        if 200 <= status < 300:
            destinations = [d for d in str(call.json["dst"]).split("<") if d]
            uuids = tuple(str(uuid.uuid4()) for _ in destinations)
            standin._add_send(call, uuids)  # created now, whatever becomes of the answer
            payload = {"message": "message(s) queued", "message_uuid": list(uuids)}
        self._finish(call, answer, status, payload)

    def _list(self, call: Call) -> None:
        standin = self.server.standin
        answer = standin._next_list_answer()
        status = answer.status or 200
        payload: dict = {}
        if 200 <= status < 300 and answer.body is None:
            try:
                payload = standin._message_list(call.query)
            except ValueError as exc:
                return self._answer(call, 400, error=str(exc))
        self._finish(call, answer, status, payload)

    def _finish(self, call: Call, answer: Answer, status: int, payload: dict) -> None:
        """Wait, drop or answer as `answer` says."""
        standin = self.server.standin
        if answer.delay and standin._closing.wait(answer.delay):
            self.close_connection = True  # the stand-in is closing: a slow answer never holds up a test
            return
        if answer.drop:
            self.close_connection = True
            if answer.drop == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            return
        headers = dict(answer.headers)
        if answer.retry_after is not None:
            headers["Retry-After"] = answer.retry_after
        if answer.body is not None:
            data = answer.body.encode() if isinstance(answer.body, str) else answer.body
            return self._write(call, status, data, headers)
        if 200 <= status < 300:
            return self._write(call, status, json.dumps({"api_id": str(uuid.uuid4()), **payload}).encode(), headers)
        return self._answer(call, status, error=answer.error, headers=headers)

    def _answer(self, call: Call, status: int, error: str | dict | None = None,
                headers: dict[str, str] | None = None) -> None:
        """An error answer as Plivo writes them: {"api_id": ..., "error": ...}."""
        if error is None:
            try:
                error = http.HTTPStatus(status).phrase.lower()
            except ValueError:
                error = "error"
        data = json.dumps({"api_id": str(uuid.uuid4()), "error": error}).encode()
        self._write(call, status, data, headers or {})

    def _write(self, call: Call, status: int, data: bytes, headers: dict[str, str]) -> None:
        standin = self.server.standin
        with standin._lock:
            call.answered_status = status
            standin._cond.notify_all()
        if standin.closing or standin._server is not self.server:
            self.close_connection = True
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}
        if headers["Content-Length"] != str(len(data)):
            self.close_connection = True  # a scripted truncated answer: the client sees the connection end early
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


def _invalid_send(content_type: str | None, body: bytes, data: Any) -> str | None:
    """Why Plivo would refuse this send with a 400, or None."""
    if not (content_type or "").lower().startswith("application/json"):
        return "content type must be application/json"
    if not isinstance(data, dict):
        return "the body must be a JSON object" if body else "empty body"
    for key in ("src", "dst"):
        if not isinstance(data.get(key), str) or not data[key]:
            return f"{key} is required"
    if data.get("type") not in MESSAGE_TYPES:
        return "type must be one of " + ", ".join(MESSAGE_TYPES)
    media = data.get("media_urls")
    if media is not None and (not isinstance(media, list) or not all(isinstance(m, str) and m for m in media)):
        return "media_urls must be a list of URLs"
    if "text" in data and not isinstance(data["text"], str):
        return "text must be a string"
    if not data.get("text") and not media:
        return "text or media_urls is required"
    if data.get("method", "POST") not in ("GET", "POST"):
        return "method must be GET or POST"
    return None


class PlivoStandin:
    """Plivo's Message API on 127.0.0.1, served from threads of this process.

    `calls` holds every request in order of arrival; `sends` the messages it
    created (accepted sends), in order. Both are appended under a lock;
    `wait_for_sends` / `wait_for_calls` block on a condition until enough came.
    """

    def __init__(self, auth_id: str = AUTH_ID, token: str = TOKEN, port: int = 0):
        self.auth_id = auth_id
        self.token = token
        self.port = port
        self.calls: list[Call] = []
        self.sends: list[Call] = []
        self.errors: list[BaseException] = []  # exceptions in the stand-in's own handlers (a bug if not empty)
        #: Answer to a send when the script is empty.
        self.default = Answer()
        #: Seconds a created message stays out of the message list (Plivo's list can lag).
        self.list_lag = 0.0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._script: deque[Answer] = deque()
        self._list_script: deque[Answer] = deque()
        self._closing = threading.Event()
        self._connections: dict[socket.socket, bool] = {}  # open connection -> busy with a request
        self._server: _Server | None = None
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self.start_listening()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def path(self) -> str:
        """The Message API path for this account."""
        return f"/v1/Account/{quote(self.auth_id, safe='')}/Message/"

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def __enter__(self) -> PlivoStandin:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PlivoStandin({self.url!r}, {len(self.sends)} sends)"

    # --- what to answer ---------------------------------------------------------

    def script(self, *answers: Answer) -> None:
        """Answer the next sends (valid, authorised POSTs) with these, one each, then `default`."""
        with self._lock:
            self._script.extend(answers)

    def script_list(self, *answers: Answer) -> None:
        """Answer the next message-list GETs with these, one each, then normally."""
        with self._lock:
            self._list_script.extend(answers)

    def _next_send_answer(self) -> Answer:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def _next_list_answer(self) -> Answer:
        with self._lock:
            return self._list_script.popleft() if self._list_script else Answer()

    # --- what came ----------------------------------------------------------------

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(header[6:], validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, f"{self.auth_id}:{self.token}".encode())

    def _add_call(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)
            self._cond.notify_all()

    def _add_send(self, call: Call, uuids: tuple[str, ...]) -> None:
        with self._lock:
            call.message_uuids = uuids
            self.sends.append(call)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until predicate() (checked under the stand-in's lock) is true, or timeout; its last value."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def wait_for_sends(self, n: int, timeout: float) -> bool:
        return self.wait_for(lambda: len(self.sends) >= n, timeout)

    def wait_for_calls(self, n: int, timeout: float) -> bool:
        return self.wait_for(lambda: len(self.calls) >= n, timeout)

    def messages_to(self, dst: str) -> list[Call]:
        """The created messages sent to `dst` (digits compared, so `+` does not matter)."""
        want = _digits(dst)
        with self._lock:
            return [c for c in self.sends if want in (_digits(d) for d in str(c.json["dst"]).split("<"))]

    def clear(self) -> None:
        """Forget the calls, the sends and the scripts (the message list empties too)."""
        with self._lock:
            self.calls.clear()
            self.sends.clear()
            self._script.clear()
            self._list_script.clear()

    # --- the message list -------------------------------------------------------

    def _message_list(self, query: dict[str, str]) -> dict:
        """Plivo's answer to GET .../Message/ over the created messages, newest first."""
        try:
            limit = int(query.get("limit", LIST_LIMIT))
            offset = int(query.get("offset", 0))
        except ValueError:
            raise ValueError("limit and offset must be integers") from None
        if not 1 <= limit <= LIST_LIMIT or offset < 0:
            raise ValueError(f"limit must be 1 to {LIST_LIMIT} and offset at least 0")
        bounds = []
        for name, compare in _TIME_FILTERS.items():
            if name in query:
                try:
                    bounds.append((compare, _parse_time(query[name])))
                except ValueError:
                    raise ValueError(f"{name} must be 'YYYY-MM-DD HH:MM[:SS[.ffffff]]'") from None
        direction = query.get("message_direction")
        want_from, want_to = _digits(query.get("from_number")), _digits(query.get("to_number"))
        now = time.monotonic()
        with self._lock:
            sends = list(self.sends)
        objects = []
        for call in reversed(sends):
            if call.time + self.list_lag > now or direction not in (None, "", "outbound"):
                continue
            if want_from and _digits(call.json["src"]) != want_from:
                continue
            seconds = float(int(call.wall))  # Plivo keeps the second
            if not all(compare(seconds, bound) for compare, bound in bounds):
                continue
            destinations = [d for d in str(call.json["dst"]).split("<") if d]
            for destination, message_uuid in zip(destinations, call.message_uuids):
                if want_to and _digits(destination) != want_to:
                    continue
                objects.append({
                    "message_uuid": message_uuid, "from_number": call.json["src"], "to_number": destination,
                    "message_time": _plivo_time(call.wall), "message_direction": "outbound",
                    "message_state": "queued", "message_type": call.json["type"],
                    "units": 1, "error_code": "", "total_amount": "0.00000", "total_rate": "0.00000",
                })
        page = objects[offset:offset + limit]

        def link(at: int) -> str:
            return f"{self.path}?{urlencode({**query, 'limit': limit, 'offset': at})}"

        return {"meta": {"limit": limit, "offset": offset, "total_count": len(objects),
                         "next": link(offset + limit) if offset + limit < len(objects) else None,
                         "previous": link(max(offset - limit, 0)) if offset > 0 else None},
                "objects": page}

    # --- listening ----------------------------------------------------------------

    def start_listening(self) -> None:
        """Listen (again, on the same port) and serve."""
        with self._lock:
            if self._server is not None or self.closing:
                return
            server = _Server(self, self.port)
            self.port = server.server_address[1]
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                      name=f"plivo-standin-{self.port}", daemon=True)
            self._server = server
            self._servers.append(server)
            self._threads.append(thread)
        thread.start()

    def stop_listening(self) -> None:
        """Refuse connections, as an API that is down: close the listening socket and the idle connections.

        A request being answered gets its answer, then its connection closes.
        """
        with self._lock:
            server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.socket.close()
        self._cut(busy_too=False)

    def _cut(self, *, busy_too: bool) -> None:
        with self._lock:
            connections = list(self._connections.items())
        for connection, busy in connections:
            if busy and not busy_too:
                continue
            try:
                connection.shutdown(socket.SHUT_RDWR)  # wakes the handler blocked on it; no fd is reused
            except OSError:
                pass

    def close(self) -> None:
        """Stop serving, end every connection (slow answers included) and join the threads."""
        self.stop_listening()
        self._closing.set()
        self._cut(busy_too=True)
        for server in self._servers:
            server.server_close()  # joins its handler threads
        for thread in self._threads:
            thread.join()


def main(argv: list[str] | None = None) -> int:
    """Serve on its own until Ctrl-C or SIGTERM (bench/ uses this to stand for a slow Plivo)."""
    parser = argparse.ArgumentParser(description="A stand-in for Plivo's Message API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    parser.add_argument("--auth-id", default=AUTH_ID)
    parser.add_argument("--token", default=TOKEN)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer to a send")
    parser.add_argument("--status", type=int, default=202, help="status of every answer to a send")
    parser.add_argument("--lag", type=float, default=0.0, help="seconds before a send shows in the message list")
    options = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    standin = PlivoStandin(options.auth_id, options.token, options.port)
    standin.default = Answer(status=options.status, delay=options.delay)
    standin.list_lag = options.lag
    print(f"Plivo stand-in on {standin.url} (PLIVO_API_URL={standin.url} PLIVO_AUTH_ID={standin.auth_id} "
          f"token {standin.token}; answers {options.status} after {options.delay:g} s). Ctrl-C stops it.",
          flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        standin.close()
    print(f"{len(standin.sends)} sends, {len(standin.calls)} requests.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
