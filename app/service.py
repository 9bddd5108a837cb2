"""The request pipeline, without Flask: verify -> parse -> claim -> decide -> record -> answer.

The web layer turns a Flask request into an `HttpRequest` and an `Answer`
back into a response; everything between is here, so it can be called the
same way from routes, CLI commands and tests. State lives behind `app.store`,
which this module calls with plain values.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote, urlsplit

from . import metrics, plivoxml, policy, signature, signature_hint, smsenc
from .inbound import Inbound, InboundError, check_content_type, parse_form, parse_message
from .outbound import webhook as webhook_body
from .rules import Decision, RuleSet, RulesHolder, decide
from .store import Claim, Needs, NumberState, Record, Replayed, Store, Stored, Unavailable, as_utc, utcnow
from .store.outbox import HELD, PENDING

log = logging.getLogger("app.service")

TEXT = "text/plain; charset=utf-8"
#: Why a text that needs the Message API (WhatsApp, media) was not queued.
NO_API = "PLIVO_AUTH_ID is not set (the Message API is needed)"
NO_WEBHOOK_SECRET = "WEBHOOK_SECRET is not set"
#: Longest WhatsApp text Plivo takes in one message.
MAX_WHATSAPP = 4096
#: The most Message API requests one inbound message causes: replies, forwards, the pieces
#: of a long text and each media file count, one per destination. Webhook calls do not
#: (one per matching rule, to your own systems).
MAX_API_REQUESTS = 10
#: Why (part of) a text was not sent: past one of these bounds.
API_CAP = f"over the {MAX_API_REQUESTS} Message API requests one message may cause"
XML_CAP = f"over the {plivoxml.MAX_MESSAGES} Messages one XML answer carries"
_V2_HEADERS = frozenset({signature.HEADER_V2, signature.HEADER_MA_V2, signature.HEADER_V2_NONCE})
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
    # The WSGI environ it came from: what a recording writes, and, for a refused signature
    # only, the Host and X-Forwarded-* headers that suggest which URL Plivo signed.
    environ: Mapping | None = None


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


@dataclass(slots=True)
class MessageWork:
    """One new message's work, handed to the store (`Store.message`): what the rules decided,
    the answer rendered for a fresh state, and `finish`, which the store calls inside its
    transaction with the state it read. What `finish` settled is kept here for the log
    and the metrics once the transaction has committed."""

    responder: Responder
    msg: Inbound
    ruleset: RuleSet
    now: datetime
    kind: str | None
    via: str | None
    decision: Decision | None
    fresh: tuple[policy.Plan, Answer]
    claim: Claim
    needs: Needs
    plan: policy.Plan | None = None
    change: str | None = None
    queued: int = 0

    def finish(self, state: NumberState) -> tuple[Record, Stored]:
        """The rows to write and the answer, for `state` (quick and pure: it runs inside the
        store's transaction, maybe on another thread, and may run again if it is retried)."""
        if not state.opted_out and (self.needs.most is None or state.recent_replies <= self.needs.most):
            plan, answer = self.fresh
        else:
            plan, answer = self.responder.render(self.msg, self.ruleset, self.kind, self.via, self.decision, state)
        self.plan = plan
        self.change = _real_change(plan, self.msg.from_ in state.opted_out)
        record = _record(self.msg, self.decision, plan, answer, self.ruleset, self.now, self.responder.hold)
        self.queued = len(record.outbox)
        return record, _to_stored(answer)


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
                 holder: RulesHolder, store: Store | None = None,
                 clock: Callable[[], datetime] | None = None, api: bool = False,
                 webhooks: bool = False, on_queued: Callable[[], None] | None = None,
                 on_answered: Callable[[HttpRequest, Answer, RuleSet, datetime], object] | None = None,
                 hold: bool = False):
        self.tokens = tuple(tokens)
        self.verify = verify
        self.public_url = public_url
        self.callback_url = f"{public_url}/status" if public_url else None
        self.holder = holder
        self.store = store
        self.clock = clock
        self.api = api                # PLIVO_AUTH_ID is set: WhatsApp and media replies are queued
        self.webhooks = webhooks      # WEBHOOK_SECRET is set: webhook calls are queued
        self.hold = hold              # OUTBOX_SENDER=hold: queued items are written held, never sent
        self.on_queued = on_queued    # wakes this process's outbox sender
        # Gets every message answered (not the refused), with the time the rules decided at: RECORD_DIR.
        self.on_answered = on_answered
        # One app per worker process: at most one signature hint per HINT_INTERVAL in each.
        self.hints = signature_hint.Throttle()

    # -- shared steps ------------------------------------------------------------
    def _authentic(self, req: HttpRequest) -> tuple[list, list, tuple[str, ...], bytes]:
        """(query pairs, body pairs, nonces, the request's digest) of a well-formed request
        that Plivo signed.

        Raises `Rejected` with the short answer otherwise: 400/413 for a malformed
        request, 403 for a missing or wrong signature. The nonces are every
        signature nonce the request carries (V2 and V3 may differ): each is claimed with
        the digest of the method, path with query and body, so no header set can be used
        again but by the very same request (a retry). Empty when signatures are not checked.
        """
        try:
            query = parse_form(req.query)
            body: list = []
            if req.method == "POST":
                check_content_type(req.content_type, req.body)
                body = parse_form(req.body)
        except InboundError as exc:
            raise Rejected(text_answer(exc.status, str(exc))) from None
        nonces: tuple[str, ...] = ()
        digest = b""
        if self.verify:
            try:
                scheme = signature.verify(self.tokens, req.method, req.url, req.headers, body)
            except signature.SignatureError as exc:
                self._log_refused(req, body, exc)
                what = "missing" if isinstance(exc, signature.MissingSignature) else "invalid"
                metrics.rejected(what)
                raise Rejected(text_answer(403, f"{what} Plivo signature")) from None
            nonces = self._verified_nonces(req, body, scheme)
            digest = signature.request_digest(req.method, req.url, req.body)
        return query, body, nonces, digest

    def _log_refused(self, req: HttpRequest, body: list, exc: signature.SignatureError) -> None:
        """One warning for a refused signature; for a wrong one, whether the URL or the token
        is likelier wrong (worked out here, off the path of good requests, and at most once
        per HINT_INTERVAL: each costs a dozen HMACs, and forged requests cost nothing to send)."""
        hint, likely = "", {}
        if isinstance(exc, signature.BadSignature):
            since = self.hints.due()
            if since is None:
                why = signature_hint.explain(self.tokens, req.method, req.url, req.headers, body,
                                             public_url=self.public_url, environ=req.environ)
                hint, likely = f"; {why.message}", {"likely_wrong": why.likely}
            else:
                hint = f"; hint skipped, one was logged {since:.1f} s ago"
        log.warning("signature rejected: %s%s", exc.reason, hint,
                    extra={"checked_url": exc.url.split("?", 1)[0],  # the query holds numbers, text
                           "headers_present": list(exc.present), **likely})

    def _verified_nonces(self, req: HttpRequest, body: list, scheme: str) -> tuple[str, ...]:
        """The nonce of the scheme that matched, and the V2 nonce too when V2 headers that
        also verify came with a V3 signature under another nonce: a request whose V2 headers
        were valid must not be replayable by sending those alone with another body. A nonce
        no signature covers is not kept."""
        if "V2" in scheme:
            return (req.headers[signature.HEADER_V2_NONCE],)
        v3 = req.headers[signature.HEADER_V3_NONCE]
        v2 = req.headers.get(signature.HEADER_V2_NONCE)
        if not v2 or v2 == v3:
            return (v3,)
        only_v2 = {k: v for k, v in req.headers.items() if k in _V2_HEADERS}
        try:
            signature.verify(self.tokens, req.method, req.url, only_v2, body)
        except signature.SignatureError:
            return (v3,)
        return (v3, v2)

    def _now(self) -> tuple[datetime | None, datetime]:
        """(the clock the rules see, None for the real one; now in UTC for the database)."""
        if self.clock is None:
            return None, utcnow()
        local = self.clock()
        return local, as_utc(local)

    # -- endpoints -----------------------------------------------------------------
    def handle_message(self, req: HttpRequest) -> Answer:
        try:
            query, body, nonces, digest = self._authentic(req)
            msg = parse_message(body + query)  # body values win over the query's
        except Rejected as exc:
            return exc.answer
        except InboundError as exc:
            return text_answer(exc.status, str(exc))
        ruleset = self.holder.current()
        if ruleset is None:
            log.error("message not answered: no rules loaded", extra={"uuid": msg.uuid})
            return text_answer(503, "rules are not loaded; try again")
        local, now = self._now()
        if local is None and self.on_answered is not None:
            local = now.replace(tzinfo=timezone.utc)  # recorded: the rules see the very time written down
        if self.store is None:
            plan, decision, answer = self.answer(msg, ruleset, local)
            metrics.decided(_rules(decision, plan), plan.change[0] if plan.change else None)
            return self._answered(req, answer, ruleset, local)
        try:
            answer, fresh = self._recorded(msg, ruleset, nonces, digest, local, now)
        except Replayed:
            metrics.rejected("replayed")
            log.warning("replayed signature refused", extra={"uuid": msg.uuid})
            return text_answer(403, "replayed Plivo signature")
        except Unavailable as exc:
            log.error("message not recorded, answered 503 so Plivo retries: %s", exc, extra={"uuid": msg.uuid})
            return text_answer(503, "the message could not be recorded; try again")
        # A retry gets the stored answer of a decision made earlier, at another time: recording
        # it again would write a file that may not replay to that answer. The first is kept.
        return self._answered(req, answer, ruleset, local) if fresh else answer

    def _answered(self, req: HttpRequest, answer: Answer, ruleset: RuleSet, local: datetime | None) -> Answer:
        """`answer`, handed to `on_answered` first with the time the rules decided at."""
        if self.on_answered is not None:
            self.on_answered(req, answer, ruleset, local)
        return answer

    def _recorded(self, msg: Inbound, ruleset: RuleSet, nonces: tuple[str, ...], digest: bytes,
                  local: datetime | None, now: datetime) -> tuple[Answer, bool]:
        """Answer a message once: a known MessageUUID gets its stored answer, byte for byte.
        `local`: the clock the rules see (None: the real one); `now`: the same in naive UTC.
        (the answer, whether it was decided now rather than stored before).

        A MessageUUID decided so long ago that its message is pruned (it is remembered for
        REPLAY_DAYS) is not decided again: it gets an empty `<Response/>` and nothing is sent."""
        work = self._prepare(msg, ruleset, nonces, digest, local, now)
        stored, fresh = self.store.message(work)
        if stored is None:
            metrics.repeated()
            log.info("message delivered again after its record was pruned: empty answer, nothing sent",
                     extra={"uuid": msg.uuid})
            return Answer(200, plivoxml.EMPTY, plivoxml.CONTENT_TYPE), False
        if fresh:
            metrics.decided(_rules(work.decision, work.plan), work.change)
            self._log_answered(msg, work.decision, work.plan)
            if work.queued and self.on_queued is not None:
                self.on_queued()
        else:
            metrics.repeated()
            log.info("message delivered again: stored answer sent", extra={"uuid": msg.uuid})
        return _from_stored(stored), fresh

    def _prepare(self, msg: Inbound, ruleset: RuleSet, nonces: tuple[str, ...], digest: bytes,
                 local: datetime | None, now: datetime) -> MessageWork:
        """The rules run, and the answer rendered for a sender with no opt-out and no replies
        yet, before the store's transaction: inside it, this answer is used as it is unless
        the state says otherwise."""
        kind, via, decision = self.decide(msg, ruleset, local)
        replies = 0 if decision is None else sum(o.kind == "reply" for o in decision.outgoing)
        limit = ruleset.limit
        limited = limit is not None and replies > 0
        return MessageWork(
            responder=self, msg=msg, ruleset=ruleset, now=now, kind=kind, via=via, decision=decision,
            fresh=self.render(msg, ruleset, kind, via, decision, NumberState()),
            claim=Claim(uuid=msg.uuid, nonces=nonces, sender=msg.from_, to=msg.to, now=now, digest=digest),
            needs=Needs(policy.numbers_to_check(msg, decision), now - limit.per if limited else None,
                        limit.count - replies if limited else None),
        )

    def _log_answered(self, msg: Inbound, decision: Decision | None, plan: policy.Plan,
                      warn: bool = True) -> None:
        unsent = [h["reason"] for h in plan.held if h["reason"] in (NO_API, NO_WEBHOOK_SECRET)]
        if unsent and warn:
            log.warning("%d message(s) or call(s) not sent: %s", len(unsent), "; ".join(sorted(set(unsent))),
                        extra={"uuid": msg.uuid})
        if log.isEnabledFor(logging.INFO):
            log.info("message answered", extra={
                "uuid": msg.uuid, "type": msg.type, "rules": _rules(decision, plan),
                "compliance": plan.compliance, "possible_optout": plan.possible_optout, "messages": len(plan.outgoing),
                "api": sum(v == "api" for v in plan.via), "webhooks": len(plan.webhooks), "held": len(plan.held),
            })

    def decide(self, msg: Inbound, ruleset: RuleSet, now: datetime | None):
        """(compliance kind, how it was said, the rules' decision).

        The rules are not run for an opt-out or help keyword. An opt-in keyword only acts
        for a sender who opted out (the state decides, later), so the rules' answer is kept
        ready for everyone else: "Yes" is an ordinary answer from a subscribed customer.
        """
        kind, via = ruleset.compliance.classify(msg)
        if kind is not None and kind != policy.OPTIN:
            return kind, via, None
        return kind, via, decide(ruleset, msg, now)

    def render(self, msg: Inbound, ruleset: RuleSet, kind, via, decision: Decision | None,
               state: NumberState) -> tuple[policy.Plan, Answer]:
        """What is sent, given the state, and the XML answer that says so."""
        plan = policy.plan(msg, ruleset.compliance, ruleset.limit, kind, via, decision, state)
        self._route(msg, plan, decision)
        if msg.type in XML_TYPES and "xml" in plan.via:
            body = plivoxml.render([plivoxml.Message(o.src, o.dst, o.text, self._callback(msg, i))
                                    for i, (o, v) in enumerate(zip(plan.outgoing, plan.via)) if v == "xml"])
        else:
            body = plivoxml.EMPTY  # WhatsApp: Plivo takes no XML replies; all goes through the API
        return plan, Answer(200, body, plivoxml.CONTENT_TYPE)

    def _route(self, msg: Inbound, plan: policy.Plan, decision: Decision | None) -> None:
        """How each text goes (`plan.via`): in the XML answer, or through the Message API for
        WhatsApp and for texts with media; and which webhook calls are made. What needs a
        setting that is missing is held, with the reason."""
        xml = msg.type in XML_TYPES
        outgoing, via = [], []
        for out in plan.outgoing:
            if xml and not out.media:
                outgoing.append(out)
                via.append("xml")
            elif self.api:
                outgoing.append(out)
                via.append("api")
            else:
                plan.held.extend({"dst": d, "text": out.text, "reason": NO_API} for d in out.dst)
        plan.outgoing, plan.via = outgoing, via
        _cap(msg, plan)
        if decision is not None and decision.webhooks and plan.compliance is None:
            if self.webhooks:
                plan.webhooks = list(decision.webhooks)
            else:
                plan.held.extend({"dst": hook.url, "text": "", "reason": NO_WEBHOOK_SECRET}
                                 for _, hook in decision.webhooks)

    def _callback(self, msg: Inbound, position: int) -> str | None:
        """Where Plivo reports on the text at `position`: PUBLIC_URL/status?ref=<uuid>.<position>."""
        if self.callback_url is None:
            return None
        return f"{self.callback_url}?ref={quote(msg.uuid, safe='')}.{position}"

    def answer(self, msg: Inbound, ruleset: RuleSet, now: datetime | None = None,
               state: NumberState | None = None) -> tuple[policy.Plan, Decision, Answer]:
        """Decide and render the answer for one parsed message, without recording it.

        (what is sent and why, the rules' decision, the answer); `state` defaults to a
        service that has seen nothing (no opt-outs, no replies yet).
        """
        if now is None and self.clock is not None:
            now = self.clock()
        kind, via, decision = self.decide(msg, ruleset, now)
        plan, answer = self.render(msg, ruleset, kind, via, decision, state or NumberState())
        self._log_answered(msg, decision, plan, warn=False)  # simulate prints what was held itself
        return plan, decision or Decision(), answer

    def handle_status(self, req: HttpRequest) -> Answer:
        """A delivery report: verified, stored, and linked to the reply it reports on."""
        try:
            query, body, nonces, digest = self._authentic(req)
        except Rejected as exc:
            return exc.answer
        params = dict(reversed(query))
        params.update(reversed(body))  # body values win; the first of a repeated key
        if not params.get("MessageUUID", "").strip():
            return text_answer(400, "missing MessageUUID")
        ref = params.pop("ref", None)
        if self.store is not None:
            try:
                reply_id, recorded = self.store.record_report(params, nonces, digest, ref, self._now()[1])
            except Replayed:
                metrics.rejected("replayed")
                log.warning("replayed signature refused", extra={"uuid": params["MessageUUID"]})
                return text_answer(403, "replayed Plivo signature")
            except Unavailable as exc:
                log.error("delivery report not recorded, answered 503: %s", exc,
                          extra={"uuid": params["MessageUUID"]})
                return text_answer(503, "the report could not be recorded; try again")
        else:
            reply_id, recorded = None, True
        if not recorded:
            log.info("delivery report sent again with the same nonce: already recorded",
                     extra={"uuid": params.get("MessageUUID")})
            return text_answer(200, "ok")
        metrics.delivery_report(params.get("Status"))
        log.info("delivery report", extra={
            "uuid": params.get("MessageUUID"), "status": params.get("Status", ""),
            "error_code": params.get("ErrorCode", ""), "linked": reply_id is not None,
        })
        return text_answer(200, "ok")


