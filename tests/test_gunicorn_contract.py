"""What app/http_worker.py takes from gunicorn beyond its documented API, checked name by name.

The worker subclasses gthread's `ThreadWorker`: it overrides some of its methods, calls others,
reads and changes its state and its connections' (`TConn`), parses requests with gunicorn's
parser from memory and clears a private flag on the request. None of that is promised across
releases, so each use is a test here: after upgrading gunicorn, a failure says which name the
new release changed, and a pass says the worker may be admitted (widen `SUPPORTED` in
app/http_worker.py and the pin in requirements.txt). The inventory test at the end fails when
the worker starts using a gunicorn name this file does not list.

Fast: no server, no request over a network; a worker object is built but never run as one.
"""

from __future__ import annotations

import ast
import inspect
import logging
import os
import selectors
import socket
import time
from collections import deque
from pathlib import Path

import gunicorn
import pytest
from gunicorn import http
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.unreader import Unreader
from gunicorn.workers import base, gthread

SOURCE = Path(__file__).resolve().parent.parent / "app" / "http_worker.py"
VERSION = gunicorn.__version__
ThreadWorker = getattr(gthread, "ThreadWorker", None)
TConn = getattr(gthread, "TConn", None)


def changed(name: str, what: str) -> str:
    return f"app/http_worker.py relies on gunicorn's private {name}; gunicorn {VERSION} changed it: {what}"


def params(func) -> list[str]:
    return list(inspect.signature(func).parameters)


#: ThreadWorker methods the worker overrides (and calls with super()), with their parameters.
OVERRIDDEN = {
    "__init__": ["self", "args", "kwargs"],
    "init_process": ["self"],
    "accept": ["self", "listener"],
    "on_client_socket_readable": ["self", "conn", "client"],
    "murder_pending": ["self"],
    "finish_request": ["self", "conn", "fs"],
    "handle": ["self", "conn"],
}
#: ThreadWorker (and base Worker) methods the worker calls without overriding them.
CALLED = {
    "enqueue_req": ["self", "conn"],
    "handle_request": ["self", "req", "conn"],
    "handle_error": ["self", "req", "client", "addr", "exc"],
    "_keepalive_after": ["self", "conn", "keepalive"],
}
#: ThreadWorker state the worker reads or changes.
WORKER_STATE = {"cfg", "log", "alive", "poller", "nr_conns", "keepalived_conns", "worker_connections"}
#: TConn state and methods the worker uses (it also adds attributes of its own to each TConn).
CONN_STATE = {"sock", "client", "parser", "timeout", "set_timeout", "close"}
#: Underscore names of gunicorn's that the worker uses.
PRIVATE = {"_keepalive_after", "_expected_100_continue"}


@pytest.fixture()
def cfg():
    return Config()


@pytest.fixture()
def make_worker(cfg):
    made = []

    def make(cls=None):
        worker = (cls or ThreadWorker)(0, os.getppid(), [], None, 30, cfg, logging.getLogger("contract"))
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.tmp.close()


def test_the_installed_gunicorn_is_in_the_supported_range():
    from packaging.specifiers import SpecifierSet
    try:
        from app import http_worker
    except RuntimeError as exc:
        pytest.fail(f"{exc} (the other tests in this file say what changed)")
    pinned = [line.partition("==")[2].strip() for line in
              (SOURCE.parent.parent / "requirements.txt").read_text(encoding="utf-8").splitlines()
              if line.startswith("gunicorn==")]
    assert pinned and SpecifierSet(http_worker.SUPPORTED).contains(pinned[0]), \
        f"requirements.txt pins gunicorn {pinned}, outside http_worker.SUPPORTED {http_worker.SUPPORTED}"


def test_thread_worker_and_tconn_are_importable():
    assert ThreadWorker is not None, changed("gunicorn.workers.gthread.ThreadWorker", "it is gone")
    assert TConn is not None, changed("gunicorn.workers.gthread.TConn", "it is gone")


