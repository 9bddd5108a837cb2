"""Rule regexes with a bounded cost per message.

A rule's `regex` is written in Python's syntax and checked by `re` when the file is
loaded (so a bad pattern gets the same message as Python gives). It is then compiled
with the `regex` module, which runs the same syntax with two things `re` lacks: a
timeout on a search and releasing the GIL while it searches. A pattern that
backtracks catastrophically (`^(a|aa)+$` against forty `a` and a `!`) therefore costs
a message at most its time budget, and the worker's other threads keep answering
meanwhile.

The bounds, for every message:

- a text longer than `TEXT_MAX` characters is not searched by any regex;
- one search may take at most `SEARCH_TIMEOUT` seconds;
- all the regex searches of one message together at most `MESSAGE_BUDGET` seconds.

A search that hits a bound raises `RegexLimit`: the rule it belongs to does not match
(even when the regex is under `not`), the event is logged as a WARNING with the rule
and the message's uuid (never the text) and counted in `responder_regex_stopped_total`.

When the file is loaded, `nested_quantifier` flags patterns likely to backtrack
catastrophically, for a warning (see its docstring for the heuristic).
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from re import _constants as C  # the parsed form of a pattern, as `re` itself builds it
from re import _parser

import regex

from .. import metrics

log = logging.getLogger(__name__)

#: Characters. WhatsApp's longest text is 4,096 characters, an SMS at most 1,600 (GSM-7)
#: or 737 (UCS-2): every text Plivo can deliver is searched whole.
TEXT_MAX = 4096
#: Seconds one regex search may take. An ordinary pattern takes microseconds on the
#: longest text; the margin is for a machine busy with other work.
SEARCH_TIMEOUT = 0.1
#: Seconds all the regex searches of one message may take together (many regex rules).
MESSAGE_BUDGET = 0.25

FLAGS = regex.IGNORECASE | regex.VERSION0  # VERSION0: the behaviour of `re`

_monotonic = time.monotonic


class RegexLimit(Exception):
    """A regex search hit a bound: the rule it belongs to does not match this message."""


def compile_pattern(pattern: str) -> regex.Pattern:
    """`pattern` compiled for bounded searches, case-insensitive.

    Raises `re.error` (or OverflowError, RecursionError, ValueError, MemoryError) for a
    pattern Python's `re` refuses, and `regex.error` for the rare one `re` accepts but the
    `regex` module does not."""
    with warnings.catch_warnings():  # "possible nested set": refused below when it is one
        warnings.simplefilter("ignore", FutureWarning)
        re.compile(pattern, re.IGNORECASE)
    # Two constructs `re` reads literally but `regex` does not, even in its re-compatible
    # mode: a fuzzy-match quantifier (`(?:stop){e<=1}` would match "stip") and a POSIX class
    # (`[[:digit:]]`). Refused, so a rule never matches what its author did not write.
    if _FUZZY.search(pattern):
        raise re.error("'{e<=N}'-style fuzzy matching is not supported (escape the braces: \\{ \\})")
    if "[:" in pattern and _POSIX.search(pattern):
        raise re.error("POSIX classes like [[:digit:]] are not supported (use \\d, \\w, \\s or a set like [0-9])")
    return regex.compile(pattern, FLAGS)


_FUZZY = re.compile(r"(?<!\\)\{[^{}]*\b[eisd]\s*(?:<|<=|=)")
_POSIX = re.compile(r"(?<!\\)\[[^\]]*\[:\^?[a-z]+:\]")


def deadline() -> float:
    """The monotonic time by which one message's regex searches must be done."""
    return _monotonic() + MESSAGE_BUDGET


def stopped(rule: str, facts, reason: str, *, quiet: bool = False) -> RegexLimit:
    """Log and count a search stopped at a bound (`time` or `length`); the exception to raise.
    `quiet`: the message's budget was already spent and said so; counted, logged at DEBUG only."""
    metrics.regex_stopped(rule, reason)
    if quiet:
        log.debug("regex not searched: the message's regex time is used up", extra={"rule": rule})
    elif reason == "length":
        log.warning("regex not searched: the text is longer than %d characters; the rule does not match",
                    TEXT_MAX, extra={"rule": rule, "uuid": facts.msg.uuid, "chars": len(facts.text)})
    else:
        log.warning("regex search stopped after its time limit; the rule does not match",
                    extra={"rule": rule, "uuid": facts.msg.uuid,
                           "limit_ms": int(SEARCH_TIMEOUT * 1000), "message_budget_ms": int(MESSAGE_BUDGET * 1000)})
    return RegexLimit(rule)


