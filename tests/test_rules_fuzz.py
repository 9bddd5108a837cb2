"""Fuzzing the rules loader: whatever the text, `compile_text` returns rules or raises
`RulesError` whose problems each name the file and a line; never another exception, and
within a bounded time. The same for the rule-test cases file, which is read the same way.

Two generators: YAML built from the rules' own vocabulary, in block and flow style, with
tags, anchors and aliases (it reaches deep into the compiler), and random edits of the
shipped rules.yaml and rules.test.yaml (they reach the YAML reader's corners).
"""

from __future__ import annotations

import json
import re
import time

import pytest
from conftest import ROOT
from hypothesis import event, example, given
from hypothesis import strategies as st
from property_settings import examples

from app.rules import compiler as rules_compiler
from app.rules.compiler import compile_text
from app.rules.source import RulesError
from app.ruletest import CasesError, parse_cases

PATH = "/fuzz/rules.yaml"
CASES_PATH = "/fuzz/rules.test.yaml"
SHIPPED = (ROOT / "rules.yaml").read_text()
SHIPPED_CASES = (ROOT / "rules.test.yaml").read_text()
RULESET = compile_text(SHIPPED, str(ROOT / "rules.yaml"))
YAML_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")
SECONDS = 5.0  # per input; the real figures are milliseconds


def loads_or_says_where(text: str) -> None:
    """The property: rules, or problems at `path:line`, quickly."""
    started = time.monotonic()
    try:
        compile_text(text, PATH)
        event("loaded")  # --hypothesis-show-statistics: how far the inputs got
    except RulesError as exc:
        event("YAML refused" if "YAML" in exc.problems[0].message else "rules refused")
        said_where(exc.problems, PATH, text)
    assert time.monotonic() - started < SECONDS


def cases_load_or_say_where(text: str) -> None:
    started = time.monotonic()
    try:
        parse_cases(text, CASES_PATH, RULESET)
    except CasesError as exc:
        said_where(exc.problems, CASES_PATH, text)
    assert time.monotonic() - started < SECONDS


def said_where(problems, path: str, text: str) -> None:
    assert problems
    # YAML's line breaks (CR alone, NEL, LS and PS too), and one more for a problem at the end
    # of a file without a final newline
    last_line = len(YAML_BREAK.findall(text)) + 2
    for problem in problems:
        assert problem.path == path, problem
        assert isinstance(problem.line, int) and 0 <= problem.line <= last_line, problem
        if problem.line == 0:  # only "the file is empty" concerns no line
            assert "empty" in problem.message, problem
        assert str(problem).startswith(f"{path}:"), problem
        assert problem.message and "\n" not in problem.message, problem
        assert "cannot read the file (" not in problem.message, problem  # the loader's last resort


# -- YAML built from the rules' vocabulary ------------------------------------------
WORDS = sorted({*rules_compiler.TOP_KEYS, *rules_compiler.RULE_KEYS, *rules_compiler.WHEN_KEYS,
                *rules_compiler.COMPLIANCE_KEYS, *rules_compiler.KEYWORDS_KEYS, *rules_compiler.LIMIT_KEYS,
                *rules_compiler.LIMITS_KEYS, *rules_compiler.WEBHOOK_KEYS, "timezone", "any", "all"})
PLAIN = [  # each fine as a plain scalar in block and flow style
    "1", "0", "-1", "2", "1.5", "1e999", "-.5", "9" * 5000, "1" + "0" * 400, "true", "false", "yes", "~", "null",
    "''", '""', '"\\0"', "'a''b'", '"\\u00e9\\U0001F600"', "17:00", "09:00-17:00", "25:00-26:00", "mon", "sun", "x",
    "America/New_York", "Nowhere/Zone", "EST", "UTC", "^(a+)+$", "+1 (415) 555-0100", "1415*", "http://x",
    "https://acme.example/h", "POST", "GET", "sms", "mms", "whatsapp", "=", "<<", "10/m", "5 h", "0 s", "account",
    "number",
]
ODD = ["(", "[a-", "{{ text }}", "{{", "{{ x.__class__ }}", "*", "*a", "*b", "-", "?", "|", ">-", "@x", "`x"]
TAGS = ["!!str ", "!!int ", "!!float ", "!!bool ", "!!null ", "!!map ", "!!seq ", "!!timestamp ", "!!binary ",
        "!!set ", "!!omap ", "!!pairs ", "!custom ", "!!python/object:os.system ", "! ", "!!merge ",
        "!<tag:yaml.org,2002:str> "]
