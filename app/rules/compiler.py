"""Check a rules file as a whole and compile it into a `RuleSet` (format: docs/rules.md).

Every problem is collected with the line of the offending key or value, and
the file is rejected if there is any; regexes and templates are compiled here,
once, never per message. The `when:` conditions are compiled in `conditions`,
the shadow warnings and the index are worked out in `shapes`.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .. import smsenc
from ..logs import hide_credentials
from . import source
from .checker import show
from .compliance import Compliance, Keywords, ReplyLimit, fold
from .conditions import (
    WHEN_KEYS,  # noqa: F401 - every key list of the format can be read from here
    Conditions,
    When,
    fixed_offset_warning,
    unknown_timezone,
)
from .engine import DEFAULT_FORWARD_TEXT, Forward, Rule, RuleSet, Webhook
from .shapes import Shape, indexed_ruleset, shadow_warnings
from .source import Problem, RulesError, YList, YMap
from .templates import TemplateProblem, compile_template

VERSION = 1
TOP_KEYS = ("version", "settings", "compliance", "limits", "rules")
SETTINGS_KEYS = ("timezone",)
RULE_KEYS = ("name", "when", "reply", "forward", "silent", "continue", "webhook", "media")
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

_PER = re.compile(r"^\s*([0-9]+)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


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


class _Compiler(Conditions):
    def __init__(self, path: str, sending: Sending | None = None):
        super().__init__(path)
        self.sending = sending  # None: the service's settings are not checked
        self.templates: dict = {}
        self.timezone_set = False  # settings.timezone was given

    def template(self, text, line: int, groups) -> object:
        if not isinstance(text, str):
            self.error(line, f"a template must be text, got {show(text)}", kind="bad template")
            return None
        try:
            return compile_template(text, line, groups, self.templates)
        except TemplateProblem as exc:
            self.error(line, str(exc), kind="bad template")
            return None

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
                       f"unsupported version {show(data['version'])}: this service reads version {VERSION}",
                       kind="bad version")
        tz = self.settings(data)
        compliance = self.compliance(data)
        limit = self.limits(data)
        rules: list[Rule] = []
        shapes: list[Shape] = []
        if "rules" not in data:
            self.error(1, "missing 'rules:' (a list of rules)", kind="missing key")
        elif not isinstance(data["rules"], YList):
            self.error(data.value_line("rules"), f"'rules' must be a list, got {show(data['rules'])}")
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
        for line, warning in shadow_warnings(shapes):
            self.warn(line, warning)
        if self.clock is not None and not self.timezone_set:
            line, key = self.clock
            self.warn(line, f"{key!r} is checked in UTC because no timezone is set; "
                            "set settings.timezone to a place name like America/New_York")
        ruleset = indexed_ruleset(self.path, digest, tz, rules, shapes, sorted(self.warnings, key=lambda p: p.line))
        ruleset.compliance, ruleset.limit = compliance, limit
        ruleset.answers_whatsapp = compliance.enabled or any(s.whatsapp for s in shapes)
        return ruleset

    def section(self, data: YMap, name: str, allowed: tuple[str, ...]) -> YMap | None:
        """The top-level mapping `name` (settings, compliance, limits) with its keys checked; None
        when the file has none or it is not a mapping (a problem at its line): the caller's defaults hold."""
        if name not in data:
            return None
        value = data[name]
        if not isinstance(value, YMap):
            self.error(data.value_line(name), f"{name!r} must be a mapping, got {show(value)}")
            return None
        self.keys(value, allowed, name)
        return value

    def settings(self, data: YMap):
        tz = ZoneInfo("UTC")
        settings = self.section(data, "settings", SETTINGS_KEYS)
        if settings is None:
            return tz
        if "timezone" in settings:
            name = settings["timezone"]
            line = settings.value_line("timezone")
            if not isinstance(name, str) or not name.strip():
                self.error(line, f"'timezone' must be an IANA name such as America/New_York, got {show(name)}")
                return tz
            try:
                tz = ZoneInfo(name.strip())
            except (ZoneInfoNotFoundError, ValueError, OSError):
                self.error(line, unknown_timezone(name), kind="unknown timezone")
                return tz
            self.timezone_set = True
            warning = fixed_offset_warning(name, tz)
            if warning is not None:
                self.warn(line, warning)
        return tz

    def compliance(self, data: YMap) -> Compliance:
        """`compliance:`: on by default with the built-in keywords and replies."""
        default = Compliance()
        value = self.section(data, "compliance", COMPLIANCE_KEYS)
        if value is None:
            return default
        enabled = self.boolean(value, "enabled") if "enabled" in value else True
        scope = default.scope
        if "scope" in value:
            given = value["scope"]
            if not isinstance(given, str) or given.strip().lower() not in SCOPES:
                self.error(value.value_line("scope"),
                           f"'scope' must be account or number, got {show(given)}")
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
                       f"'compliance.{key}' must be a mapping with 'keywords' and 'reply', got {show(section)}")
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
                    self.error(line, f"compliance.{key}: 'reply' must be a non-empty text, got {show(text)}")
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
        value = self.section(data, "limits", LIMITS_KEYS)
        if value is None:
            return None
        if "replies_per_sender" not in value:
            return None
        spec = value["replies_per_sender"]
        if not isinstance(spec, YMap):
            self.error(value.value_line("replies_per_sender"),
                       f"'replies_per_sender' must be a mapping like {{count: 5, per: 1h}}, got {show(spec)}")
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
            self.error(spec.value_line("count"), f"'count' must be a whole number, 1 or more, got {show(count)}")
            ok = False
        m = _PER.match(per) if isinstance(per, str) else None
        if not m or int(m.group(1)) == 0:
            self.error(spec.value_line("per"),
                       f"'per' must be a duration such as 30s, 10m, 1h or 1d, got {show(per)}")
            ok = False
        elif int(m.group(1)) * _UNIT_SECONDS[m.group(2)] > 366 * 86400:
            self.error(spec.value_line("per"), f"'per' is longer than a year: {per!r}")
            ok = False
        if not ok:
            return None
        return ReplyLimit(count, timedelta(seconds=int(m.group(1)) * _UNIT_SECONDS[m.group(2)]))

    def rule(self, item, index: int, line: int, seen: dict[str, int]) -> tuple[Rule, Shape] | None:
        """One rule and its shape, or None after an error in it."""
        if not isinstance(item, YMap):
            self.error(line, f"each rule must be a mapping, got {show(item)}")
            return None
        before = len(self.errors)
        self.keys(item, RULE_KEYS, "a rule", NOT_YET_RULE)
        name = self.name_of(item, index, seen)
        when = self.rule_when(item, name)
        replies = self.replies(item, when.groups) if "reply" in item else []
        forward = self.forward(item, when.groups) if "forward" in item else None
        media = self.media(item) if "media" in item else ()
        webhook = self.webhook(item) if "webhook" in item else None
        silent = self.boolean(item, "silent") if "silent" in item else False
        cont = self.boolean(item, "continue") if "continue" in item else False
        self.actions(item, name, before, bool(replies or forward is not None or media), silent)
        if self.sending is not None:
            only_whatsapp = when.types == frozenset({"whatsapp"})
            self.needs_settings(item, name, webhook, media, only_whatsapp and bool(replies or forward))
        if len(self.errors) > before:
            return None

        for template in replies:
            self.note_encoding(name, "reply", template)
        if forward is not None:
            self.note_encoding(name, "forward", forward.text)
        templates = [*replies, *([forward.text] if forward else [])]
        compiled = Rule(
            name=name, index=index, line=line, checks=when.checks,
            replies=tuple(replies), forward=forward, silent=silent, cont=cont,
            media=media, webhook=webhook,
            needs_context=any(t.constant is None for t in templates),
        )
        # A `type` condition that does not list whatsapp keeps this rule away from WhatsApp
        # senders; `not` is not looked into (answers_whatsapp only makes the service warn).
        whatsapp = bool(replies or forward or media) and (when.types is None or "whatsapp" in when.types)
        shape = Shape(name, line, item.get("when"), when.keywords, when.texts, stops=not cont, whatsapp=whatsapp)
        return compiled, shape

    def name_of(self, item: YMap, index: int, seen: dict[str, int]) -> str:
        """The rule's name; `#N` (its place in the file) when it has none, for the later problems."""
        name = item.get("name")
        if "name" not in item:
            self.error(item.line, "a rule needs a 'name'", kind="missing key")
            return f"#{index + 1}"
        if not isinstance(name, str) or not name.strip():
            self.error(item.value_line("name"), f"'name' must be text, got {show(name)}")
            return f"#{index + 1}"
        name = name.strip()
        if name in seen:
            self.error(item.value_line("name"), f"duplicate rule name {name!r} (first at line {seen[name]})",
                       kind="duplicate name")
        else:
            seen[name] = item.value_line("name")
        return name

    def rule_when(self, item: YMap, name: str) -> When:
        """The rule's `when:` compiled; no conditions when it has none (or after an error)."""
        if "when" not in item:
            return When()
        when = item["when"]
        if not isinstance(when, YMap):
            self.error(item.value_line("when"), f"'when' must be a mapping of conditions, got {show(when)}")
            return When()
        self.rule_name = name  # for the rule's regex condition, which logs and counts by it
        return self.when(when)

    def replies(self, item: YMap, groups) -> list:
        """`reply`: one template or a list of them (None in place of one with an error)."""
        value = item["reply"]
        if isinstance(value, YList):
            if not value:
                self.error(item.value_line("reply"), "'reply' needs at least one text", kind="missing value")
            entries = [(v, value.item_line(i)) for i, v in enumerate(value)]
        else:
            entries = [(value, item.value_line("reply"))]
        return [self.template(text, line, groups) for text, line in entries]

    def actions(self, item: YMap, name: str, before: int, sends: bool, silent: bool) -> None:
        """A rule does something, and `silent` goes with nothing it `sends` (errors since `before`
        already say what is wrong)."""
        if silent and sends:
            self.error(item.key_line("silent"), "'silent: true' cannot go with 'reply', 'forward' or 'media'",
                       kind="conflicting keys")
        if len(self.errors) == before and not (sends or "forward" in item or "webhook" in item
                                               or silent or NOT_YET_RULE & set(item)):
            self.error(item.line, f"rule {name!r} does nothing: give it 'reply', 'forward', 'media', "
                                  "'webhook' or 'silent: true'", kind="rule does nothing")

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
            self.error(line, f"{what}, got {show(value)}", kind="bad url")
            return None
        shown = show(hide_credentials(value))
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
            self.error(item.value_line("media"), f"'media' takes one http(s) URL or a list of them, got {show(value)}")
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
                       f"'webhook' must be a URL or a mapping with 'url' and 'method', got {show(value)}")
            return None
        self.keys(value, WEBHOOK_KEYS, "webhook")
        method = "POST"
        if "method" in value:
            given = value["method"]
            if not isinstance(given, str) or given.strip().upper() not in WEBHOOK_METHODS:
                self.error(value.value_line("method"),
                           f"'webhook.method' must be POST, PUT or PATCH, got {show(given)}")
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
            self.error(item.value_line("forward"),
                       f"'forward' must be a mapping with 'to' and 'text', got {show(value)}")
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


def _count(n: int, noun: str) -> str:
    """`1 unit`, `2 units`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"

