"""The gunicorn worker: gthread, but a thread is given only a request that has fully arrived.

gunicorn's gthread worker hands a new connection to a thread at once; the thread waits
up to 5 s for a first byte and then reads the request with no deadline at all. A client
that sends one byte, or its headers or body a byte at a time, holds a thread for as long
as it likes, and a few dozen such sockets hold every thread of every worker: real
messages then wait beyond Plivo's 8 s.

This worker reads every request in the worker's main thread instead, next to the accept
loop: each connection is a non-blocking socket in the worker's selector, its bytes
collected until the request is complete (headers, then the body by Content-Length or
chunked framing, up to MAX_CONTENT_LENGTH), and only then is it handed to a thread, which
parses it from memory and runs the app. A slow connection costs a file descriptor and its
bytes so far, never a thread.

What this costs on top of gthread is kept to the framing itself: a kept-alive connection
that becomes readable is read at once (no second registration, no second turn of the loop),
and a request framed in memory is parsed by a parser of its own that cannot touch the
socket, which stays non-blocking from accept to close (`ClientSocket`: no timeout to set and
restore per request, and no poll() before each send).

Deadlines:

- the whole request (its first byte, headers and body) must arrive within
  REQUEST_READ_TIMEOUT seconds of the connection being accepted, or of the first byte of a
  next request on a kept-alive connection. A connection that missed it having sent
  nothing is closed; one that sent part of a request is answered
  `408 request not received in time` and closed;
- a response the client does not take is waited for until that same deadline (a second
  at least), then the connection is closed: a client that stops reading holds a thread no
  longer;
- a kept-alive connection waits `keepalive` seconds for its next request, in the selector
  (as with gthread);
- closing after a response (when the client must not be cut off mid-answer) lingers at most
  2 s, in the selector too, not in a thread or the main loop.

What cannot be framed in memory is handed to gunicorn's own parser to answer (a body over
MAX_CONTENT_LENGTH: the app's 413, then the connection closes; headers over their limit or
a malformed length: gunicorn's 400/414/431), its socket reads bounded by what is left of the
deadline.

TLS or HTTP/2 served by gunicorn itself are not read this way: with `certfile` or
`http_protocols` including h2 this worker behaves exactly as gthread. (The service is meant
to sit behind a proxy that terminates TLS, or to speak plain HTTP/1.1.)
"""

from __future__ import annotations

import errno
import re
import resource
import selectors
import socket
import time
from functools import partial

import gunicorn
from packaging.specifiers import SpecifierSet

#: The gunicorn releases this worker is written for. It subclasses gthread's `ThreadWorker`,
#: overrides its methods and uses names gunicorn does not promise to keep (`_keepalive_after`,
#: `Unreader.take_buffered`, `Request._expected_100_continue`, the worker's `poller` and
#: `nr_conns`, ...: tests/test_gunicorn_contract.py names every one and checks it). 26.1 had
#: neither of the first two; 26.2 has them, but its stopping worker waits for an event up to
#: `graceful_timeout` before `murder_pending` runs again, so deadlines are not kept while it
#: stops. A new gunicorn is admitted by running that test against it, then widening this
#: range and the pin in requirements.txt.
SUPPORTED = ">=27.0,<28"


def check_gunicorn(version: str) -> None:
    """Refuse a gunicorn outside SUPPORTED, with what to do, before anything of it is used
    (gunicorn.conf.py imports this module, so a wrong install stops the start, not a request)."""
    if not SpecifierSet(SUPPORTED).contains(version, prereleases=True):
        raise RuntimeError(
            f"app/http_worker.py needs gunicorn {SUPPORTED} and gunicorn {version} is installed: it "
            f"subclasses gthread's worker and uses private names a release may change. Install the "
            f"version pinned in requirements.txt, or run tests/test_gunicorn_contract.py against "
            f"gunicorn {version} and, if it passes, widen SUPPORTED and the pin.")


check_gunicorn(gunicorn.__version__)

from gunicorn import http  # noqa: E402 - after the version check, which says what is wrong
from gunicorn.workers.gthread import TConn, ThreadWorker  # noqa: E402

#: Settings from gunicorn.conf.py (`configure`): seconds for a whole request to arrive, and the
#: largest body read in memory (MAX_CONTENT_LENGTH).
REQUEST_READ_TIMEOUT = 5.0
MAX_BODY = 65536
#: How long a closing connection may keep sending before it is cut off, and how much of it is read.
LINGER_SECONDS = 2.0
LINGER_BYTES = 65536
#: Closing sockets one worker keeps lingering at most (each is a file descriptor); beyond it the
#: oldest is closed at once.
MAX_LINGERING = 256
#: Headers beyond the request line kept in memory while a request arrives; longer ones go to
#: gunicorn's parser, whose field limits answer them.
HEADER_ROOM = 65536

