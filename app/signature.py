"""Plivo webhook signatures (V2 and V3): compute, verify, and sign for tests.

A small pure module (stdlib only, no Flask) in the spirit of itsdangerous and
gidgethub: the web layer hands it the URL Plivo called, the request headers and
the form parameters, and gets back which header matched or a ``SignatureError``.

V2 signs ``scheme://netloc/path`` of the URL followed by the nonce.
V3 also covers the query string and the POST form parameters; its string to
sign reproduces the official ``plivo`` Python SDK (``validate_v3_signature``)
byte for byte:

* the URL is split with ``urlparse``: the scheme is lower-cased, the host,
  port and path are kept exactly, ``;params`` of the last path segment, the
  query and the fragment are dropped from the base;
* the query is decoded with ``parse_qs`` rules (``+`` is a space, percent
  escapes are UTF-8, blank values kept, ``&`` is the only separator), keys are
  sorted, the values of a repeated key are sorted, and it is written back
  undecorated as ``k=v`` pairs joined by ``&`` after a ``?``;
* for POST, the form parameters (sorted the same way) follow as ``keyvalue``
  with no separators at all: after ``?`` when the URL has no query, after
  ``.`` when it has one; a POST without parameters signs like a GET;
* ``.`` and the nonce end the string; the signature is base64(HMAC-SHA256).

Where the SDK cannot cope (it raises on non-ASCII characters in the URL, raw or
percent-encoded), this module uses the natural extension: UTF-8 throughout.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, urlparse, urlsplit, urlunsplit

__all__ = [
    "HEADER_V2", "HEADER_MA_V2", "HEADER_V2_NONCE",
    "HEADER_V3", "HEADER_MA_V3", "HEADER_V3_NONCE",
    "SignatureError", "MissingSignature", "MissingNonce", "BadSignature",
    "v2_signature", "v3_signature", "verify", "sign_headers", "request_digest",
]

HEADER_V2 = "X-Plivo-Signature-V2"
HEADER_MA_V2 = "X-Plivo-Signature-Ma-V2"
HEADER_V2_NONCE = "X-Plivo-Signature-V2-Nonce"
HEADER_V3 = "X-Plivo-Signature-V3"
HEADER_MA_V3 = "X-Plivo-Signature-Ma-V3"
HEADER_V3_NONCE = "X-Plivo-Signature-V3-Nonce"

#: Every header verify() reads, in canonical order (also that of SignatureError.present).
SIGNATURE_HEADERS = (HEADER_V3, HEADER_MA_V3, HEADER_V3_NONCE,
                     HEADER_V2, HEADER_MA_V2, HEADER_V2_NONCE)
_BY_LOWER = {name.lower(): name for name in SIGNATURE_HEADERS}
_NONCES = (HEADER_V2_NONCE, HEADER_V3_NONCE)
#: Signatures looked at per header (Plivo sends one or two while a token rotates);
#: a header stuffed with thousands of commas must not cost thousands of HMAC compares.
_MAX_CANDIDATES = 8
_SHORT = {HEADER_V3: "V3", HEADER_MA_V3: "Ma-V3", HEADER_V2: "V2", HEADER_MA_V2: "Ma-V2"}


class SignatureError(Exception):
    """A request's Plivo signature could not be accepted.

    Carries context for logs and never a token or an expected signature:
    ``reason`` (short text), ``url`` (the URL that was checked) and ``present``
    (canonical names of the X-Plivo-Signature-* headers the request carried).
    """

    def __init__(self, reason: str, url: str = "", present: Iterable[str] = ()):
        present = tuple(present)
        super().__init__(reason, url, present)
        self.reason = reason
        self.url = url
        self.present = present

    def __str__(self) -> str:
        if self.present:
            seen = ", ".join(self.present) + " present"
        else:
            seen = "no X-Plivo-Signature header present"
        return f"{self.reason} ({seen}; checked {self.url})"


class MissingSignature(SignatureError):
    """No V2 or V3 signature header at all."""


class MissingNonce(SignatureError):
    """A signature header is present but its nonce header is missing or empty."""


class BadSignature(SignatureError):
    """A signature header is present and no configured token matches it."""


# --- string to sign --------------------------------------------------------

@functools.lru_cache(maxsize=256)
def _split(url: str) -> tuple[str, str]:
    """(scheme://netloc/path, query) the way urlparse sees the URL.

    Cached: a deployment is called on a handful of URLs (POST webhooks repeat theirs).
    """
    parts = urlparse(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), parts.query


def _form_pairs(params) -> tuple[list[tuple[str, str]], bool]:
    """(form parameters as (key, value) pairs, whether any key was given).

    Accepts an iterable of (key, value) pairs, a Mapping of key -> str or list
    of str, or a werkzeug MultiDict (all values of a repeated key are used).
    The flag follows the SDK, which asks whether there are keys: a key with an
    empty list of values still counts.
    """
    if not params:
        return [], False
    lists = getattr(params, "lists", None)
    if callable(lists):  # werkzeug MultiDict: Mapping access would drop repeats
        groups = list(lists())
        return [(k, v) for k, values in groups for v in values], bool(groups)
    if isinstance(params, Mapping):
        return ([(k, v) for k, values in params.items()
                 for v in ([values] if isinstance(values, str) else values)], True)
    pairs = list(params)
    return pairs, bool(pairs)


def _v3_base(method: str, url: str, params) -> str:
    """The V3 string to sign, without the final ``.nonce``.

    Sorting (key, value) pairs orders keys first and then each key's values,
    which is the SDK's order.
    """
    base, query = _split(url)
    query_text = "&".join(f"{k}={v}" for k, v in sorted(parse_qsl(query, keep_blank_values=True))) if query else ""
    pairs, has_form = ([], False) if method.upper() == "GET" else _form_pairs(params)
    if not has_form:  # GET, or a POST without form parameters
        return f"{base}?{query_text}" if query_text else base
    form_text = "".join([k + v for k, v in sorted(pairs)])
    if query_text:
        return f"{base}?{query_text}.{form_text}"
    return f"{base}?{form_text}"


def _digest(key, message: str) -> bytes:
    """base64 HMAC-SHA256; `key` is the token's bytes or a keyed HMAC object to copy."""
    data = message.encode("utf-8", "surrogatepass")
    if isinstance(key, bytes):
        return base64.b64encode(hmac.digest(key, data, "sha256"))
    mac = key.copy()  # keyed once per token: copying skips OpenSSL's per-call key set-up
    mac.update(data)
    return base64.b64encode(mac.digest())


def _key(token: str) -> bytes:
    if not isinstance(token, str) or not token:
        raise ValueError("a Plivo auth token must be a non-empty string")
    return token.encode("utf-8")


def v2_signature(token: str, url: str, nonce: str) -> str:
    """base64(HMAC-SHA256(token, scheme://netloc/path + nonce))."""
    return _digest(_key(token), _split(url)[0] + nonce).decode("ascii")


def v3_signature(token: str, method: str, url: str, params, nonce: str) -> str:
    """The X-Plivo-Signature-V3 value Plivo sends for this request.

    ``url`` is the full URL called, query included; ``params`` the POST form
    parameters (ignored for GET, whose parameters are in the URL).
    """
    return _digest(_key(token), f"{_v3_base(method, url, params)}.{nonce}").decode("ascii")


# --- verification ----------------------------------------------------------

def _collect(headers: Mapping) -> dict[str, str]:
    """The X-Plivo-Signature-* headers, by canonical name, found case-insensitively.

    Repeated signature headers are joined with commas; for a repeated nonce the
    first one counts.
    """
    found: dict[str, str] = {name: headers[name] for name in SIGNATURE_HEADERS if name in headers}
    if len(found) == len(headers):
        return found  # every key is a canonical signature header (what the web layer passes)
    found = {}
    for name, value in headers.items():
        canonical = _BY_LOWER.get(name.lower())
        if canonical is None:
            continue
        if canonical not in found:
            found[canonical] = value
        elif canonical not in _NONCES:
            found[canonical] = f"{found[canonical]},{value}"
    return found


def _match(found: dict[str, str], names: list[str], expected: list[bytes]) -> str | None:
    """Short name of the first header holding an expected signature, else None."""
    matched = None
    for name in names:
        for candidate in found[name].split(",", _MAX_CANDIDATES)[:_MAX_CANDIDATES]:
            given = candidate.strip().encode("utf-8", "surrogatepass")
            for want in expected:
                if hmac.compare_digest(given, want) and matched is None:
                    matched = _SHORT[name]
    return matched


class _Present:
    """The canonical names of the headers found, listed only if asked (error path)."""

    __slots__ = ("found",)

    def __init__(self, found: dict[str, str]):
        self.found = found

    def __iter__(self):
        return (name for name in SIGNATURE_HEADERS if name in self.found)


def _keys(tokens) -> tuple:
    if isinstance(tokens, str):
        tokens = (tokens,)
    return _keyed(tuple(tokens))


@functools.lru_cache(maxsize=16)
def _keyed(tokens: tuple) -> tuple:
    """A keyed HMAC-SHA256 object per token (the same few tokens on every request)."""
    if not tokens:
        raise ValueError("verify() needs at least one Plivo auth token")
    return tuple(hmac.new(_key(token), digestmod="sha256") for token in tokens)


def verify(tokens, method: str, url: str, headers: Mapping, params=()) -> str:
    """Check the Plivo signature of a request; return which header matched.

    ``tokens``: the auth tokens to accept (rotation, main account, subaccounts).
    ``url``: the full URL Plivo called, query string included.
    ``headers``: any Mapping (dict, werkzeug Headers); names are case-insensitive.
    ``params``: the POST form parameters (pairs, Mapping or MultiDict).

    A V3 header, when present, decides alone (never a fallback to V2).
    Returns "V3", "Ma-V3", "V2" or "Ma-V2"; raises MissingSignature,
    MissingNonce or BadSignature (all SignatureError).
    """
    keys = _keys(tokens)
    found = _collect(headers)
    present = _Present(found)  # only spelled out when an error is raised
    for names, nonce_header, signed_string in _SCHEMES:
        given = [name for name in names if name in found]
        if not given:
            continue
        # The first scheme present decides: a wrong V3 is a rejection, never a fall back to V2.
        nonce = found.get(nonce_header)
        if not nonce:
            raise MissingNonce(f"{nonce_header} missing or empty", url, present)
        try:
            message = signed_string(method, url, params, nonce)
        except ValueError:  # urlparse refuses the URL (e.g. a broken IPv6 host)
            raise BadSignature("URL cannot be parsed", url, present) from None
        matched = _match(found, given, [_digest(key, message) for key in keys])
        if matched is None:
            raise BadSignature("bad signature", url, present)
        return matched
    raise MissingSignature("no Plivo signature header", url, present)


def request_digest(method: str, url: str, body: bytes) -> bytes:
    """16 bytes of SHA-256 over the method, the URL's path and query, and the raw body.

    What a nonce is kept with: a V2 signature covers only the URL without its query and
    the nonce, so a used nonce is accepted again only with the very same request (a
    retry); a captured header set with another body or query is a replay. The scheme and
    host are left out: every signature already binds them to the nonce, and a retry
    reaching another port or name of the same service is still the same request.
    """
    parts = urlsplit(url)
    h = hashlib.sha256(method.upper().encode("ascii", "replace"))
    h.update(b"\x00" + urlunsplit(("", "", parts.path, parts.query, parts.fragment))
             .encode("utf-8", "surrogatepass") + b"\x00")
    h.update(body)
    return h.digest()[:16]


#: (signature headers, nonce header, the string signed), strongest scheme first.
_SCHEMES = (
    ((HEADER_V3, HEADER_MA_V3), HEADER_V3_NONCE,
     lambda method, url, params, nonce: f"{_v3_base(method, url, params)}.{nonce}"),
    ((HEADER_V2, HEADER_MA_V2), HEADER_V2_NONCE,
     lambda method, url, params, nonce: _split(url)[0] + nonce),
)


def sign_headers(token: str, method: str, url: str, params=(),
                 nonce: str | None = None) -> dict[str, str]:
    """The signature headers a real Plivo request for this call would carry."""
    if nonce is None:
        nonce = f"{secrets.randbelow(10 ** 20):020d}"
    v2 = v2_signature(token, url, nonce)
    v3 = v3_signature(token, method, url, params, nonce)
    return {
        HEADER_V2: v2,
        HEADER_MA_V2: v2,
        HEADER_V2_NONCE: nonce,
        HEADER_V3: v3,
        HEADER_MA_V3: v3,
        HEADER_V3_NONCE: nonce,
    }
