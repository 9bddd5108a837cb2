"""`compliance:` and `limits:` in a rules file, and the pure policy that applies them."""

from __future__ import annotations

import textwrap
from datetime import timedelta

import pytest

from app import policy
from app.inbound import Inbound
from app.rules import RulesError, compile_text
from app.rules.compliance import DEFAULT_HELP_REPLY, DEFAULT_OPT_OUT_REPLY, Compliance, fold
from app.rules.engine import Decision, Outgoing
from app.store import NumberState

PATH = "/r.yaml"  # absolute: compile_text makes every path absolute


def problems(text: str) -> list[str]:
    with pytest.raises(RulesError) as info:
        compile_text(textwrap.dedent(text), PATH)
    return [str(p) for p in info.value.problems]


def load(text: str):
    return compile_text(textwrap.dedent(text), PATH)


# -- loading ----------------------------------------------------------------------------------
def test_defaults_are_on_with_the_spec_keywords():
    ruleset = load("version: 1\nrules: []\n")
    c = ruleset.compliance
    assert c.enabled and c.scope == "account"
    assert c.opt_out.words == {"stop", "stopall", "unsubscribe", "cancel", "end", "quit", "revoke", "optout"}
    assert c.opt_in.words == {"start", "yes", "unstop"}
    assert c.help.words == {"help", "info"}
    assert c.opt_out.reply == DEFAULT_OPT_OUT_REPLY
    assert "Acme" not in c.help.reply  # the built-in HELP names no business
    assert ruleset.limit is None


def test_full_sections():
    ruleset = load("""\
        version: 1
        compliance:
          enabled: true
          scope: number
          opt_out: {keywords: [STOP, Arrêt], reply: "Bye."}
          opt_in: {keywords: [START]}
          help: {reply: "Call us."}
        limits:
          replies_per_sender: {count: 3, per: 30s}
        rules: []
        """)
    c = ruleset.compliance
    assert c.scope == "number" and c.opt_out.words == {"stop", "arrêt"} and c.opt_out.reply == "Bye."
    assert c.opt_in.words == {"start"} and c.help.words == {"help", "info"} and c.help.reply == "Call us."
    assert ruleset.limit == policy.ReplyLimit(3, timedelta(seconds=30))


@pytest.mark.parametrize("per, seconds", [("30s", 30), ("10m", 600), ("1h", 3600), ("2d", 172800), (" 5 m ", 300)])
def test_limit_durations(per, seconds):
    ruleset = load(f"version: 1\nlimits: {{replies_per_sender: {{count: 1, per: '{per}'}}}}\nrules: []\n")
    assert ruleset.limit.per == timedelta(seconds=seconds)


@pytest.mark.parametrize("section, message", [
    ("compliance: [STOP]", "/r.yaml:2: 'compliance' must be a mapping, got a list"),
    ("compliance: {scope: galaxy}", "/r.yaml:2: 'scope' must be account or number, got 'galaxy'"),
    ("compliance: {enabled: maybe}", "/r.yaml:2: 'enabled' must be true or false, got 'maybe'"),
    ("compliance: {zzz: {}}", "/r.yaml:2: unknown key 'zzz' in compliance (expected one of: enabled, "
                               "scope, opt_out, opt_in, help)"),
    ("compliance: {opt_out: STOP}", "/r.yaml:2: 'compliance.opt_out' must be a mapping with 'keywords' "
                                    "and 'reply', got 'STOP'"),
    ("compliance: {help: {reply: ''}}", "/r.yaml:2: compliance.help: 'reply' must be a non-empty text, got ''"),
    ("compliance: {help: {reply: 'Hi {{ from }}'}}",
     "/r.yaml:2: compliance.help: 'reply' is plain text, not a template"),
    ("compliance: {help: {keywords: ['!!']}}", "/r.yaml:2: compliance.help: keyword '!!' has no letters or digits"),
    ("compliance: {help: {keywords: []}}", "/r.yaml:2: 'keywords' needs at least one value"),
    ("compliance: {opt_in: {keywords: [STOP]}}",
     "/r.yaml:2: compliance.opt_in: keyword 'STOP' is already an opt_out keyword (line 2)"),
    ("limits: {replies_per_sender: {count: 0, per: 1h}}",
     "/r.yaml:2: 'count' must be a whole number, 1 or more, got 0"),
    ("limits: {replies_per_sender: {count: 5, per: 1w}}",
     "/r.yaml:2: 'per' must be a duration such as 30s, 10m, 1h or 1d, got '1w'"),
    ("limits: {replies_per_sender: {count: 5, per: 0s}}",
     "/r.yaml:2: 'per' must be a duration such as 30s, 10m, 1h or 1d, got '0s'"),
    ("limits: {replies_per_sender: {count: 5, per: 400d}}", "/r.yaml:2: 'per' is longer than a year: '400d'"),
    ("limits: {replies_per_sender: {count: 5}}", "/r.yaml:2: 'replies_per_sender' needs 'per'"),
    ("limits: {replies_per_sender: 5}",
     "/r.yaml:2: 'replies_per_sender' must be a mapping like {count: 5, per: 1h}, got 5"),
    ("limits: {per_sender: {count: 5, per: 1h}}",
     "/r.yaml:2: unknown key 'per_sender' in limits (did you mean 'replies_per_sender'?)"),
])
def test_bad_sections_are_path_line_errors(section, message):
    assert problems(f"version: 1\n{section}\nrules: []\n") == [message]


