"""Compile a rule's `when:` mapping into checks (format: docs/rules.md, "Conditions").

Each condition becomes a closure over values fixed at load, so a message costs no
parsing; the checks of a rule are ordered cheapest first. The timezone help is here
too: the timezone is what `days` and `hours` are read in.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import available_timezones

from ..inbound import INTENTS, TYPES
from . import regexes
from .checker import Checker, show
from .engine import Check, normalize_text, normalize_word
from .source import YMap
from .templates import UNKNOWN_GROUPS

WHEN_KEYS = ("keyword", "text", "contains", "regex", "from", "to", "type", "intent", "media",
             "days", "hours", "not")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
# Cheap conditions first, regexes last: a message fails fast on the cheap ones.
_COST = {"type": 0, "intent": 0, "media": 0, "keyword": 1, "text": 1, "from": 1, "to": 1,
         "days": 1, "hours": 1, "contains": 2, "not": 3, "regex": 4}
# Zone names that are a fixed offset from UTC rather than a place: EST, MST, HST, GMT and
# Etc/GMT+5 style. A business on one of them is an hour off for half the year wherever
# clocks change. (UTC itself is a deliberate choice and is not warned about.)
_FIXED_OFFSET = re.compile(r"^(?:Etc/)?(?:EST|MST|HST|GMT(?:[+-]?\d{1,2})?|Greenwich)$")
_PLACES = {"EST": "America/New_York", "MST": "America/Denver (or America/Phoenix, on MST all year)",
           "HST": "Pacific/Honolulu", "GMT": "Europe/London", "Greenwich": "Europe/London"}


@dataclass(frozen=True, slots=True)
class When:
    """One compiled `when` mapping, and what the rest of the compiler reads of it (None: not given)."""

    checks: tuple[Check, ...] = ()  # cheapest first
    groups: frozenset[str] | None = None  # the regex's named groups, for the templates
    keywords: frozenset[str] | None = None  # for the index and the shadow analysis
    texts: frozenset[str] | None = None  # likewise
    types: frozenset[str] | None = None  # which senders the rule can answer (WhatsApp or not)


class Conditions(Checker):
    def __init__(self, path: str):
        super().__init__(path)
        self.clock: tuple[int, str] | None = None  # (line, key) of the first `days` or `hours` condition
        self.rule_name = ""  # the rule being compiled

    def when(self, when: YMap) -> When:
        """Compile one `when` mapping."""
        self.keys(when, WHEN_KEYS, "'when'")
        checks: list[tuple[int, Check]] = []
        groups = keywords = texts = types = None
        for key in when:
            if key not in WHEN_KEYS:
                continue
            if key in ("days", "hours") and self.clock is None:
                self.clock = (when.key_line(key), key)
            if key == "keyword":
                keywords = self.keyword_set(when)
                check = _in_set("keyword", keywords)
            elif key == "text":
                texts = frozenset(normalize_text(str(v)) for v, _ in self.values(when, key))
                check = _in_set("normalized", texts)
            elif key == "regex":
                check, groups = self.regex(when)
            elif key == "type":
                types = self.choices(when, key, TYPES)
                check = _msg_attr("type", types)
            else:
                check = self.condition(when, key)
            if check is not None:
                checks.append((_COST[key], check))
        checks.sort(key=lambda pair: pair[0])
        return When(tuple(c for _, c in checks), groups, keywords, texts, types)

    def condition(self, when: YMap, key: str) -> Check | None:
        """One of the conditions that the rest of the compiler does not read (None after an error)."""
        if key == "contains":
            return _contains(tuple(str(v).casefold() for v, _ in self.values(when, key)))
        if key in ("from", "to"):
            exact, prefixes = self.numbers(when, key)
            return _number(key + "_digits", frozenset(exact), tuple(prefixes))
        if key == "intent":
            return _msg_attr("intent", self.choices(when, key, INTENTS))
        if key == "media":
            return _media(self.boolean(when, key))
        if key == "days":
            chosen = self.choices(when, key, DAYS)
            return _in_set("weekday", frozenset(DAYS.index(d) for d in chosen))
        if key == "hours":
            return self.hours(when)
        return self.negation(when)  # the last of WHEN_KEYS: 'not'

    def keyword_set(self, when: YMap) -> frozenset[str]:
        words = []
        for value, line in self.values(when, "keyword"):
            word = str(value).strip()
            if len(word.split()) > 1:
                self.error(line, f"keyword {word!r} is more than one word; use 'text' or 'contains' for phrases")
            elif not normalize_word(word):
                self.error(line, f"keyword {word!r} has no letters or digits")
            else:
                words.append(normalize_word(word))
        return frozenset(words)

    def negation(self, when: YMap) -> Check | None:
        inner = when["not"]
        if not isinstance(inner, YMap):
            self.error(when.value_line("not"), f"'not' takes a mapping of conditions, got {show(inner)}")
        elif not inner:
            self.error(when.value_line("not"), "'not' needs at least one condition", kind="missing value")
        else:
            return _negate(self.when(inner).checks)
        return None

    def choices(self, when: YMap, key: str, allowed: tuple[str, ...]) -> frozenset[str]:
        chosen = set()
        for value, line in self.values(when, key, kinds=(str,)):
            word = value.strip().lower()
            if word not in allowed:
                self.error(line, f"{key!r}: unknown value {value!r} (expected: {', '.join(allowed)})",
                           kind="unknown value")
            else:
                chosen.add(word)
        return frozenset(chosen)

    def regex(self, when: YMap):
        pattern = when["regex"]
        line = when.value_line("regex")
        if not isinstance(pattern, str) or not pattern:
            self.error(line, f"'regex' takes one pattern as text, got {show(pattern)}", kind="bad regex")
            return None, UNKNOWN_GROUPS
        try:
            compiled = regexes.compile_pattern(pattern)
        except re.error as exc:
            self.error(line, f"bad regex: {exc.msg} at position {exc.pos}", kind="bad regex")
            return None, UNKNOWN_GROUPS
        except (OverflowError, RecursionError, ValueError, MemoryError) as exc:  # e.g. a{1,99999999999}
            self.error(line, f"bad regex: {type(exc).__name__}: {exc}", kind="bad regex")
            return None, UNKNOWN_GROUPS
        except regexes.regex.error as exc:  # Python's re takes it, the bounded engine does not
            self.error(line, f"unsupported regex: {exc}", kind="bad regex")
            return None, UNKNOWN_GROUPS
        if regexes.nested_quantifier(pattern):
            self.warn(line, f"rule {self.rule_name!r}: the regex has a nested quantifier such as (a+)+, "
                            "(a|aa)+ or (.*a){20}, which can take exponential time on some texts; a search "
                            f"is stopped after {regexes.SEARCH_TIMEOUT * 1000:g} ms and the rule then does "
                            "not match: rewrite it without the outer repeat (a+ instead of (a+)+)")
        return _regex(compiled, self.rule_name), frozenset(compiled.groupindex)

    def hours(self, when: YMap):
        value = when["hours"]
        line = when.value_line("hours")
        m = _HOURS.match(value) if isinstance(value, str) else None
        if not m:
            self.error(line, f"'hours' takes \"HH:MM-HH:MM\" (for example \"17:00-09:00\"), got {show(value)}",
                       kind="bad time")
            return None
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
            self.error(line, f"'hours': {value!r} is not a time of day", kind="bad time")
            return None
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start == end:
            self.error(line, f"'hours': {value!r} starts and ends at the same time", kind="bad time")
            return None
        return _between(start, end)


# -- compiled conditions (closures over values fixed at load) ----------------------
def _in_set(attr: str, values: frozenset) -> Check:
    def check(facts, groups, _get=getattr):
        return _get(facts, attr) in values
    return check


def _contains(parts: tuple[str, ...]) -> Check:
    def check(facts, groups):
        folded = facts.folded
        return any(p in folded for p in parts)
    return check


def _regex(pattern, rule: str) -> Check:
    return regexes.check(pattern, rule)  # bounded in text length and time


def _number(attr: str, exact: frozenset, prefixes: tuple[str, ...]) -> Check:
    def check(facts, groups, _get=getattr):
        number = _get(facts, attr)
        return number in exact or (bool(prefixes) and number.startswith(prefixes))
    return check


def _msg_attr(attr: str, values: frozenset) -> Check:
    def check(facts, groups, _get=getattr):
        return _get(facts.msg, attr) in values
    return check


def _media(wanted: bool) -> Check:
    def check(facts, groups):
        return facts.msg.has_media is wanted
    return check


def _between(start: int, end: int) -> Check:
    if start < end:
        def check(facts, groups):
            return start <= facts.minute < end
    else:
        def check(facts, groups):
            return facts.minute >= start or facts.minute < end
    return check


def _negate(checks: tuple[Check, ...]) -> Check:
    def check(facts, groups):
        scratch: dict = {}
        return not all(c(facts, scratch) for c in checks)
    return check


# -- the timezone (settings.timezone) ----------------------------------------------
def unknown_timezone(name: str) -> str:
    """The error for a timezone name that is not an IANA name, with the closest ones (worked out
    only here, on an error: the list has some 600 names)."""
    given = name.strip()
    zones = sorted(available_timezones())
    folded = given.casefold().replace(" ", "_")
    # The name in other case, or a city alone ("berlin", "New York"); else the nearest spellings,
    # those nearly as near as the nearest.
    close = [z for z in zones if folded in (z.casefold(), z.casefold().rsplit("/", 1)[-1])]
    if not close:
        near = [(difflib.SequenceMatcher(None, given, z).ratio(), z)
                for z in difflib.get_close_matches(given, zones, n=3, cutoff=0.7)]
        close = [z for ratio, z in near if ratio >= near[0][0] - 0.05]
    if close:
        return f"unknown timezone {name!r}; did you mean {' or '.join(close)}?"
    return f"unknown timezone {name!r} (an IANA name such as America/New_York)"


def fixed_offset_warning(name: str, tz) -> str | None:
    """The warning for a timezone `tz` named `name` that is a fixed offset with no daylight
    saving (EST, Etc/GMT+5), None for a place."""
    if not _FIXED_OFFSET.match(name.strip()):
        return None
    zone = re.sub(r"^GMT[+-]?0$", "GMT", name.strip().removeprefix("Etc/"))
    place = _PLACES.get(zone)
    if place is not None:
        advice = f"use a place name like {place}"
    else:  # GMT+5, GMT-9: an offset many regions share, so no one place is named
        hours = tz.utcoffset(datetime(2026, 1, 1)).total_seconds() / 3600
        advice = (f"it is UTC{hours:+g} (the sign of GMT+N names is reversed): "
                  "use the place name of your region, as Area/City")
    return f"timezone {name.strip()!r} is a fixed offset with no daylight saving; {advice}"