_TIMEOUT_BODY = b"request not received in time\n"
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                     b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: "
                     + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: What gunicorn's parser accepts as a Content-Length and as a chunk size (no sign, no prefix).
_DIGITS = re.compile(rb"[0-9]{1,19}")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
#: Chunk-size lines and CRLFs allowed on top of MAX_CONTENT_LENGTH for a chunked body.
CHUNK_FRAMING_ROOM = 16384

# What `Framer.feed` says about the bytes so far.
MORE = "more"          # not a whole request yet
COMPLETE = "complete"  # a whole request (perhaps with the start of the next one behind it)
HAND_OVER = "hand over"  # cannot be framed here: gunicorn's parser reads and answers it
TOO_LARGE = "too large"  # a body over MAX_CONTENT_LENGTH: the app answers 413, then close
REFUSE = "refuse"      # answered from the main loop with `Framer.refusal`, then close


def _short_response(status: str, text: str) -> bytes:
    body = (text + "\n").encode()
    return (f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


#: Requests refused before a thread sees them: nothing a client could still send would make
#: them acceptable, and the parser would wait on the socket for more.
_LINE_TOO_LONG = _short_response("414 URI Too Long", "request line too long")
_HEAD_TOO_LARGE = _short_response("431 Request Header Fields Too Large", "request headers too large")
_BAD_CHUNKS = _short_response("400 Bad Request", "malformed chunked body")


class ClientSocket(socket.socket):
    """An accepted connection, non-blocking from accept to close.

    A response is sent at once when the kernel takes it whole (a few KB: always, unless the
    client stopped reading). Only what it does not take is waited for, until the request's
    `deadline` (a second at least): a client that does not read its answer holds a thread
    that long at most, without the poll() CPython puts before every send on a socket with
    a timeout. A socket given a timeout (a request handed over unframed) sends as any socket.
    """

    __slots__ = ("deadline",)

    def sendall(self, data, flags=0):
        if self.gettimeout() != 0.0:
            return super().sendall(data, flags)
        view = memoryview(data)
        try:
            sent = self.send(view, flags)
        except BlockingIOError:
            sent = 0
        if sent < view.nbytes:
            self._wait_for(super().sendall, view.cast("B")[sent:], flags)
        return None

    def sendfile(self, file, offset=0, count=None):
        if self.gettimeout() != 0.0:
            return super().sendfile(file, offset, count)
        return self._wait_for(super().sendfile, file, offset, count)

    def _wait_for(self, send, *args):
        self.settimeout(max(self.deadline - time.monotonic(), 1.0))
        try:
            return send(*args)
        finally:
            self.setblocking(False)


def configure(*, request_read_timeout: float, max_body: int) -> None:
    """Called by gunicorn.conf.py with the checked settings, before the workers fork."""
    global REQUEST_READ_TIMEOUT, MAX_BODY
    REQUEST_READ_TIMEOUT = float(request_read_timeout)
    MAX_BODY = int(max_body)


class Framer:
    """Where an HTTP/1.x request ends, found incrementally in the bytes received so far.

    It only frames: the request is parsed, and checked, by gunicorn's parser in the thread.
    Anything it cannot frame with certainty is HAND_OVER, and the parser decides.
    """

    __slots__ = ("max_line", "max_head", "max_body", "head_end", "body_end", "chunk_at", "decoded",
                 "expects_continue", "refusal", "_searched")

    def __init__(self, max_line: int, max_head: int, max_body: int):
        self.max_line = max_line
        self.max_head = max_head
        self.max_body = max_body
        self.head_end = -1      # index just past the blank line ending the headers
        self.body_end = -1      # index just past a Content-Length body
        self.chunk_at = -1      # index of the next chunk-size line of a chunked body
        self.decoded = 0        # chunked body bytes so far
        self.expects_continue = False
        self.refusal = b""
        self._searched = 0

    def feed(self, buf: bytearray) -> str:
        if self.head_end < 0:
            end = buf.find(b"\r\n\r\n", max(0, self._searched - 3))
            if end < 0:
                self._searched = len(buf)
                if len(buf) > self.max_head or (len(buf) > self.max_line and b"\n" not in buf):
                    return self._refuse(_LINE_TOO_LONG if b"\n" not in buf else _HEAD_TOO_LARGE)
                return MORE
            self.head_end = end + 4
            verdict = self._framing(bytes(buf[:end]))
            if verdict is not None:
                return verdict
        if self.body_end >= 0:
            return COMPLETE if len(buf) >= self.body_end else MORE
        if self.chunk_at >= 0:
            return self._chunks(buf)
        return COMPLETE

    def _framing(self, head: bytes) -> str | None:
        """From the headers: body by length, chunked, or none; None when framing is set."""
        lengths, codings = [], []
        for line in head.split(b"\r\n")[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                continue  # the parser refuses it; framing by what is known is still safe
            name = name.strip().lower()
            if name == b"content-length":
                lengths.append(value.strip())
            elif name == b"transfer-encoding":
                codings.extend(c.strip().lower() for c in value.split(b","))
            elif name == b"expect" and value.strip().lower() == b"100-continue":
                self.expects_continue = True
        if codings:
            if lengths or codings[-1] != b"chunked":
                return HAND_OVER  # the parser refuses such requests (400)
            self.chunk_at = self.head_end
            return None
        if not lengths:
            return None  # no body
        if len(set(lengths)) != 1 or not _DIGITS.fullmatch(lengths[0]):
            return HAND_OVER  # 19 digits at most: int() of thousands of digits raises
        length = int(lengths[0])
        if length > self.max_body:
            return TOO_LARGE
        self.body_end = self.head_end + length
        return None

    def _refuse(self, response: bytes) -> str:
        self.refusal = response
        return REFUSE

    def _chunks(self, buf: bytearray) -> str:
        # What is kept of a chunked body is bounded by its bytes on the wire, not only by
        # the decoded size: chunk extensions could otherwise make it many times the limit.
        if len(buf) - self.head_end > self.max_body + CHUNK_FRAMING_ROOM:
            return TOO_LARGE
        while True:
            line_end = buf.find(b"\r\n", self.chunk_at)
            if line_end < 0:
                return self._refuse(_BAD_CHUNKS) if len(buf) - self.chunk_at > 1024 else MORE
            if line_end - self.chunk_at > 1024:
                return self._refuse(_BAD_CHUNKS)
            size_text = bytes(buf[self.chunk_at:line_end]).partition(b";")[0].strip()
            if not _HEX.fullmatch(size_text):  # int(x, 16) also takes "-6", "+6", "0x6", "1_0"
                return HAND_OVER
            size = int(size_text, 16)
            if size == 0:
                # Trailer fields, if any, then an empty line.
                if buf[line_end + 2:line_end + 4] == b"\r\n":
                    return COMPLETE
                if len(buf) < line_end + 4:
                    return MORE
                trailers_end = buf.find(b"\r\n\r\n", line_end)
                if trailers_end < 0:
                    return self._refuse(_BAD_CHUNKS) if len(buf) - line_end > 8192 else MORE
                return COMPLETE
            next_at = line_end + 2 + size + 2
            if len(buf) < next_at:
                # Over the limit only once the bytes over it are here: the app then reads
                # them from memory and answers 413, never waiting on the socket.
                if self.decoded + len(buf) - (line_end + 2) > self.max_body:
                    return TOO_LARGE
                return MORE
            self.decoded += size
            if self.decoded > self.max_body:
                return TOO_LARGE
            assert next_at > self.chunk_at  # always moves on: sizes are unsigned hex
            self.chunk_at = next_at


class DeadlineWorker(ThreadWorker):
    """gthread whose threads only ever see complete requests (see the module's docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffering = not self.cfg.is_ssl and "h2" not in (self.cfg.http_protocols or [])
        #: Connections whose request is arriving -> its deadline. Every deadline is "now +
        #: REQUEST_READ_TIMEOUT" when added, so the insertion order is the deadline order.
        self.reading: dict[TConn, float] = {}
        #: Connections being closed, read until the client closes -> [when to cut them off,
        #: bytes read]; in deadline order too.
        self.lingering: dict[socket.socket, list] = {}
        self.max_line = (self.cfg.limit_request_line or 65536) + 2
        self.max_head = self.max_line + HEADER_ROOM

    # -- reading requests in the main thread ----------------------------------------------

    def init_process(self):
        # Each connection is a file descriptor, slow ones included: make room for
        # worker_connections of them (up to the hard limit) before serving.
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            wanted = self.worker_connections + 256
            if soft != resource.RLIM_INFINITY and soft < wanted:
                resource.setrlimit(resource.RLIMIT_NOFILE, (
                    wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))
        except (ValueError, OSError):
            pass
        super().init_process()

    def accept(self, listener):
        if not self.buffering:
            return super().accept(listener)
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                # Out of file descriptors for now: close the oldest lingering sockets (a
                # response already went out on each) and let the rest wait in the listen
                # queue; the worker keeps its full connection budget for later.
                for sock in list(self.lingering)[:64]:
                    self._end_linger(sock)
                self.log.warning("Out of file descriptors (%s) with %d connections open; raise `ulimit -n`",
                                 e.strerror, self.nr_conns)
                return
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        sock = ClientSocket(client_sock.family, client_sock.type, client_sock.proto, client_sock.detach())
        conn = TConn(self.cfg, sock, client_addr, listener.getsockname())  # non-blocking
        # The parser of the requests framed in memory: it reads only what is handed to it.
        conn.framed_parser = http.get_parser(self.cfg, (), client_addr)
        self._read(conn, bytearray())

    def _begin(self, conn: TConn, buf: bytearray) -> None:
        """`conn`'s next request starts (with `buf`, if bytes of it are here): its deadline starts now."""
        conn.inbuf = buf
        conn.framer = Framer(self.max_line, self.max_head, MAX_BODY)
        conn.sent_continue = False
        conn.framed = conn.too_large = False
        conn.deadline = time.monotonic() + REQUEST_READ_TIMEOUT

    def _read(self, conn: TConn, buf: bytearray) -> None:
        """Collect `conn`'s next request in the selector, within the deadline from now."""
        self._begin(conn, buf)
        if buf and self._framed(conn):
            return
        self.reading[conn] = conn.deadline
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_request_bytes, conn))

    def on_request_bytes(self, conn: TConn, _sock) -> None:
        self._receive(conn)

    def _receive(self, conn: TConn) -> bool:
        """Read what `conn` has sent; True when it is no longer being read here (see `_framed`)."""
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:  # the client closed (or reset) before sending a whole request
            self._forget(conn)
            if conn.inbuf:
                # Half a request, then the end of what the client sends: gunicorn's parser
                # answers it (400), which a half-closed client still reads.
                self._hand_over(conn, too_large=False)
            else:
                self.nr_conns -= 1
                conn.close()
            return True
        conn.inbuf += data
        return self._framed(conn)

    def _framed(self, conn: TConn) -> bool:
        """Hand `conn` to a thread if its request is whole (or must go to the parser), or
        refuse it; True when it is no longer being read here."""
        try:
            verdict = conn.framer.feed(conn.inbuf)
        except Exception as exc:  # noqa: BLE001 - the main loop must never die of one request
            self.log.error("could not frame a request (%s): gunicorn's parser answers it", type(exc).__name__)
            verdict = HAND_OVER
        if verdict == MORE:
            if conn.framer.expects_continue and not conn.sent_continue and conn.framer.head_end >= 0:
                conn.sent_continue = True
                try:
                    conn.sock.send(_CONTINUE)  # 25 bytes on a fresh socket: sent whole
                except OSError:
                    pass
            return False
        if verdict == REFUSE:
            self._forget(conn)
            self.nr_conns -= 1
            try:
                conn.sock.send(conn.framer.refusal)  # short: sent whole or not at all
            except OSError:
                pass
            self._linger(conn.sock)
            return True
        self._forget(conn)
        conn.framed = verdict == COMPLETE
        self._hand_over(conn, too_large=verdict == TOO_LARGE)
        return True

    def _hand_over(self, conn: TConn, too_large: bool) -> None:
        conn.too_large = too_large
        conn.request_bytes = bytes(conn.inbuf)
        conn.inbuf = None
        self.enqueue_req(conn)

    def _forget(self, conn: TConn) -> None:
        self.reading.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection's next request starts: its deadline starts now. It is read
        at once (usually the whole request is here); only if it is not whole does the
        connection wait in the selector for the rest."""
        if not self.buffering:
            return super().on_client_socket_readable(conn, client)
        self.keepalived_conns.remove(conn)
        self._begin(conn, bytearray())
        if not self._receive(conn):  # still registered (for keep-alive): now for the request's bytes
            self.reading[conn] = conn.deadline
            self.poller.modify(client, selectors.EVENT_READ, partial(self.on_request_bytes, conn))

    def murder_pending(self):
        """Called every turn of the loop: also end requests past their deadline, and lingerers."""
        super().murder_pending()
        if not self.reading and not self.lingering:
            return
        now = time.monotonic()
        late = []
        for conn, deadline in self.reading.items():
            if deadline > now:
                break
            late.append(conn)
        for conn in late:
            self._forget(conn)
            self.nr_conns -= 1
            if conn.inbuf:
                try:
                    conn.sock.send(_TIMEOUT_RESPONSE)  # a few hundred bytes: sent whole or not at all
                except OSError:
                    pass
                self._linger(conn.sock)
            else:
                conn.close()
        done = []
        for sock, (deadline, _) in self.lingering.items():
            if deadline > now:
                break
            done.append(sock)
        for sock in done:
            self._end_linger(sock)

    # -- closing without waiting ----------------------------------------------------------

    def _linger(self, sock: socket.socket) -> None:
        """Close after a response: FIN now, then read what the client still sends (so the
        kernel does not answer it with a reset that can destroy the response) until it
        closes, LINGER_BYTES have come, or LINGER_SECONDS have passed."""
        try:
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        if len(self.lingering) >= MAX_LINGERING:  # a bounded number of closing sockets per worker
            oldest = next(iter(self.lingering))
            self._end_linger(oldest)
        self.lingering[sock] = [time.monotonic() + LINGER_SECONDS, 0]
        self.poller.register(sock, selectors.EVENT_READ, self._on_linger)

    def _on_linger(self, sock) -> None:
        try:
            data = sock.recv(16384)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        state = self.lingering.get(sock)
        if state is None:
            return
        state[1] += len(data)
        if not data or state[1] >= LINGER_BYTES:
            self._end_linger(sock)

    def _end_linger(self, sock) -> None:
        self.lingering.pop(sock, None)
        try:
            self.poller.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass
        sock.close()

    def finish_request(self, conn, fs):
        """A thread is done with `conn`: read its next request, or close it (in the selector)."""
        if not self.buffering:
            return super().finish_request(conn, fs)
        try:
            keep = fs.result() if not fs.cancelled() else False
            if keep:
                # The response announced keep-alive, so the client may be sending its next
                # request already; a stopping worker answers it with "Connection: close".
                ahead = conn.parser.unreader.take_buffered()
                if conn.sock.gettimeout() != 0.0:  # a request handed over unframed set a timeout
                    conn.sock.setblocking(False)
                if ahead:
                    self._read(conn, bytearray(ahead))
                    return
                conn.set_timeout()
                if not self.alive:
                    conn.timeout = min(conn.timeout, time.monotonic() + 2.0)
                self.keepalived_conns.append(conn)
                self.poller.register(conn.sock, selectors.EVENT_READ,
                                     partial(self.on_client_socket_readable, conn))
            else:
                self.nr_conns -= 1
                self._linger(conn.sock)
        except Exception:  # noqa: BLE001 - whatever keeping the connection raised: it is closed, the loop goes on
            self.nr_conns -= 1
            conn.close()

    # -- in a thread: the whole request is in memory ----------------------------------------

    def handle(self, conn):
        data = getattr(conn, "request_bytes", None)
        if data is None:
            return super().handle(conn)
        conn.request_bytes = None
        conn.sock.deadline = conn.deadline
        req = None
        try:
            framed = conn.framed_parser
            if conn.framed:
                # Whole in memory: parsed from there, by a parser that cannot read the socket
                # (one wanting more than was framed finds the end of the data: closed).
                parser = framed
            else:
                # Handed over unframed: the parser reads the socket, and its reads (and the
                # response's writes) end with the deadline. It goes on with the connection's
                # count of requests (gunicorn reads a PROXY protocol header on the first only).
                parser = http.get_parser(self.cfg, conn.sock, conn.client)
                parser.req_count = framed.req_count
                conn.sock.settimeout(max(conn.deadline - time.monotonic(), 1.0))
            conn.parser = parser
            parser.unreader.unread(data)
            req = next(parser)
            framed.req_count = parser.req_count
            if not req:
                return False
            if conn.sent_continue:
                req._expected_100_continue = False
            if conn.too_large:
                req.must_close = True  # its body is not read: the connection cannot go on
                self.handle_request(req, conn)
                return False
            return self._keepalive_after(conn, self.handle_request(req, conn))
        except (TimeoutError, socket.timeout):
            self.log.debug("Request not received in time (handed over unframed).")
        except http.errors.NoMoreData as e:
            self.log.debug("Ignored premature client disconnection. %s", e)
        except StopIteration as e:
            self.log.debug("Closing connection. %s", e)
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
            else:
                self.log.debug("Ignoring connection error: %s", e)
        except Exception as e:  # noqa: BLE001 - as gthread: any error of the app or the response goes to handle_error
            self.handle_error(req, conn.sock, conn.client, e)
        return False
