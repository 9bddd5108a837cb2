"""Plivo's Message API: one send or one message-list look-up, turned into plain values.

`MessageApi.send` posts one message and says what came of it as a `Result`;
`MessageApi.find` reads Plivo's message list so that a send whose outcome is
unknown can be settled without sending twice. Neither raises for an HTTP or a
network problem: the sender decides what to do from the outcome.

Where the request may have left matters more than what went wrong. Plivo's API
has no idempotency key, so an error that can only happen before the request is
written (connection refused, DNS failure, connect timeout) is RETRY, while one
that can happen after Plivo has the request (read timeout, connection closed
while waiting for the answer) is UNKNOWN, and the caller must look the message
up with `find` before sending it again. For the same reason requests' own
retries and redirects are off: nothing here ever re-sends on its own.

Errors are short, single-line and safe to log and store: never the token, the
Authorization header or the message text (Plivo's error text is scrubbed of
both in case it echoes them). Nothing is logged above DEBUG.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.cookiejar import DefaultCookiePolicy
from urllib.parse import quote, urlsplit

import requests
import urllib3.exceptions

from . import FAILED, RETRY, SENT, UNKNOWN, Result, retry_after
from .deadline import BodyTooLarge, DeadlineAdapter, read_body, within

__all__ = ["MessageApi", "Found", "USER_AGENT", "MESSAGE_TYPES", "LIST_LIMIT", "LIST_MAX_PAGES"]

log = logging.getLogger("app.outbound.plivo")

USER_AGENT = "plivo-responder/1"
MESSAGE_TYPES = ("sms", "mms", "whatsapp")
#: Plivo's largest page of the message list, and how many pages `find` reads at most.
LIST_LIMIT = 20
LIST_MAX_PAGES = 10
#: Longest `error` text.
MAX_ERROR = 200
#: Largest answer read (a page of the list is ~10 KB); a bigger one is not read.
MAX_ANSWER = 1024 * 1024

#: Plivo's words for a destination that opted out. Deliberately narrow: a wrong match opts a
#: customer out, and Plivo's usual signal is a delivery report with ErrorCode 200 (the store
#: handles that); "stop" alone could be an echo of the message text.
_OPTED_OUT = re.compile(r"opt(?:ed)?[\s_-]?out|blocked by stop", re.IGNORECASE)
_UNPRINTABLE = re.compile(r"[^\x20-\x7e\u00a0-\uffff]+|[\u2028\u2029\ud800-\udfff]+")
_SPACES = re.compile(r"\s+")
_NOT_DIGIT = re.compile(r"\D")
#: Shortest message text scrubbed from Plivo's error: a one-letter reply ("Y") would
#: otherwise blank every Y of the error, and a text that short tells nothing anyway.
_MIN_SCRUB = 4


@dataclass(frozen=True, slots=True)
class Found:
    """What Plivo's message list holds for one (src, dst) since a moment.

    `ok` is True only when the whole list was read. `messages` are the outbound
    messages from src to dst, newest first as Plivo lists them, each a dict with
    `uuid`, `time` (Plivo's text), `type`, `state`, `from`, `to`. When `ok` is
    False, `messages` holds what was read before the failure (a match there is
    still a match), `error` says why, `status` is the HTTP status if one came
    and `delay` the Retry-After Plivo asked for, if any.
    """

    ok: bool
    messages: list[dict] = field(default_factory=list)
    error: str | None = None
    status: int | None = None
    delay: float | None = None


def digits(number: str | None) -> str:
    """A phone number reduced to its digits (Plivo may write `+14155550123` or `14155550123`)."""
    return _NOT_DIGIT.sub("", number or "")


def _safe_error(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` made safe to log: secrets blanked, one printable line, at most MAX_ERROR characters."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _SPACES.sub(" ", _UNPRINTABLE.sub(" ", text)).strip()
    if len(text) > MAX_ERROR:
        text = text[:MAX_ERROR - 3].rstrip() + "..."
    return text


class Expired(Exception):
    """The exchange outlived its total deadline and was cut; `sent`: the request had started to go."""

    def __init__(self, sent: bool):
        super().__init__("deadline")
        self.sent = sent


def _json(data: bytes | None):
    """The parsed JSON of an answer's body, or None."""
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


def _plivo_error(response: requests.Response, body) -> str:
    """Plivo's `error` field (a string, or an object rendered as compact JSON), else the reason phrase."""
    error = body.get("error") if isinstance(body, dict) else None
    if error is None and isinstance(body, dict):
        error = body.get("message")
    if isinstance(error, str) and error.strip():
        return error
    if error not in (None, "", {}, []):
        return json.dumps(error, ensure_ascii=False, separators=(",", ":"), default=str)
    return response.reason or http.client.responses.get(response.status_code, "") or "no reason given"


def _chain(exc: BaseException):
    """Every exception `exc` wraps: causes, contexts, urllib3's reason/original_error, exception args."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__,
                  getattr(current, "reason", None), getattr(current, "original_error", None), *current.args]
        todo.extend(e for e in linked if isinstance(e, BaseException))


def _network(exc: BaseException, connect_timeout: float, read_timeout: float,
             deadline: float | None = None) -> tuple[str, str]:
    """(outcome, short error) for an exception that came instead of an answer.

    RETRY only when the request certainly did not leave: the connection was
    never made. Everything else is UNKNOWN.
    """
    if isinstance(exc, Expired):
        return (UNKNOWN if exc.sent else RETRY), f"no complete answer within {deadline:g} s"
    if isinstance(exc, requests.ConnectTimeout):
        return RETRY, f"connect timeout after {connect_timeout:g} s"
    if isinstance(exc, requests.ReadTimeout):
        return UNKNOWN, f"no answer within {read_timeout:g} s"
    chain = list(_chain(exc))
    if isinstance(exc, requests.ConnectionError):
        if any(isinstance(e, urllib3.exceptions.NameResolutionError) for e in chain):
            return RETRY, "DNS lookup failed"
        if any(isinstance(e, ConnectionRefusedError) for e in chain):
            return RETRY, "connection refused"
        if any(isinstance(e, urllib3.exceptions.NewConnectionError) for e in chain):
            return RETRY, "could not connect"
        if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain):
            return RETRY, "TLS certificate rejected"  # checked during the handshake, before any byte of the request
    if any(isinstance(e, urllib3.exceptions.ReadTimeoutError) for e in chain):
        return UNKNOWN, f"no answer within {read_timeout:g} s"
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return UNKNOWN, "connection lost while reading the answer"
    if any(isinstance(e, (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)) for e in chain):
        return UNKNOWN, "connection lost after sending"
    return UNKNOWN, f"connection error after sending ({type(exc).__name__})"


class MessageApi:
    """A client of Plivo's Message API for one account.

    One `requests.Session` (kept-alive connections, basic auth, no cookies, no
    redirects, no automatic retries). The connection pool is thread-safe and
    nothing else in the session changes after construction, so one client can
    serve several sender threads. A `session` passed in gets the auth, headers
    and cookie policy but keeps its own adapters: it must not retry POSTs.
    """

    def __init__(self, base_url: str, auth_id: str, token: str, *, connect_timeout: float = 5.0,
                 read_timeout: float = 15.0, deadline: float = 20.0, session: requests.Session | None = None):
        parts = urlsplit(base_url or "")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("the Plivo API URL must be an http(s) URL")
        if not auth_id or not token:
            raise ValueError("the Message API needs an auth id and an auth token")
        self.base_url = base_url.rstrip("/")
        self.auth_id = auth_id
        self.path = f"/v1/Account/{quote(auth_id, safe='')}/Message/"
        self.url = self.base_url + self.path
        self.timeout = (float(connect_timeout), float(read_timeout))
        #: Every request (a send, one page of the list) ends within this many seconds, whatever
        #: the server does: headers or body trickled a byte at a time are cut (deadline.py).
        self.deadline = float(deadline)
        self._secrets = (token,)
        self.session = session if session is not None else requests.Session()
        self.session.auth = (auth_id, token)
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
        # No cookies: a load balancer's cookie is no state we want, and it keeps the session read-only.
        self.session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
        if session is None:
            adapter = DeadlineAdapter(max_retries=0, pool_connections=1, pool_maxsize=16)
            self.session.mount("http://", adapter)
            self.session.mount("https://", adapter)

    def __enter__(self) -> MessageApi:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Close the kept-alive connections."""
        self.session.close()

    def __repr__(self) -> str:
        return f"MessageApi({self.base_url!r}, auth_id={self.auth_id!r})"

    def _exchange(self, method: str, **kwargs) -> tuple[requests.Response, object]:
        """One request and its whole answer within `deadline`: (response, the body's JSON or None).

        Raises what requests raises, or Expired when the deadline cut the exchange.
        """
        with within(self.deadline) as watch:
            try:
                response = self.session.request(method, self.url, timeout=self.timeout, allow_redirects=False,
                                                stream=True, **kwargs)
                with response:
                    try:
                        data = read_body(response, MAX_ANSWER, watch)
                    except BodyTooLarge:
                        data = None
                    whole = watch.finish()  # read before the deadline: a cut just after it does not count
            except Exception as exc:
                if watch.expired or isinstance(exc, TimeoutError):
                    raise Expired(watch.sent) from exc
                raise
        if not whole:  # cut: http.client takes the cut for the end of the headers, so it may look whole
            raise Expired(watch.sent)
        return response, _json(data)

    # --- send ---------------------------------------------------------------

    def send(self, *, src: str, dst: str, text: str, type: str = "sms", media_urls: Sequence[str] = (),
             callback_url: str | None = None) -> Result:
        """POST one message; never raises for HTTP or network trouble.

        The body is exactly `src`, `dst`, `text`, `type`, plus `media_urls` when
        there are some and `url`/`method` when a callback URL is given. Numbers go
        as given (Plivo's are digits without `+`).
        """
        if type not in MESSAGE_TYPES:
            return Result(FAILED, error=_safe_error(f"unsupported message type {type!r}"))
        body: dict = {"src": src, "dst": dst, "text": text, "type": type}
        if media_urls:
            body["media_urls"] = list(media_urls)
        if callback_url:
            body["url"] = callback_url
            body["method"] = "POST"
        secrets = self._secrets + ((text,) if text and len(text) >= _MIN_SCRUB else ())
        started = time.monotonic()
        try:
            response, data = self._exchange("POST", json=body)
        except (Expired, requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
                OSError) as exc:
            outcome, error = _network(exc, *self.timeout, self.deadline)
            log.debug("Message API send: %s (%s) after %.3f s", outcome, error, time.monotonic() - started)
            return Result(outcome, error=error)
        result = self._answer(response, data, secrets)
        log.debug("Message API send: HTTP %s -> %s in %.3f s", response.status_code, result.outcome,
                  time.monotonic() - started)
        return result

    def _answer(self, response: requests.Response, data, secrets: Sequence[str]) -> Result:
        status = response.status_code
        if 200 <= status < 300:
            uuids = _uuids(data)
            if uuids:
                return Result(SENT, message_uuids=uuids, status=status)
            return Result(UNKNOWN, status=status, error=f"HTTP {status} without a message_uuid")
        delay = retry_after(response.headers.get("Retry-After"))
        error = _safe_error(f"HTTP {status}: {_plivo_error(response, data)}", secrets)
        if status == 429 or status >= 500:
            return Result(RETRY, delay=delay, error=error, status=status)
        if 400 <= status < 500:
            return Result(FAILED, error=error, status=status, opted_out=bool(_OPTED_OUT.search(error)))
        # 1xx/3xx: nobody took the message (redirects are not followed: a POST must not turn
        # into a GET nor carry the credentials elsewhere); most likely PLIVO_API_URL is wrong.
        return Result(RETRY, delay=delay, status=status,
                      error=_safe_error(f"HTTP {status}: unexpected answer (check PLIVO_API_URL)"))

    # --- message list -------------------------------------------------------

    def find(self, *, src: str, dst: str, since: datetime, stop_before: datetime | None = None,
             pace: Callable[[], bool] | None = None) -> Found:
        """Outbound messages from `src` to `dst` at or after `since` (naive UTC, or aware).

        Reads at most LIST_MAX_PAGES pages of LIST_LIMIT; a longer list is not
        `ok` (an unread page might hold the message). Plivo keeps the time to the
        second and the filter truncates `since` to the second, so pass the moment
        the attempt started, less a margin for clock skew between here and Plivo.
        """
        if since.tzinfo is not None:
            since = since.astimezone(timezone.utc).replace(tzinfo=None)
        # `stop_before` (naive UTC): Plivo lists newest first, so a page whose oldest message
        # is older than this ends the list for the caller's purpose: it is complete (ok).
        # `pace()` is called before each page (the caller's request rate); False stops.
        params = {"message_direction": "outbound", "from_number": src, "to_number": dst,
                  "message_time__gte": since.strftime("%Y-%m-%d %H:%M:%S"), "limit": LIST_LIMIT}
        want_from, want_to = digits(src), digits(dst)
        messages: list[dict] = []
        seen: set = set()  # Plivo lists newest first: a message sent while paging shifts the pages by one
        offset = 0
        for _page in range(LIST_MAX_PAGES):
            if pace is not None and not pace():
                return Found(False, messages, error="stopped")
            try:
                response, page = self._exchange("GET", params={**params, "offset": offset})
            except (Expired, requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
                    OSError) as exc:
                return Found(False, messages, error=_network(exc, *self.timeout, self.deadline)[1])
            status = response.status_code
            if not 200 <= status < 300:
                return Found(False, messages, status=status, delay=retry_after(response.headers.get("Retry-After")),
                             error=_safe_error(f"HTTP {status}: {_plivo_error(response, page)}", self._secrets))
            try:
                if not isinstance(page, dict):
                    raise TypeError
                objects, meta = page["objects"], page.get("meta") or {}
                if not isinstance(objects, list) or not isinstance(meta, dict):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                return Found(False, messages, status=status, error=f"HTTP {status}: not a message list")
            oldest = None
            for obj in objects:
                if isinstance(obj, dict):
                    moment = message_time(obj.get("message_time"))
                    if moment is not None and (oldest is None or moment < oldest):
                        oldest = moment
                if not isinstance(obj, dict) or obj.get("message_direction", "outbound") != "outbound":
                    continue
                if not isinstance(obj.get("message_uuid"), str) or not obj["message_uuid"]:
                    continue  # nothing to settle an item with
                if digits(obj.get("from_number")) != want_from or digits(obj.get("to_number")) != want_to:
                    continue
                if obj.get("message_uuid") in seen:
                    continue
                seen.add(obj.get("message_uuid"))
                messages.append({"uuid": obj.get("message_uuid"), "time": obj.get("message_time"),
                                 "type": obj.get("message_type"), "state": obj.get("message_state"),
                                 "from": obj.get("from_number"), "to": obj.get("to_number")})
            log.debug("Message API list: page at offset %d, %d objects", offset, len(objects))
            if not meta.get("next") or not objects:
                return Found(True, messages, status=status)
            if stop_before is not None and oldest is not None and oldest < stop_before:
                return Found(True, messages, status=status)
            offset += len(objects)
        return Found(False, messages, error=f"message list longer than {LIST_MAX_PAGES} pages")


def message_time(value) -> datetime | None:
    """A `message_time` of Plivo's list as naive UTC; None without a readable time and zone."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", value.strip())
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None  # no zone: cannot be placed in time
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


def _uuids(body) -> tuple[str, ...]:
    """The message_uuid list of a 2xx answer's JSON (a single string tolerated); () if there is none."""
    value = body.get("message_uuid") if isinstance(body, dict) else None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        return ()
    return tuple(value)
