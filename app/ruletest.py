"""`rules test`: cases written in YAML (a message in, the expected answer out), run against
the rules, each on a fresh state.

A case is one message and what must come of it; a case with `steps` is a conversation,
its messages run in order on one state. Every case runs through the service's own
pipeline (`Responder` and `Store`) on a new, empty in-memory database, so STOP/START/HELP,
opt-outs and reply limits behave exactly as in the running service, without a server or a
database file. The cases run as for a service with every setting an action needs:
texts that go through the Message API (WhatsApp, media) are queued as with PLIVO_AUTH_ID
set and count as replies, webhook calls are queued as with WEBHOOK_SECRET set. Nothing is
sent anywhere.

The clock: a message is at its `at` (local time in the rules' timezone), else at the time
of the step before it, else at the case's `at`; without any, at the real time now.

The cases file is checked as a whole before anything runs, like a rules file: every
problem is one `path:line: message` line.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode

from .inbound import FORM_TYPE, INTENTS, TYPES
from .rules import RulesError, RuleSet, load
from .rules.checker import show
from .rules.compiler import read
from .rules.engine import digits
from .rules.source import Problem, YList, YMap, parse
from .service import HttpRequest, Responder
from .store import Store

#: The cases file `rules test` reads when none is named, in the rules file's folder.
DEFAULT_NAME = "rules.test.yaml"
#: Who sends a case's message, and to which of the business's numbers, unless it says.
DEFAULT_FROM = "14155550123"
DEFAULT_TO = "14155550100"
#: The years an `at` may name: the pipeline converts it to UTC and looks back a reply-limit
#: window from it, which must stay inside what a date can hold (years 1 to 9999).
AT_YEARS = (1970, 9998)

TOP_KEYS = ("cases",)
MESSAGE_KEYS = ("text", "from", "to", "type", "media", "intent", "at")
EXPECT_KEYS = ("replies", "forwards", "rules")
CASE_KEYS = ("name", *MESSAGE_KEYS, *EXPECT_KEYS, "steps")
#: A conversation's own keys: `from`, `to` and `at` are what its steps start from.
CONVERSATION_KEYS = ("name", "from", "to", "at", "steps")
STEP_KEYS = (*MESSAGE_KEYS, *EXPECT_KEYS)
FORWARD_KEYS = ("to", "text")

_NUMBER_CHARS = re.compile(r"^[0-9+\-.() ]+$")
_URL = "http://rules-test.invalid/message"  # where the messages "arrive": nothing listens there


class CasesError(Exception):
    """A cases file was rejected; `problems` lists every error found."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True, slots=True)
class Step:
    """One message of a case and what must come of it (None: not checked)."""

    line: int
    text: str
    from_: str
    to: str
    type: str
    media: tuple[str, ...]
    intent: str
    at: datetime | None              # in the rules' timezone; None: the real time now
    replies: tuple[str, ...]
    forwards: tuple[tuple[tuple[str, ...], str], ...] | None
    rules: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class Case:
    line: int
    name: str
    steps: tuple[Step, ...]
    conversation: bool               # written with `steps`


@dataclass(frozen=True, slots=True)
class Got:
    """What came of one message, as the service recorded it."""

    replies: tuple[str, ...]
    forwards: tuple[tuple[tuple[str, ...], str], ...]
    rules: tuple[str, ...]
    errors: tuple[str, ...]          # template errors, or why the message was not answered


@dataclass(slots=True)
class Result:
    case: Case
    failed_step: int | None = None   # index of the step that failed
    differ: tuple[str, ...] = ()     # what differs there: replies, forwards, rules
    lines: tuple[str, ...] = ()      # what was expected and what came, indented

    @property
    def passed(self) -> bool:
        return self.failed_step is None


# -- reading the cases file ------------------------------------------------------
def default_path(rules_path: str) -> str:
    """`rules.test.yaml` in the folder of the rules file."""
    return os.path.join(os.path.dirname(rules_path), DEFAULT_NAME)


def load_cases(path: str, ruleset: RuleSet) -> list[Case]:
    """The cases of a file, checked against the rules' names; `CasesError` lists every problem."""
    try:
        text = read(path, "cases file")
    except RulesError as exc:
        raise CasesError(exc.problems) from None
    return parse_cases(text, os.path.abspath(path), ruleset)


