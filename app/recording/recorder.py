"""The recorder: writes each answered inbound message to RECORD_DIR as a recorded webhook.

Off the answer's path: the request thread only takes a snapshot of what arrived and what
was answered and puts it on a bounded queue (`Recorder.submit`, a few microseconds); one
writer thread per process masks it, builds the recording and writes it. A full queue
drops the recording with a warning (at most one a minute), and a write that fails is
logged (once per kind of error): neither ever delays or changes an answer.

Each file appears whole or not at all: it is written to a hidden temporary file in the
same folder, flushed to disk, then renamed to its final name,
``<UTC time>-<pid>-<tag>-<counter>.json``, which sorts in arrival order and is unique
across the workers and restarts writing into one folder.
"""

from __future__ import annotations

import base64
import logging
import os
import queue
import secrets
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..rules.compiler import RulesError
from ..rules.compiler import read as read_rules
from . import dumps, parse_messages
from .mask import NONE, NUMBERS_TEXT, Masker, digest_of, folder_key, mask_form, numbers_named

log = logging.getLogger("app.recording")

#: Recordings waiting for the writer, at most; more are dropped (with a warning).
QUEUE_SIZE = 1000
#: Seconds between two warnings about dropped recordings.
DROP_WARNING_EVERY = 60.0
#: Temporary files older than this (seconds) were left by a process that died while writing.
STALE_TMP_S = 300.0
#: The only headers a recording holds, whatever RECORD_MASK says: what replaying needs (the
#: Host, the body's type and length, and what a trusted proxy adds, from which the service
#: rebuilds the URL Plivo called) and the client's name. Every other header is left out:
#: signatures (they would not match a masked body, and `replay` signs anew), credentials
#: (Authorization, cookies, API keys, identity tokens a proxy adds) and headers that repeat
#: the request line with its query (X-Original-URI, X-Envoy-Original-Path, Referer).
RECORDED_HEADERS = ("Host", "Content-Type", "Content-Length", "User-Agent", "X-Forwarded-For",
                    "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port", "X-Forwarded-Prefix",
                    "Forwarded", "X-Real-Ip")
_RECORDED = frozenset(name.lower() for name in RECORDED_HEADERS)
#: The same, as WSGI environ keys (HTTP_X_REAL_IP; CONTENT_TYPE and CONTENT_LENGTH without HTTP_).
_RECORDED_ENVIRON = frozenset(
    (name if name.startswith("content-") else "http-" + name).upper().replace("-", "_") for name in _RECORDED)
_XML_TYPES = ("application/xml", "text/xml")
_STOP = object()

_running: "weakref.WeakSet[Recorder]" = weakref.WeakSet()


def stop_all(timeout: float = 5.0) -> int:
    """Write what is queued and stop every recorder thread of this process (worker exit);
    the number of recordings left unwritten when `timeout` ran out (each recorder logs its own)."""
    deadline = time.monotonic() + timeout
    return sum(recorder.stop(max(0.0, deadline - time.monotonic())) for recorder in list(_running))


@dataclass(slots=True)
class Arrival:
    """What one answered request leaves for the writer: taken in the request thread."""

    method: str
    url: str
    body: bytes
    headers: list[tuple[str, str]]  # environ entries: HTTP_*, CONTENT_TYPE, CONTENT_LENGTH
    scheme: str | None  # the connection's own scheme (before X-Forwarded-Proto)
    status: int
    content_type: str
    answer: bytes
    now: datetime
    ruleset: Any  # the RuleSet that answered: its timezone, and the numbers it names


def snapshot(environ) -> tuple[list[tuple[str, str]], str | None]:
    """(the recorded header entries of a WSGI environ, the connection's own scheme), taken in
    the request thread: a few microseconds; the names are spelled out later by `received_headers`.
    Only the headers in `RECORDED_HEADERS` are taken.

    Behind TRUSTED_PROXIES the Host and scheme were rewritten from X-Forwarded-*; the
    values the connection itself carried are taken back from where ProxyFix keeps them.
    """
    entries = [(k, v) for k, v in list(environ.items()) if k in _RECORDED_ENVIRON]
    orig = environ.get("werkzeug.proxy_fix.orig")
    if orig is None:
        return entries, environ.get("wsgi.url_scheme")
    if orig.get("HTTP_HOST"):
        entries = [(k, orig["HTTP_HOST"] if k == "HTTP_HOST" else v) for k, v in entries]
    return entries, orig.get("wsgi.url_scheme")


