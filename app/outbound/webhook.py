"""Signed webhook calls (the `webhook` action): the body, its signature, one HTTP call.

Modelled on Stripe's webhook signatures: the header

    X-Responder-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of b"<t>." + raw body>

keyed with WEBHOOK_SECRET lets the receiver check that a call came from this
service (the MAC) and is fresh (the timestamp is inside the MAC, so an old call
replayed later is refused by its age). ``verify_webhook`` is what a receiver runs; the
tests use it, and the README shows it.

``WebhookClient.call`` turns one HTTP exchange into a ``Result`` and never raises
for an HTTP or network problem. A ``2xx`` is success; everything else, refusals
included, is tried again later like a Message API send. Webhooks are delivered
at least once: a call whose answer was lost is sent again, with the same
``X-Responder-Delivery`` id so the receiver can drop the duplicate.

Nothing here knows Flask, the rules or the database. ``Result.error`` and the
(DEBUG only) log lines never hold the secret, the body, or the URL beyond its
scheme and host: webhook URLs sometimes carry tokens in the query or userinfo.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
from requests import exceptions as rex

from app.outbound import FAILED, RETRY, SENT, Result, retry_after
from app.outbound.deadline import DeadlineAdapter, within

__all__ = [
    "HEADER", "DELIVERY_HEADER", "METHODS", "WebhookSignatureError",
    "body", "with_delivery", "sign", "verify_webhook", "retry_after", "WebhookClient",
]

HEADER = "X-Responder-Signature"
DELIVERY_HEADER = "X-Responder-Delivery"
CONTENT_TYPE = "application/json; charset=utf-8"
USER_AGENT = "plivo-responder-webhook/1"
#: Methods a webhook may use: the ones that carry a body.
METHODS = ("POST", "PUT", "PATCH")
#: v1 signatures looked at per header (one, or two while the secret rotates); a header
#: stuffed with thousands of them must not cost thousands of compares.
_MAX_SIGNATURES = 8
#: A Unix time in seconds has 10 digits until the year 2286; more is nonsense, not a time.
_MAX_T_DIGITS = 12
#: The answer's body is read (so the connection can be reused) up to this much, then dropped.
_MAX_DRAIN = 64 * 1024

log = logging.getLogger(__name__)


class WebhookSignatureError(ValueError):
    """An X-Responder-Signature header could not be accepted.

    ``reason`` is one of "no signature", "malformed header", "signature does not
    match", "timestamp too old"; it never holds a secret or an expected signature.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


# --- body and signature ----------------------------------------------------

def body(payload: dict) -> bytes:
    """The exact bytes sent (and signed) for `payload`.

    Compact and in the payload's own key order, so the same payload always gives
    the same bytes; non-ASCII stays UTF-8 rather than ``\\u`` escapes, which keeps
    the body as readable to the receiver as the message was.
    """
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=False).encode("utf-8")


def _key(secret: str) -> bytes:
    if not isinstance(secret, str) or not secret:
        raise ValueError("a webhook secret must be a non-empty string")
    return secret.encode("utf-8")


def _mac(key: bytes, body: bytes, t: int) -> str:
    """Hex HMAC-SHA256 of ``b"<t>." + body``: the timestamp is covered, so it cannot be moved."""
    return hmac.new(key, b"%d." % t + bytes(body), "sha256").hexdigest()


def _signature(key: bytes, body: bytes, t: int) -> str:
    return f"t={t:d},v1={_mac(key, body, t)}"


def sign(secret: str, body: bytes, t: int) -> str:
    """The X-Responder-Signature value for `body` sent at Unix time `t`: ``t=<t>,v1=<hex>``."""
    return _signature(_key(secret), body, t)


# --- verification (for receivers) -----------------------------------------