def parse_cases(text: str, path: str, ruleset: RuleSet) -> list[Case]:
    try:
        data, problems = parse(text, path)
    except RulesError as exc:  # YAML syntax: nothing after it can be trusted
        raise CasesError(exc.problems) from None
    reader = _Reader(path, {r.name for r in ruleset.rules}, ruleset.tz)
    reader.problems.extend(problems)
    cases = reader.document(data)
    if reader.problems:  # (a conversation's `from` is read for each of its steps: said once)
        raise CasesError(sorted(dict.fromkeys(reader.problems), key=lambda p: p.line))
    return cases


class _Reader:
    def __init__(self, path: str, rule_names: set[str], tz):
        self.path = path
        self.rule_names = rule_names
        self.tz = tz
        self.problems: list[Problem] = []

    def error(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.path, line, message))

    def keys(self, mapping: YMap, allowed: tuple[str, ...], where: str) -> None:
        for key in mapping:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                why = f"did you mean {hint[0]!r}?" if hint else f"expected one of: {', '.join(allowed)}"
                self.error(mapping.key_line(key), f"unknown key {key!r} in {where} ({why})")

    def document(self, data) -> list[Case]:
        if data is None:
            self.error(0, "the file is empty: it needs 'cases:', a list of cases")
            return []
        if not isinstance(data, YMap):
            self.error(getattr(data, "line", 1) or 1, "the top level must be a mapping with 'cases:'")
            return []
        self.keys(data, TOP_KEYS, "the top level")
        items = data.get("cases")
        if "cases" not in data:
            self.error(1, "missing 'cases:' (a list of cases)")
            return []
        if not isinstance(items, YList) or not items:
            self.error(data.value_line("cases"), "'cases' needs at least one case" if isinstance(items, YList)
                       else f"'cases' must be a list of cases, got {show(items)}")
            return []
        cases = []
        for i, item in enumerate(items):
            case = self.case(item, items.item_line(i))
            if case is not None:
                cases.append(case)
        return cases

    def case(self, item, line: int) -> Case | None:
        if not isinstance(item, YMap):
            self.error(line, f"each case must be a mapping, got {show(item)}")
            return None
        before = len(self.problems)
        name = None
        if "name" in item:
            name = item["name"]
            if not isinstance(name, str) or not name.strip():
                self.error(item.value_line("name"), f"'name' must be text, got {show(name)}")
        if "steps" not in item:
            self.keys(item, CASE_KEYS, "a case")
            step = self.step(item, item.line, None, None)
            if step is None or len(self.problems) > before:
                return None
            return Case(item.line, _label(name, step.text), (step,), False)

        self.keys(item, CONVERSATION_KEYS, "a case with 'steps' (its messages and expectations go in each step)")
        at = self.moment(item, "at") if "at" in item else None
        steps_value = item["steps"]
        if not isinstance(steps_value, YList) or not steps_value:
            self.error(item.value_line("steps"), "'steps' needs at least one step" if isinstance(steps_value, YList)
                       else f"'steps' must be a list of steps, got {show(steps_value)}")
            return None
        steps, last_explicit = [], at
        for i, raw in enumerate(steps_value):
            sline = steps_value.item_line(i)
            if not isinstance(raw, YMap):
                self.error(sline, f"each step must be a mapping (a message and its answer), got {show(raw)}")
                continue
            self.keys(raw, STEP_KEYS, "a step")
            step = self.step(raw, sline, item, at)
            if step is None:
                continue
            if "at" in raw:
                if last_explicit is not None and step.at < last_explicit:
                    self.error(raw.value_line("at"),
                               f"'at' goes back in time: {_to_the_minute(step.at)} is before "
                               f"the time of the step before it ({_to_the_minute(last_explicit)})")
                last_explicit = step.at
            at = step.at  # the next step, without its own `at`, is at this one's time
            steps.append(step)
        if len(self.problems) > before:
            return None
        return Case(item.line, _label(name, None), tuple(steps), True)

    def step(self, item: YMap, line: int, conversation: YMap | None, at: datetime | None) -> Step | None:
        """A message and its expectations; `from` and `to` default to the conversation's, `at`
        to the time given."""
        before = len(self.problems)
        if "text" not in item:
            self.error(line, "a case needs 'text' (the message), or 'steps' (a conversation)")
            text = ""
        else:
            text = self.text(item, "text")
        from_ = self.number(item, conversation, "from", DEFAULT_FROM)
        to = self.number(item, conversation, "to", DEFAULT_TO)
        media = self.media(item) if "media" in item else ()
        msg_type = "mms" if media else "sms"  # a message with a picture comes as MMS, unless it says
        if "type" in item:
            msg_type = self.choice(item, "type", TYPES) or msg_type
        intent = self.choice(item, "intent", ("", *INTENTS)) if "intent" in item else ""
        if "at" in item:
            at = self.moment(item, "at")
        if "replies" not in item:
            self.error(line, "a case needs 'replies': the texts expected back, in order ([] for none)")
            replies: tuple[str, ...] = ()
        else:
            replies = self.texts(item, "replies")
        forwards = self.forwards(item) if "forwards" in item else None
        rules = self.rule_names_of(item) if "rules" in item else None
        if len(self.problems) > before:
            return None
        return Step(line, text, from_, to, msg_type, media, intent or "", at, replies, forwards, rules)

    # -- values ----------------------------------------------------------------
    def text(self, item: YMap, key: str) -> str:
        value = item[key]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.error(item.value_line(key), f"{key!r} must be text, got {show(value)}")
            return ""
        return str(value)

    def texts(self, item: YMap, key: str) -> tuple[str, ...]:
        """One text or a list of them."""
        value = item[key]
        if not isinstance(value, YList):
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                self.error(item.value_line(key), f"{key!r} takes a list of texts ([] for none), got {show(value)}")
                return ()
            return (str(value),)
        out = []
        for i, entry in enumerate(value):
            if isinstance(entry, bool) or not isinstance(entry, (str, int, float)):
                self.error(value.item_line(i), f"{key!r} takes texts, got {show(entry)}")
            else:
                out.append(str(entry))
        return tuple(out)

    def number(self, item: YMap, conversation: YMap | None, key: str, default: str) -> str:
        for where in (item, conversation):
            if where is not None and key in where:
                return self.digits_of(where[key], where.value_line(key), repr(key)) or default
        return default

    def digits_of(self, value, line: int, what: str) -> str | None:
        """A phone number written as in rules (`+1 (415) 555-0100`), as digits."""
        text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
        reduced = digits(text) if _NUMBER_CHARS.match(text) else ""
        if not 1 <= len(reduced) <= 20:
            self.error(line, f"{what}: {show(value)} is not a phone number (digits, optionally with "
                             "+ spaces dashes dots parentheses)")
            return None
        return reduced

    def choice(self, item: YMap, key: str, allowed: tuple[str, ...]) -> str | None:
        value = item[key]
        given = value.strip().lower() if isinstance(value, str) else None
        if given not in allowed:
            shown = ", ".join(a or '""' for a in allowed)
            self.error(item.value_line(key), f"{key!r} must be one of {shown}, got {show(value)}")
            return None
        return given

    def media(self, item: YMap) -> tuple[str, ...]:
        value = item["media"]
        entries = ([(v, value.item_line(i)) for i, v in enumerate(value)] if isinstance(value, YList)
                   else [(value, item.value_line("media"))])
        urls = []
        for url, line in entries:
            if not isinstance(url, str) or not url.strip() or any(ch.isspace() for ch in url.strip()):
                self.error(line, f"'media' takes URLs (one, or a list), got {show(url)}")
            else:
                urls.append(url.strip())
        return tuple(urls)

    def moment(self, item: YMap, key: str) -> datetime | None:
        value = item[key]
        try:
            if not isinstance(value, str):
                raise ValueError
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            self.error(item.value_line(key), f"{key!r} takes a local time in the rules' timezone, such as "
                                             f"\"2026-11-23T10:00\", got {show(value)}")
            return None
        try:
            moment = moment.replace(tzinfo=self.tz) if moment.tzinfo is None else moment.astimezone(self.tz)
        except OverflowError:  # an offset that carries it past year 9999
            moment = None
        if moment is None or not AT_YEARS[0] <= moment.year <= AT_YEARS[1]:
            self.error(item.value_line(key), f"{key!r} must be in the years {AT_YEARS[0]} to {AT_YEARS[1]}, "
                                             f"got {show(value)}")
            return None
        return moment

    def forwards(self, item: YMap) -> tuple | None:
        value = item["forwards"]
        if not isinstance(value, YList):
            self.error(item.value_line("forwards"), "'forwards' must be a list of {to: [numbers], text: ...} "
                                                    f"([] for none), got {show(value)}")
            return None
        out = []
        for i, entry in enumerate(value):
            line = value.item_line(i)
            if not isinstance(entry, YMap):
                self.error(line, f"each forward must be a mapping {{to: [numbers], text: ...}}, got {show(entry)}")
                continue
            self.keys(entry, FORWARD_KEYS, "a forward")
            missing = [k for k in FORWARD_KEYS if k not in entry]
            if missing:
                self.error(line, f"a forward needs {' and '.join(repr(k) for k in missing)}")
                continue
            to = entry["to"]
            numbers = ([(v, to.item_line(j)) for j, v in enumerate(to)] if isinstance(to, YList)
                       else [(to, entry.value_line("to"))])
            if not numbers:
                self.error(entry.value_line("to"), "'to' needs at least one number")
            dst = tuple(self.digits_of(v, ln, "'to'") for v, ln in numbers)
            out.append((dst, self.text(entry, "text")))
        return tuple(out)

    def rule_names_of(self, item: YMap) -> tuple[str, ...]:
        names = self.texts(item, "rules")
        value = item["rules"]
        for i, name in enumerate(names):
            if name not in self.rule_names:
                line = value.item_line(i) if isinstance(value, YList) else item.value_line("rules")
                hint = difflib.get_close_matches(name, sorted(self.rule_names), n=1)
                self.error(line, f"no rule is named {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        return names


# -- running ---------------------------------------------------------------------
class _Rules:
    """The one ruleset the cases run against (what the service's holder gives)."""

    def __init__(self, ruleset: RuleSet):
        self.ruleset = ruleset

    def current(self) -> RuleSet:
        return self.ruleset


class _Clock:
    """The rules' clock for the message being run: a case's moment, or the real time now."""

    def __init__(self, tz):
        self.tz = tz
        self.at: datetime | None = None

    def __call__(self) -> datetime:
        return datetime.now(self.tz) if self.at is None else self.at


class _Responder(Responder):
    """The service's pipeline, keeping the template errors of the latest decision."""

    errors: tuple[str, ...] = ()

    def decide(self, msg, ruleset, now):
        kind, via, decision = super().decide(msg, ruleset, now)
        self.errors = decision.errors if decision is not None else ()
        return kind, via, decision


def run_case(ruleset: RuleSet, case: Case) -> Result:
    """Run a case's messages in order on a new, empty state; stop at the first that differs."""
    store = Store.in_memory()
    try:
        clock = _Clock(ruleset.tz)
        responder = _Responder(tokens=(), verify=False, public_url=None, holder=_Rules(ruleset),
                               store=store, clock=clock, api=True, webhooks=True)
        for index, step in enumerate(case.steps):
            clock.at = step.at
            got = _send(responder, store, step, f"rules-test-{index + 1}")
            differ, lines = _differences(step, got)
            if lines:
                return Result(case, index, differ, lines)
        return Result(case)
    finally:
        store.dispose()


def _send(responder: _Responder, store: Store, step: Step, uuid: str) -> Got:
    """One message through the pipeline as Plivo would send it (unsigned), and what it recorded."""
    pairs = [("From", step.from_), ("To", step.to), ("Type", step.type),
             ("Text" if step.type == "sms" else "Body", step.text), ("MessageUUID", uuid),
             ("MessageIntent", step.intent), ("MediaCount", str(len(step.media)))]
    pairs += [(f"Media{i}", url) for i, url in enumerate(step.media, 1)]
    responder.errors = ()
    answer = responder.handle_message(HttpRequest("POST", _URL, b"", urlencode(pairs).encode("utf-8"),
                                                  FORM_TYPE, {}))
    rows = store.list_messages(1, uuid=uuid) if answer.status == 200 else []
    if not rows:
        reason = answer.body.decode("utf-8", "replace").strip()
        return Got((), (), (), (f"the message was not answered: {answer.status} {reason}",))
    row = rows[0]
    replies = tuple(r["text"] for r in row["replies"] if r["kind"] != "forward")
    forwards = tuple((tuple(r["numbers"]), r["text"]) for r in row["replies"] if r["kind"] == "forward")
    return Got(replies, forwards, tuple(row["rules"]), tuple(responder.errors))


def _differences(step: Step, got: Got) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(what differs, the indented lines that say what was expected and what came); a
    template error fails the step too. Nothing differs: ((), ())."""
    pairs = [("replies", list(step.replies), list(got.replies))]
    if step.forwards is not None:
        pairs.append(("forwards", _forwards(step.forwards), _forwards(got.forwards)))
    if step.rules is not None and sorted(step.rules) != sorted(got.rules):
        pairs.append(("rules", list(step.rules), list(got.rules)))
    differ, lines = [], []
    for what, expected, came in pairs:
        if expected != came:
            width = len(what) + 11  # "expected WHAT: " lines up the values below it
            differ.append(what)
            lines.append(f"  {'expected ' + what + ':':<{width}}{_json(expected)}")
            lines.append(f"  {'got ' + what + ':':<{width}}{_json(came)}")
    if lines or got.errors:
        if step.rules is None:
            lines.append(f"  rules that matched: {', '.join(got.rules) or '(none)'}")
        lines.extend(f"  error: {e}" for e in got.errors)
    return tuple(differ), tuple(lines)


def _forwards(forwards) -> list[dict]:
    return [{"to": list(to), "text": text} for to, text in forwards]


# -- the command ---------------------------------------------------------------------
@dataclass(slots=True)
class Report:
    out: list[str]                   # what the command prints
    errors: list[str]                # problems with the files (stderr)
    ok: bool


def run_file(rules_path: str, cases_path: str | None = None, verbose: bool = False) -> Report:
    """Load the rules (the file alone: no setting is needed) and the cases, run every case."""
    cases_path = cases_path or default_path(rules_path)
    try:
        ruleset = load(rules_path)
    except RulesError as exc:
        return Report([], [str(p) for p in exc.problems] + [f"{os.path.abspath(rules_path)}: rejected, "
                                                            f"{len(exc.problems)} error(s)"], False)
    try:
        cases = load_cases(cases_path, ruleset)
    except CasesError as exc:
        return Report([], [str(p) for p in exc.problems]
                      + [f"{os.path.abspath(cases_path)}: rejected, {len(exc.problems)} error(s)"], False)
    return report(ruleset, cases, os.path.abspath(cases_path), verbose)


def report(ruleset: RuleSet, cases: list[Case], path: str, verbose: bool = False) -> Report:
    out, failed = [], 0
    for case in cases:
        result = run_case(ruleset, case)
        if result.passed:
            if verbose:
                out.append(f"PASS {path}:{case.line} {case.name}")
            continue
        failed += 1
        step = case.steps[result.failed_step]
        where = f"{case.name}, step {result.failed_step + 1} (line {step.line})" if case.conversation else case.name
        why = f"{' and '.join(result.differ)} differ" if result.differ else "error"
        out.append(f"FAIL {path}:{case.line} {where}: {why}")
        out.extend(result.lines)
        left = len(case.steps) - result.failed_step - 1
        if left:
            out.append("  (the step after it was not run)" if left == 1
                       else f"  (the {left} steps after it were not run)")
    out.append(f"{len(cases) - failed} passed, {failed} failed")
    return Report(out, [], failed == 0)


# -- display -----------------------------------------------------------------------------
def _label(name, text: str | None) -> str:
    if isinstance(name, str) and name.strip():
        return name.strip()
    return _json(text) if text is not None else "(a conversation)"


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def _to_the_minute(moment: datetime) -> str:
    return moment.isoformat(timespec="minutes")
