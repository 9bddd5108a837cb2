"""The request pipeline, without Flask: verify -> parse -> decide -> render.

The web layer turns a Flask request into an `HttpRequest` and an `Answer`
back into a response; everything between is here, so it can be called the
same way from routes, CLI commands and tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from . import plivoxml, signature
from .inbound import Inbound, InboundError, check_content_type, parse_form, parse_message
from .rules import Decision, RuleSet, RulesHolder, decide

log = logging.getLogger("app.service")

TEXT = "text/plain; charset=utf-8"
#: Plivo accepts XML replies to these; WhatsApp (and anything new) needs the Message API.
XML_TYPES = frozenset({"sms", "mms"})


@dataclass(slots=True)
class HttpRequest:
    method: str
    url: str  # the URL Plivo called, query string included
    query: bytes
    body: bytes
    content_type: str | None
    headers: Mapping[str, str]


@dataclass(slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str = TEXT


def text_answer(status: int, message: str) -> Answer:
    return Answer(status, (message + "\n").encode("utf-8"))


class Rejected(Exception):
    """A request that gets a short error answer instead of being processed."""

    def __init__(self, answer: Answer):
        super().__init__(answer.status)
        self.answer = answer


def called_url(scheme: str, host: str, raw_uri: str, public_url: str | None) -> str:
    """The URL Plivo called: `PUBLIC_URL` or scheme://host, then the path and query as sent."""
    if raw_uri.startswith(("http://", "https://")):  # absolute-form request line
        parts = urlsplit(raw_uri)
        raw_uri = parts.path + ("?" + parts.query if parts.query else "")
    if not raw_uri.startswith("/"):
        raw_uri = "/" + raw_uri
    return (public_url or f"{scheme}://{host}") + raw_uri


class Responder:
    """Answers inbound messages and delivery reports for one app."""

    def __init__(self, *, tokens: Sequence[str], verify: bool, public_url: str | None,
                 holder: RulesHolder, clock: Callable[[], datetime] | None = None):
        self.tokens = tuple(tokens)
        self.verify = verify
        self.public_url = public_url
        self.callback_url = f"{public_url}/status" if public_url else None
        self.holder = holder
        self.clock = clock

    # -- shared steps ------------------------------------------------------------
    def _authentic(self, req: HttpRequest) -> tuple[list, list]:
        """(query pairs, body pairs) of a well-formed request that Plivo signed.

        Raises `Rejected` with the short answer otherwise: 400/413 for a malformed
        request, 403 for a missing or wrong signature.
        """
        try:
            query = parse_form(req.query)
            body: list = []
            if req.method == "POST":
                check_content_type(req.content_type, req.body)
                body = parse_form(req.body)
        except InboundError as exc:
            raise Rejected(text_answer(exc.status, str(exc))) from None
        if self.verify:
            try:
                signature.verify(self.tokens, req.method, req.url, req.headers, body)
            except signature.SignatureError as exc:
                hint = "" if self.public_url else "; if Plivo calls another URL, set PUBLIC_URL or TRUSTED_PROXIES"
                log.warning("signature rejected: %s%s", exc.reason, hint,
                            extra={"checked_url": exc.url, "headers_present": list(exc.present)})
                what = "missing" if isinstance(exc, signature.MissingSignature) else "invalid"
                raise Rejected(text_answer(403, f"{what} Plivo signature")) from None
        return query, body

    # -- endpoints -----------------------------------------------------------------
    def handle_message(self, req: HttpRequest) -> Answer:
        try:
            query, body = self._authentic(req)
            msg = parse_message(body + query)  # body values win over the query's
        except Rejected as exc:
            return exc.answer
        except InboundError as exc:
            return text_answer(exc.status, str(exc))
        ruleset = self.holder.current()
        if ruleset is None:
            log.error("message not answered: no rules loaded", extra={"uuid": msg.uuid})
            return text_answer(503, "rules are not loaded; try again")
        return self.answer(msg, ruleset)[1]

    def answer(self, msg: Inbound, ruleset: RuleSet, now: datetime | None = None) -> tuple[Decision, Answer]:
        """Decide and render the XML answer for one parsed message."""
        if now is None and self.clock is not None:
            now = self.clock()
        decision = decide(ruleset, msg, now)
        if msg.type in XML_TYPES:
            messages = [plivoxml.Message(o.src, o.dst, o.text, self.callback_url) for o in decision.outgoing]
            body = plivoxml.render(messages)
        else:
            body = plivoxml.EMPTY
            if decision.outgoing:
                log.warning("%d message(s) not sent: %s replies need the Message API, not available yet",
                            len(decision.outgoing), msg.type, extra={"uuid": msg.uuid})
        if log.isEnabledFor(logging.INFO):
            log.info("message answered", extra={
                "uuid": msg.uuid, "type": msg.type, "rules": list(decision.matched),
                "messages": len(decision.outgoing) if msg.type in XML_TYPES else 0,
            })
        return decision, Answer(200, body, plivoxml.CONTENT_TYPE)

    def handle_status(self, req: HttpRequest) -> Answer:
        """A delivery report: verified and logged (storing them arrives with the database)."""
        try:
            query, body = self._authentic(req)
        except Rejected as exc:
            return exc.answer
        params = dict(query)
        params.update(body)
        if not params.get("MessageUUID"):
            return text_answer(400, "missing MessageUUID")
        log.info("delivery report", extra={
            "uuid": params.get("MessageUUID"), "status": params.get("Status", ""),
            "error_code": params.get("ErrorCode", ""),
        })
        return text_answer(200, "ok")