def _parse(header) -> tuple[int, list[str]]:
    """(t, the v1 signatures) of a header; items in any order, whitespace and unknown schemes ignored.

    A second ``t`` is refused rather than guessed between.
    """
    if not isinstance(header, str) or not header.strip():
        raise WebhookSignatureError("no signature")
    t = None
    signatures: list[str] = []
    for item in header.split(","):
        if not item.strip():
            continue  # a stray comma
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise WebhookSignatureError("malformed header")
        if key == "t":
            if t is not None or not (value.isascii() and value.isdigit()) or len(value) > _MAX_T_DIGITS:
                raise WebhookSignatureError("malformed header")
            t = int(value)
        elif key == "v1" and len(signatures) < _MAX_SIGNATURES:
            signatures.append(value)
    if t is None:
        raise WebhookSignatureError("malformed header")
    if not signatures:
        raise WebhookSignatureError("no signature")
    return t, signatures


def _keys(secret: str | Sequence[str]) -> list[bytes]:
    secrets = (secret,) if isinstance(secret, str) else tuple(secret)
    if not secrets:
        raise ValueError("verify_webhook() needs at least one webhook secret")
    return [_key(s) for s in secrets]


def verify_webhook(secret: str | Sequence[str], header: str, body: bytes, *,
           tolerance: float = 300, now: float | None = None) -> int:
    """Check an X-Responder-Signature header against the raw request body; return its t.

    `secret` may be several secrets (while one is being rotated): any of them
    may match any v1 value. `body` must be the bytes as received, before any JSON
    parsing. The signature is checked before the age, so a forged header is
    always "signature does not match", whatever its timestamp. A timestamp more
    than `tolerance` seconds from `now` (either way: clocks drift) is refused,
    which bounds how long a captured call can be replayed.

    Raises WebhookSignatureError; ValueError for no or empty secrets (a set-up mistake).
    """
    keys = _keys(secret)
    t, signatures = _parse(header)
    given = [s.encode("utf-8", "surrogatepass") for s in signatures]
    expected = [_mac(key, body, t).encode("ascii") for key in keys]
    if not any(hmac.compare_digest(g, e) for e in expected for g in given):
        raise WebhookSignatureError("signature does not match")
    if abs((time.time() if now is None else now) - t) > tolerance:
        raise WebhookSignatureError("timestamp too old")
    return t


# --- one call --------------------------------------------------------------

