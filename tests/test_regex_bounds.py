"""Rule regexes cost a bounded time per message: a search that hits a bound (its time, the
message's regex budget, the text's length) is no match, logged and counted; `rules check`
warns about nested quantifiers; hostile texts against a real server are answered in time
and do not slow the other messages."""

from __future__ import annotations

import json
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from conftest import ROOT, listening, sms
from prometheus_client.parser import text_string_to_metric_families
from servers import Server

from app import metrics
from app.cli import check_rules
from app.inbound import Inbound
from app.rules import RulesError, compile_text, decide, load, regexes

HOSTILE = "a" * 40 + "!"  # ^(a|aa)+$ backtracks through every way of splitting 40 a's
SLOW = "^(a|aa)+$"


def rules(body: str):
    return compile_text("version: 1\nrules:\n" + textwrap.dedent(body), "r.yaml")


def msg(text: str, uuid: str = "uuid-regex-1") -> Inbound:
    return Inbound(text=text, from_="14155550123", to="14155550100", uuid=uuid)


def stopped(rule: str, reason: str) -> float:
    return metrics.REGEX_STOPPED.labels(rule, reason)._value.get()


def logged(caplog) -> list:
    """The records of app.rules.regexes, each once (`listening` may capture one twice)."""
    return list({id(r): r for r in caplog.records if r.name == "app.rules.regexes"}.values())


@pytest.fixture
def counting(monkeypatch):
    """Counting on in this process (a command run in-process by another test turns it off)."""
    monkeypatch.setattr(metrics, "_counting", True)


# -- the time bound --------------------------------------------------------------------
def test_a_search_that_times_out_is_no_match_logged_and_counted(caplog, counting):
    ruleset = rules(f"""\
        - {{name: slow, when: {{regex: '{SLOW}'}}, reply: slow}}
        - {{name: rest, reply: thanks}}
    """)
    before = stopped("slow", "time")
    with listening(caplog, "app.rules.regexes"):
        started = time.monotonic()
        decision = decide(ruleset, msg(HOSTILE))
        took = time.monotonic() - started
    assert decision.matched == ("rest",)
    assert took < 1.0  # one search of at most SEARCH_TIMEOUT (0.1 s), with a wide margin
    assert stopped("slow", "time") == before + 1
    [record] = logged(caplog)
    assert record.levelname == "WARNING"
    assert record.rule == "slow" and record.uuid == "uuid-regex-1"
    assert "does not match" in record.getMessage()
    assert "aaaaaaaaaa" not in json.dumps({k: str(v) for k, v in vars(record).items()})  # never the text


def test_the_same_rule_matches_an_ordinary_text():
    ruleset = rules(f"""\
        - {{name: slow, when: {{regex: '{SLOW}'}}, reply: slow}}
        - {{name: rest, reply: thanks}}
    """)
    assert decide(ruleset, msg("a" * 40)).matched == ("slow",)
    assert decide(ruleset, msg("b")).matched == ("rest",)


def test_a_timeout_under_not_does_not_make_the_rule_match(counting):
    ruleset = rules(f"""\
        - {{name: not-slow, when: {{not: {{regex: '{SLOW}'}}}}, reply: caught}}
        - {{name: rest, reply: thanks}}
    """)
    before = stopped("not-slow", "time")
    assert decide(ruleset, msg(HOSTILE)).matched == ("rest",)
    assert stopped("not-slow", "time") == before + 1
    assert decide(ruleset, msg("hello")).matched == ("not-slow",)


def test_all_the_regexes_of_one_message_share_one_budget(counting, monkeypatch):
    # Each search could take 0.5 s, 4 s for the 8 rules; the message's budget ends them all at 0.3 s.
    monkeypatch.setattr(regexes, "SEARCH_TIMEOUT", 0.5)
    monkeypatch.setattr(regexes, "MESSAGE_BUDGET", 0.3)
    names = [f"slow{i}" for i in range(8)]
    body = "".join(f"- {{name: {n}, when: {{regex: '{SLOW}'}}, reply: x, continue: true}}\n" for n in names)
    ruleset = rules(body + "- {name: rest, reply: thanks}\n")
    before = {n: stopped(n, "time") for n in names}
    started = time.monotonic()
    decision = decide(ruleset, msg(HOSTILE))
    took = time.monotonic() - started
    assert decision.matched == ("rest",)
    assert took < 2.0  # wide margin for a busy machine, still half of the 4 s without a budget
    assert all(stopped(n, "time") == before[n] + 1 for n in names)