def received_headers(entries: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Header names and values from environ entries (``HTTP_X_REAL_IP`` is ``X-Real-Ip``)."""
    headers = []
    for key, value in entries:
        if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
            if value:
                headers.append(("Content-Type" if key == "CONTENT_TYPE" else "Content-Length", value))
        elif key.startswith("HTTP_"):
            headers.append(("-".join(part.capitalize() for part in key[5:].split("_")), value))
    return headers


class Recorder:
    """Records answered messages into `folder`, masked as `mask` says (none, numbers, numbers,text).

    `settings`: the settings a replay needs (PUBLIC_URL, TRUSTED_PROXIES), written into each
    recording when set; `clock`: the service's clock (None: the real one).
    """

    def __init__(self, folder: str | Path, mask: str = "numbers", *, settings: dict | None = None,
                 clock=None, queue_size: int = QUEUE_SIZE):
        self.folder = Path(folder)
        self.mask = mask
        self.settings = {k: v for k, v in (settings or {}).items() if v}
        self.clock = clock
        # The key is made (or read) here, at start, so a folder that cannot hold it is known at once.
        self.masker = Masker(folder_key(self.folder)) if mask != NONE else None
        self._keep_digest: str | None = None
        self._queue: queue.Queue = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None
        self._tag = secrets.token_hex(2)
        self._counter = 0
        self._dropped = 0
        self._warned_at = -DROP_WARNING_EVERY
        self._lock = threading.Lock()
        self._errors_seen: set[str] = set()
        self._writing = False  # the writer thread is writing a recording now
        self._remove_stale_tmp()

    # -- the request thread ---------------------------------------------------------
    def submit(self, req, answer, ruleset, at: datetime | None = None) -> bool:
        """Queue one answered request (`service.HttpRequest`, `service.Answer`); never blocks or raises.

        `at`: the time the rules decided at (what `days`, `hours` and ``{{ now }}`` saw; naive
        means in the rules' timezone), written as the recording's clock; None: now.
        """
        try:
            if not 200 <= answer.status < 300:
                return False
            if at is not None:
                now = at
            else:
                now = self.clock() if self.clock is not None else datetime.now(timezone.utc)
            if req.environ is not None:
                headers, scheme = snapshot(req.environ)
            else:
                headers = [("CONTENT_TYPE", req.content_type)] if req.content_type else []
                scheme = None
            item = Arrival(req.method, req.url, req.body, headers, scheme, answer.status,
                           answer.content_type, answer.body, now, ruleset)
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self._drop()
            return False
        except Exception as exc:  # noqa: BLE001 - recording must never fail an answer
            self._error(exc, "recording not queued")
            return False

    def _drop(self) -> None:
        with self._lock:
            self._dropped += 1
            now = time.monotonic()
            if now - self._warned_at < DROP_WARNING_EVERY:
                return
            dropped, self._dropped, self._warned_at = self._dropped, 0, now
        log.warning("recording queue full (%d waiting): %d request(s) answered but not recorded",
                    self._queue.maxsize, dropped, extra={"record_dir": str(self.folder)})

    # -- the writer thread ----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="responder-recorder", daemon=True)
        _running.add(self)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> int:
        """Write what is queued (within `timeout`) and end the thread. Returns how many
        recordings were not written when the time ran out (0: all were), and logs it: they
        are lost with the process."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return 0
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=timeout)
            stop_queued = True
        except queue.Full:  # the writer is busy with a full queue until the timeout
            stop_queued = False
        thread.join(max(0.0, deadline - time.monotonic()))
        if not thread.is_alive():
            return 0
        lost = self._queue.qsize() - stop_queued + self._writing
        if lost > 0:
            log.warning("recorder stopped after %g s with %d recording(s) not written: they are lost",
                        timeout, lost, extra={"record_dir": str(self.folder)})
        return max(lost, 0)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            self._writing = True
            try:
                self.record(item)
            finally:
                self._writing = False

    def drain(self) -> int:
        """Write everything queued now, in this thread (without a writer thread: tests, commands)."""
        written = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return written
            if item is not _STOP:
                written += self.record(item) is not None

    def record(self, item: Arrival) -> Path | None:
        """Build and write one recording; errors are logged, never raised."""
        try:
            name, recording = self.build(item)
            return self.write(name, recording)
        except Exception as exc:  # noqa: BLE001 - a write error must not end the writer thread
            self._error(exc, "recording not written")
            return None

    def _error(self, exc: Exception, what: str) -> None:
        kind = f"{type(exc).__name__}:{getattr(exc, 'errno', '')}"
        if kind in self._errors_seen:
            return
        self._errors_seen.add(kind)
        log.error("%s: %s: %s (logged once; later errors of this kind are not)", what,
                  type(exc).__name__, exc, extra={"record_dir": str(self.folder)})

    # -- building and writing -------------------------------------------------------
    def build(self, item: Arrival) -> tuple[str, dict]:
        """(file name, recording) for one answered request, masked."""
        masker = self._masker_for(item.ruleset)
        hide_text = self.mask == NUMBERS_TEXT
        tz = item.ruleset.tz
        local = item.now.replace(tzinfo=tz) if item.now.tzinfo is None else item.now.astimezone(tz)
        utc = local.astimezone(timezone.utc)

        url, body = item.url, item.body
        if masker is not None:
            parts = urlsplit(url)
            if parts.query:
                url = urlunsplit(parts._replace(query=mask_form(parts.query, masker, hide_text)))
            if body:
                body = mask_form(body.decode("utf-8"), masker, hide_text).encode("utf-8")

        recording: dict[str, Any] = {"description": "", "method": item.method, "url": url}
        if item.scheme and item.scheme != urlsplit(url).scheme:
            recording["scheme"] = item.scheme
        recording["headers"] = _headers(received_headers(item.headers), body)
        try:
            recording["body"] = body.decode("utf-8")
        except UnicodeDecodeError:
            recording["body_base64"] = base64.b64encode(body).decode("ascii")
        if self.settings:
            recording["settings"] = dict(self.settings)
        recording["now"] = local.isoformat()
        recording["expect"], answered = self._expect(item, masker, hide_text)

        masked = {NONE: "nothing", "numbers": "numbers"}.get(self.mask) or (
            f"numbers and text (the answer's {answered} message(s) are left out: they depend on the hidden text)")
        recording["description"] = f"recorded {utc:%Y-%m-%dT%H:%M:%SZ}, masked: {masked}"
        with self._lock:
            self._counter += 1
            counter = self._counter
        name = f"{utc:%Y%m%dT%H%M%S}.{utc.microsecond // 1000:03d}Z-{os.getpid()}-{self._tag}-{counter:05d}.json"
        return name, recording

    def _expect(self, item: Arrival, masker: Masker | None, hide_text: bool) -> tuple[dict, int]:
        expect: dict[str, Any] = {"status": item.status, "content_type": item.content_type}
        if item.content_type.split(";", 1)[0].strip().lower() not in _XML_TYPES:
            text = item.answer.decode("utf-8", "replace")
            expect["body"] = masker.numbers_in(text) if masker is not None else text
            return expect, 0
        messages = parse_messages(item.answer)
        if hide_text:
            return expect, len(messages)
        if masker is not None:
            for message in messages:
                for key in ("src", "dst"):
                    if key in message:
                        message[key] = masker.dst(message[key])
                message["text"] = masker.numbers_in(message["text"])
        expect["messages"] = messages
        return expect, len(messages)

    def _masker_for(self, ruleset) -> Masker | None:
        """The masker, keeping the business's own numbers the rules in use name (its lines, where
        it forwards, numbers in its texts; read once per rules version)."""
        masker = self.masker
        if masker is None or ruleset.digest == self._keep_digest:
            return masker
        self._keep_digest = ruleset.digest
        try:
            text = read_rules(ruleset.path)  # as the compiler reads it (bytes as they are: CRLF too)
        except RulesError:
            text = ""
        if text and digest_of(text) == ruleset.digest:
            named = numbers_named(text)
            masker.named(named.keep, named.prefixes)
        else:
            # The file changed since these rules were loaded: keep nothing (mask more, never less).
            masker.named((), ())
        return masker

    def write(self, name: str, recording: dict) -> Path:
        """Write atomically: a hidden temporary file, flushed, then renamed to `name`."""
        data = dumps(recording).encode("utf-8")
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            final = self.folder / name
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return final

    def _remove_stale_tmp(self) -> None:
        """Temporary files of a process that died while writing (none of a live writer's)."""
        cutoff = time.time() - STALE_TMP_S
        for path in self.folder.glob(".*.tmp"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass


def _headers(received: list[tuple[str, str]], body: bytes) -> dict[str, str]:
    """The headers to write: those received that are in `RECORDED_HEADERS`, Content-Length that of `body`."""
    headers: dict[str, str] = {}
    for name, value in received:
        if name.lower() not in _RECORDED:
            continue
        if name.lower() == "content-length":
            value = str(len(body))
        headers[name] = value
    if body and not any(name.lower() == "content-length" for name in headers):
        headers["Content-Length"] = str(len(body))
    return headers
