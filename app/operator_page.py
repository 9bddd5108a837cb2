"""The operator page (§11), at `/operator/`: signing in and out. The conversation pages come later.

Views are thin; the decisions (may this session go on, may this address try again, is this a
safe place to go back to) are plain functions below them. The page is off (every URL 404)
until an operator exists. Sessions are Flask's cookie signed with SECRET_KEY, holding only the
operator's name, the last-activity time and the CSRF token; they end after IDLE of inactivity,
on sign-out, and when the operator is removed. Failed sign-ins are kept in the database so the
limits hold across gunicorn workers and hosts; a success does not erase them (the simplest
sound choice: a correct guess never resets an attacker's count for the other names).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, redirect, render_template, request, session, url_for

from .operators import check_password

log = logging.getLogger("app.operator")

bp = Blueprint("operator", __name__, url_prefix="/operator", static_folder="static/operator",
               static_url_path="/static")

#: A session unused this long has ended; the next request signs in again.
IDLE = timedelta(minutes=30)
#: The window of the sign-in limits, and the limits (§11).
WINDOW = timedelta(minutes=15)
MAX_BY_NAME = 5
MAX_BY_ADDRESS = 20

HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self' data:; "
                                "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# -- plain functions ------------------------------------------------------------------------------
#: The hash an unknown name's password is checked against, so an unknown name takes as long as a
#: known one. Made once by `hash_password` (werkzeug's scrypt, the parameters every operator's
#: hash has) from a random password nobody kept: nothing ever matches it.
DUMMY_HASH = ("scrypt:32768:8:1$JCElchTp89EDOt32$fbe2e9fd835a3d32bdfc0867767aeffb73018060ee71a423f73adb28e93bb807"
              "45659fb2186fa2a673837e641e331f2e751f3c9f0cfbe5b66c9547ee055a445f")


def password_matches(stored_hash: str | None, password: str) -> bool:
    """True when `password` fits `stored_hash`; the same scrypt work is done when there is none."""
    if stored_hash is None:
        check_password(DUMMY_HASH, password)
        return False
    return check_password(stored_hash, password)


def safe_next(target: str | None) -> str | None:
    """`target` when it is a path on this site (`/operator/...`), else None: no scheme, no host,
    no `//host` or `/\\host` that a browser would take for another site."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return None
    if "\\" in target or any(ord(c) < 0x20 for c in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


def limited(by_name: int, by_address: int) -> bool:
    """True when the recent failures forbid another attempt."""
    return by_name >= MAX_BY_NAME or by_address >= MAX_BY_ADDRESS


def session_name(data, store, now: datetime, idle: timedelta) -> str | None:
    """The operator a session belongs to, or None: never signed in, idle too long, or removed."""
    name, seen = data.get("operator"), data.get("seen")
    if not isinstance(name, str) or not isinstance(seen, (int, float)):
        return None
    if now.timestamp() - seen > idle.total_seconds() or now.timestamp() < seen - 60:
        return None
    if store.operator_hash(name) is None:
        return None
    return name


def csrf_token() -> str:
    """This session's CSRF token, made when first needed."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_ok(sent: str | None) -> bool:
    token = session.get("csrf")
    return isinstance(token, str) and isinstance(sent, str) and hmac.compare_digest(token.encode(), sent.encode())


# -- wiring ---------------------------------------------------------------------------------------
def _now() -> datetime:
    clock = current_app.config.get("CLOCK")
    now = clock() if clock is not None else datetime.now(timezone.utc)
    return now if now.tzinfo is not None else now.replace(tzinfo=timezone.utc)


def _store():
    return current_app.extensions["responder"].store


def _idle() -> timedelta:
    return current_app.config.get("OPERATOR_IDLE", IDLE)


@bp.record_once
def _cookie_flags(state) -> None:
    """The session cookie: not readable by scripts, not sent with cross-site posts, and only
    over https when the service is public over https."""
    config = state.app.config
    config["SESSION_COOKIE_HTTPONLY"] = True
    config["SESSION_COOKIE_SAMESITE"] = "Lax"
    config["SESSION_COOKIE_SECURE"] = (config.get("PUBLIC_URL") or "").lower().startswith("https:")


def _under_page() -> bool:
    """True when this request is for the operator page, routed or not (an unknown path, a
    method no view takes)."""
    return request.path == "/operator" or request.path.startswith("/operator/")


@bp.before_app_request
def _page_is_on():
    """404 for every `/operator...` URL and method until an operator exists (an app-wide hook:
    it runs before Flask raises a routing 404 or 405); then a POST carries this session's CSRF
    token or is 400."""
    if not _under_page():
        return
    store = _store()
    if store is None or not store.has_operators():
        abort(404)
    if not current_app.config.get("SECRET_KEY"):
        abort(503, "the operator page needs SECRET_KEY")
    if request.method == "POST" and request.url_rule is not None and not csrf_ok(request.form.get("csrf")):
        abort(400, "the form is out of date or was not sent from this page; reload it and try again")


@bp.after_app_request
def _headers(response: Response) -> Response:
    """The strict headers on every answer under `/operator`, errors and unknown paths too."""
    if _under_page():
        for name, value in HEADERS.items():
            response.headers[name] = value
    return response


def _signed_in() -> str | None:
    """The signed-in operator's name, the session's last activity moved to now; None otherwise."""
    now = _now()
    name = session_name(session, _store(), now, _idle())
    if name is None:
        session.pop("operator", None)
        session.pop("seen", None)
        return None
    session["seen"] = now.timestamp()
    return name


# -- views ----------------------------------------------------------------------------------------
@bp.get("/")
def home():
    name = _signed_in()
    if name is None:
        return redirect(url_for("operator.login", next=request.full_path.rstrip("?")))
    return render_template("operator/home.html", name=name, csrf=csrf_token())


@bp.get("/login")
def login():
    if _signed_in() is not None:
        return redirect(safe_next(request.args.get("next")) or url_for("operator.home"))
    return render_template("operator/login.html", csrf=csrf_token(), next=safe_next(request.args.get("next")),
                           problem=None)


@bp.post("/login")
def sign_in():
    name = request.form.get("name", "")
    password = request.form.get("password", "")
    target = safe_next(request.form.get("next"))
    address = request.remote_addr or "unknown"
    store, now = _store(), _now()
    by_name, by_address = store.failures_since(name, address, now - WINDOW)
    if limited(by_name, by_address):
        log.warning("operator sign-in refused: too many failures lately")
        return Response("too many failed sign-ins; try again in 15 minutes\n", 429,
                        content_type="text/plain; charset=utf-8", headers={"Retry-After": "900"})
    if not password_matches(store.operator_hash(name), password):
        store.record_failure(name, address, now, WINDOW)
        log.warning("operator sign-in failed (%d failures from this address in the window)", by_address + 1)
        return render_template("operator/login.html", csrf=csrf_token(), next=target,
                               problem="Wrong name or password.")
    session.clear()  # a new session: nothing from before sign-in carries over (no fixation)
    session["operator"] = name
    session["seen"] = now.timestamp()
    csrf_token()
    log.info("operator signed in")
    return redirect(target or url_for("operator.home"), 303)


@bp.get("/logout")
def sign_out_form():
    """Signing out is a POST (a link or a prefetch never signs anyone out): the form is on the home page."""
    return redirect(url_for("operator.home"), 303)


@bp.post("/logout")
def sign_out():
    session.clear()
    return redirect(url_for("operator.login"), 303)