def assert_method_kept(name: str, expected: list[str], gone: str) -> None:
    """ThreadWorker.`name` is still a method with the parameters `expected`; `gone` says what
    follows when it is not there at all."""
    method = getattr(ThreadWorker, name, None)
    assert callable(method), changed(f"ThreadWorker.{name}", gone)
    assert params(method) == expected, \
        changed(f"ThreadWorker.{name}", f"its parameters are now {params(method)}, not {expected}")


@pytest.mark.parametrize("name", sorted(OVERRIDDEN))
def test_overridden_methods_keep_their_signature(name):
    assert_method_kept(name, OVERRIDDEN[name], "it is gone, so the override is never called")


@pytest.mark.parametrize("name", sorted(CALLED))
def test_called_methods_keep_their_signature(name):
    assert_method_kept(name, CALLED[name], "it is gone")


def test_keepalive_after_drains_the_body_through_conn_parser():
    """`handle` returns `self._keepalive_after(conn, handle_request(...))`: it must answer
    False for a closing response and ask `conn.parser` (the one the worker set) otherwise."""
    asked = []

    class Parser:
        def finish_body(self, deadline=None, **_):
            asked.append(deadline)
            return True

    if not hasattr(ThreadWorker, "_keepalive_after"):
        pytest.fail(changed("ThreadWorker._keepalive_after", "it is gone"))
    conn = type("Conn", (), {"parser": Parser()})()
    worker = object.__new__(ThreadWorker)
    assert worker._keepalive_after(conn, False) is False, \
        changed("ThreadWorker._keepalive_after", "it keeps a connection the response closes")
    assert worker._keepalive_after(conn, True) is True and asked, \
        changed("ThreadWorker._keepalive_after", "it no longer drains the body with conn.parser.finish_body")


def test_worker_state_is_there(make_worker, monkeypatch):
    worker = make_worker()
    for name in ("cfg", "log", "alive", "nr_conns", "keepalived_conns", "worker_connections"):
        assert hasattr(worker, name), changed(f"ThreadWorker.{name}", "a new worker has no such attribute")
    assert worker.nr_conns == 0, changed("ThreadWorker.nr_conns", f"it starts at {worker.nr_conns!r}")
    assert isinstance(worker.keepalived_conns, deque), \
        changed("ThreadWorker.keepalived_conns", f"it is a {type(worker.keepalived_conns).__name__}, not a deque")
    # init_process makes the selector (then the base class runs the loop: not here).
    monkeypatch.setattr(base.Worker, "init_process", lambda self: None)
    worker.init_process()
    try:
        assert isinstance(worker.poller, selectors.BaseSelector), \
            changed("ThreadWorker.poller", f"init_process leaves it {worker.poller!r}, not a selector")
    finally:
        worker.poller.close()
        worker.method_queue.close()
        worker.tpool.shutdown(wait=False)


def test_poller_callbacks_get_the_ready_file_object(make_worker):
    """Callbacks the worker registers in `poller` (partials of `on_request_bytes`,
    `on_client_socket_readable`, `_on_linger`, and `accept`) take the file object."""
    worker = make_worker()
    worker.poller = selectors.DefaultSelector()
    a, b = socket.socketpair()
    got = []
    try:
        b.send(b"x")
        worker.poller.register(a, selectors.EVENT_READ, got.append)
        worker.wait_for_and_dispatch_events(0.5)
    finally:
        worker.poller.close()
        a.close()
        b.close()
    assert got == [a], changed("ThreadWorker.wait_for_and_dispatch_events",
                               f"a poller callback was called with {got!r}, not the socket")


def test_run_calls_murder_pending_at_least_every_second_also_while_stopping(make_worker, monkeypatch):
    """The worker's deadlines (requests arriving, lingering closes) are enforced in
    `murder_pending`: the loop must call it after every wait, and wait a second at most,
    also while the worker stops with connections open."""
    waits, turns = [], []

    class Probe(ThreadWorker):
        def wait_for_and_dispatch_events(self, timeout):
            waits.append(timeout)
            if len(waits) > 20:  # a loop that never calls murder_pending: end it anyway
                self.alive, self.nr_conns = False, 0

        def murder_pending(self):
            turns.append(self.alive)
            if len(turns) == 2:
                self.alive = False  # stop with a connection still open
            if len(turns) == 5:
                self.nr_conns = 0

    monkeypatch.setattr(base.Worker, "init_process", lambda self: None)
    worker = make_worker(Probe)
    worker.init_process()
    worker.nr_conns = 1
    worker.run()
    assert turns.count(False) >= 2, changed("ThreadWorker.run", "murder_pending is not called while stopping")
    assert len(waits) == len(turns), changed("ThreadWorker.run", "murder_pending is not called after every wait")
    assert all(w is not None and w <= 1.0 for w in waits), \
        changed("ThreadWorker.run", f"it waits {max(w or 1e9 for w in waits):.1f} s between murder_pending calls")