TEMPLATE = ["{{ text }}", "Hi {{ from }}", "{{ groups.1 }}", "{{ now }}", "{% if x %}", "{{ text | upper }}", "}}"]

# Any character, escaped in double quotes as YAML reads JSON strings (astral characters would
# be escaped as surrogate pairs, which YAML refuses: those come in PLAIN as \U escapes).
quoted = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cn"), max_codepoint=0xFFFF),
                 max_size=12).map(json.dumps)
scalars = st.one_of(
    st.sampled_from(PLAIN), st.sampled_from(PLAIN), st.sampled_from(WORDS), quoted,
    st.sampled_from(TEMPLATE + ODD).map(json.dumps), st.integers().map(str),
    st.integers(0, 19).flatmap(lambda n: st.sampled_from(ODD) if n == 0 else st.sampled_from(PLAIN)),
)
keys = st.one_of(st.sampled_from(WORDS), st.sampled_from(WORDS), st.sampled_from(WORDS),
                 st.sampled_from(["<<", "1", "~", "true", "[1]", "{a: 1}", '"\\0"', "''", "*a"]))


def props(draw) -> str:
    """Now and then a tag (mostly none, so that most files get past YAML). The anchors are
    fixed in `documents` (`&a` on the first rule, `&b` on the version), so that the aliases
    `*a` and `*b` drawn anywhere mostly find them."""
    return draw(st.sampled_from(TAGS)) if draw(st.integers(0, 29)) == 0 else ""


@st.composite
def values(draw, depth: int = 0):
    """A value as a tree: ("scalar", text) | ("seq", props, flow, items) | ("map", props, flow, pairs)."""
    kind = draw(st.sampled_from(["scalar", "seq", "map", "map"] if depth < 4 else ["scalar"]))
    if kind == "scalar":
        return ("scalar", props(draw) + draw(scalars))
    flow = draw(st.booleans())
    if kind == "seq":
        return ("seq", props(draw), flow, draw(st.lists(values(depth + 1), max_size=4)))
    return ("map", props(draw), flow, draw(st.lists(st.tuples(keys, values(depth + 1)), max_size=5)))


def inline(value) -> str:
    if value[0] == "scalar":
        return value[1]
    _, prop, _, items = value
    if value[0] == "seq":
        return f"{prop}[{', '.join(inline(v) for v in items)}]"
    return f"{prop}{{{', '.join(f'{k}: {inline(v)}' for k, v in items)}}}"


def block(value, indent: int) -> list[str]:
    pad = " " * indent
    if value[0] == "seq":
        return [line for item in value[3] for line in entry(pad + "-", item, indent)] or [pad + "[]"]
    return [line for key, item in value[3] for line in entry(f"{pad}{key}:", item, indent)] or [pad + "{}"]


def entry(head: str, value, indent: int) -> list[str]:
    if value[0] == "scalar":
        return [f"{head} {value[1]}"]
    if value[2] or not value[3]:  # flow style, or empty
        return [f"{head} {inline(value)}"]
    return [f"{head} {value[1]}".rstrip(), *block(value, indent + 2)]


@st.composite
def documents(draw) -> str:
    odd_version = st.sampled_from(["2", "'1'", "!!float x", "!!bool x", "!!timestamp x", "!!map [1]", "!!int 1"])
    version = draw(odd_version) if draw(st.integers(0, 9)) == 0 else "1"
    top = [("version", ("scalar", "&b " + version))]
    rules = draw(st.lists(st.tuples(st.just("map"), st.just(""), st.booleans(), st.lists(
        st.tuples(st.sampled_from(rules_compiler.RULE_KEYS), values(2)), max_size=5)), max_size=4))
    shared = ("map", "&a ", draw(st.booleans()), [("name", ("scalar", "shared")), ("reply", ("scalar", "hi"))])
    top.append(("rules", ("seq", "", draw(st.booleans()), [shared, *rules])))
    top += draw(st.lists(st.tuples(keys, values(1)), max_size=2))
    root = ("map", "", False, top)
    return "\n".join(block(root, 0)) + "\n"


