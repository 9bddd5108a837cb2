"""What the state allows: STOP/START/HELP compliance and reply limits . Pure.

The rules engine decides what the rules would send; this module turns that,
plus what the database knows of the numbers involved (`NumberState`), into what is
really sent (`Plan`): compliance keywords answer alone, an opted-out number
gets nothing, and a sender over `limits.replies_per_sender` gets no more
replies until the window slides. No I/O here: the store reads the state and
writes the plan in one transaction around `plan()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import smsenc
from .inbound import Inbound
from .rules.compliance import HELP, OPTIN, OPTOUT, Compliance, ReplyLimit
from .rules.engine import Decision, Outgoing

if TYPE_CHECKING:  # a plain dataclass of the store's values; policy stays free of I/O imports
    from .store.values import NumberState

__all__ = ["HELP", "OPTIN", "OPTOUT", "FORWARD_CUT", "Plan", "numbers_to_check", "plan"]

#: Why the end of a forward was not sent: a forward is one message (SMS: 1,600 GSM-7 or 737
#: UCS-2 characters), cut with an ellipsis, however long the text it forwards.
FORWARD_CUT = "a forward is one message (the rest was cut)"


@dataclass(slots=True)
class Plan:
    """What is really sent for one message, and the opt-out change to record."""

    outgoing: list[Outgoing] = field(default_factory=list)
    held: list[dict] = field(default_factory=list)  # {"dst", "text", "reason"}: not sent, and why
    compliance: str | None = None
    change: tuple[str, str] | None = None  # ("out"|"in", via) for the sender
    possible_optout: bool = False
    via: list[str] = field(default_factory=list)   # per outgoing text: "xml" or "api" (set by the service)
    webhooks: list = field(default_factory=list)   # (rule name, Webhook) calls to make
    # Per outgoing text, its Message API requests [(dst, type, text, media)], at most
    # MAX_API_REQUESTS in all; () for a text in the XML answer (set by the service).
    sends: list = field(default_factory=list)


def numbers_to_check(msg: Inbound, decision: Decision | None) -> list[str]:
    """Every number a message may send to: the sender and the forward destinations."""
    numbers = {msg.from_}
    if decision is not None:
        for out in decision.outgoing:
            numbers.update(out.dst)
    return sorted(numbers)


def plan(msg: Inbound, compliance: Compliance, limit: ReplyLimit | None,
         kind: str | None, via: str | None, decision: Decision | None, state: NumberState) -> Plan:
    """Apply compliance, opt-outs and the reply limit to what the rules decided."""
    sender = msg.from_
    if kind == OPTIN and sender not in state.opted_out and decision is not None:
        kind = via = None  # START/YES from a subscribed sender: an ordinary message for the rules
    if kind is not None:  # a compliance keyword answers alone; the rules are not consulted
        result = Plan(compliance=kind)
        if kind == OPTOUT:
            result.change = ("out", via)
            if sender in state.opted_out:
                return result  # the confirmation is sent once, not at every STOP
        elif kind == OPTIN:
            result.change = ("in", via)
        result.outgoing.append(Outgoing(None, kind, msg.to, (sender,), compliance.reply(kind)))
        return result

    result = Plan(possible_optout=compliance.possible_optout(msg.text))
    remaining = None if limit is None else max(limit.count - state.recent_replies, 0)
    for out in decision.outgoing if decision is not None else ():
        if out.kind == "reply":
            if sender in state.opted_out:
                result.held.append({"dst": sender, "text": out.text, "reason": "opted out"})
            elif remaining is not None and remaining <= 0:
                result.held.append({"dst": sender, "text": out.text, "reason": "reply limit"})
            else:
                result.outgoing.append(out)
                if remaining is not None:
                    remaining -= 1
            continue
        text, rest = smsenc.cut(out.text)  # a forward (always SMS) is one message
        allowed = tuple(d for d in out.dst if d not in state.opted_out)
        for dst in out.dst:
            if dst in state.opted_out:
                result.held.append({"dst": dst, "text": text, "reason": "opted out"})
        if not allowed:
            continue
        if rest:
            result.held.append({"dst": "<".join(allowed), "text": rest, "reason": FORWARD_CUT})
        if allowed == out.dst and not rest:
            result.outgoing.append(out)
        else:
            result.outgoing.append(Outgoing(out.rule, out.kind, out.src, allowed, text))
    return result