def test_tconn_is_made_non_blocking_and_takes_new_attributes(cfg):
    assert params(TConn.__init__) == ["self", "cfg", "sock", "client", "server"], \
        changed("TConn.__init__", f"its parameters are now {params(TConn.__init__)}")
    a, b = socket.socketpair()
    try:
        conn = TConn(cfg, a, ("192.0.2.1", 5), ("127.0.0.1", 8000))
        assert a.gettimeout() == 0.0, changed("TConn.__init__", "it no longer makes the socket non-blocking")
        assert conn.sock is a and conn.client == ("192.0.2.1", 5), changed("TConn.sock/client", "not as given")
        assert conn.parser is None, changed("TConn.parser", "a new connection has no such attribute")
        conn.set_timeout()
        assert abs(conn.timeout - (time.monotonic() + cfg.keepalive)) < 1, \
            changed("TConn.set_timeout", "it no longer sets timeout to monotonic() + keepalive")
        conn.framer = None  # the worker keeps its own state on each connection
        conn.close()
        assert a.fileno() == -1, changed("TConn.close", "it does not close the socket")
    except AttributeError as exc:
        pytest.fail(changed("TConn", str(exc)))
    finally:
        a.close()
        b.close()


def _framed_parser(cfg, data: bytes):
    parser = http.get_parser(cfg, (), ("192.0.2.1", 5))
    parser.unreader.unread(data)
    return parser