@given(documents())
@examples(200)
def test_rules_built_from_the_vocabulary_load_or_say_where(text):
    loads_or_says_where(text)


# -- random edits of the shipped files ----------------------------------------------
SNIPPETS = [
    "[", "]", "{", "}", ",", ": ", "- ", "? ", "&a ", "*a", "*nowhere", "!!float ", "!!bool ", "!!timestamp ",
    "!!map ", "!!seq ", "!!set ", "!!omap ", "!!binary ", "!!python/object/apply:os.system ", "!x ", "<<: ",
    "\n---\n", "\n...\n", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "|", ">", "'", '"', "#", "\t", "\0", "\ufeff",
    "\x85", "\u2028", "\ud800", "\r", "\r\n", "~", "=", "\n" + "[" * 60, "{not: " * 60, "- " * 60, "1e400",
    "9" * 5000, "\n  - x\n", "\n- \n", " " * 40,
]


@st.composite
def edited(draw, original: str) -> str:
    text = original
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["value", "value", "value", "insert", "insert", "text", "delete", "repeat",
                                   "cut"]))
        if op == "value":  # another value after a key: keeps the file YAML, so it reaches the compiler
            starts = [i for i, line in enumerate(text.split("\n")) if ": " in line and "#" not in line]
            if starts:
                lines = text.split("\n")
                i = draw(st.sampled_from(starts))
                head = lines[i][:lines[i].index(": ") + 2]
                lines[i] = head + draw(st.sampled_from(["", "", "", *TAGS])) + draw(scalars)
                text = "\n".join(lines)
        elif op == "insert":
            text = text[:at] + draw(st.sampled_from(SNIPPETS)) + text[at:]
        elif op == "text":
            text = text[:at] + draw(st.text(max_size=8)) + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 40)):]
        elif op == "repeat":
            size = draw(st.integers(1, 200))
            text = text[:at] + text[at:at + size] * draw(st.integers(2, 5)) + text[at:]
        else:  # the file cut short, as by a half-finished write
            text = text[:at]
    return text


@given(edited(SHIPPED))
@example(SHIPPED.replace("version: 1", "version: !!float x"))
@example(SHIPPED.replace("rules:", "rules: " + "[" * 2000 + "]" * 2000 + "\nx:"))
@examples(400)
def test_edited_rules_load_or_say_where(text):
    loads_or_says_where(text)


@given(edited(SHIPPED_CASES))
@example("\x85#\x85 What rules.yaml must answer:")  # NEL is a line break to YAML: line 3 of "one line"
@example("\ud800" + SHIPPED_CASES)  # a lone surrogate once escaped as UnicodeEncodeError
@examples(150)
def test_edited_cases_load_or_say_where(text):
    cases_load_or_say_where(text)


def test_the_generators_reach_the_compiler():
    """Guard against a fuzzer that only ever exercises the YAML reader: the unedited files load."""
    compile_text(SHIPPED, PATH)
    assert parse_cases(SHIPPED_CASES, CASES_PATH, RULESET)


@pytest.mark.server
def test_gunicorn_refuses_to_start_on_a_hostile_file_with_path_line(tmp_path):
    """At service start (gunicorn's on_starting) as in `rules check`: the problem, no traceback."""
    from conftest import TOKEN
    from servers import run_gunicorn, server_env

    bad = tmp_path / "rules.yaml"
    bad.write_text("version: 1\nrules:\n  - name: a\n    when: " + "{not: " * 100_000 + "{}" + "}" * 100_000 + "\n")
    result = run_gunicorn(server_env(PLIVO_AUTH_TOKEN=TOKEN, RULES_PATH=str(bad)), timeout=60)
    assert result.returncode != 0
    assert f"{bad}:4: lists and mappings are nested more than 50 deep" in result.stderr
    assert "Traceback" not in result.stderr