def check(pattern: regex.Pattern, rule: str):
    """The compiled condition of a rule's `regex`: found in the text, named groups into `groups`."""
    search = pattern.search

    def check(facts, groups):
        text = facts.text
        if len(text) > TEXT_MAX:
            raise stopped(rule, facts, "length")
        left = facts.regex_deadline - _monotonic()
        if left <= 0:  # an earlier rule's search used the message's budget up and logged it
            raise stopped(rule, facts, "time", quiet=True)
        try:
            m = search(text, timeout=left if left < SEARCH_TIMEOUT else SEARCH_TIMEOUT, concurrent=True)
        except TimeoutError:
            raise stopped(rule, facts, "time") from None
        if m is None:
            return False
        groups.update(m.groupdict(default=""))
        return True
    return check


# -- the load-time warning -------------------------------------------------------------
_REPEATS = (C.MAX_REPEAT, C.MIN_REPEAT)
_ANY = None  # a first-character set that may hold any character


def nested_quantifier(pattern: str) -> bool:
    """Whether the pattern has a nested quantifier, the usual cause of catastrophic backtracking.

    The heuristic, on the pattern as `re` parses it: inside a part that repeats (a
    quantifier whose maximum is more than 1: `+`, `*`, `{2,}`, `{20}`), something can
    match a varying amount or in several ways:

    - another quantifier with a range (`(a+)+`, `(a*)*`, `(.*a){20}`, `(\\w+\\s?)+`);
    - an alternation whose branches can begin with the same character, or of which one
      can be empty (`(a|aa)+`, `(ab|a)+`; not `(yes|no)+`, nor `(\\d|\\w)+`, which `re` makes one set).

    Possessive quantifiers (`a++`) and atomic groups (`(?>...)`) do not backtrack and
    are not counted. It can warn about a safe pattern (`(\\d+,)*`) and miss some slow
    ones; it only warns: every search is bounded in time anyway."""
    try:
        parsed = _parser.parse(pattern, re.IGNORECASE)
    except Exception:  # noqa: BLE001 - a pattern re refuses is reported as an error elsewhere
        return False
    try:
        return _nested(parsed, False)
    except RecursionError:
        return True  # nesting that deep is suspect in itself


def _nested(items, repeating: bool) -> bool:
    for op, av in items:
        if op in _REPEATS:
            low, high, body = av
            if repeating and low != high:
                return True
            if _nested(body, repeating or high > 1):
                return True
        elif op is C.BRANCH:
            branches = av[1]
            if repeating and _ambiguous(branches):
                return True
            if any(_nested(b, repeating) for b in branches):
                return True
        elif op is C.SUBPATTERN:
            if _nested(av[3], repeating):
                return True
        elif op in (C.ASSERT, C.ASSERT_NOT):
            if _nested(av[1], repeating):
                return True
        elif op is C.GROUPREF_EXISTS:
            if _nested(av[1], repeating) or (av[2] is not None and _nested(av[2], repeating)):
                return True
        # POSSESSIVE_REPEAT and ATOMIC_GROUP do not backtrack; the rest match fixed text.
    return False


def _ambiguous(branches) -> bool:
    seen: set[str] = set()
    for branch in branches:
        first = _first(branch)
        if first is _ANY or not first or first & seen:
            return True
        seen |= first
    return False


def _first(items):
    """The characters a sequence can begin with (casefolded): a set, an empty set when it
    can match nothing at all (empty), or `_ANY` when that is not simple to tell."""
    for op, av in items:
        if op is C.AT:
            continue  # ^ $ \b: zero width
        if op is C.LITERAL:
            return {chr(av).casefold()}
        if op is C.SUBPATTERN:
            return _first(av[3]) or _ANY
        if op is C.BRANCH:
            found: set[str] = set()
            for b in av[1]:
                f = _first(b)
                if not f:
                    return _ANY
                found |= f
            return found
        if op in _REPEATS and av[0] > 0:
            return _first(av[2]) or _ANY
        return _ANY
    return set()