def test_a_parser_over_an_empty_source_reads_only_what_is_unread(cfg):
    assert params(http.get_parser)[:3] == ["cfg", "source", "source_addr"], \
        changed("gunicorn.http.get_parser", f"its parameters are now {params(http.get_parser)}")
    assert params(Unreader.unread) == ["self", "data"], changed("Unreader.unread", "its parameters changed")
    parser = _framed_parser(cfg, b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                                 b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    req = next(parser)
    assert req.path == "/a" and req.body.read() == b"abc", changed("get_parser(cfg, (), addr)", "not parsed")
    assert parser.req_count == 1, changed("Parser.req_count", f"it is {parser.req_count!r} after one request")
    with pytest.raises(http.errors.NoMoreData):
        next(_framed_parser(cfg, b"GET / HTTP/1.1\r\nHo"))


def test_take_buffered_returns_the_next_request_without_reading(cfg):
    assert callable(getattr(Unreader, "take_buffered", None)), changed("Unreader.take_buffered", "it is gone")
    assert params(Unreader.take_buffered) == ["self"], changed("Unreader.take_buffered", "its parameters changed")
    parser = _framed_parser(cfg, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n")
    next(parser)
    assert parser.unreader.take_buffered() == b"GET /b HTTP/1.1\r\n", \
        changed("Unreader.take_buffered", "it does not return the bytes read ahead")
    assert parser.unreader.take_buffered() == b"", changed("Unreader.take_buffered", "it does not empty the buffer")


def test_a_parser_goes_on_with_a_request_count_it_is_given(cfg):
    """An unframed request goes to a new parser that continues the connection's count
    (gunicorn reads a PROXY protocol header on the first request only)."""
    parser = _framed_parser(cfg, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    parser.req_count = 4
    req = next(parser)
    assert parser.req_count == 5 and req.req_number == 5, \
        changed("Parser.req_count", "a parser does not go on counting from a req_count it is given")


def test_expected_100_continue_is_what_wsgi_create_answers(cfg):
    """The worker sends `100 Continue` itself while a body arrives, then clears the flag so
    gunicorn does not send a second one."""
    for flag, sent in ((None, b"HTTP/1.1 100 Continue\r\n\r\n"), (False, b"")):
        req = next(_framed_parser(cfg, b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                       b"Content-Length: 1\r\n\r\nx"))
        assert req._expected_100_continue is True, \
            changed("Request._expected_100_continue", "it is not set by `Expect: 100-continue`")
        if flag is not None:
            req._expected_100_continue = flag
        a, b = socket.socketpair()
        try:
            wsgi.create(req, a, ("192.0.2.1", 5), ("127.0.0.1", 8000), cfg)
            b.setblocking(False)
            try:
                got = b.recv(100)
            except BlockingIOError:
                got = b""
        finally:
            a.close()
            b.close()
        assert got == sent, changed("Request._expected_100_continue",
                                    f"with it {req._expected_100_continue}, wsgi.create sent {got!r}")


def test_must_close_closes(cfg):
    req = next(_framed_parser(cfg, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert not req.should_close()
    req.must_close = True
    assert req.should_close(), changed("Request.must_close", "setting it no longer makes should_close() true")


def test_the_settings_read_are_there(cfg):
    for name in ("is_ssl", "http_protocols", "limit_request_line", "worker_connections", "keepalive"):
        assert hasattr(cfg, name), changed(f"Config.{name}", "no such setting")


def test_the_lists_here_name_every_gunicorn_name_the_worker_uses(make_worker, cfg):
    """The inventory, from the worker's source (so it runs whatever gunicorn is installed):
    what DeadlineWorker overrides, reads and sets on itself and on each TConn, and every
    underscore name app/http_worker.py uses that it does not define."""
    tree = ast.parse(SOURCE.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DeadlineWorker")
    methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    overriding = {m for m in methods if hasattr(ThreadWorker, m)}
    assert overriding == set(OVERRIDDEN), \
        f"DeadlineWorker overrides ThreadWorker's {sorted(overriding ^ set(OVERRIDDEN))}: list or rename them"

    def attributes(owner: str):
        read, set_ = set(), set()
        for n in ast.walk(cls):
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == owner:
                (set_ if isinstance(n.ctx, ast.Store) else read).add(n.attr)
        return read, set_

    base_names = set(vars(make_worker())) | {n for n in dir(ThreadWorker) if not n.startswith("__")}
    read, set_ = attributes("self")
    own_state = set_ - WORKER_STATE
    assert not (own_state & base_names), \
        f"DeadlineWorker's own {sorted(own_state & base_names)} is now a name of ThreadWorker's: rename it"
    from_base = (read | set_) - methods - own_state
    known = WORKER_STATE | set(CALLED) | set(OVERRIDDEN)
    assert from_base <= known, f"DeadlineWorker uses ThreadWorker's {sorted(from_base - known)}: list them here"

    a, b = socket.socketpair()
    try:
        conn_own = set(vars(TConn(cfg, a, None, None)))
    finally:
        a.close()
        b.close()
    conn_own |= {n for n in dir(TConn) if not n.startswith("__")}
    read, set_ = attributes("conn")
    assert (read | set_) & conn_own <= CONN_STATE, \
        f"DeadlineWorker uses TConn's {sorted((read | set_) & conn_own - CONN_STATE)}: list them here"
    added = set_ - CONN_STATE
    assert not (added & conn_own), f"the worker's own connection state shadows TConn's {sorted(added & conn_own)}"

    defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    defined |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
                and isinstance(n.value, ast.Name) and n.value.id == "self"}
    defined |= {e.value for n in ast.walk(tree) if isinstance(n, ast.Tuple) for e in n.elts
                if isinstance(e, ast.Constant) and isinstance(e.value, str)}  # __slots__
    private = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
               and n.attr.startswith("_") and not n.attr.startswith("__")}
    private |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names
                if a.name.startswith("_")}
    assert private - defined <= PRIVATE, f"app/http_worker.py uses private {sorted(private - defined - PRIVATE)}: " \
                                         f"add a test for each here"
    assert PRIVATE <= private, f"{sorted(PRIVATE - private)} is no longer used: drop it from PRIVATE"
