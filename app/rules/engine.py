"""Decide what to answer to one inbound message. Pure: no Flask, no I/O.

A `RuleSet` is built once by the compiler. Rules whose `when` names keywords
or whole texts are indexed by them, so a message is only checked against the
rules that could match it plus the rules that have no such condition; their
file order is kept with a merge of the sorted candidate lists.
"""

from __future__ import annotations

import heapq
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

from .. import logs
from ..inbound import Inbound
from .compliance import Compliance, ReplyLimit
from .regexes import RegexLimit
from .regexes import deadline as _regex_deadline
from .templates import Template

log = logging.getLogger(__name__)

_NOT_DIGIT = re.compile(r"[^0-9]")
_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")

DEFAULT_FORWARD_TEXT = "From {{ from }}: {{ text }}"


def digits(value: str) -> str:
    """A phone number reduced to its digits (`+1 (415) 555-0123` -> `14155550123`)."""
    if value.isascii() and value.isdigit():
        return value  # Plivo sends bare digits: skip the regex
    return _NOT_DIGIT.sub("", value)


def normalize_word(word: str) -> str:
    """A keyword as compared: surrounding punctuation gone, case folded."""
    return _EDGE_PUNCT.sub("", word).casefold()


def first_keyword(text: str) -> str:
    """The first word of a text that is more than punctuation, normalized."""
    for word in text.split():
        kw = normalize_word(word)
        if kw:
            return kw
    return ""


def normalize_text(text: str) -> str:
    """A whole text as compared: trimmed, inner whitespace collapsed, case folded."""
    return " ".join(text.split()).casefold()


def _local(now: datetime | None, tz: tzinfo) -> datetime:
    """`now` in the rules' timezone (the current time when None; naive means local)."""
    if now is None:
        return datetime.now(tz)
    if now.tzinfo is None:
        return now.replace(tzinfo=tz)
    return now if now.tzinfo is tz else now.astimezone(tz)


class Facts:
    """What the conditions look at, each computed once per message on first use.

    Most messages meet a handful of conditions, so nothing is derived (the
    folded text, the digits of the numbers, the local time) until a condition
    or a template asks for it.
    """

    def __init__(self, msg: Inbound, clock: datetime | None, tz: tzinfo):
        self.msg = msg
        self.text = msg.text
        self._clock = clock
        self._tz = tz

    def __getattr__(self, name: str):
        derive = _DERIVED.get(name)
        if derive is None:
            raise AttributeError(name)
        value = derive(self)
        setattr(self, name, value)
        return value


_DERIVED: dict[str, Callable[[Facts], object]] = {
    "folded": lambda f: f.text.casefold(),
    "normalized": lambda f: normalize_text(f.text),
    "keyword": lambda f: first_keyword(f.text),
    "from_digits": lambda f: digits(f.msg.from_),
    "to_digits": lambda f: digits(f.msg.to),
    "now": lambda f: _local(f._clock, f._tz),
    "weekday": lambda f: f.now.weekday(),  # Monday is 0
    "minute": lambda f: f.now.hour * 60 + f.now.minute,
    "regex_deadline": lambda f: _regex_deadline(),  # all of the message's regex searches end by then
}


#: A compiled condition: True when it holds. A regex condition also fills `groups`.
Check = Callable[[Facts, dict], bool]


@dataclass(frozen=True, slots=True)
class Forward:
    to: tuple[str, ...]
    text: Template


@dataclass(frozen=True, slots=True)
class Webhook:
    """A rule's `webhook` action: the message as JSON to another system."""

    url: str
    method: str = "POST"


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    index: int
    line: int
    checks: tuple[Check, ...] = ()
    replies: tuple[Template, ...] = ()
    forward: Forward | None = None
    silent: bool = False
    cont: bool = False
    media: tuple[str, ...] = ()       # URLs sent with the rule's first reply (Message API)
    webhook: Webhook | None = None
    needs_context: bool = False  # some template is not a constant


@dataclass(slots=True)
class Outgoing:
    """One text to send: a reply to the sender or a forward to other numbers."""

    rule: str | None  # None for a compliance reply
    kind: str  # "reply" or "forward"; "optout", "optin" or "help" for compliance replies
    src: str
    dst: tuple[str, ...]
    text: str
    media: tuple[str, ...] = ()  # URLs: this text goes through the Message API as MMS/WhatsApp media


