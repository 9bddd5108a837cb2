"""Why a Plivo signature did not verify: the URL, or the token?

Only called for a request that was already refused (never for good requests).
A signature covers the URL Plivo called, so a service that reconstructs
another URL (http behind a TLS proxy, an internal Host, a PUBLIC_URL that is
not the one in the Plivo application, a trailing `/` lost on the way) refuses
every request although its token is right. The request's own signature is
tried against a few such nearby URLs with the configured tokens: if one
verifies, the URL is the problem and the hint names the setting that fixes
it. If none does, the token is likelier wrong, unless the URL checked cannot
be the one Plivo calls: without PUBLIC_URL, a Host that is an IP address or an
internal name (a proxy in front that passes no X-Forwarded-Host sends its own
Host, and the real one cannot be tried) makes PUBLIC_URL the likelier fix.

Hints never hold a token or a signature, nor a query string (a GET webhook
carries the numbers and the text there).

A hint costs up to MAX_CANDIDATES x tokens HMACs over a body of up to
MAX_CONTENT_LENGTH, and a forged signature costs its sender nothing; so a
process works one out at most once per HINT_INTERVAL seconds (`Throttle`), and
logs the other refusals without one: a flood of forged requests costs what it
would without hints.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from . import signature
from .hostcheck import valid_host, valid_scheme

#: Nearby URLs tried at most, per refused request (each costs one HMAC per token and header).
MAX_CANDIDATES = 12
#: Seconds between two hints worked out by one process (the first refusal gets one at once).
HINT_INTERVAL = 10.0
TOKEN_HINT = ("the token is likelier wrong than the URL (no nearby URL verifies either): PLIVO_AUTH_TOKEN "
              "must be the auth token of the Plivo account or subaccount that owns the number")


@dataclass(frozen=True, slots=True)
class Hint:
    likely: str  # "url" or "token"
    message: str  # one sentence for the log
    matching_url: str | None = None  # scheme://host/path that verifies, when the URL is the problem


class Throttle:
    """At most one hint per `interval` seconds: `due()` says whether one may be worked out
    now, and counts it. Thread-safe; `clock` is monotonic seconds (injectable for tests)."""

    def __init__(self, interval: float = HINT_INTERVAL, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None

    def due(self) -> float | None:
        """None when a hint may be worked out now (the next is then due `interval` seconds
        later); else the seconds since the last one."""
        now = self.clock()
        with self._lock:
            if self._last is not None and now - self._last < self.interval:
                return now - self._last
            self._last = now
            return None


def explain(tokens: Sequence[str], method: str, url: str, headers: Mapping[str, str], params,
            *, public_url: str | None, environ: Mapping | None) -> Hint:
    """Which is likelier wrong for a request whose signature did not verify against `url`."""
    checked = _no_query(url)
    try:
        tries = candidates(url, public_url, environ)
    except ValueError:  # urlsplit refuses it, e.g. a Host of "[": nothing nearby to try
        return Hint("url", f"{checked} cannot be parsed as a URL (a malformed Host header?)")
    for candidate, fix in tries:
        try:
            signature.verify(tokens, method, candidate, headers, params)
        except (signature.SignatureError, ValueError):
            continue
        matching = _no_query(candidate)
        return Hint("url", f"the URL is likelier wrong than the token: the signature matches {matching}, "
                           f"but {checked} was checked; {fix}", matching)
    inner = None if public_url else _internal_host(urlsplit(url).hostname or "")
    if inner is not None:
        base = checked[:len(checked) - len(urlsplit(checked).path)]
        return Hint("url", f"the URL is likelier wrong than the token: {checked} was checked, and {inner}, "
                           "seldom the address Plivo calls (a proxy in front that passes no X-Forwarded-Host?): "
                           "set PUBLIC_URL to the base of the URL in the Plivo application (as "
                           f"https://sms.example.com); if Plivo does call {base}, PLIVO_AUTH_TOKEN is wrong")
    return Hint("token", TOKEN_HINT)


#: Name endings of hosts only a private network knows.
_INTERNAL_SUFFIXES = (".local", ".localdomain", ".internal", ".lan", ".home.arpa", ".intranet", ".corp",
                      ".svc", ".cluster.local", ".localhost")


def _internal_host(host: str) -> str | None:
    """Why `host` (a URL's hostname) is unlikely to be the one in the Plivo application, or None
    when it may well be (a public name)."""
    host = host.strip("[]").rstrip(".").lower()
    if not host:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        if address.is_loopback:
            return f"{host} is a loopback address"
        if address.is_private or address.is_link_local or address.is_unspecified:
            return f"{host} is a private address"
        return f"{host} is an IP address, not a name"
    if host == "localhost":
        return "localhost is a loopback name"
    if "." not in host or host.endswith(_INTERNAL_SUFFIXES):
        return f"{host} is an internal name"
    return None


def candidates(url: str, public_url: str | None, environ: Mapping | None) -> list[tuple[str, str]]:
    """(nearby URL, the setting that would make the service check it), likeliest first.

    `url` is the URL checked: PUBLIC_URL, or the scheme and Host the server saw,
    then the request path and query as received. `environ` is the WSGI environ
    (None: only the URL itself is varied). A URL that cannot be parsed raises ValueError.
    """
    parts = urlsplit(url)
    base = public_url if public_url and url.startswith(public_url) else f"{parts.scheme}://{parts.netloc}"
    rest = url[len(base):]
    env = environ or {}
    scheme = env.get("wsgi.url_scheme") or parts.scheme
    host = env.get("HTTP_HOST")
    bases: list[tuple[str, str]] = []  # (base, fix)

    def use(other: str, why: str = "") -> None:
        if public_url:
            bases.append((other, f"PUBLIC_URL is {public_url}, but Plivo calls {other}{why}: "
                                 f"set PUBLIC_URL={other}"))
        else:
            bases.append((other, f"Plivo calls {other}{why}: set PUBLIC_URL={other}"))

    if host is not None and not valid_host(host):
        host = None
    # Only plain values are tried (and named in the hint): a forwarded header nobody trusts
    # may hold anything, a query string included.
    protos = [p for p in _values(env.get("HTTP_X_FORWARDED_PROTO")) if valid_scheme(p)]
    hosts = [h for h in _values(env.get("HTTP_X_FORWARDED_HOST")) if valid_host(h)]
    if protos or hosts:
        forwarded = f"{protos[0] if protos else scheme}://{hosts[0] if hosts else host or parts.netloc}"
        if public_url:
            use(forwarded, " (as X-Forwarded-Proto/Host say)")
        else:
            proxies = max(len(protos), len(hosts))
            bases.append((forwarded, f"a proxy in front sets X-Forwarded-Proto/Host: set "
                                     f"TRUSTED_PROXIES={proxies} (the proxies that set them), "
                                     f"or PUBLIC_URL={forwarded}"))
    use(_other_scheme(base))
    if public_url:
        if host:
            for s in (scheme, _other_scheme_name(scheme)):
                use(f"{s}://{host}", " (the request's Host)")

    toggled = _toggle_slash(rest)
    slash = ("Plivo signed the path with a trailing '/' that the request lost on the way"
             if toggled.partition("?")[0].endswith("/") else
             "Plivo signed the path without the trailing '/' the request has here")
    slash += "; make the URL in the Plivo application and the path this service receives agree"
    # The likeliest first: the same path on another base, then the other path on any base.
    tries = [(b + rest, fix) for b, fix in bases]
    tries += [(b + toggled, f"{fix}; {slash}" if fix else slash) for b, fix in [(base, "")] + bases]
    found: list[tuple[str, str]] = []
    seen = {url}
    for candidate, fix in tries:
        if candidate not in seen:
            seen.add(candidate)
            found.append((candidate, fix))
    return found[:MAX_CANDIDATES]


def _values(header: str | None) -> list[str]:
    """The values of a comma-separated X-Forwarded-* header, outermost proxy first."""
    return [v.strip() for v in header.split(",") if v.strip()] if header else []


def _other_scheme_name(scheme: str) -> str:
    return "http" if scheme == "https" else "https"


def _other_scheme(base: str) -> str:
    scheme, sep, rest = base.partition("://")
    return _other_scheme_name(scheme) + sep + rest


def _toggle_slash(rest: str) -> str:
    """The path and query with the path's trailing '/' added or removed."""
    path, sep, query = rest.partition("?")
    if path.endswith("/") and len(path) > 1:
        return path[:-1] + sep + query
    return path + "/" + sep + query


def _no_query(url: str) -> str:
    return url.split("?", 1)[0]