def test_ordinary_regexes_keep_their_groups_and_cost_little():
    ruleset = rules(r"""
        - {name: order, when: {regex: '^order\s*#?\s*(?P<order>\d{3,10})\b'}, reply: "Order {{ match.order }}"}
        - {name: rest, reply: thanks}
    """)
    decision = decide(ruleset, msg("ORDER #12345 please"))
    assert decision.matched == ("order",)
    assert decision.outgoing[0].text == "Order 12345"
    started = time.perf_counter()
    for _ in range(2000):
        decide(ruleset, msg("where is my parcel?"))
    assert (time.perf_counter() - started) / 2000 < 0.002  # microseconds in fact; generous for CI


# -- the length bound ------------------------------------------------------------------
def test_a_text_longer_than_the_bound_is_not_searched(caplog, counting):
    ruleset = rules(r"""
        - {name: tail, when: {regex: 'x$'}, reply: tail}
        - {name: rest, reply: thanks}
    """)
    longest = "a" * (regexes.TEXT_MAX - 1) + "x"
    assert decide(ruleset, msg(longest)).matched == ("tail",)  # every text Plivo can send is searched whole
    before = stopped("tail", "length")
    with listening(caplog, "app.rules.regexes"):
        assert decide(ruleset, msg("a" + longest)).matched == ("rest",)
    assert stopped("tail", "length") == before + 1
    [record] = logged(caplog)
    assert record.rule == "tail" and record.chars == regexes.TEXT_MAX + 1
    assert "longer than 4096 characters" in record.getMessage()


def test_the_text_bound_covers_the_longest_texts_plivo_sends():
    assert regexes.TEXT_MAX >= 4096  # WhatsApp; an SMS is at most 1,600 characters


# -- the warning at load -----------------------------------------------------------------
@pytest.mark.parametrize("pattern", [
    "^(a+)+$", "(a*)*", "(a|aa)+", "^(.*a){20}$", r"(\w+\s?)+", "(?:x+)*y", "(ab|a)+c",
    r"^(?P<w>\d+\s*)+$", "(?=(a+)+b)",
])
def test_nested_quantifiers_are_flagged(pattern):
    assert regexes.nested_quantifier(pattern)


@pytest.mark.parametrize("pattern", [
    r"^order\s*#?\s*(?P<order>\d{3,10})\b", "(yes|no)+", r"(?:\d{3}-)+", "^stop$", "(?>a+)+", "(a++)+",
    r"^size(?:\s+(?P<n>\d+))?", "q{3}", "^at (?P<when>.+)$", r"call (?P<who>\w+)", "(?:hi|hello)+",
    r"^(\d|\w)+$",  # re makes the alternation one character set: nothing to backtrack over
])
def test_ordinary_patterns_are_not_flagged(pattern):
    assert not regexes.nested_quantifier(pattern)


def test_rules_check_warns_with_path_and_line(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent("""\
        version: 1
        rules:
          - name: fine
            when: {regex: '^order\\s+(?P<order>\\d+)$'}
            reply: "Order {{ match.order }}"
          - name: nested
            when:
              regex: '^(a+)+$'
            reply: hi
    """), encoding="utf-8")
    ruleset, errors, warnings = check_rules(str(path))
    assert ruleset is not None and errors == []
    assert [w for w in warnings if "nested quantifier" in w] == [
        f"{path}:8: warning: rule 'nested': the regex has a nested quantifier such as (a+)+, (a|aa)+ or "
        "(.*a){20}, which can take exponential time on some texts; a search is stopped after 100 ms and "
        "the rule then does not match: rewrite it without the outer repeat (a+ instead of (a+)+)"]


