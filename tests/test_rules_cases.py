"""`rules test`: the shipped cases pass and cover every shipped rule; the runner's answers,
failures, conversations, clock and file errors (app/ruletest.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

from app import ruletest
from app.rules import compile_text, load

RULES = ROOT / "rules.yaml"
CASES = ROOT / "rules.test.yaml"

#: A small rules file for the runner's own tests.
SMALL = """\
version: 1
settings: {timezone: America/New_York}
compliance:
  scope: number
  help: {reply: "Small Co: help@small.example. Reply STOP to unsubscribe."}
limits:
  replies_per_sender: {count: 2, per: 1h}
rules:
  - name: hours
    when: {keyword: hours}
    reply: "9 to 5."
  - name: evening
    when: {hours: "17:00-09:00"}
    reply: "Closed now."
    continue: true
  - name: menu
    when: {keyword: menu}
    reply: "Our menu"
    media: "https://small.example/menu.jpg"
  - name: hook
    when: {keyword: ping}
    webhook: "https://crm.small.example/in"
    silent: true
  - name: boom
    when: {keyword: boom}
    reply: "{{ 1 // (text | length - 4) }}"
  - name: everything-else
    forward: {to: ["+1 (415) 555-0999"]}
    reply: "Thanks, {{ from }}."
"""


def write(tmp_path, rules: str = SMALL, cases: str = "") -> tuple[str, str]:
    rules_path, cases_path = tmp_path / "rules.yaml", tmp_path / "rules.test.yaml"
    rules_path.write_text(textwrap.dedent(rules), encoding="utf-8")
    cases_path.write_text(textwrap.dedent(cases), encoding="utf-8")
    return str(rules_path), str(cases_path)


def run(tmp_path, cases: str, rules: str = SMALL, verbose: bool = False) -> ruletest.Report:
    rules_path, cases_path = write(tmp_path, rules, cases)
    return ruletest.run_file(rules_path, cases_path, verbose)


def passes(tmp_path, cases: str, rules: str = SMALL) -> None:
    report = run(tmp_path, cases, rules)
    assert report.ok, "\n".join(report.errors + report.out)


# -- the shipped files ---------------------------------------------------------------
def test_shipped_cases_pass_through_the_command(runner):
    result = runner.invoke(args=["rules", "test"])
    assert result.exit_code == 0, result.output
    count = len(ruletest.load_cases(str(CASES), load(str(RULES))))
    assert result.output.splitlines()[-1] == f"{count} passed, 0 failed"
    assert count >= 20


def test_shipped_cases_cover_every_shipped_rule():
    ruleset = load(str(RULES))
    cases = ruletest.load_cases(str(CASES), ruleset)
    named = {name for case in cases for step in case.steps for name in step.rules or ()}
    assert [r.name for r in ruleset.rules if r.name not in named] == []


def test_shipped_cases_include_compliance_the_limit_a_conversation_and_the_clock():
    cases = ruletest.load_cases(str(CASES), load(str(RULES)))
    steps = [s for c in cases for s in c.steps]
    texts = {s.text.strip(" .!").upper() for s in steps}
    assert {"STOP", "START", "HELP"} <= texts
    assert any(c.conversation and len(c.steps) > 10 for c in cases)  # the reply limit of 10
    assert {s.at.strftime("%a") for s in steps if s.at is not None} >= {"Mon", "Tue", "Fri", "Sat", "Sun"}


@pytest.mark.server
def test_the_real_command_needs_no_token_and_makes_no_database(tmp_path):
    database = tmp_path / "never.sqlite3"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLIVO_", "RULES_", "DATABASE_"))}
    env["DATABASE_URL"] = f"sqlite:///{database}"
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "rules", "test", "-v"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.fullmatch(r"\d+ passed, 0 failed", result.stdout.splitlines()[-1])
    assert f"PASS {CASES}:" in result.stdout
    assert not database.exists()


# -- failures ---------------------------------------------------------------------------
def test_a_failing_case_says_what_was_expected_and_what_came(tmp_path):
    report = run(tmp_path, """\
        cases:
          - name: hours keyword
            text: "hours"
            at: "2026-11-23T10:00"
            replies: ["9 to 5."]
          - name: wrong answer
            text: "hours?"
            at: "2026-11-23T10:00"
            replies: ["Open 8 to 8."]
        """)
    path = str(tmp_path / "rules.test.yaml")
    assert not report.ok
    assert report.out == [
        f"FAIL {path}:6 wrong answer: replies differ",
        '  expected replies: ["Open 8 to 8."]',
        '  got replies:      ["9 to 5."]',
        "  rules that matched: hours",
        "1 passed, 1 failed",
    ]


def test_the_command_exits_1_on_a_failure_and_lists_passes_with_verbose(tmp_path):
    from conftest import make_app
    rules_path, cases_path = write(tmp_path, cases="""\
        cases:
          - {name: good, text: "hours", replies: ["9 to 5."]}
          - {name: bad, text: "hours", replies: []}
        """)
    runner = make_app(tmp_path).test_cli_runner()
    result = runner.invoke(args=["rules", "test", cases_path, "--rules", rules_path, "--verbose"])
    assert result.exit_code == 1
    assert f"PASS {cases_path}:2 good" in result.output
    assert f"FAIL {cases_path}:3 bad: replies differ" in result.output
    assert result.output.splitlines()[-1] == "1 passed, 1 failed"
    # the default cases file is the one beside the rules file
    result = runner.invoke(args=["rules", "test", "--rules", rules_path])
    assert result.exit_code == 1 and "FAIL " + cases_path in result.output
    assert "PASS" not in result.output


def test_forwards_and_rules_are_compared_and_numbers_take_any_form(tmp_path):
    passes(tmp_path, """\
        cases:
          - text: "hello"
            from: "+1 (212) 555-0101"
            at: "2026-11-23T10:00"
            replies: ["Thanks, 12125550101."]
            forwards: [{to: ["+1 415.555.0999"], text: "From 12125550101: hello"}]
            rules: [everything-else]
        """)
    report = run(tmp_path, """\
        cases:
          - name: forward text
            text: "hello"
            at: "2026-11-23T10:00"
            replies: ["Thanks, 14155550123."]
            forwards: [{to: ["14155550999"], text: "hello"}]
            rules: [hours]
        """)
    assert report.out[0].endswith("forward text: forwards and rules differ")
    assert report.out[1:5] == [
        '  expected forwards: [{"to": ["14155550999"], "text": "hello"}]',
        '  got forwards:      [{"to": ["14155550999"], "text": "From 14155550123: hello"}]',
        '  expected rules: ["hours"]',
        '  got rules:      ["everything-else"]',
    ]


def test_a_template_error_fails_the_case(tmp_path):
    report = run(tmp_path, """\
        cases:
          - {name: boom, text: "boom", at: "2026-11-23T10:00", replies: []}
        """)
    assert report.out[0].endswith("boom: error")
    assert "  error: rule 'boom' line 26: ZeroDivisionError: integer division or modulo by zero" in report.out


# -- state: conversations, compliance, limits, the clock ----------------------------------
def test_each_case_starts_from_an_empty_state(tmp_path):
    passes(tmp_path, """\
        cases:
          - {text: "STOP", replies: ["You are unsubscribed. Reply START to resubscribe."]}
          - {text: "STOP", replies: ["You are unsubscribed. Reply START to resubscribe."]}
          - {text: "hours", replies: ["9 to 5."]}
          - {text: "hours", replies: ["9 to 5."]}
          - {text: "hours", replies: ["9 to 5."]}
        """)


def test_steps_share_one_state_with_compliance_as_the_service_has_it(tmp_path):
    passes(tmp_path, """\
        cases:
          - name: stop covers only the number it was sent to (scope number)
            at: "2026-11-23T10:00"
            steps:
              - {text: "Stop!", replies: ["You are unsubscribed. Reply START to resubscribe."], rules: []}
              - {text: "STOP", replies: []}
              - {text: "hours", replies: [], rules: [hours]}
              - {text: "hours", to: "14155550200", replies: ["9 to 5."]}
              - text: "anything"
                replies: []
                forwards: [{to: ["14155550999"], text: "From 14155550123: anything"}]
              - {text: "help", replies: ["Small Co: help@small.example. Reply STOP to unsubscribe."]}
              - {text: "start", replies: ["You are resubscribed. Reply STOP to unsubscribe."]}
              - {text: "hours", replies: ["9 to 5."]}
        """)


def test_a_failing_step_is_named_and_the_rest_is_not_run(tmp_path):
    report = run(tmp_path, """\
        cases:
          - name: talk
            steps:
              - {text: "STOP", replies: ["You are unsubscribed. Reply START to resubscribe."]}
              - {text: "hours", replies: ["9 to 5."]}
              - {text: "hours", replies: []}
        """)
    path = str(tmp_path / "rules.test.yaml")
    assert report.out[0] == f"FAIL {path}:2 talk, step 2 (line 5): replies differ"
    assert "  (the step after it was not run)" in report.out
    assert report.out[-1] == "0 passed, 1 failed"


def test_the_reply_limit_holds_back_rule_replies_but_not_compliance(tmp_path):
    passes(tmp_path, """\
        cases:
          - at: "2026-11-23T10:00"
            from: "12125550177"
            steps:
              - {text: "hours", replies: ["9 to 5."]}
              - {text: "hours", replies: ["9 to 5."]}
              - {text: "hours", replies: [], rules: [hours]}
              - {text: "help", replies: ["Small Co: help@small.example. Reply STOP to unsubscribe."]}
              - {text: "hours", at: "2026-11-23T11:00", replies: []}
              - {text: "hours", at: "2026-11-23T11:00:01", replies: ["9 to 5."]}
        """)


def test_at_sets_the_clock_in_the_rules_timezone_and_steps_keep_it(tmp_path):
    passes(tmp_path, """\
        cases:
          - {text: "hi", at: "2026-11-23T08:59", replies: ["Closed now.", "Thanks, 14155550123."]}
          - {text: "hi", at: "2026-11-23T09:00", replies: ["Thanks, 14155550123."]}
          - {text: "hi", at: "2026-11-23T13:59:59+00:00", replies: ["Closed now.", "Thanks, 14155550123."]}
          - {text: "hi", at: "2026-11-23T14:00:00+00:00", replies: ["Thanks, 14155550123."]}
          - at: "2026-07-01 18:30"
            steps:
              - {text: "hi", replies: ["Closed now.", "Thanks, 14155550123."], rules: [evening, everything-else]}
              # still 18:30 (the time of the step before): the limit of 2 an hour is reached
              - {text: "hi", replies: [], rules: [evening, everything-else]}
              - {text: "hi", at: "2026-07-02T10:00", replies: ["Thanks, 14155550123."]}
        """)


# -- the Message API and webhooks ---------------------------------------------------------
def test_whatsapp_and_media_replies_count_as_replies(tmp_path):
    passes(tmp_path, """\
        cases:
          - {text: "hours", type: whatsapp, at: "2026-11-23T10:00", replies: ["9 to 5."]}
          - {text: "menu", at: "2026-11-23T10:00", replies: ["Our menu"], rules: [menu]}
          - {text: "menu", type: whatsapp, at: "2026-11-23T10:00", replies: ["Our menu"]}
          - text: "look"
            media: ["https://pics.example/1.jpg"]
            at: "2026-11-23T10:00"
            replies: ["Thanks, 14155550123."]
            forwards: [{to: ["14155550999"], text: "From 14155550123: look"}]
          - {text: "ping", at: "2026-11-23T10:00", replies: [], forwards: [], rules: [hook]}
        """)


# -- a bad cases file ----------------------------------------------------------------------
@pytest.mark.parametrize("cases, line, message", [
    ("cases:\n  - {text: hi, replies: [], repiles: []}\n", 2,
     "unknown key 'repiles' in a case (did you mean 'replies'?)"),
    ("cases:\n  - name: x\n    replies: []\n", 2, "a case needs 'text' (the message), or 'steps' (a conversation)"),
    ("cases:\n  - {text: hi}\n", 2, "a case needs 'replies': the texts expected back, in order ([] for none)"),
    ("cases:\n  - text: hi\n    replies: {a: 1}\n", 3, "'replies' takes a list of texts ([] for none), got a mapping"),
    ("cases:\n  - text: [hi]\n    replies: []\n", 2, "'text' must be text, got a list"),
    ("cases:\n  - text: hi\n    replies: []\n    rules: [hourz]\n", 4,
     "no rule is named 'hourz' (did you mean 'hours'?)"),
    ("cases:\n  - text: hi\n    at: tomorrow\n    replies: []\n", 3,
     "'at' takes a local time in the rules' timezone, such as \"2026-11-23T10:00\", got 'tomorrow'"),
    ("cases:\n  - text: hi\n    at: '9999-12-31T23:59'\n    replies: []\n", 3,
     "'at' must be in the years 1970 to 9998, got '9999-12-31T23:59'"),
    ("cases:\n  - text: hi\n    at: '9999-12-31T23:59-12:00'\n    replies: []\n", 3,
     "'at' must be in the years 1970 to 9998, got '9999-12-31T23:59-12:00'"),
    ("cases:\n  - steps:\n      - {text: hi, replies: [], at: '0001-01-01T00:30'}\n", 3,
     "'at' must be in the years 1970 to 9998, got '0001-01-01T00:30'"),
    ("cases:\n  - text: hi\n    from: bob\n    replies: []\n", 3,
     "'from': 'bob' is not a phone number (digits, optionally with + spaces dashes dots parentheses)"),
    ("cases:\n  - text: hi\n    type: fax\n    replies: []\n", 3,
     "'type' must be one of sms, mms, whatsapp, got 'fax'"),
    ("cases:\n  - text: hi\n    replies: []\n    forwards: [{to: [1]}]\n", 4, "a forward needs 'text'"),
    ("cases:\n  - name: c\n    text: hi\n    steps: [{text: hi, replies: []}]\n", 3,
     "unknown key 'text' in a case with 'steps' (its messages and expectations go in each step)"),
    ("cases:\n  - steps:\n      - {text: a, replies: [], at: '2026-11-23T10:00'}\n"
     "      - {text: b, replies: [], at: '2026-11-23T09:00'}\n", 4,
     "'at' goes back in time: 2026-11-23T09:00-05:00 is before the time of the step before it "
     "(2026-11-23T10:00-05:00)"),
    ("cases:\n  - steps: []\n", 2, "'steps' needs at least one step"),
    ("cases: []\n", 1, "'cases' needs at least one case"),
    ("cases: {text: hi}\n", 1, "'cases' must be a list of cases, got a mapping"),
    ("case:\n  - {text: hi, replies: []}\n", 1, "unknown key 'case' in the top level (did you mean 'cases'?)"),
    ("cases:\n  - {text: hi, replies: [}\n", 2, "YAML syntax error"),
])
def test_a_bad_cases_file_is_refused_with_path_and_line(tmp_path, cases, line, message):
    rules_path, cases_path = write(tmp_path, cases=cases)
    report = ruletest.run_file(rules_path, cases_path)
    assert not report.ok and report.out == []
    assert any(e.startswith(f"{cases_path}:{line}: {message}") for e in report.errors), report.errors
    assert report.errors[-1].startswith(f"{cases_path}: rejected, ")


def test_a_conversations_bad_number_is_said_once(tmp_path):
    rules_path, cases_path = write(tmp_path, cases="""\
        cases:
          - from: "bob"
            steps: [{text: a, replies: []}, {text: b, replies: []}]
        """)
    errors = ruletest.run_file(rules_path, cases_path).errors
    assert errors == [f"{cases_path}:2: 'from': 'bob' is not a phone number (digits, optionally with + spaces "
                      "dashes dots parentheses)", f"{cases_path}: rejected, 1 error(s)"]


def test_the_command_shows_file_errors_without_a_traceback(tmp_path):
    from conftest import make_app
    runner = make_app(tmp_path).test_cli_runner()
    rules_path, cases_path = write(tmp_path, cases="cases:\n  - {text: hi}\n")
    result = runner.invoke(args=["rules", "test", cases_path, "--rules", rules_path])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{cases_path}:2: a case needs 'replies'" in result.output
    missing = str(tmp_path / "nope.yaml")
    result = runner.invoke(args=["rules", "test", missing, "--rules", rules_path])
    assert result.exit_code == 1
    assert f"{missing}: cannot read the cases file: No such file or directory" in result.output
    bad_rules = tmp_path / "bad.yaml"
    bad_rules.write_text("version: 1\nrules:\n  - name: a\n    when: {regex: '('}\n    reply: hi\n")
    result = runner.invoke(args=["rules", "test", cases_path, "--rules", str(bad_rules)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{bad_rules}:4: bad regex" in result.output


def test_the_extreme_years_run(tmp_path):
    passes(tmp_path, """\
        cases:
          - {text: hours, at: "1970-01-01T00:00", replies: ["9 to 5."]}
          - {text: hours, at: "9998-12-31T23:59", replies: ["9 to 5."]}
        """)


def test_a_rejected_file_is_named_by_its_absolute_path(tmp_path, monkeypatch):
    write(tmp_path, rules="version: 1\nrules:\n  - {name: a, reply: '{{ nope }}'}\n",
          cases="cases:\n  - {text: hi, replies: []}\n")
    monkeypatch.chdir(tmp_path)
    errors = ruletest.run_file("rules.yaml", "rules.test.yaml").errors
    assert errors[0].startswith(f"{tmp_path / 'rules.yaml'}:3: unknown name 'nope'")
    assert errors[-1] == f"{tmp_path / 'rules.yaml'}: rejected, 1 error(s)"
    write(tmp_path, cases="cases:\n  - {text: hi}\n")
    errors = ruletest.run_file("rules.yaml").errors  # the cases file next to the rules
    assert errors[-1] == f"{tmp_path / 'rules.test.yaml'}: rejected, 1 error(s)"


def test_cases_are_checked_against_the_ruleset_they_run_on():
    ruleset = compile_text(SMALL, "small.yaml")
    [case] = ruletest.parse_cases("cases:\n  - {text: hi, rules: hours, replies: x}\n", "c.yaml", ruleset)
    step = case.steps[0]
    assert (step.from_, step.to, step.type, step.rules, step.replies, step.at) == (
        ruletest.DEFAULT_FROM, ruletest.DEFAULT_TO, "sms", ("hours",), ("x",), None)
    assert case.name == '"hi"' and not case.conversation
