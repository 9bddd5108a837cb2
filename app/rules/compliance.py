"""Compliance and limits settings of a rules file (`compliance`, `limits`; docs/rules.md). Pure.

Compiled once at load into the `RuleSet`; `app.policy` applies them per message.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import timedelta

from ..inbound import Inbound

#: Compliance kinds, also the `kind` of the reply each one sends.
OPTOUT, OPTIN, HELP = "optout", "optin", "help"

DEFAULT_OPT_OUT = ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT")
DEFAULT_OPT_IN = ("START", "YES", "UNSTOP")
DEFAULT_HELP = ("HELP", "INFO")
DEFAULT_OPT_OUT_REPLY = "You are unsubscribed. Reply START to resubscribe."
DEFAULT_OPT_IN_REPLY = "You are resubscribed. Reply STOP to unsubscribe."
#: The built-in HELP answer names no business (the rules file should give one; `rules check` says so).
DEFAULT_HELP_REPLY = "Reply STOP to unsubscribe or START to resubscribe. Msg&data rates may apply."

_EDGE = re.compile(r"^[\W_]+|[\W_]+$")


def fold(text: str) -> str:
    """A text as compliance compares it: NFKC, trimmed of whitespace and punctuation, case folded.

    `Stop!`, ` STOP. ` and the full-width `ＳＴＯＰ` all fold to `stop`.
    """
    return _EDGE.sub("", unicodedata.normalize("NFKC", text).strip()).casefold()


@dataclass(frozen=True, slots=True)
class Keywords:
    words: frozenset[str]  # folded
    reply: str


@dataclass(frozen=True, slots=True)
class Compliance:
    enabled: bool = True
    scope: str = "account"  # or "number"
    opt_out: Keywords = Keywords(frozenset(fold(w) for w in DEFAULT_OPT_OUT), DEFAULT_OPT_OUT_REPLY)
    opt_in: Keywords = Keywords(frozenset(fold(w) for w in DEFAULT_OPT_IN), DEFAULT_OPT_IN_REPLY)
    help: Keywords = Keywords(frozenset(fold(w) for w in DEFAULT_HELP), DEFAULT_HELP_REPLY)

    def classify(self, msg: Inbound) -> tuple[str | None, str | None]:
        """(optout/optin/help or None, how it was said: "keyword" or "intent")."""
        if not self.enabled:
            return None, None
        folded = fold(msg.text) if msg.text else ""
        if folded:
            for kind, keywords in ((OPTOUT, self.opt_out), (OPTIN, self.opt_in), (HELP, self.help)):
                if folded in keywords.words:
                    return kind, "keyword"
        if msg.intent in (OPTOUT, OPTIN, HELP):
            return msg.intent, "intent"
        return None, None

    def possible_optout(self, text: str) -> bool:
        """An opt-out word inside a longer text ("please stop texting me"), for review."""
        if not self.enabled or not text:
            return False
        words = self.opt_out.words
        return any(fold(word) in words for word in unicodedata.normalize("NFKC", text).split())

    def reply(self, kind: str) -> str:
        return {OPTOUT: self.opt_out, OPTIN: self.opt_in, HELP: self.help}[kind].reply


@dataclass(frozen=True, slots=True)
class ReplyLimit:
    count: int
    per: timedelta