def test_the_shipped_rules_have_no_nested_quantifier_warning():
    ruleset = load(str(ROOT / "rules.yaml"))
    assert not [w for w in ruleset.warnings if "nested quantifier" in w.message]


def test_a_bad_regex_is_still_an_error_at_its_line():
    with pytest.raises(RulesError) as info:
        rules("""\
            - name: bad
              when: {regex: '^order (\\\\d+'}
              reply: hi
        """)
    [problem] = info.value.problems
    assert problem.line == 4 and "bad regex: missing ), unterminated subpattern" in problem.message


# -- against the real server -------------------------------------------------------------
SERVER_RULES = f"""\
version: 1
rules:
  - {{name: plus, when: {{regex: '^(a+)+$'}}, reply: plus}}
  - {{name: alt, when: {{regex: '{SLOW}'}}, reply: alt}}
  - {{name: alt2, when: {{regex: '^(aa|a)+b$'}}, reply: alt2}}
  - {{name: hours, when: {{keyword: hours}}, reply: "We are open."}}
  - {{name: rest, reply: thanks}}
"""


@pytest.mark.server
def test_hostile_texts_are_answered_in_time_and_do_not_slow_other_messages(tmp_path):
    server = Server(tmp_path, rules=SERVER_RULES)
    try:
        def timed(text: str) -> tuple[float, requests.Response]:
            started = time.monotonic()
            r = server.post(sms(text))
            return time.monotonic() - started, r

        hostile_done: list[tuple[float, requests.Response]] = []
        normal: list[tuple[float, requests.Response]] = []
        with ThreadPoolExecutor(max_workers=12) as pool:
            futures = [pool.submit(timed, HOSTILE) for _ in range(10)]
            deadline = time.monotonic() + 20  # the hostile ones take well under a second; never hang
            while not all(f.done() for f in futures) and time.monotonic() < deadline:
                normal.append(timed("hours?"))
            hostile_done = [f.result(timeout=15) for f in futures]
        normal.append(timed("hours?"))

        assert all(r.status_code == 200 and "<Message" in r.text and ">thanks<" in r.text
                   for _, r in hostile_done), [r.text for _, r in hostile_done]
        assert max(t for t, _ in hostile_done) < 2.0, sorted(t for t, _ in hostile_done)
        assert all(r.status_code == 200 and "We are open." in r.text for _, r in normal)
        assert max(t for t, _ in normal) < 1.0, sorted(t for t, _ in normal)

        scrape = requests.get(server.base + "/metrics", timeout=10).text
        counted = {(s.labels["rule"], s.labels["reason"]): s.value
                   for family in text_string_to_metric_families(scrape) for s in family.samples
                   if s.name == "responder_regex_stopped_total"}
        assert counted[("alt", "time")] == 10
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert log.count("regex search stopped after its time limit") >= 10
    assert "aaaaaaaaaa" not in log


@pytest.mark.parametrize("pattern, why", [
    (r"(?:stop){e<=1}", "fuzzy matching"),      # regex would match "stip": an opt-out word missed
    (r"^[[:digit:]]+$", "POSIX classes"),       # re reads a set of '[', ':', 'd', ...
    (r"[a[:alpha:]]", "POSIX classes"),
])
def test_syntax_the_two_engines_read_differently_is_refused(tmp_path, pattern, why):
    """Patterns are checked by `re` but searched by `regex`; where the two read one pattern
    differently, the rule is refused at its line rather than matching what nobody wrote."""
    path = tmp_path / "rules.yaml"
    path.write_text(f"version: 1\nrules:\n  - name: r\n    when: {{regex: '{pattern}'}}\n    reply: hi\n",
                    encoding="utf-8")
    ruleset, errors, _ = check_rules(str(path))
    assert ruleset is None and len(errors) == 1
    assert errors[0].startswith(f"{path}:4:") and why in errors[0]


@pytest.mark.parametrize("pattern", [r"\{e<=1\}", r"[:a:]", r"x{1,2}e", r"(?P<n>\d{2})"])
def test_lookalikes_of_that_syntax_are_accepted(pattern):
    regexes.compile_pattern(pattern)
