"""Check a rules file as a whole and compile it into a `RuleSet` (format: docs/rules.md).

Every problem is collected with the line of the offending key or value, and
the file is rejected if there is any; regexes and templates are compiled here,
once, never per message.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from datetime import datetime, timedelta

from .. import smsenc
from ..logs import hide_credentials
from ..inbound import INTENTS, TYPES
from . import regexes, source
from .compliance import Compliance, Keywords, ReplyLimit, fold
from .engine import (DEFAULT_FORWARD_TEXT, Check, Forward, Rule, RuleSet, Webhook, digits,
                     first_keyword, normalize_text, normalize_word)
from .source import Problem, RulesError, YList, YMap
from .templates import UNKNOWN_GROUPS, TemplateProblem, compile_template

VERSION = 1
TOP_KEYS = ("version", "settings", "compliance", "limits", "rules")
SETTINGS_KEYS = ("timezone",)
RULE_KEYS = ("name", "when", "reply", "forward", "silent", "continue", "webhook", "media")
WHEN_KEYS = ("keyword", "text", "contains", "regex", "from", "to", "type", "intent", "media",
             "days", "hours", "not")
FORWARD_KEYS = ("to", "text")
WEBHOOK_KEYS = ("url", "method")
WEBHOOK_METHODS = ("POST", "PUT", "PATCH")
MEDIA_MAX = 10  # Plivo takes at most 10 media URLs in one message
URL_MAX = 2000
COMPLIANCE_KEYS = ("enabled", "scope", "opt_out", "opt_in", "help")
KEYWORDS_KEYS = ("keywords", "reply")
LIMITS_KEYS = ("replies_per_sender",)
LIMIT_KEYS = ("count", "per")
SCOPES = ("account", "number")
#: Keys of the format that this release does not have yet (none now; kept for the next ones).
NOT_YET_TOP: frozenset[str] = frozenset()
NOT_YET_RULE: frozenset[str] = frozenset()
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_PER = re.compile(r"^\s*([0-9]+)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_NUMBER_CHARS = re.compile(r"^[0-9+\-.() ]+$")
# Zone names that are a fixed offset from UTC rather than a place: EST, MST, HST, GMT and
# Etc/GMT+5 style. A business on one of them is an hour off for half the year wherever
# clocks change. (UTC itself is a deliberate choice and is not warned about.)
_FIXED_OFFSET = re.compile(r"^(?:Etc/)?(?:EST|MST|HST|GMT(?:[+-]?\d{1,2})?|Greenwich)$")
_PLACES = {"EST": "America/New_York", "MST": "America/Denver (or America/Phoenix, on MST all year)",
           "HST": "Pacific/Honolulu", "GMT": "Europe/London", "Greenwich": "Europe/London"}
# Cheap conditions first, regexes last: a message fails fast on the cheap ones.
_COST = {"type": 0, "intent": 0, "media": 0, "keyword": 1, "text": 1, "from": 1, "to": 1,
         "days": 1, "hours": 1, "contains": 2, "not": 3, "regex": 4}


@dataclass(frozen=True, slots=True)
class Sending:
    """What the service can send besides the XML answer, for the checks that depend on it."""

    api: bool  # PLIVO_AUTH_ID is set: the Message API can be used (media, WhatsApp replies)
    webhook_secret: bool  # WEBHOOK_SECRET is set: webhook calls can be signed


def sending_of(settings, *, serving: bool = True) -> Sending:
    """What the rules may use, given the settings (`config.load`): the Message API, signed webhook calls.

    Serving, the Message API needs PLIVO_AUTH_ID and a token. A command sends nothing, so it
    needs no token: it judges (`rules check`) or shows (`simulate`) what a service with this
    PLIVO_AUTH_ID would do.
    """
    api = bool(settings.get("PLIVO_AUTH_ID") and (settings.get("PLIVO_AUTH_TOKENS") or not serving))
    return Sending(api=api, webhook_secret=bool(settings.get("WEBHOOK_SECRET")))


class _Shape:
    """What the shadow analysis (and `answers_whatsapp`) needs to know of a rule."""

    __slots__ = ("name", "line", "has_when", "when_keys", "keywords", "texts", "stops", "whatsapp")

    def __init__(self, name, line, when, keywords, texts, stops, whatsapp=False):
        self.name, self.line, self.stops = name, line, stops
        self.has_when = bool(when)  # `when: {}` matches everything, like no `when`
        self.when_keys = frozenset(when) if isinstance(when, dict) else frozenset()
        self.keywords, self.texts = keywords, texts
        self.whatsapp = whatsapp  # it can send text or media to a WhatsApp sender


class _Compiler:
    def __init__(self, path: str, sending: Sending | None = None):
        self.path = path
        self.sending = sending  # None: the service's settings are not checked
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self.templates: dict = {}
        self.timezone_set = False  # settings.timezone was given
        self.clock: tuple[int, str] | None = None  # (line, key) of the first `days` or `hours` condition
        self.rule_name = ""  # the rule being compiled

    # -- reporting -----------------------------------------------------------------
    def error(self, line: int, message: str, kind: str = "bad value") -> None:
        self.errors.append(Problem(self.path, line, message, kind))

    def warn(self, line: int, message: str) -> None:
        self.warnings.append(Problem(self.path, line, message, "warning"))

    def keys(self, mapping: YMap, allowed: tuple[str, ...], where: str,
             not_yet: frozenset[str] = frozenset()) -> None:
        for key in mapping:
            if key in allowed:
                if key in not_yet:
                    self.error(mapping.key_line(key), f"{key!r} is not available yet", kind="unknown key")
                continue
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            why = f"did you mean {hint[0]!r}?" if hint else f"expected one of: {', '.join(allowed)}"
            self.error(mapping.key_line(key), f"unknown key {key!r} in {where} ({why})", kind="unknown key")

    # -- scalar helpers ------------------------------------------------------------
    def values(self, mapping: YMap, key: str, kinds=(str, int)) -> list[tuple[object, int]]:
        """One value or a list of values, each with its line; [] after an error."""
        value = mapping[key]
        if isinstance(value, YList):
            items = [(v, value.item_line(i)) for i, v in enumerate(value)]
            if not items:
                self.error(mapping.value_line(key), f"{key!r} needs at least one value", kind="missing value")
        else:
            items = [(value, mapping.value_line(key))]
        good = []
        for item, line in items:
            if isinstance(item, bool) or not isinstance(item, kinds) or item == "":
                self.error(line, f"{key!r} takes {_kind_names(kinds)} or a list of them, got {_show(item)}")
            else:
                good.append((item, line))
        return good

    def boolean(self, mapping: YMap, key: str) -> bool:
        value = mapping[key]
        if not isinstance(value, bool):
            self.error(mapping.value_line(key), f"{key!r} must be true or false, got {_show(value)}")
            return False
        return value

    def template(self, text, line: int, groups) -> object:
        if not isinstance(text, str):
            self.error(line, f"a template must be text, got {_show(text)}", kind="bad template")
            return None
        try:
            return compile_template(text, line, groups, self.templates)
        except TemplateProblem as exc:
            self.error(line, str(exc), kind="bad template")
            return None

    def numbers(self, mapping: YMap, key: str) -> tuple[list[str], list[str]]:
        """Phone numbers reduced to digits: (exact, prefixes)."""
        exact, prefixes = [], []
        for value, line in self.values(mapping, key):
            text = str(value).strip()
            prefix = text.endswith("*")
            core = text[:-1].rstrip() if prefix else text
            if not core and prefix:
                self.error(line, f"{key!r}: '*' alone matches every number; leave the condition out instead")
            elif not _NUMBER_CHARS.match(core) or not digits(core):
                self.error(line, f"{key!r}: {text!r} is not a phone number (digits, optionally "
                                 "with + spaces dashes dots parentheses, and a trailing * for a prefix)")
            else:
                (prefixes if prefix else exact).append(digits(core))
        return exact, prefixes

    # -- the document --------------------------------------------------------------
    def document(self, data, digest: str) -> RuleSet | None:
        if data is None:
            self.error(0, "the file is empty: it needs 'version: 1' and 'rules:'", kind="empty file")
            return None
        if not isinstance(data, YMap):
            self.error(getattr(data, "line", 1) or 1, "the top level must be a mapping with 'version' and 'rules'")
            return None
        self.keys(data, TOP_KEYS, "the top level", NOT_YET_TOP)
        if "version" not in data:
            self.error(1, "missing 'version: 1'", kind="missing key")
        elif type(data["version"]) is not int or data["version"] != VERSION:
            self.error(data.value_line("version"),
                       f"unsupported version {_show(data['version'])}: this service reads version {VERSION}",
                       kind="bad version")
        tz = self.settings(data)
        compliance = self.compliance(data)
        limit = self.limits(data)
        rules: list[Rule] = []
        shapes: list[_Shape] = []
        if "rules" not in data:
            self.error(1, "missing 'rules:' (a list of rules)", kind="missing key")
        elif not isinstance(data["rules"], YList):
            self.error(data.value_line("rules"), f"'rules' must be a list, got {_show(data['rules'])}")
        else:
            seen: dict[str, int] = {}
            for i, item in enumerate(data["rules"]):
                line = data["rules"].item_line(i)
                compiled = self.rule(item, len(rules), line, seen)
                if compiled is not None:
                    rules.append(compiled[0])
                    shapes.append(compiled[1])
        if self.errors:
            return None
        self.shadows(shapes)
        if self.clock is not None and not self.timezone_set:
            line, key = self.clock
            self.warn(line, f"{key!r} is checked in UTC because no timezone is set; "
                            "set settings.timezone to a place name like America/New_York")
        ruleset = _index(self.path, digest, tz, rules, shapes, sorted(self.warnings, key=lambda p: p.line))
        ruleset.compliance, ruleset.limit = compliance, limit
        ruleset.answers_whatsapp = compliance.enabled or any(s.whatsapp for s in shapes)
        return ruleset

    def settings(self, data: YMap):
        tz = ZoneInfo("UTC")
        if "settings" not in data:
            return tz
        settings = data["settings"]
        if not isinstance(settings, YMap):
            self.error(data.value_line("settings"), f"'settings' must be a mapping, got {_show(settings)}")
            return tz
        self.keys(settings, SETTINGS_KEYS, "settings")
        if "timezone" in settings:
            name = settings["timezone"]
            line = settings.value_line("timezone")
            if not isinstance(name, str) or not name.strip():
                self.error(line, f"'timezone' must be an IANA name such as America/New_York, got {_show(name)}")
                return tz
            try:
                tz = ZoneInfo(name.strip())
            except (ZoneInfoNotFoundError, ValueError, OSError):
                self.error(line, _unknown_timezone(name), kind="unknown timezone")
                return tz
            self.timezone_set = True
            if _FIXED_OFFSET.match(name.strip()):
                zone = re.sub(r"^GMT[+-]?0$", "GMT", name.strip().removeprefix("Etc/"))
                place = _PLACES.get(zone)
                if place is not None:
                    advice = f"use a place name like {place}"
                else:  # GMT+5, GMT-9: an offset many regions share, so no one place is named
                    hours = tz.utcoffset(datetime(2026, 1, 1)).total_seconds() / 3600
                    advice = (f"it is UTC{hours:+g} (the sign of GMT+N names is reversed): "
                              "use the place name of your region, as Area/City")
                self.warn(line, f"timezone {name.strip()!r} is a fixed offset with no daylight saving; {advice}")
        return tz

    def compliance(self, data: YMap) -> Compliance:
        """`compliance:`: on by default with the built-in keywords and replies."""
        default = Compliance()
        if "compliance" not in data:
            return default
        value = data["compliance"]
        if not isinstance(value, YMap):
            self.error(data.value_line("compliance"), f"'compliance' must be a mapping, got {_show(value)}")
            return default
        self.keys(value, COMPLIANCE_KEYS, "compliance")
        enabled = self.boolean(value, "enabled") if "enabled" in value else True
        scope = default.scope
        if "scope" in value:
            given = value["scope"]
            if not isinstance(given, str) or given.strip().lower() not in SCOPES:
                self.error(value.value_line("scope"),
                           f"'scope' must be account or number, got {_show(given)}")
            else:
                scope = given.strip().lower()
        seen: dict[str, tuple[str, int]] = {}
        sections = {}
        for key, fallback in (("opt_out", default.opt_out), ("opt_in", default.opt_in), ("help", default.help)):
            sections[key] = self.keyword_section(value, key, fallback, seen)
        return Compliance(enabled=enabled, scope=scope, opt_out=sections["opt_out"],
                          opt_in=sections["opt_in"], help=sections["help"])

    def keyword_section(self, compliance: YMap, key: str, fallback: Keywords,
                        seen: dict[str, tuple[str, int]]) -> Keywords:
        words, reply = fallback.words, fallback.reply
        section = compliance.get(key)
        if key in compliance and not isinstance(section, YMap):
            self.error(compliance.value_line(key),
                       f"'compliance.{key}' must be a mapping with 'keywords' and 'reply', got {_show(section)}")
            section = None
        if section is not None:
            self.keys(section, KEYWORDS_KEYS, f"compliance.{key}")
            if "keywords" in section:
                chosen = set()
                for word, line in self.values(section, "keywords", kinds=(str, int)):
                    folded = fold(str(word))
                    if not folded:
                        self.error(line, f"compliance.{key}: keyword {word!r} has no letters or digits")
                    elif folded in seen and seen[folded][0] != key:
                        other, first = seen[folded]
                        self.error(line, f"compliance.{key}: keyword {word!r} is already an "
                                         f"{other} keyword (line {first})", kind="duplicate keyword")
                    else:
                        seen.setdefault(folded, (key, line))
                        chosen.add(folded)
                words = frozenset(chosen)
            if "reply" in section:
                text, line = section["reply"], section.value_line("reply")
                if not isinstance(text, str) or not text.strip():
                    self.error(line, f"compliance.{key}: 'reply' must be a non-empty text, got {_show(text)}")
                elif "{{" in text or "{%" in text:
                    self.error(line, f"compliance.{key}: 'reply' is plain text, not a template", kind="bad template")
                else:
                    reply = text
        for word in words:
            if word in seen and seen[word][0] != key:
                continue  # reported above, at the keyword that collides
            seen.setdefault(word, (key, compliance.key_line(key) if key in compliance else compliance.line))
        return Keywords(words, reply)

    def limits(self, data: YMap) -> ReplyLimit | None:
        """`limits: {replies_per_sender: {count: N, per: 30s|10m|1h|1d}}` ."""
        if "limits" not in data:
            return None
        value = data["limits"]
        if not isinstance(value, YMap):
            self.error(data.value_line("limits"), f"'limits' must be a mapping, got {_show(value)}")
            return None
        self.keys(value, LIMITS_KEYS, "limits")
        if "replies_per_sender" not in value:
            return None
        spec = value["replies_per_sender"]
        if not isinstance(spec, YMap):
            self.error(value.value_line("replies_per_sender"),
                       f"'replies_per_sender' must be a mapping like {{count: 5, per: 1h}}, got {_show(spec)}")
            return None
        self.keys(spec, LIMIT_KEYS, "replies_per_sender")
        missing = [k for k in LIMIT_KEYS if k not in spec]
        if missing:
            self.error(spec.line, f"'replies_per_sender' needs {' and '.join(repr(k) for k in missing)}",
                       kind="missing key")
            return None
        count, per = spec["count"], spec["per"]
        ok = True
        if type(count) is not int or count < 1:
            self.error(spec.value_line("count"), f"'count' must be a whole number, 1 or more, got {_show(count)}")
            ok = False
        m = _PER.match(per) if isinstance(per, str) else None
        if not m or int(m.group(1)) == 0:
            self.error(spec.value_line("per"),
                       f"'per' must be a duration such as 30s, 10m, 1h or 1d, got {_show(per)}")
            ok = False
        elif int(m.group(1)) * _UNIT_SECONDS[m.group(2)] > 366 * 86400:
            self.error(spec.value_line("per"), f"'per' is longer than a year: {per!r}")
            ok = False
        if not ok:
            return None
        return ReplyLimit(count, timedelta(seconds=int(m.group(1)) * _UNIT_SECONDS[m.group(2)]))

    def rule(self, item, index: int, line: int, seen: dict[str, int]):
        if not isinstance(item, YMap):
            self.error(line, f"each rule must be a mapping, got {_show(item)}")
            return None
        before = len(self.errors)
        self.keys(item, RULE_KEYS, "a rule", NOT_YET_RULE)
        name = item.get("name")
        if "name" not in item:
            self.error(item.line, "a rule needs a 'name'", kind="missing key")
            name = f"#{index + 1}"
        elif not isinstance(name, str) or not name.strip():
            self.error(item.value_line("name"), f"'name' must be text, got {_show(name)}")
            name = f"#{index + 1}"
        else:
            name = name.strip()
            if name in seen:
                self.error(item.value_line("name"), f"duplicate rule name {name!r} (first at line {seen[name]})",
                           kind="duplicate name")
            else:
                seen[name] = item.value_line("name")

        checks: list[tuple[int, Check]] = []
        groups = None
        keywords = texts = types = None
        when = item.get("when")
        if "when" in item:
            if not isinstance(when, YMap):
                self.error(item.value_line("when"), f"'when' must be a mapping of conditions, got {_show(when)}")
                when = None
            else:
                self.rule_name = name  # for the rule's regex condition, which logs and counts by it
                checks, groups, keywords, texts, types = self.when(when)

        replies = []
        if "reply" in item:
            value = item["reply"]
            if isinstance(value, YList):
                if not value:
                    self.error(item.value_line("reply"), "'reply' needs at least one text", kind="missing value")
                entries = [(v, value.item_line(i)) for i, v in enumerate(value)]
            else:
                entries = [(value, item.value_line("reply"))]
            for text, tline in entries:
                replies.append(self.template(text, tline, groups))

        forward = None
        if "forward" in item:
            forward = self.forward(item, groups)
        media = self.media(item) if "media" in item else ()
        webhook = self.webhook(item) if "webhook" in item else None

        silent = self.boolean(item, "silent") if "silent" in item else False
        cont = self.boolean(item, "continue") if "continue" in item else False
        if silent and (replies or forward is not None or media):
            self.error(item.key_line("silent"), "'silent: true' cannot go with 'reply', 'forward' or 'media'",
                       kind="conflicting keys")
        if len(self.errors) == before and not (replies or "forward" in item or media or "webhook" in item
                                               or silent or NOT_YET_RULE & set(item)):
            self.error(item.line, f"rule {name!r} does nothing: give it 'reply', 'forward', 'media', "
                                  "'webhook' or 'silent: true'", kind="rule does nothing")
        only_whatsapp = types == frozenset({"whatsapp"})
        if self.sending is not None:
            self.needs_settings(item, name, webhook, media, only_whatsapp and bool(replies or forward))
        if len(self.errors) > before:
            return None

        for template in replies:
            self.note_encoding(name, "reply", template)
        if forward is not None:
            self.note_encoding(name, "forward", forward.text)
        templates = [*replies, *([forward.text] if forward else [])]
        checks.sort(key=lambda pair: pair[0])
        compiled = Rule(
            name=name, index=index, line=line, checks=tuple(c for _, c in checks),
            replies=tuple(replies), forward=forward, silent=silent, cont=cont,
            media=media, webhook=webhook,
            needs_context=any(t.constant is None for t in templates),
        )
        # A `type` condition that does not list whatsapp keeps this rule away from WhatsApp
        # senders; `not` is not looked into (answers_whatsapp only makes the service warn).
        whatsapp = bool(replies or forward or media) and (types is None or "whatsapp" in types)
        return compiled, _Shape(name, line, when, keywords, texts, stops=not cont, whatsapp=whatsapp)

    def needs_settings(self, item: YMap, name: str, webhook, media, answers_whatsapp: bool) -> None:
        """The actions that cannot work with the service's settings (`sending`)."""
        if webhook is not None and not self.sending.webhook_secret:
            self.error(item.key_line("webhook"), f"rule {name!r}: 'webhook' needs WEBHOOK_SECRET to be set "
                                                 "(the key that signs each call, X-Responder-Signature)",
                                                 kind="needs a setting")
        if media and not self.sending.api:
            self.error(item.key_line("media"), f"rule {name!r}: 'media' is sent through Plivo's Message API, "
                                               "which needs PLIVO_AUTH_ID to be set", kind="needs a setting")
        if answers_whatsapp and not self.sending.api:
            key = "reply" if "reply" in item else "forward"
            self.error(item.key_line(key), f"rule {name!r}: replies to WhatsApp go through Plivo's Message API, "
                                           "which needs PLIVO_AUTH_ID to be set", kind="needs a setting")

    def url(self, value, line: int, what: str) -> str | None:
        """An http(s) URL with a host, as given (not a template), or None after an error.

        A URL is quoted in the error without its user information and query (`user:password@`,
        `?api_key=...`): the operator's terminal and the service's log are no place for them."""
        if not isinstance(value, str) or not value:
            self.error(line, f"{what}, got {_show(value)}", kind="bad url")
            return None
        shown = _show(hide_credentials(value))
        if "{{" in value or "{%" in value:
            self.error(line, f"{what}, not templates: got {shown}", kind="bad url")
            return None
        if len(value) > URL_MAX:
            self.error(line, f"{what} of at most {URL_MAX:,} characters, got one of {len(value):,}", kind="bad url")
            return None
        if any(ch.isspace() or not ch.isprintable() for ch in value):
            self.error(line, f"{what} without spaces or control characters, got {shown}", kind="bad url")
            return None
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
            ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
        except ValueError:
            ok = False
        if not ok:
            self.error(line, f"{what}, got {shown}", kind="bad url")
            return None
        return value

    def media(self, item: YMap) -> tuple[str, ...]:
        """`media`: one URL or a list of 1..10, sent with the rule's first reply."""
        value = item["media"]
        if isinstance(value, YList):
            if not value:
                self.error(item.value_line("media"), f"'media' needs at least one URL (at most {MEDIA_MAX})",
                           kind="missing value")
                return ()
            if len(value) > MEDIA_MAX:
                self.error(value.item_line(MEDIA_MAX),
                           f"'media' takes at most {MEDIA_MAX} URLs, got {len(value)}")
                return ()
            entries = [(v, value.item_line(i)) for i, v in enumerate(value)]
        elif isinstance(value, YMap):
            self.error(item.value_line("media"), f"'media' takes one http(s) URL or a list of them, got {_show(value)}")
            return ()
        else:
            entries = [(value, item.value_line("media"))]
        urls = [self.url(v, line, "'media' takes http(s) URLs") for v, line in entries]
        if None in urls:
            return ()
        return tuple(urls)

    def webhook(self, item: YMap) -> Webhook | None:
        """`webhook: URL` or `webhook: {url: URL, method: POST|PUT|PATCH}`."""
        value = item["webhook"]
        if isinstance(value, str):
            url = self.url(value, item.value_line("webhook"), "'webhook' takes an http(s) URL")
            return None if url is None else Webhook(url)
        if not isinstance(value, YMap):
            self.error(item.value_line("webhook"),
                       f"'webhook' must be a URL or a mapping with 'url' and 'method', got {_show(value)}")
            return None
        self.keys(value, WEBHOOK_KEYS, "webhook")
        method = "POST"
        if "method" in value:
            given = value["method"]
            if not isinstance(given, str) or given.strip().upper() not in WEBHOOK_METHODS:
                self.error(value.value_line("method"),
                           f"'webhook.method' must be POST, PUT or PATCH, got {_show(given)}")
                method = None
            else:
                method = given.strip().upper()
        if "url" not in value:
            self.error(value.line, "'webhook' needs 'url'", kind="missing key")
            return None
        url = self.url(value["url"], value.value_line("url"), "'webhook.url' takes an http(s) URL")
        if url is None or method is None:
            return None
        return Webhook(url, method)

    def forward(self, item: YMap, groups):
        value = item["forward"]
        if not isinstance(value, YMap):
            self.error(item.value_line("forward"), f"'forward' must be a mapping with 'to' and 'text', got {_show(value)}")
            return None
        self.keys(value, FORWARD_KEYS, "forward")
        if "to" not in value:
            self.error(value.line, "'forward' needs 'to' (one number or a list)", kind="missing key")
            return None
        exact, prefixes = self.numbers(value, "to")
        if prefixes:
            self.error(value.value_line("to"), "'forward.to' takes whole numbers, not prefixes")
        line = value.value_line("text") if "text" in value else value.line
        template = self.template(value.get("text", DEFAULT_FORWARD_TEXT), line, groups)
        if template is None or not exact:
            return None
        return Forward(tuple(dict.fromkeys(exact)), template)

    def note_encoding(self, name: str, kind: str, template) -> None:
        """Warn about a fixed text that costs more than one plain GSM-7 unit: UCS-2 (70
        characters a unit instead of 160), or several units. Templated texts vary, so
        they are not measured."""
        if template is None or template.constant is None:
            return
        enc = smsenc.analyse(template.constant)
        if enc.is_gsm7 and enc.units <= 1:
            return
        doubled = enc.is_gsm7 and any(ch in smsenc.GSM_EXTENSION for ch in template.constant)
        size = _count(enc.length, "character") + (" (^{}[]~|€\\ count twice)" if doubled else "")
        note = f"rule {name!r}: {kind} is {enc.name}, {size}, {_count(enc.units, 'unit')}"
        if not enc.is_gsm7:
            odd = next((ch for ch in template.constant if ch not in smsenc.GSM_ALL), None)
            if odd is not None:
                note += f" (UCS-2 because of {odd!r})"
        self.warn(template.line, note)

    # -- conditions ----------------------------------------------------------------
    def when(self, when: YMap):
        """Compile one `when` mapping: (checks with cost, regex groups, keywords, texts, types)."""
        self.keys(when, WHEN_KEYS, "'when'")
        checks: list[tuple[int, Check]] = []
        groups = keywords = texts = types = None
        for key in when:
            if key not in WHEN_KEYS:
                continue
            if key in ("days", "hours") and self.clock is None:
                self.clock = (when.key_line(key), key)
            check = None
            if key == "keyword":
                words = []
                for value, line in self.values(when, key):
                    word = str(value).strip()
                    if len(word.split()) > 1:
                        self.error(line, f"keyword {word!r} is more than one word; use 'text' or 'contains' for phrases")
                    elif not normalize_word(word):
                        self.error(line, f"keyword {word!r} has no letters or digits")
                    else:
                        words.append(normalize_word(word))
                keywords = frozenset(words)
                check = _in_set("keyword", keywords)
            elif key == "text":
                texts = frozenset(normalize_text(str(v)) for v, _ in self.values(when, key))
                check = _in_set("normalized", texts)
            elif key == "contains":
                parts = tuple(str(v).casefold() for v, _ in self.values(when, key))
                check = _contains(parts)
            elif key == "regex":
                check, groups = self.regex(when)
            elif key in ("from", "to"):
                exact, prefixes = self.numbers(when, key)
                check = _number(key + "_digits", frozenset(exact), tuple(prefixes))
            elif key == "type":
                types = self.choices(when, key, TYPES)
                check = _msg_attr("type", types)
            elif key == "intent":
                check = _msg_attr("intent", self.choices(when, key, INTENTS))
            elif key == "media":
                wanted = self.boolean(when, key)
                check = _media(wanted)
            elif key == "days":
                chosen = self.choices(when, key, DAYS)
                check = _in_set("weekday", frozenset(DAYS.index(d) for d in chosen))
            elif key == "hours":
                check = self.hours(when)
            elif key == "not":
                inner = when[key]
                if not isinstance(inner, YMap):
                    self.error(when.value_line(key), f"'not' takes a mapping of conditions, got {_show(inner)}")
                elif not inner:
                    self.error(when.value_line(key), "'not' needs at least one condition", kind="missing value")
                else:
                    sub, _, _, _, _ = self.when(inner)
                    sub.sort(key=lambda pair: pair[0])
                    check = _negate(tuple(c for _, c in sub))
            if check is not None:
                checks.append((_COST[key], check))
        return checks, groups, keywords, texts, types

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
            self.error(line, f"'regex' takes one pattern as text, got {_show(pattern)}", kind="bad regex")
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
            self.error(line, f"'hours' takes \"HH:MM-HH:MM\" (for example \"17:00-09:00\"), got {_show(value)}",
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

    # -- warnings ------------------------------------------------------------------
    def shadows(self, shapes: list[_Shape]) -> None:
        """Warn about rules that can never match because an earlier one always stops first."""
        catch_all = None
        by_keyword: dict[str, _Shape] = {}
        by_text: dict[str, _Shape] = {}
        for shape in shapes:
            earlier = catch_all
            if earlier is None and shape.keywords:
                if all(k in by_keyword for k in shape.keywords):
                    earlier = by_keyword[min(shape.keywords, key=lambda k: by_keyword[k].line)]
            if earlier is None and shape.texts and shape.keywords is None:
                cover = [by_text.get(t) or by_keyword.get(first_keyword(t)) for t in shape.texts]
                if all(cover):
                    earlier = min(cover, key=lambda s: s.line)
            if earlier is not None:
                self.warn(shape.line, f"rule {shape.name!r} can never match: rule {earlier.name!r} "
                                      f"(line {earlier.line}) matches first and stops")
                continue
            if not shape.stops:
                continue
            if not shape.has_when:
                catch_all = shape
            elif shape.when_keys == {"keyword"} and shape.keywords:
                for k in shape.keywords:
                    by_keyword.setdefault(k, shape)
            elif shape.when_keys == {"text"} and shape.texts:
                for t in shape.texts:
                    by_text.setdefault(t, shape)


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


# -- index and entry points ------------------------------------------------------
def _index(path, digest, tz, rules, shapes, warnings) -> RuleSet:
    by_keyword: dict[str, list[int]] = {}
    by_text: dict[str, list[int]] = {}
    general: list[int] = []
    for rule, shape in zip(rules, shapes):
        if shape.keywords:
            for k in shape.keywords:
                by_keyword.setdefault(k, []).append(rule.index)
        elif shape.texts:
            for t in shape.texts:
                by_text.setdefault(t, []).append(rule.index)
        else:
            general.append(rule.index)
    return RuleSet(
        path=path, digest=digest, tz=tz, rules=tuple(rules),
        by_keyword={k: tuple(v) for k, v in by_keyword.items()},
        by_text={k: tuple(v) for k, v in by_text.items()},
        general=tuple(general), warnings=tuple(warnings),
    )


def compile_text(text: str, path: str = "rules.yaml", *, sending: Sending | None = None) -> RuleSet:
    """Compile rules from text; raise `RulesError` listing every problem.

    With `sending` (the service's settings) the actions that cannot work with
    them are errors too; None checks the file alone. `path` is made absolute, so
    every problem names the file wherever the command or service was started.
    """
    path = os.path.abspath(path)
    data, problems = source.parse(text, path)
    compiler = _Compiler(path, sending)
    compiler.errors.extend(problems)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    ruleset = compiler.document(data, digest)
    if compiler.errors or ruleset is None:
        raise RulesError(sorted(compiler.errors, key=lambda p: p.line))
    return ruleset


def read(path: str, what: str = "rules file") -> str:
    """The text of a rules file (or another YAML file, `what`); unreadable or not UTF-8 is a
    `RulesError` naming its absolute path."""
    path = os.path.abspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise RulesError([Problem(path, 0, f"cannot read the {what}: {exc.strerror or exc}", "cannot read")]) from None
    return decode(raw, path, what)


def decode(raw: bytes, path: str, what: str = "rules file") -> str:
    """The text of a file read as `raw`; not UTF-8 is a `RulesError` naming the line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RulesError([Problem(path, line, f"the {what} is not valid UTF-8", "not UTF-8")]) from None


def load(path: str, *, sending: Sending | None = None) -> RuleSet:
    """Read and compile a rules file (`sending` as for `compile_text`)."""
    return compile_text(read(path), path, sending=sending)


def _unknown_timezone(name: str) -> str:
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


def _count(n: int, noun: str) -> str:
    """`1 unit`, `2 units`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _kind_names(kinds) -> str:
    return " or ".join({str: "text", int: "a number", bool: "true/false"}.get(k, k.__name__) for k in kinds)


def _show(value) -> str:
    if isinstance(value, YMap) or isinstance(value, dict):
        return "a mapping"
    if isinstance(value, YList) or isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return repr(value)