def test_errors_point_at_the_offending_line():
    found = problems("""\
        version: 1
        compliance:
          scope: account
          opt_out:
            keywords:
              - STOP
              - ""
        limits:
          replies_per_sender:
            count: five
            per: 1h
        rules: []
        """)
    assert found == ["/r.yaml:7: 'keywords' takes text or a number or a list of them, got ''",
                     "/r.yaml:10: 'count' must be a whole number, 1 or more, got 'five'"]


# -- folding ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["STOP", "Stop!", "STOP.", " stop\n", "ＳＴＯＰ", "¡Stop!", "*STOP*", "stop…"])
def test_fold(text):
    assert fold(text) == "stop"


def test_classify():
    c = Compliance()

    def kind(text, intent=""):
        return c.classify(Inbound("1", "2", "u", text=text, intent=intent))

    assert kind("Stop!") == ("optout", "keyword")
    assert kind("stop it") == (None, None)
    assert kind("please", "optout") == ("optout", "intent")
    assert kind("YES") == ("optin", "keyword")
    assert kind("info") == ("help", "keyword")
    assert kind("") == (None, None)
    assert Compliance(enabled=False).classify(Inbound("1", "2", "u", text="STOP", intent="optout")) == (None, None)


@pytest.mark.parametrize("text, flagged", [
    ("please stop texting me", True), ("STOP!!! now", True), ("I want to cancel my order", True),
    ("stopping by later", False), ("hours", False), ("", False),
])
def test_possible_optout(text, flagged):
    assert Compliance().possible_optout(text) is flagged


# -- the plan -----------------------------------------------------------------------------------------
MSG = Inbound(from_="111", to="900", uuid="u", text="x")


def reply(text, rule="r"):
    return Outgoing(rule, "reply", "900", ("111",), text)


def forward(*to, text="fwd"):
    return Outgoing("f", "forward", "900", to, text)


def state(opted=(), recent=0):
    return NumberState(frozenset(opted), recent)


def test_plan_passes_everything_through_on_a_fresh_state():
    decision = Decision(("r",), (reply("a"), forward("222")))
    plan = policy.plan(MSG, Compliance(), None, None, None, decision, state())
    assert plan.outgoing == list(decision.outgoing) and plan.held == [] and plan.change is None


def test_plan_opt_out_confirms_once():
    first = policy.plan(MSG, Compliance(), None, "optout", "keyword", None, state())
    assert [o.text for o in first.outgoing] == [DEFAULT_OPT_OUT_REPLY] and first.change == ("out", "keyword")
    again = policy.plan(MSG, Compliance(), None, "optout", "keyword", None, state(opted=["111"]))
    assert again.outgoing == [] and again.change == ("out", "keyword")


def test_plan_help_to_an_opted_out_sender():
    plan = policy.plan(MSG, Compliance(), None, "help", "intent", None, state(opted=["111"]))
    assert [o.text for o in plan.outgoing] == [DEFAULT_HELP_REPLY] and plan.change is None


def test_plan_opted_out_sender_keeps_forwards():
    decision = Decision(("r",), (reply("a"), forward("222", "333")))
    plan = policy.plan(MSG, Compliance(), None, None, None, decision, state(opted=["111", "333"]))
    assert [(o.kind, o.dst) for o in plan.outgoing] == [("forward", ("222",))]
    assert [(h["dst"], h["reason"]) for h in plan.held] == [("111", "opted out"), ("333", "opted out")]


def test_plan_limit_counts_replies_not_forwards():
    limit = policy.ReplyLimit(3, timedelta(hours=1))
    decision = Decision(("r",), (reply("a"), forward("222"), reply("b"), reply("c")))
    plan = policy.plan(MSG, Compliance(), limit, None, None, decision, state(recent=1))
    assert [o.text for o in plan.outgoing] == ["a", "fwd", "b"]
    assert plan.held == [{"dst": "111", "text": "c", "reason": "reply limit"}]


def test_numbers_to_check():
    decision = Decision(("r",), (reply("a"), forward("333", "222")))
    assert policy.numbers_to_check(MSG, decision) == ["111", "222", "333"]
    assert policy.numbers_to_check(MSG, None) == ["111"]