def _rules(decision: Decision | None, plan: policy.Plan) -> list[str]:
    """The rules that acted: none when a compliance keyword answered."""
    return list(decision.matched) if decision is not None and plan.compliance is None else []


def _real_change(plan: policy.Plan, opted_out: bool) -> str | None:
    """The opt-out change a message makes ("out", "in"), or None: a STOP from a number
    already opted out, like a START from one that is not, changes nothing."""
    if plan.change is None:
        return None
    what = plan.change[0]
    return what if (what == "out") != opted_out else None


def _to_stored(answer: Answer) -> Stored:
    return Stored(answer.status, answer.content_type, answer.body)


def _from_stored(stored: Stored) -> Answer:
    return Answer(stored.status, stored.body, stored.content_type)


def _storable(text: str) -> str:
    """Text as the database keeps it: PostgreSQL cannot hold U+0000, so it becomes U+FFFD."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _record(msg: Inbound, decision: Decision | None, plan: policy.Plan, answer: Answer,
            ruleset: RuleSet, now: datetime, hold: bool = False) -> Record:
    """The rows that say what came, what was decided and what was sent or queued."""
    params = msg.params
    if any("\x00" in k or "\x00" in v for k, v in params.items()):
        params = {_storable(k): _storable(v) for k, v in params.items()}
    return Record(
        message={
            "from_number": msg.from_, "to_number": msg.to, "type": msg.type, "text": _storable(msg.text),
            "intent": msg.intent, "params": params,
            "rules": _rules(decision, plan),
            "compliance": plan.compliance, "possible_optout": plan.possible_optout,
            "held": [dict(h, text=_storable(h["text"])) for h in plan.held],
        },
        replies=[{
            "position": i, "kind": o.kind, "rule": o.rule, "src": o.src, "dst": list(o.dst),
            "sender": msg.from_, "limited": o.kind == "reply", "text": _storable(o.text), "via": via,
        } for i, (o, via) in enumerate(zip(plan.outgoing, plan.via))],
        outbox=_outbox(msg, plan, now, hold),
        change=(plan.change[0], plan.change[1], ruleset.compliance.scope) if plan.change else None,
    )


def _cap(msg: Inbound, plan: policy.Plan) -> None:
    """Bound what one inbound message sends, in rule order: at most MAX_API_REQUESTS Message
    API requests (`plan.sends`) and the Messages one XML answer carries. What is past either
    bound is held with the reason; a text of which nothing goes is not sent at all."""
    api_left, xml_left = MAX_API_REQUESTS, plivoxml.MAX_MESSAGES
    outgoing, via, sends = [], [], []
    for out, how in zip(plan.outgoing, plan.via):
        requests: list = []
        if how == "xml":
            pieces = smsenc.split(plivoxml.clean_text(out.text))  # as plivoxml.render splits it
            kept = len(pieces[:xml_left])
            xml_left -= kept
            if kept < len(pieces):
                plan.held.append({"dst": "<".join(out.dst), "text": " ".join(pieces[kept:]),
                                  "reason": _over(XML_CAP, kept, len(pieces))})
                if not kept:
                    continue
        else:
            kind, pieces = _api_pieces(msg, out)
            dsts = []
            for dst in out.dst:
                kept = len(pieces[:api_left])
                api_left -= kept
                requests.extend((dst, kind, text, media) for text, media in pieces[:kept])
                if kept:
                    dsts.append(dst)
                if kept < len(pieces):
                    plan.held.append({"dst": dst, "text": ("" if kind == "whatsapp" else " ").join(
                        text for text, _ in pieces[kept:]), "reason": _over(API_CAP, kept, len(pieces))})
            if pieces and not dsts:
                continue
            if len(dsts) < len(out.dst):
                out = dataclasses.replace(out, dst=tuple(dsts))
        outgoing.append(out)
        via.append(how)
        sends.append(requests)
    plan.outgoing, plan.via, plan.sends = outgoing, via, sends


def _over(bound: str, kept: int, parts: int) -> str:
    """The reason a text, or its parts after the first `kept` of `parts`, was not sent."""
    return f"{bound} ({parts - kept} of {parts} parts)" if kept else bound


def _api_pieces(msg: Inbound, out) -> tuple[str, list[tuple[str, list[str]]]]:
    """(type, [(text, media URLs)]): the Message API requests one text makes to each of its
    destinations. A reply to a WhatsApp sender goes as WhatsApp (media one file per
    message, the text with the first; a text over 4,096 characters in pieces); a forward
    of it, to a person's phone, as SMS; a text with media to an SMS/MMS sender as MMS.
    Long SMS texts are split as in the XML."""
    text = _storable(out.text)
    if msg.type not in XML_TYPES and out.kind != "forward":
        pieces = [text[i:i + MAX_WHATSAPP] for i in range(0, len(text), MAX_WHATSAPP)] or [""]
        media = [[url] for url in out.media] or [[]]
        sends = [(pieces[0], media[0])] + [("", m) for m in media[1:]] + [(p, []) for p in pieces[1:]]
        kind = "whatsapp"
    elif out.media:
        kind, sends = "mms", [(text, list(out.media))]
    else:
        kind, sends = "sms", [(piece, []) for piece in smsenc.split(text)]
    return kind, [(piece, media) for piece, media in sends if piece or media]


def _outbox(msg: Inbound, plan: policy.Plan, now: datetime, hold: bool = False) -> list[dict]:
    """Outbox rows: the Message API requests of `plan.sends`, and one call per webhook.
    `hold` (OUTBOX_SENDER=hold): written `held`, so no sender of the database takes them."""
    rows: list[dict] = []
    status = HELD if hold else PENDING
    for position, (out, requests) in enumerate(zip(plan.outgoing, plan.sends)):
        for dst, kind, piece, media in requests:
            rows.append({"kind": "message", "role": out.kind, "position": position, "rule": out.rule,
                         "src": out.src, "dst": dst, "type": kind, "text": piece, "media": media,
                         "status": status})
    if plan.webhooks:
        received_at = now.replace(tzinfo=timezone.utc).isoformat().replace("+00:00", "Z")
        for rule, hook in plan.webhooks:
            body = webhook_body.body({
                "uuid": msg.uuid, "from": msg.from_, "to": msg.to, "type": msg.type, "text": msg.text,
                "media": list(msg.media), "intent": msg.intent or None, "rule": rule, "received_at": received_at,
            })
            rows.append({"kind": "webhook", "role": "webhook", "rule": rule, "dst": hook.url, "type": "json",
                         "method": hook.method, "text": _storable(body.decode("utf-8")), "status": status})
    return rows