def _origin(url) -> str:
    """scheme://host[:port] of a URL, for DEBUG logs: never its userinfo, path or query."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
    except (TypeError, ValueError, AttributeError):
        return "?"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps: causes, contexts, urllib3's `reason`, exceptions in args."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack.extend([e.__cause__, e.__context__, getattr(e, "reason", None)])
        stack.extend(a for a in e.args if isinstance(a, BaseException))


def _connection_error(exc: rex.ConnectionError) -> str:
    """A short, URL-free description of a requests ConnectionError (its text holds the URL)."""
    chain = list(_chain(exc))
    if any(isinstance(e, urllib3.exceptions.NameResolutionError) for e in chain):
        return "cannot resolve host"
    if any(isinstance(e, urllib3.exceptions.NewConnectionError) for e in chain):
        if any(isinstance(e, ConnectionRefusedError) for e in chain):
            return "connection refused"
        return "cannot connect"
    # A ProtocolError: the connection broke while the request was out or the answer due.
    return "connection lost after sending"


def with_delivery(raw: bytes, delivery: str) -> bytes:
    """`raw` (a JSON object from `body()`) with its "delivery" id, so the signature covers it.
    Anything else is left as it is."""
    try:
        payload = json.loads(raw)
    except ValueError:
        return raw
    if not isinstance(payload, dict):
        return raw
    payload["delivery"] = delivery
    return body(payload)


class WebhookClient:
    """Sends signed webhook calls over one `requests.Session` (connections are reused).

    `requests.Session` is not documented as thread-safe: give each sending
    thread its own client. Proxy and CA settings come from the environment, as
    everywhere in `requests`.
    """

    def __init__(self, secret: str, *, connect_timeout: float = 5.0, read_timeout: float = 15.0,
                 deadline: float = 20.0, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.time):
        self._secret = secret
        self._key = _key(secret)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        #: A call ends within this many seconds in all, whatever the receiver does (deadline.py).
        self.deadline = deadline
        self._own_session = session is None
        if session is None:
            session = requests.Session()
            adapter = DeadlineAdapter(max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self._session = session
        self._clock = clock

    def clone(self) -> WebhookClient:
        """Another client like this one with its own session (one per sending thread)."""
        return WebhookClient(self._secret, connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
                             deadline=self.deadline, clock=self._clock)

    def call(self, url: str, method: str, body: bytes, *, item_id: int | None = None) -> Result:
        """Send `body` (the JSON bytes from `body()`) to `url`; what came of it as a Result.

        The signature is made now, for this attempt, so a retry a day later is
        fresh; `item_id` goes out as X-Responder-Delivery, the same on every attempt,
        and as the body's "delivery" (a JSON object's), where the signature covers it.
        The whole call ends within `deadline` seconds.
        """
        method = (method or "POST").upper()
        if method not in METHODS:
            return self._done(url, method, Result(FAILED, error="unsupported method"))
        if item_id is not None:
            body = with_delivery(body, str(item_id))
        headers = {
            "Content-Type": CONTENT_TYPE,
            "User-Agent": USER_AGENT,
            HEADER: _signature(self._key, body, int(self._clock())),
        }
        if item_id is not None:
            headers[DELIVERY_HEADER] = str(item_id)
        with within(self.deadline) as watch:
            try:
                result = self._exchange(url, method, body, headers)
                whole = watch.finish()  # answered before the deadline: a cut just after it does not count
            except Exception:  # whatever the cut connection raised: never raise
                if not watch.expired:
                    raise
                whole = False
        if not whole:  # cut (http.client takes the cut for the end of the headers): not an answer
            result = Result(RETRY, error=f"no complete answer within {self.deadline:g} s")
        return self._done(url, method, result)

    def _exchange(self, url: str, method: str, body: bytes, headers: dict) -> Result:
        try:
            response = self._session.request(
                method, url, data=bytes(body), headers=headers,
                timeout=(self.connect_timeout, self.read_timeout),
                allow_redirects=False, stream=True)
        except rex.InvalidProxyURL:  # the environment's proxy setting, not the webhook's URL
            return Result(RETRY, error="invalid proxy settings")
        except rex.MissingSchema:
            return Result(FAILED, error="URL has no scheme")
        except rex.InvalidSchema:
            return Result(FAILED, error="URL scheme not supported")
        except rex.InvalidURL:
            return Result(FAILED, error="invalid URL")
        except rex.ConnectTimeout:
            return Result(
                RETRY, error=f"connect timeout after {self.connect_timeout:g} s")
        except rex.ReadTimeout:
            return Result(RETRY, error=f"no answer within {self.read_timeout:g} s")
        except rex.SSLError:
            return Result(RETRY, error="TLS error")
        except rex.ProxyError:
            return Result(RETRY, error="proxy error")
        except rex.ConnectionError as exc:
            return Result(RETRY, error=_connection_error(exc))
        except rex.RequestException as exc:  # nothing else is expected; still never raise
            return Result(RETRY, error=f"request failed ({type(exc).__name__})")
        status = response.status_code
        wait = response.headers.get("Retry-After")
        self._drain(response)
        if 200 <= status < 300:
            return Result(SENT, status=status)
        return Result(RETRY, delay=retry_after(wait, self._clock()), error=f"HTTP {status}", status=status)

    def _drain(self, response: requests.Response) -> None:
        """Read and drop the answer's body, so its connection goes back to the pool.

        Up to _MAX_DRAIN bytes, undecoded (a compressed body is never inflated); a body
        that is too big or broken only costs the connection, one too slow is cut by the
        call's deadline.
        """
        read = 0
        try:
            while read <= _MAX_DRAIN:
                chunk = response.raw.read(8192, decode_content=False)
                if not chunk:
                    break
                read += len(chunk)
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            pass
        finally:
            response.close()  # after a full read, urllib3 has released the connection: a no-op

    def _done(self, url: str, method: str, result: Result) -> Result:
        log.debug("webhook %s %s: %s %s", method, _origin(url), result.outcome,
                  result.error or result.status)
        return result

    def close(self) -> None:
        """Close the session's connections, if this client made the session."""
        if self._own_session:
            self._session.close()

    def __enter__(self) -> WebhookClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