@dataclass(slots=True)
class Decision:
    matched: tuple[str, ...] = ()
    outgoing: tuple[Outgoing, ...] = ()
    errors: tuple[str, ...] = ()
    webhooks: tuple[tuple[str, Webhook], ...] = ()  # (rule name, its webhook) of the rules that matched


@dataclass(slots=True)
class RuleSet:
    path: str
    digest: str
    tz: tzinfo
    rules: tuple[Rule, ...]
    by_keyword: dict[str, tuple[int, ...]] = field(default_factory=dict)
    by_text: dict[str, tuple[int, ...]] = field(default_factory=dict)
    general: tuple[int, ...] = ()
    warnings: tuple = ()
    compliance: Compliance = Compliance()
    limit: ReplyLimit | None = None
    answers_whatsapp: bool = False  # a WhatsApp message could get text or media back (Message API)

    def candidates(self, facts: Facts):
        """Indexes of the rules that could match, in file order."""
        kw = self.by_keyword.get(facts.keyword, ()) if self.by_keyword else ()
        tx = self.by_text.get(facts.normalized, ()) if self.by_text else ()
        if not kw and not tx:
            return self.general
        general = self.general
        if len(general) <= 32:
            return sorted(kw + tx + general)  # a few indexes: cheaper than a merge generator
        return heapq.merge(kw, tx, general)  # many: lazy, so the first match stops the walk


def _context(msg: Inbound, facts: Facts, rule: Rule, groups: dict) -> dict:
    return {
        "from": msg.from_, "to": msg.to, "text": msg.text, "type": msg.type, "uuid": msg.uuid,
        "media": list(msg.media), "match": groups, "now": facts.now, "rule": rule.name,
    }


def _render(template: Template, rule: Rule, ctx: dict | None, errors: list) -> str | None:
    if template.constant is not None:
        return template.constant
    try:
        return template.render(ctx)
    except Exception as exc:  # noqa: BLE001 - any filter may raise; one template must not sink the answer
        errors.append(f"rule {rule.name!r} line {template.line}: {type(exc).__name__}: {exc}")
        # An exception's text can quote the message (int('hello')): logged without it.
        private = (ctx["text"], ctx["from"], ctx["to"], *ctx["match"].values()) if ctx else ()
        log.warning("template failed", extra={"rule": rule.name, "line": template.line,
                                              "error": logs.redact(f"{type(exc).__name__}: {exc}", *private)})
        return None


def decide(ruleset: RuleSet, msg: Inbound, now: datetime | None = None) -> Decision:
    """Run the rules in file order for one message."""
    facts = Facts(msg, now, ruleset.tz)  # days, hours and {{ now }} use the rules' timezone
    rules = ruleset.rules
    matched: list[str] = []
    outgoing: list[Outgoing] = []
    errors: list[str] = []
    webhooks: list = []
    sender = (msg.from_,)
    for index in ruleset.candidates(facts):
        rule = rules[index]
        groups: dict = {}
        for check in rule.checks:
            try:
                holds = check(facts, groups)
            except RegexLimit:  # a regex search hit its bound (logged, counted): the rule does not match
                holds = False
            if not holds:
                break
        else:
            matched.append(rule.name)
            if rule.webhook is not None:  # silent too: it answers nobody, it tells another system
                webhooks.append((rule.name, rule.webhook))
            if not rule.silent:
                ctx = _context(msg, facts, rule, groups) if rule.needs_context else None
                media = rule.media  # goes with the rule's first reply only
                for template in rule.replies:
                    text = _render(template, rule, ctx, errors)
                    if text and not text.isspace():
                        outgoing.append(Outgoing(rule.name, "reply", msg.to, sender, text, media))
                        media = ()
                if media:  # no reply, or every one rendered empty: the picture alone
                    outgoing.append(Outgoing(rule.name, "reply", msg.to, sender, "", media))
                if rule.forward is not None:
                    text = _render(rule.forward.text, rule, ctx, errors)
                    if text and not text.isspace():
                        outgoing.append(Outgoing(rule.name, "forward", msg.to, rule.forward.to, text))
            if not rule.cont:
                break
    return Decision(tuple(matched), tuple(outgoing), tuple(errors), tuple(webhooks))
