"""Refuse a request whose Host (or trusted X-Forwarded-Host / -Proto) is not a plain address.

Without PUBLIC_URL the URL a signature is checked against is built from the scheme
and the Host header, and the path that follows comes from the request line. A Host
of `example.com/message?<someone else's signed query>#` would then move the signed
query into the URL checked, while the app reads the query of the request line; a
Host ending in `/status?` would make a V2 signature made for one path pass on
another. So only `host[:port]` is taken, `host` being a DNS name or an IPv4
address, or an IPv6 address in brackets (`[::1]:8000`), and only `http` or `https`
as the scheme a trusted proxy reports. Anything else is a `400` before any
signature is looked at, and so is an HTTP/1.1 request without a Host, or an
absolute-form request line (`POST http://other.example/message`) naming another
host than its Host.

`HostCheck` wraps the Flask app inside werkzeug's ProxyFix, so it sees the Host
and the scheme that the app will use: the request's own, or the trusted proxy's
X-Forwarded-Host and X-Forwarded-Proto. With a trusted proxy the Host the proxy
sent is checked too. One precompiled regex per request: about half a microsecond.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable

__all__ = ["HostCheck", "refusal", "valid_host", "valid_scheme"]

#: A DNS name or an IPv4 address (letters, digits, `-`, `_` and dots, not first; no empty
#: label, checked below), or an IPv6 address in brackets (checked below); an optional port
#: of 1 to 5 digits. No `/`, `?`, `#`, `@`, `%`, `\`, space or comma can pass. One character
#: class each, so a hostile Host costs linear time (a few microseconds at MAX_HOST).
_HOST = re.compile(r"(?:[A-Za-z0-9_-][A-Za-z0-9_.-]{0,252}|(\[[0-9A-Fa-f:.]{2,45}\]))(?::[0-9]{1,5})?")
#: Longest Host taken: a 253-character DNS name and a port.
MAX_HOST = 260
SCHEMES = frozenset({"http", "https"})


def valid_host(host: str) -> bool:
    """True for `host[:port]` or `[v6]:port`, the only forms a Host header may take here."""
    if len(host) > MAX_HOST:
        return False
    match = _HOST.fullmatch(host)
    if match is None or ".." in host:
        return False
    if match.group(1) is not None:  # rare: an IPv6 literal, checked for real
        try:
            ipaddress.IPv6Address(match.group(1)[1:-1])
        except ValueError:
            return False
    return True


def valid_scheme(scheme: str) -> bool:
    return scheme.lower() in SCHEMES


_HEADERS = [("Content-Type", "text/plain; charset=utf-8")]


class HostCheck:
    """WSGI middleware: a `400` with a one-line reason (`bad Host header`, `missing Host
    header`, `bad X-Forwarded-Host header`, `bad X-Forwarded-Proto header`, `request line
    names another host`) unless the Host and the scheme the app will use are plain."""

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        problem = refusal(environ)
        if problem is None:
            return self.app(environ, start_response)
        body = f"{problem}\n".encode("ascii")
        start_response("400 Bad Request", [*_HEADERS, ("Content-Length", str(len(body)))])
        return [body]


def refusal(environ: dict) -> str | None:
    """Why the request's Host, forwarded host or scheme cannot be used; None when they can."""
    host = environ.get("HTTP_HOST")
    orig = environ.get("werkzeug.proxy_fix.orig")  # ProxyFix's: what the last proxy sent
    sent = host if orig is None else orig.get("HTTP_HOST")
    if sent is None:
        # HTTP/1.1 requires a Host (RFC 9112); without one (HTTP/1.0) the server's own
        # address is used, which is safe.
        if environ.get("SERVER_PROTOCOL") != "HTTP/1.0":
            return "missing Host header"
    elif not valid_host(sent):
        return "bad Host header"
    if host != sent and host is not None and not valid_host(host):
        return "bad X-Forwarded-Host header"
    scheme = environ.get("wsgi.url_scheme", "http")
    if scheme not in SCHEMES and not valid_scheme(scheme):
        return "bad X-Forwarded-Proto header"
    uri = environ.get("RAW_URI") or environ.get("REQUEST_URI") or "/"
    if uri[0] != "/" and "://" in uri:
        # Absolute form (`POST http://host/message`): its authority names the host (RFC 9112),
        # but the URL checked is built from the Host header; the two must agree.
        authority = re.split(r"[/?#]", uri.split("://", 1)[1], maxsplit=1)[0]
        if sent is None or authority.lower() != sent.lower():
            return "request line names another host"
    return None
