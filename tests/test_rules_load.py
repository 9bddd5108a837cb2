"""Loading a rules file: every error kind with its exact `path:line`,
YAML 1.1 gotchas, and the warnings (shadowed rules, reply encodings)."""

from __future__ import annotations

import textwrap
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

import app.rules.compiler as compiler_module
from app.inbound import Inbound
from app.rules import Problem, RulesError, Sending, Webhook, compile_text, decide, load

ROOT = Path(__file__).resolve().parent.parent
NY = ZoneInfo("America/New_York")
MONDAY_10AM = datetime(2026, 11, 23, 10, 0, tzinfo=NY)
PATH = "/r.yaml"  # absolute: compile_text makes every path absolute


# -- helpers ---------------------------------------------------------------------
def doc(body: str) -> str:
    """`version: 1` (line 1) and `rules:` (line 2); the dedented body starts at line 3."""
    return "version: 1\nrules:\n" + textwrap.dedent(body)


def one_condition(key: str, value: str) -> str:
    """One rule, `a`, whose one condition `key: value` is at line 5 (the same file as `doc` of
    `- name: a / when: / key: value / reply: x`): what the tests of a condition's values read."""
    return doc(f"- name: a\n  when:\n    {key}: {value}".rstrip() + "\n  reply: x\n")


def problems(text: str, path: str = PATH) -> list[Problem]:
    with pytest.raises(RulesError) as info:
        compile_text(text, path)
    return info.value.problems


def one(text: str, line: int, *fragments: str) -> Problem:
    """The file has exactly one problem, at `line`, whose message holds every fragment."""
    found = problems(text)
    assert [(p.path, p.line) for p in found] == [(PATH, line)], [str(p) for p in found]
    for fragment in fragments:
        assert fragment in found[0].message, str(found[0])
    return found[0]


def at(text: str, line: int, *fragments: str) -> None:
    """Among the file's problems, one at `line` holds every fragment."""
    found = problems(text)
    assert any(p.line == line and all(f in p.message for f in fragments) for p in found), \
        [str(p) for p in found]


def msg(text: str = "", **kw) -> Inbound:
    kw.setdefault("from_", "14155550123")
    kw.setdefault("to", "14155550100")
    kw.setdefault("uuid", "uuid-1")
    return Inbound(text=text, **kw)


def shadow_warnings(ruleset) -> list[str]:
    return [str(w) for w in ruleset.warnings if "can never match" in w.message]


def encoding_warnings(ruleset) -> list[str]:
    return [str(w) for w in ruleset.warnings if "can never match" not in w.message]


# -- Problem / RulesError --------------------------------------------------------
def test_problem_str_has_path_line_message():
    assert str(Problem("rules.yaml", 12, "bad regex")) == "rules.yaml:12: bad regex"
    assert str(Problem("rules.yaml", 0, "the file is empty")) == "rules.yaml: the file is empty"


def test_rules_error_lists_every_problem_one_per_line():
    err = RulesError([Problem("a.yaml", 3, "one"), Problem("a.yaml", 5, "two")])
    assert err.problems == [Problem("a.yaml", 3, "one"), Problem("a.yaml", 5, "two")]
    assert str(err) == "a.yaml:3: one\na.yaml:5: two"


def test_default_path_is_rules_yaml_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RulesError) as info:
        compile_text("version: 2\nrules: []\n")
    assert str(info.value) == f"{tmp_path / 'rules.yaml'}:1: unsupported version 2: this service reads version 1"


def test_a_relative_path_is_named_absolute_in_problems_warnings_and_the_ruleset(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "bad.yaml").write_text("version: 1\nrules:\n  - name: a\n    reply: '{{ nope }}'\n")
    (tmp_path / "conf" / "good.yaml").write_text("version: 1\nrules:\n  - name: a\n    reply: 'caf\u00ef'\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RulesError) as info:
        load("conf/bad.yaml")
    assert [str(p) for p in info.value.problems] == [
        f"{tmp_path}/conf/bad.yaml:4: unknown name 'nope' in template (known: from, to, text, type, uuid, "
        "media, match, now, rule)"]
    ruleset = load("conf/good.yaml")
    assert ruleset.path == str(tmp_path / "conf" / "good.yaml")
    assert [str(w) for w in ruleset.warnings] == [
        f"{tmp_path}/conf/good.yaml:4: rule 'a': reply is UCS-2, 4 characters, 1 unit (UCS-2 because of '\u00ef')"]
    with pytest.raises(RulesError) as info:
        load("conf/missing.yaml")
    assert str(info.value).startswith(f"{tmp_path}/conf/missing.yaml: cannot read the rules file: ")
    (tmp_path / "latin1.yaml").write_bytes(b"version: 1\nrules: []\n# caf\xe9\n")
    with pytest.raises(RulesError) as info:
        load("latin1.yaml")
    assert str(info.value) == f"{tmp_path}/latin1.yaml:3: the rules file is not valid UTF-8"


def test_minimal_file_loads():
    ruleset = compile_text("version: 1\nrules: []\n", PATH)
    assert ruleset.rules == ()
    assert ruleset.warnings == ()
    assert ruleset.path == PATH
    assert str(ruleset.tz) == "UTC"


# -- the file as a whole ---------------------------------------------------------
def test_yaml_syntax_error_in_flow_list():
    one(doc("""\
        - name: a
          when: {keyword: [a, b}
          reply: x
        """), 4, "YAML syntax error")


def test_yaml_syntax_error_bad_indentation():
    one(doc("""\
        - name: a
           reply: x
        """), 4, "YAML syntax error", "mapping values are not allowed")


def test_yaml_tab_indentation_is_a_syntax_error():
    one("version: 1\nrules:\n\t- name: a\n", 3, "YAML syntax error")


def test_yaml_python_tags_are_refused():
    one(doc("""\
        - name: a
          reply: !!python/object/apply:os.system ["true"]
        """), 4, "unsupported YAML tag !!python/object/apply:os.system")


def test_two_documents_are_refused():
    one("version: 1\n---\nrules: []\n", 2, "YAML syntax error")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file(text):
    found = problems(text)
    assert found == [Problem(PATH, 0, found[0].message)]
    assert "empty" in found[0].message
    assert str(found[0]).startswith("/r.yaml: ")


@pytest.mark.parametrize("text, line", [
    ("- a\n- b\n", 1),
    ("just some text\n", 1),
    ("# comment\n\n- version: 1\n", 3),
])
def test_top_level_not_a_mapping(text, line):
    one(text, line, "top level must be a mapping")


def test_missing_version():
    one("rules: []\n", 1, "missing 'version: 1'")


@pytest.mark.parametrize("value", ["2", "'1'", "1.0", "true", "0"])
def test_unsupported_version_points_at_its_value(value):
    one(f"# rules\n\nversion: {value}\nrules: []\n", 3, "unsupported version")


def test_version_2_message():
    assert str(one("version: 2\nrules: []\n", 1)) == \
        "/r.yaml:1: unsupported version 2: this service reads version 1"


def test_missing_rules():
    one("version: 1\n", 1, "missing 'rules:'")


def test_unknown_top_level_key_typo_gets_a_hint():
    found = problems("version: 1\nrule:\n  - name: a\n    reply: x\n")
    assert [str(p) for p in found] == [
        "/r.yaml:1: missing 'rules:' (a list of rules)",
        "/r.yaml:2: unknown key 'rule' in the top level (did you mean 'rules'?)",
    ]


def test_unknown_top_level_key_without_close_match_lists_the_keys():
    one("version: 1\nfoo: 1\nrules: []\n", 2, "unknown key 'foo'", "expected one of:", "rules")


def test_duplicate_yaml_key_points_at_the_second():
    one("version: 1\nrules: []\n\nrules: []\n", 4, "duplicate key 'rules'")


def test_duplicate_yaml_key_inside_a_flow_mapping():
    one(doc("""\
        - name: a
          when: {keyword: a, keyword: b}
          reply: x
        """), 4, "duplicate key 'keyword'")


def test_duplicate_yaml_key_inside_a_rule():
    one(doc("""\
        - name: a
          reply: x
          reply: y
        """), 5, "duplicate key 'reply'")


def test_non_plain_key():
    one(doc("""\
        - {name: a, reply: hi, ? [x] : y}
        """), 3, "a key must be a plain value")


# -- webhook and media (once "not available yet"; compliance and limits: tests/test_compliance.py)
def test_webhook_and_media_actions_are_available_now():
    ruleset = compile_text(doc("""\
        - name: hook
          when: {keyword: hook}
          webhook: {url: "https://example.com/hook"}
        - name: pic
          reply: "Here"
          media: ["https://example.com/a.png"]
        """), PATH)
    hook, pic = ruleset.rules
    assert hook.webhook == Webhook("https://example.com/hook", "POST") and hook.media == ()
    assert pic.media == ("https://example.com/a.png",) and pic.webhook is None


def test_not_yet_mechanism_still_refuses_a_listed_key(monkeypatch):
    """Nothing is "not available yet" today; the mechanism stays for the next such key."""
    assert compiler_module.NOT_YET_RULE == frozenset() and compiler_module.NOT_YET_TOP == frozenset()
    monkeypatch.setattr(compiler_module, "NOT_YET_RULE", frozenset({"webhook"}))
    found = problems(doc("""\
        - name: hook
          webhook: https://example.com/hook
        """))
    assert [str(p) for p in found] == ["/r.yaml:4: 'webhook' is not available yet"]


# -- webhook ---------------------------------------------------------------------------
def test_webhook_short_form_is_a_url_with_post():
    ruleset = compile_text(doc("""\
        - name: hook
          webhook: https://example.com/hook?x=1
        """), PATH)
    assert ruleset.rules[0].webhook == Webhook("https://example.com/hook?x=1", "POST")


@pytest.mark.parametrize("given, stored", [("POST", "POST"), ("put", "PUT"), ("Patch", "PATCH"),
                                           ("' post '", "POST")])
def test_webhook_long_form_method_case_insensitive_stored_upper(given, stored):
    ruleset = compile_text(doc(f"""\
        - name: hook
          webhook:
            url: http://hooks.example:8080/in
            method: {given}
        """), PATH)
    assert ruleset.rules[0].webhook == Webhook("http://hooks.example:8080/in", stored)


def test_webhook_without_method_is_post():
    ruleset = compile_text(doc("""\
        - name: hook
          webhook: {url: "https://example.com/hook"}
        """), PATH)
    assert ruleset.rules[0].webhook.method == "POST"


@pytest.mark.parametrize("method, shown", [("GET", "'GET'"), ("DELETE", "'DELETE'"), ("5", "5"),
                                           ("[POST]", "a list"), ("''", "''")])
def test_webhook_method_must_be_post_put_or_patch(method, shown):
    one(doc(f"""\
        - name: hook
          webhook:
            url: https://example.com/hook
            method: {method}
        """), 6, f"'webhook.method' must be POST, PUT or PATCH, got {shown}")


def test_webhook_unknown_key_has_a_hint():
    found = problems(doc("""\
        - name: hook
          webhook:
            url: https://example.com/hook
            metod: PUT
        """))
    assert [str(p) for p in found] == ["/r.yaml:6: unknown key 'metod' in webhook (did you mean 'method'?)"]


def test_webhook_without_url():
    found = problems(doc("""\
        - name: hook
          webhook:
            method: PUT
        """))
    assert [str(p) for p in found] == ["/r.yaml:5: 'webhook' needs 'url'"]


def test_webhook_misspelt_url_gets_a_hint_and_the_missing_url():
    found = problems(doc("""\
        - name: hook
          webhook: {ur: "https://example.com/hook"}
        """))
    assert [str(p) for p in found] == [
        "/r.yaml:4: unknown key 'ur' in webhook (did you mean 'url'?)",
        "/r.yaml:4: 'webhook' needs 'url'",
    ]


@pytest.mark.parametrize("url, fragment", [
    ("ftp://example.com/x", "'webhook' takes an http(s) URL, got 'ftp://example.com/x'"),
    ("example.com/hook", "'webhook' takes an http(s) URL, got 'example.com/hook'"),
    ("'https://'", "'webhook' takes an http(s) URL, got 'https://'"),
    ("'http:///path'", "'webhook' takes an http(s) URL, got 'http:///path'"),
    ("'https://ex ample.com/'", "without spaces or control characters, got 'https://ex ample.com/'"),
    ('"https://example.com/\\t"', "without spaces or control characters"),
    ("'https://example.com:port/'", "'webhook' takes an http(s) URL, got 'https://example.com:port/'"),
    ("'https://[::1/'", "'webhook' takes an http(s) URL, got 'https://[::1/'"),
    ("'https://example.com/{{ from }}'", "'webhook' takes an http(s) URL, not templates"),
    ("5", "'webhook' must be a URL or a mapping with 'url' and 'method', got 5"),
    ("", "'webhook' must be a URL or a mapping with 'url' and 'method', got nothing"),
    ("[https://a.example/]", "'webhook' must be a URL or a mapping with 'url' and 'method', got a list"),
    ("''", "'webhook' takes an http(s) URL, got ''"),
])
def test_webhook_short_form_bad_urls(url, fragment):
    one(doc(f"""\
        - name: hook
          webhook: {url}
        """), 4, fragment)


def test_webhook_long_form_bad_url_points_at_the_url():
    one(doc("""\
        - name: hook
          webhook:
            method: PUT
            url: mailto:someone@example.com
        """), 6, "'webhook.url' takes an http(s) URL, got 'mailto:someone@example.com'")


def test_webhook_url_length_limit():
    ok = "https://example.com/" + "a" * (2000 - len("https://example.com/"))
    assert compile_text(doc(f"""\
        - name: hook
          webhook: {ok}
        """), PATH).rules[0].webhook.url == ok
    one(doc(f"""\
        - name: hook
          webhook: {{url: {ok}b}}
        """), 4, "'webhook.url' takes an http(s) URL of at most 2,000 characters, got one of 2,001")


def test_webhook_alone_is_an_action_and_goes_with_silent_and_continue():
    ruleset = compile_text(doc("""\
        - name: tell
          webhook: https://example.com/a
          continue: true
        - name: quiet
          silent: true
          webhook: https://example.com/b
        """), PATH)
    assert [(r.name, r.silent, r.cont, r.webhook.url) for r in ruleset.rules] == [
        ("tell", False, True, "https://example.com/a"), ("quiet", True, False, "https://example.com/b")]


# -- media -----------------------------------------------------------------------------
def test_media_one_url_or_a_list():
    ruleset = compile_text(doc("""\
        - name: one
          when: {keyword: one}
          reply: "A picture"
          media: https://m.example/a.png
        - name: list
          when: {keyword: two}
          media:
            - https://m.example/a.png
            - http://m.example/b.jpg?size=large
        """), PATH)
    assert [r.media for r in ruleset.rules] == [
        ("https://m.example/a.png",), ("https://m.example/a.png", "http://m.example/b.jpg?size=large")]


def test_media_takes_at_most_ten_urls():
    ten = "".join(f"    - https://m.example/{i}.png\n" for i in range(10))
    assert len(compile_text(doc("- name: pics\n  media:\n" + ten), PATH).rules[0].media) == 10
    eleven = ten + "    - https://m.example/10.png\n"
    found = problems(doc("- name: pics\n  media:\n" + eleven))
    # line of the 11th URL: the one too many
    assert [str(p) for p in found] == ["/r.yaml:15: 'media' takes at most 10 URLs, got 11"]


def test_media_empty_list():
    one(doc("""\
        - name: pics
          media: []
        """), 4, "'media' needs at least one URL (at most 10)")


@pytest.mark.parametrize("value, fragment", [
    ("ftp://x", "'media' takes http(s) URLs, got 'ftp://x'"),
    ("5", "'media' takes http(s) URLs, got 5"),
    ("true", "'media' takes http(s) URLs, got True"),
    ("", "'media' takes http(s) URLs, got nothing"),
    ("'//m.example/a.png'", "'media' takes http(s) URLs, got '//m.example/a.png'"),
    ("'https://m.example/a b.png'", "'media' takes http(s) URLs without spaces or control characters"),
    ("'{{ media[0] }}'", "'media' takes http(s) URLs, not templates"),
    ("{url: 'https://m.example/a.png'}", "'media' takes one http(s) URL or a list of them, got a mapping"),
])
def test_media_bad_value(value, fragment):
    one(doc(f"""\
        - name: pics
          reply: hi
          media: {value}
        """), 5, fragment)


def test_media_bad_item_points_at_the_item():
    found = problems(doc("""\
        - name: pics
          media:
            - https://m.example/a.png
            - file:///etc/passwd
            - https://m.example/c.png
            - [nested]
        """))
    assert [str(p) for p in found] == [
        "/r.yaml:6: 'media' takes http(s) URLs, got 'file:///etc/passwd'",
        "/r.yaml:8: 'media' takes http(s) URLs, got a list",
    ]


def test_media_url_length_limit():
    base = "https://m.example/"
    ok = base + "a" * (2000 - len(base))
    assert compile_text(doc(f"- name: pic\n  media: [{ok}]\n"), PATH).rules[0].media == (ok,)
    one(doc(f"- name: pic\n  media: [{ok}, {ok}a]\n"), 4,
        "'media' takes http(s) URLs of at most 2,000 characters, got one of 2,001")


def test_media_alone_is_an_action():
    ruleset = compile_text(doc("""\
        - name: pic
          when: {keyword: logo}
          media: https://m.example/logo.png
        """), PATH)
    assert ruleset.rules[0].media == ("https://m.example/logo.png",) and not ruleset.rules[0].replies


def test_silent_with_media_points_at_silent():
    one(doc("""\
        - name: pic
          media: https://m.example/a.png
          silent: true
        """), 5, "'silent: true' cannot go with 'reply', 'forward' or 'media'")


def test_reply_with_media_keeps_its_encoding_warning():
    ruleset = compile_text(doc("""\
        - name: pic
          reply: "Menu \u2603"
          media: https://m.example/menu.png
        """), PATH)
    assert [(w.line, w.message) for w in ruleset.warnings] == [
        (4, "rule 'pic': reply is UCS-2, 6 characters, 1 unit (UCS-2 because of '\u2603')")]


# -- checks that depend on the service's settings (`sending`) -------------------------
HOOK_AND_PIC = doc("""\
    - name: hook
      when: {keyword: hook}
      webhook: {url: "https://example.com/hook"}
    - name: pic
      when: {keyword: pic}
      reply: Here
      media: https://m.example/a.png
    - name: wa
      when: {type: whatsapp}
      reply: "Hello on WhatsApp"
    """)
SETTINGS_ERRORS = {
    "hook": "/r.yaml:5: rule 'hook': 'webhook' needs WEBHOOK_SECRET to be set "
            "(the key that signs each call, X-Responder-Signature)",
    "pic": "/r.yaml:9: rule 'pic': 'media' is sent through Plivo's Message API, "
           "which needs PLIVO_AUTH_ID to be set",
    "wa": "/r.yaml:12: rule 'wa': replies to WhatsApp go through Plivo's Message API, "
          "which needs PLIVO_AUTH_ID to be set",
}


def test_without_sending_the_settings_are_not_checked():
    ruleset = compile_text(HOOK_AND_PIC, PATH)
    assert [r.name for r in ruleset.rules] == ["hook", "pic", "wa"]
    assert compile_text(HOOK_AND_PIC, PATH, sending=None).digest == ruleset.digest


def test_with_every_setting_everything_loads():
    ruleset = compile_text(HOOK_AND_PIC, PATH, sending=Sending(api=True, webhook_secret=True))
    assert [r.name for r in ruleset.rules] == ["hook", "pic", "wa"]


@pytest.mark.parametrize("api, secret, expected", [
    (False, False, ["hook", "pic", "wa"]),
    (True, False, ["hook"]),
    (False, True, ["pic", "wa"]),
])
def test_missing_settings_are_errors_at_the_key(api, secret, expected):
    with pytest.raises(RulesError) as info:
        compile_text(HOOK_AND_PIC, PATH, sending=Sending(api=api, webhook_secret=secret))
    assert [str(p) for p in info.value.problems] == [SETTINGS_ERRORS[k] for k in expected]


def test_load_passes_sending(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\nrules:\n  - name: hook\n    webhook: https://example.com/h\n")
    assert load(str(path)).rules[0].webhook.url == "https://example.com/h"
    with pytest.raises(RulesError) as info:
        load(str(path), sending=Sending(api=True, webhook_secret=False))
    assert [(p.line, p.message.split(":")[0]) for p in info.value.problems] == [(4, "rule 'hook'")]
    assert "needs WEBHOOK_SECRET" in str(info.value)


def test_silent_webhook_needs_the_secret_too():
    with pytest.raises(RulesError) as info:
        compile_text(doc("""\
            - name: quiet
              silent: true
              webhook: https://example.com/h
            """), PATH, sending=Sending(api=True, webhook_secret=False))
    assert [p.line for p in info.value.problems] == [5]
    assert compile_text(doc("""\
        - name: quiet
          silent: true
          webhook: https://example.com/h
        """), PATH, sending=Sending(api=False, webhook_secret=True)).rules[0].silent


@pytest.mark.parametrize("condition, action, line", [
    ("{type: whatsapp}", "reply: hi", 5),
    ("{type: [whatsapp]}", "reply: hi", 5),
    ("{type: [WhatsApp, whatsapp]}", "reply: hi", 5),
    ("{type: whatsapp, keyword: hi}", 'forward: {to: "14155550999"}', 5),
])
def test_whatsapp_only_rule_with_an_answer_needs_the_api(condition, action, line):
    text = doc(f"""\
        - name: wa
          when: {condition}
          {action}
        """)
    with pytest.raises(RulesError) as info:
        compile_text(text, PATH, sending=Sending(api=False, webhook_secret=True))
    assert [str(p) for p in info.value.problems] == [
        f"/r.yaml:{line}: rule 'wa': replies to WhatsApp go through Plivo's Message API, "
        "which needs PLIVO_AUTH_ID to be set"]
    assert compile_text(text, PATH, sending=Sending(api=True, webhook_secret=False)).rules


@pytest.mark.parametrize("condition, action", [
    ("{type: [sms, whatsapp]}", "reply: hi"),     # SMS senders can still be answered in the XML
    ("{keyword: hi}", "reply: hi"),               # no type: may answer SMS too (the service warns)
    ("{not: {type: sms}}", "reply: hi"),          # `not` is not looked into
    ("{type: whatsapp}", "silent: true"),         # answers nothing
    ("{type: sms}", "reply: hi"),
])
def test_rules_that_are_not_whatsapp_only_load_without_the_api(condition, action):
    text = doc(f"""\
        - name: r
          when: {condition}
          {action}
        """)
    assert compile_text(text, PATH, sending=Sending(api=False, webhook_secret=False)).rules


def test_whatsapp_only_webhook_needs_only_the_secret():
    text = doc("""\
        - name: wa
          when: {type: whatsapp}
          webhook: https://example.com/h
        """)
    assert compile_text(text, PATH, sending=Sending(api=False, webhook_secret=True)).rules


def test_whatsapp_reply_with_media_without_the_api_reports_both():
    with pytest.raises(RulesError) as info:
        compile_text(doc("""\
            - name: wa
              when: {type: whatsapp}
              reply: hi
              media: https://m.example/a.png
            """), PATH, sending=Sending(api=False, webhook_secret=False))
    assert [(p.line, p.message) for p in info.value.problems] == [
        (5, "rule 'wa': replies to WhatsApp go through Plivo's Message API, which needs PLIVO_AUTH_ID to be set"),
        (6, "rule 'wa': 'media' is sent through Plivo's Message API, which needs PLIVO_AUTH_ID to be set"),
    ]


def test_settings_errors_come_with_the_file_errors():
    with pytest.raises(RulesError) as info:
        compile_text(doc("""\
            - name: hook
              webhook: https://example.com/h
            - name: hook
              reply: "{{ nope }}"
            """), PATH, sending=Sending(api=False, webhook_secret=False))
    assert [p.line for p in info.value.problems] == [4, 5, 6]


def test_a_bad_webhook_url_is_reported_once_not_also_as_a_setting():
    with pytest.raises(RulesError) as info:
        compile_text(doc("""\
            - name: hook
              webhook: ftp://example.com/h
            """), PATH, sending=Sending(api=False, webhook_secret=False))
    assert [str(p) for p in info.value.problems] == ["/r.yaml:4: 'webhook' takes an http(s) URL, got 'ftp://example.com/h'"]


# -- answers_whatsapp ---------------------------------------------------------------
NO_COMPLIANCE = "compliance: {enabled: false}\n"


@pytest.mark.parametrize("body, expected", [
    ("- {name: r, reply: hi}\n", True),
    ("- {name: r, when: {keyword: hi}, reply: hi}\n", True),
    ("- {name: r, when: {type: whatsapp}, reply: hi}\n", True),
    ("- {name: r, when: {type: [sms, whatsapp]}, forward: {to: '14155550999'}}\n", True),
    ("- {name: r, when: {type: whatsapp}, media: 'https://m.example/a.png'}\n", True),
    ("- {name: r, when: {not: {type: whatsapp}}, reply: hi}\n", True),   # `not` is ignored
    ("- {name: r, when: {type: sms}, reply: hi}\n", False),
    ("- {name: r, when: {type: [sms, mms]}, reply: hi, media: 'https://m.example/a.png'}\n", False),
    ("- {name: r, silent: true}\n", False),
    ("- {name: r, webhook: 'https://example.com/h'}\n", False),
    ("- {name: r, when: {type: whatsapp}, webhook: 'https://example.com/h'}\n", False),
])
def test_answers_whatsapp(body, expected):
    ruleset = compile_text("version: 1\n" + NO_COMPLIANCE + "rules:\n" + body, PATH)
    assert ruleset.answers_whatsapp is expected


def test_compliance_alone_answers_whatsapp():
    body = "rules:\n- {name: r, when: {type: sms}, reply: hi}\n"
    assert compile_text("version: 1\n" + body, PATH).answers_whatsapp is True
    assert compile_text("version: 1\ncompliance: {enabled: true}\n" + body, PATH).answers_whatsapp is True
    assert compile_text("version: 1\n" + NO_COMPLIANCE + body, PATH).answers_whatsapp is False


def test_media_condition_under_when_is_accepted():
    ruleset = compile_text(doc("""\
        - name: pic
          when: {media: true}
          reply: "Nice picture"
        - name: text-only
          when: {media: false}
          reply: "Words"
        """), PATH)
    assert [r.name for r in ruleset.rules] == ["pic", "text-only"]


# -- rules and rule keys -------------------------------------------------------------
@pytest.mark.parametrize("value, shown", [("5", "got 5"), ("{a: 1}", "got a mapping"),
                                          ("hello", "got 'hello'"), ("", "got nothing")])
def test_rules_not_a_list(value, shown):
    one(f"version: 1\nrules: {value}\n", 2, "'rules' must be a list", shown)


def test_rule_not_a_mapping():
    found = problems(doc("""\
        - 5
        - [a, b]
        - just text
        """))
    assert [(p.line, p.message) for p in found] == [
        (3, "each rule must be a mapping, got 5"),
        (4, "each rule must be a mapping, got a list"),
        (5, "each rule must be a mapping, got 'just text'"),
    ]


def test_missing_name_points_at_the_rule():
    one(doc("""\
        - name: ok
          reply: x

        - when: {keyword: a}
          reply: y
        """), 6, "needs a 'name'")


@pytest.mark.parametrize("value, shown", [("''", "got ''"), ("5", "got 5"), ("[a]", "got a list")])
def test_name_must_be_text(value, shown):
    one(doc(f"""\
        - reply: x
          name: {value}
        """), 4, "'name' must be text", shown)


def test_duplicate_rule_names_name_the_first_line():
    p = one(doc("""\
        - name: greet
          reply: hi
        - name: other
          reply: ho
        - name: greet
          reply: hey
        """), 7)
    assert p.message == "duplicate rule name 'greet' (first at line 3)"


def test_duplicate_rule_names_after_trimming():
    one(doc("""\
        - name: greet
          reply: hi
        - name: " greet "
          reply: hey
        """), 5, "duplicate rule name 'greet'", "line 3")


def test_unknown_rule_key_gets_a_hint():
    p = one(doc("""\
        - name: a
          reply: x
          contine: true
        """), 5)
    assert p.message == "unknown key 'contine' in a rule (did you mean 'continue'?)"


def test_unknown_when_key_gets_a_hint():
    p = one(doc("""\
        - name: a
          when:
            keywords: [a]
          reply: x
        """), 5)
    assert p.message == "unknown key 'keywords' in 'when' (did you mean 'keyword'?)"


def test_unknown_key_inside_not():
    one(doc("""\
        - name: a
          when: {not: {keyword: x, colour: red}}
          reply: x
        """), 4, "unknown key 'colour' in 'when'")


def test_unknown_forward_and_settings_keys():
    found = problems(textwrap.dedent("""\
        version: 1
        settings: {tz: UTC}
        rules:
          - name: a
            forward: {to: "14155550999", cc: "14155550998"}
        """))
    assert [(p.line, p.message) for p in found] == [
        (2, "unknown key 'tz' in settings (expected one of: timezone)"),
        (5, "unknown key 'cc' in forward (expected one of: to, text)"),
    ]


# -- conditions ------------------------------------------------------------------------
def test_bad_regex_points_at_the_pattern():
    one(doc("""\
        - name: a
          when:
            regex: '^order (\\d+'
          reply: x
        """), 5, "bad regex", "missing )")


@pytest.mark.parametrize("value, shown", [("5", "got 5"), ("[a, b]", "got a list"), ("''", "got ''")])
def test_regex_must_be_one_text(value, shown):
    one(doc(f"""\
        - name: a
          when: {{regex: {value}}}
          reply: x
        """), 4, "'regex' takes one pattern as text", shown)


def test_unknown_timezone_points_at_its_value():
    p = one(textwrap.dedent("""\
        version: 1
        settings:
          timezone: Mars/Olympus_Mons
        rules: []
        """), 3)
    assert p.message == "unknown timezone 'Mars/Olympus_Mons' (an IANA name such as America/New_York)"


@pytest.mark.parametrize("zone, advice", [
    ("EST", "use a place name like America/New_York"),
    ("MST", "use a place name like America/Denver (or America/Phoenix, on MST all year)"),
    ("HST", "use a place name like Pacific/Honolulu"), ("GMT", "use a place name like Europe/London"),
    ("Etc/GMT0", "use a place name like Europe/London"),
    # an offset many regions share: no one place is named, and the reversed sign is spelled out
    ("Etc/GMT+5", "it is UTC-5 (the sign of GMT+N names is reversed): use the place name of your region, "
                  "as Area/City"),
    ("Etc/GMT-9", "it is UTC+9 (the sign of GMT+N names is reversed): use the place name of your region, "
                  "as Area/City"),
])
def test_fixed_offset_timezone_is_a_warning_at_its_value(zone, advice):
    ruleset = compile_text(f"version: 1\nsettings:\n  timezone: {zone}\nrules: []\n", PATH)
    assert [str(w) for w in ruleset.warnings] == [
        f"/r.yaml:3: timezone '{zone}' is a fixed offset with no daylight saving; {advice}"]
    assert ruleset.tz.key == zone  # still used as given: a warning, not an error


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Tokyo", "Pacific/Honolulu", "UTC", "Etc/UTC",
                                  "EST5EDT", "PRC", "Japan"])
def test_place_names_and_deliberate_utc_are_not_warned_about(zone):
    ruleset = compile_text(doc(f"""\
        - name: late
          when: {{hours: "17:00-09:00"}}
          reply: closed
        settings: {{timezone: {zone}}}
        """), PATH)
    assert ruleset.warnings == ()


def test_days_or_hours_without_a_timezone_warn_at_the_first_one():
    ruleset = compile_text(doc("""\
        - name: hi
          when: {keyword: hi}
          reply: hello
        - name: weekend
          when:
            not: {days: [mon, tue, wed, thu, fri]}
          reply: closed today
        - name: late
          when: {hours: "17:00-09:00"}
          reply: closed now
        """), PATH)
    assert [str(w) for w in ruleset.warnings] == [
        "/r.yaml:8: 'days' is checked in UTC because no timezone is set; "
        "set settings.timezone to a place name like America/New_York"]
    assert compile_text(doc("- name: hi\n  reply: hello\n"), PATH).warnings == ()  # no clock, no warning


def test_timezone_must_be_text():
    one("version: 1\nsettings: {timezone: 5}\nrules: []\n", 2, "'timezone' must be an IANA name")


def test_settings_must_be_a_mapping():
    one("version: 1\nsettings: [UTC]\nrules: []\n", 2, "'settings' must be a mapping")


@pytest.mark.parametrize("value, fragment", [
    ("'9-17'", 'takes "HH:MM-HH:MM"'),
    ("'9am-5pm'", 'takes "HH:MM-HH:MM"'),
    ("'17:00'", 'takes "HH:MM-HH:MM"'),
    ("5", 'takes "HH:MM-HH:MM"'),
    ("['09:00-17:00']", 'takes "HH:MM-HH:MM"'),
    ("'25:00-09:00'", "is not a time of day"),
    ("'09:60-17:00'", "is not a time of day"),
    ("'24:00-09:00'", "is not a time of day"),
    ("'22:00-24:30'", "is not a time of day"),
    ("'09:00-09:00'", "starts and ends at the same time"),
])
def test_bad_hours(value, fragment):
    one(one_condition("hours", value), 5, "'hours'", fragment)


@pytest.mark.parametrize("value", ["'9:00-17:00'", "'22:00-24:00'", "' 17:00 - 09:00 '", "17:00-09:00"])
def test_good_hours(value):
    compile_text(doc(f"""\
        - name: a
          when: {{hours: {value}}}
          reply: x
        """), PATH)


def test_bad_days():
    found = problems(doc("""\
        - name: a
          when:
            days:
              - mon
              - funday
          reply: x
        - name: b
          when: {days: 1}
          reply: x
        """))
    assert [(p.line, p.message) for p in found] == [
        (7, "'days': unknown value 'funday' (expected: mon, tue, wed, thu, fri, sat, sun)"),
        (10, "'days' takes text or a list of them, got 1"),
    ]


def test_days_are_case_insensitive():
    compile_text(doc("""\
        - name: a
          when: {days: [MON, Tue, sun]}
          reply: x
        """), PATH)


def test_bad_type_and_intent():
    found = problems(doc("""\
        - name: a
          when:
            type: fax
            intent: [help, maybe]
          reply: x
        """))
    assert [(p.line, p.message) for p in found] == [
        (5, "'type': unknown value 'fax' (expected: sms, mms, whatsapp)"),
        (6, "'intent': unknown value 'maybe' (expected: optout, optin, help)"),
    ]


@pytest.mark.parametrize("value, fragment", [
    ("abc", "is not a phone number"),
    ("'+1-800-FLOWERS'", "is not a phone number"),
    ("'++'", "is not a phone number"),
    ("'1415*555'", "is not a phone number"),
    ("'*'", "'*' alone matches every number"),
    ("1.5", "takes text or a number"),
    ("true", "takes text or a number"),
])
def test_bad_phone_numbers(value, fragment):
    one(one_condition("from", value), 5, "'from'", fragment)


def test_bad_to_number_in_a_list_points_at_the_item():
    one(doc("""\
        - name: a
          when:
            to:
              - "+1 (415) 555-0100"
              - "call me"
          reply: x
        """), 7, "'to'", "'call me' is not a phone number")


def test_keyword_with_two_words_points_at_the_item():
    p = one(doc("""\
        - name: a
          when:
            keyword:
              - hours
              - opening hours
          reply: x
        """), 7)
    assert p.message == "keyword 'opening hours' is more than one word; use 'text' or 'contains' for phrases"


def test_keyword_without_letters_or_digits():
    one(doc("""\
        - name: a
          when: {keyword: '?!'}
          reply: x
        """), 4, "has no letters or digits")


@pytest.mark.parametrize("key", ["keyword", "text", "contains", "from", "to", "type", "intent", "days"])
def test_empty_condition_list(key):
    one(one_condition(key, "[]"), 5, f"'{key}' needs at least one value")


@pytest.mark.parametrize("key", ["keyword", "text", "contains", "from", "type"])
def test_condition_without_a_value(key):
    one(one_condition(key, ""), 5, f"'{key}' takes", "got nothing")


def test_empty_not():
    one(doc("""\
        - name: a
          when: {not: {}}
          reply: x
        """), 4, "'not' needs at least one condition")


def test_empty_not_message_says_it_is_empty():
    p = one(doc("""\
        - name: a
          when: {not: {}}
          reply: x
        """), 4)
    assert "got a mapping" not in p.message


def test_empty_reply_list():
    at(doc("""\
        - name: a
          reply: []
        """), 4, "'reply' needs at least one text")


def test_forward_to_empty_list():
    one(doc("""\
        - name: a
          forward: {to: []}
        """), 4, "'to' needs at least one value")


# -- wrong types -------------------------------------------------------------------
def test_reply_must_be_text():
    one(doc("""\
        - name: a
          reply: 5
        """), 4, "a template must be text, got 5")


def test_reply_list_item_must_be_text():
    one(doc("""\
        - name: a
          reply:
            - fine
            - [nested]
        """), 6, "a template must be text, got a list")


def test_silent_must_be_a_boolean():
    at(doc("""\
        - name: a
          silent: "yes"
        """), 4, "'silent' must be true or false, got 'yes'")


@pytest.mark.parametrize("key", ["continue"])
def test_continue_must_be_a_boolean(key):
    one(doc(f"""\
        - name: a
          reply: x
          {key}: "true"
        """), 5, "'continue' must be true or false")


def test_when_must_be_a_mapping():
    one(doc("""\
        - name: a
          when: [keyword, hours]
          reply: x
        """), 4, "'when' must be a mapping of conditions, got a list")


def test_media_condition_must_be_a_boolean():
    one(doc("""\
        - name: a
          when: {media: "yes"}
          reply: x
        """), 4, "'media' must be true or false")


def test_forward_must_be_a_mapping():
    one(doc("""\
        - name: a
          forward: "14155550999"
        """), 4, "'forward' must be a mapping")


# -- actions -----------------------------------------------------------------------
def test_silent_with_reply_points_at_silent():
    one(doc("""\
        - name: a
          reply: x
          silent: true
        """), 5, "'silent: true' cannot go with 'reply', 'forward' or 'media'")


def test_silent_with_forward():
    one(doc("""\
        - name: a
          silent: true
          forward: {to: "14155550999"}
        """), 4, "cannot go with")


@pytest.mark.parametrize("extra", ["", "  silent: false\n", "  continue: true\n"])
def test_rule_without_action_points_at_the_rule(extra):
    text = doc("""\
        - name: ok
          reply: x
        - name: lazy
          when: {keyword: a}
        """) + extra
    p = one(text, 5)
    assert p.message == ("rule 'lazy' does nothing: give it 'reply', 'forward', 'media', 'webhook' "
                         "or 'silent: true'")


def test_forward_without_to():
    one(doc("""\
        - name: a
          forward:
            text: "{{ text }}"
        """), 5, "'forward' needs 'to'")


def test_forward_to_a_prefix():
    one(doc("""\
        - name: a
          forward:
            to: ["14155550999", "1415*"]
        """), 5, "'forward.to' takes whole numbers, not prefixes")


# -- templates -----------------------------------------------------------------------
def test_template_syntax_error_points_at_the_list_item():
    one(doc("""\
        - name: a
          reply:
            - "fine"
            - "Hello {{ from }"
        """), 6, "template syntax error")


def test_template_syntax_error_in_forward_text():
    one(doc("""\
        - name: a
          forward:
            to: "14155550999"
            text: "{% if text %}x"
        """), 6, "template syntax error")


def test_unknown_template_name():
    p = one(doc("""\
        - name: a
          reply: "Hi {{ sender }}"
        """), 4)
    assert p.message == ("unknown name 'sender' in template "
                         "(known: from, to, text, type, uuid, media, match, now, rule)")


def test_unknown_template_name_in_forward_text():
    one(doc("""\
        - name: a
          forward: {to: "14155550999", text: "{{ fromm }}: {{ text }}"}
        """), 4, "unknown name 'fromm'")


def test_match_without_regex():
    p = one(doc("""\
        - name: a
          when: {keyword: order}
          reply: "Order {{ match.order }}"
        """), 5)
    assert p.message == "template uses match.order but the rule has no regex"


def test_match_subscript_without_regex():
    one(doc("""\
        - name: a
          reply: "Order {{ match['order'] }}"
        """), 4, "match.order but the rule has no regex")


def test_match_with_regex_only_inside_not_has_no_groups():
    one(doc("""\
        - name: a
          when: {not: {regex: '(?P<order>\\d+)'}}
          reply: "{{ match.order }}"
        """), 5, "match.order but the rule has no regex")


def test_match_group_missing_from_the_regex():
    p = one(doc("""\
        - name: a
          when: {regex: '^order (?P<number>\\d+)'}
          reply: "Order {{ match.order }}"
        """), 5)
    assert p.message == "template uses match.order but the regex has no group 'order' (groups: number)"


def test_match_group_missing_in_forward_text():
    one(doc("""\
        - name: a
          when: {regex: '^order \\d+'}
          forward: {to: "14155550999", text: "{{ match.order }}"}
        """), 5, "the regex has no group 'order' (groups: none)")


# -- files -----------------------------------------------------------------------------
def test_load_file(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(doc("""\
        - name: a
          reply: hi
        """), encoding="utf-8")
    ruleset = load(str(path))
    assert [r.name for r in ruleset.rules] == ["a"]
    assert ruleset.path == str(path)


def test_file_not_utf8_points_at_the_line(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_bytes(b"version: 1\nrules:\n  - name: a\n    reply: caf\xe9\n")
    with pytest.raises(RulesError) as info:
        load(str(path))
    assert info.value.problems == [Problem(str(path), 4, "the rules file is not valid UTF-8")]


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(RulesError) as info:
        load(path)
    [p] = info.value.problems
    assert (p.path, p.line) == (path, 0)
    assert "cannot read the rules file" in p.message
    assert "No such file" in p.message
    assert str(p).startswith(path + ": cannot read")


def test_utf8_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_bytes(b"\xef\xbb\xbfversion: 1\r\nrules:\r\n  - name: a\r\n    reply: hi\r\n"
                     b"  - name: a\r\n    reply: ho\r\n")
    with pytest.raises(RulesError) as info:
        load(str(path))
    assert [(p.line, p.message) for p in info.value.problems] == [
        (5, "duplicate rule name 'a' (first at line 3)")]


@pytest.mark.parametrize("char", ["\x07", "\x00"])
def test_control_character_is_a_rules_error(char):
    one(doc(f"""\
        - name: a
          reply: "hi{char}"
        """), 4)


# A problem of most kinds, two on some lines (and a URL with a password and a query, which
# a problem must not quote): the test below and the one on problem kinds (issue 13) read it.
MANY_PROBLEMS = textwrap.dedent("""\
    version: 1
    settings: {timezone: Nowhere/Land}
    rules:
      - name: a
        when: {regex: '(', keyword: [two words]}
        reply: "{{ nope }}"
      - name: a
        reply: x
        reply: y
      - name: b
        when: {hours: '25:00-26:00', days: [someday]}
        silent: maybe
        webhook: 'htps://admin:S3cret@crm.example.com/hooks?api_key=k3y'
        colour: red
    compliance: {scope: galaxy}
    """)


def test_several_problems_are_all_reported_sorted_by_line():
    found = problems(MANY_PROBLEMS)
    assert [p.line for p in found] == sorted(p.line for p in found)
    assert [(p.line, p.message.split(" ")[0]) for p in found] == [
        (2, "unknown"),        # timezone
        (5, "bad"),            # regex
        (5, "keyword"),        # two words
        (6, "unknown"),        # template name
        (7, "duplicate"),      # rule name
        (9, "duplicate"),      # YAML key
        (11, "'hours':"),
        (11, "'days':"),
        (12, "'silent'"),
        (13, "'webhook'"),     # not a URL
        (14, "unknown"),       # key
        (15, "'scope'"),
    ]


# -- YAML 1.1 gotchas ---------------------------------------------------------------
def test_yes_no_on_off_keywords_stay_words():
    ruleset = compile_text(doc("""\
        - name: words
          when: {keyword: [YES, NO, ON, off, y, n]}
          reply: ok
        """), PATH)
    for word in ["Yes please", "no", "ON!", "Off", "y", "N"]:
        assert decide(ruleset, msg(word), MONDAY_10AM).matched == ("words",), word
    assert decide(ruleset, msg("true"), MONDAY_10AM).matched == ()


def test_leading_zero_number_stays_digits():
    ruleset = compile_text(doc("""\
        - name: uk
          when: {to: 0044207946000}
          forward: {to: 0044207946001}
        """), PATH)
    d = decide(ruleset, msg("hi", to="0044207946000"), MONDAY_10AM)
    assert [(o.dst, o.text) for o in d.outgoing] == [(("0044207946001",), "From 14155550123: hi")]


def test_numbers_written_as_yaml_ints_are_accepted():
    ruleset = compile_text(doc("""\
        - name: vip
          when: {from: [14155550123, 4420*]}
          forward: {to: 14155550999}
        """), PATH)
    assert decide(ruleset, msg("x"), MONDAY_10AM).matched == ("vip",)
    assert decide(ruleset, msg("x", from_="442079460000"), MONDAY_10AM).matched == ("vip",)
    assert decide(ruleset, msg("x", from_="14155550124"), MONDAY_10AM).matched == ()
    assert decide(ruleset, msg("x"), MONDAY_10AM).outgoing[0].dst == ("14155550999",)


def test_unquoted_hours_range_works():
    ruleset = compile_text(doc("""\
        - name: night
          when: {hours: 17:00-09:00}
          reply: closed
        """), PATH)
    assert decide(ruleset, msg("x"), datetime(2026, 11, 23, 18, 0, tzinfo=NY)).matched == ("night",)
    assert decide(ruleset, msg("x"), MONDAY_10AM).matched == ()


def test_numbers_as_keyword_and_contains():
    ruleset = compile_text(doc("""\
        - name: code
          when: {keyword: 42, contains: 7}
          reply: ok
        """), PATH)
    assert decide(ruleset, msg("42 is 7"), MONDAY_10AM).matched == ("code",)


def test_date_like_values_stay_text():
    ruleset = compile_text(doc("""\
        - name: xmas
          when: {keyword: 2025-12-25}
          reply: 2025-12-25
        """), PATH)
    assert decide(ruleset, msg("2025-12-25?"), MONDAY_10AM).outgoing[0].text == "2025-12-25"


def test_merge_key_can_be_overridden():
    ruleset = compile_text(doc("""\
        - &base
          name: a
          reply: hi
        - <<: *base
          name: b
          when: {keyword: b}
        """), PATH)
    assert [r.name for r in ruleset.rules] == ["a", "b"]


# -- warnings: rules that can never match -------------------------------------------
@pytest.mark.parametrize("body, expected", [
    pytest.param("""\
        - name: everything
          reply: "{{ text }}"
        - name: hours
          when: {keyword: hours}
          reply: "{{ text }}"
        - name: last
          reply: "{{ text }}"
        """, [
        "/r.yaml:5: rule 'hours' can never match: rule 'everything' (line 3) matches first and stops",
        "/r.yaml:8: rule 'last' can never match: rule 'everything' (line 3) matches first and stops",
    ], id="rule_after_catch_all_is_shadowed"),
    pytest.param("""\
        - name: mute
          silent: true
        - name: b
          reply: "{{ text }}"
        """, [
        "/r.yaml:5: rule 'b' can never match: rule 'mute' (line 3) matches first and stops",
    ], id="silent_catch_all_shadows_too"),
    pytest.param("""\
        - name: log
          reply: "{{ text }}"
          continue: true
        - name: b
          reply: "{{ text }}"
        """, [], id="catch_all_with_continue_shadows_nothing"),
    pytest.param("""\
        - name: hours
          when: {keyword: [hours, open]}
          reply: "{{ text }}"
        - name: open-sms
          when: {keyword: OPEN!, type: sms}
          reply: "{{ text }}"
        """, [
        "/r.yaml:6: rule 'open-sms' can never match: rule 'hours' (line 3) matches first and stops",
    ], id="keyword_rule_after_keyword_only_rule_covering_it"),
    pytest.param("""\
        - name: k1
          when: {keyword: [a, b]}
          reply: "{{ text }}"
        - name: k2
          when: {keyword: c}
          silent: true
        - name: both
          when: {keyword: [b, c]}
          reply: "{{ text }}"
        - name: partly
          when: {keyword: [a, d]}
          reply: "{{ text }}"
        """, [
        "/r.yaml:9: rule 'both' can never match: rule 'k1' (line 3) matches first and stops",
    ], id="keywords_covered_across_several_earlier_rules"),
    pytest.param("""\
        - name: hours
          when: {keyword: hours}
          reply: "{{ text }}"
        - name: hours-text
          when: {text: ["Hours please", "hours?"]}
          reply: "{{ text }}"
        - name: mixed
          when: {text: ["hours today", "where are you"]}
          reply: "{{ text }}"
        """, [
        "/r.yaml:6: rule 'hours-text' can never match: rule 'hours' (line 3) matches first and stops",
    ], id="text_rule_whose_first_word_is_an_earlier_keyword"),
    pytest.param("""\
        - name: t1
          when: {text: "where are you"}
          reply: "{{ text }}"
        - name: t2
          when: {text: "  WHERE are   you "}
          reply: "{{ text }}"
        """, [
        "/r.yaml:6: rule 't2' can never match: rule 't1' (line 3) matches first and stops",
    ], id="text_rule_after_same_text_rule"),
    pytest.param("""\
        - name: k-continue
          when: {keyword: a}
          reply: "{{ text }}"
          continue: true
        - name: k-sms
          when: {keyword: b, type: sms}
          reply: "{{ text }}"
        - name: t-sms
          when: {text: c, type: sms}
          reply: "{{ text }}"
        - name: sms-only
          when: {type: sms}
          reply: "{{ text }}"
        - name: a
          when: {keyword: a}
          reply: "{{ text }}"
        - name: b
          when: {keyword: b}
          reply: "{{ text }}"
        - name: c
          when: {text: c}
          reply: "{{ text }}"
        - name: rest
          reply: "{{ text }}"
        """, [], id="not_shadowed_when_the_earlier_rule_continues_or_has_more_conditions"),
])
def test_shadow_warnings(body, expected):
    """Each case: the rules (below `version: 1` and `rules:`) and the shadow warnings they give."""
    assert shadow_warnings(compile_text(doc(body), PATH)) == expected


def test_shadow_warnings_are_not_errors():
    ruleset = compile_text(doc("""\
        - name: all
          reply: a
        - name: never
          reply: b
        """), PATH)
    assert [r.name for r in ruleset.rules] == ["all", "never"]


# -- warnings: encodings --------------------------------------------------------------
def test_only_fixed_texts_dearer_than_one_gsm7_unit_are_warned_about():
    # One plain GSM-7 unit (extension characters included, while they fit) is what an SMS
    # costs at least: no warning. UCS-2 (70 characters a unit, not 160) is, naming the character.
    ruleset = compile_text(doc("""\
        - name: g
          reply:
            - "hello"
            - "price 5€ [x]"
            - "naïve café"
            - "emoji 😀"
            - "Hi {{ from }}"
            - "ï"
          forward: {to: "14155550999", text: "new message"}
        """), PATH)
    assert encoding_warnings(ruleset) == [
        "/r.yaml:7: rule 'g': reply is UCS-2, 10 characters, 1 unit (UCS-2 because of 'ï')",
        "/r.yaml:8: rule 'g': reply is UCS-2, 8 characters, 1 unit (UCS-2 because of '😀')",
        "/r.yaml:10: rule 'g': reply is UCS-2, 1 character, 1 unit (UCS-2 because of 'ï')",
    ]


def test_multi_unit_replies():
    gsm = "a" * 161
    ucs = "ж" * 71
    ruleset = compile_text(doc(f"""\
        - name: long
          reply: "{gsm}"
          continue: true
        - name: longer
          reply: "{ucs}"
        """), PATH)
    assert encoding_warnings(ruleset) == [
        "/r.yaml:4: rule 'long': reply is GSM-7, 161 characters, 2 units",
        "/r.yaml:7: rule 'longer': reply is UCS-2, 71 characters, 2 units (UCS-2 because of 'ж')",
    ]


def test_exactly_one_unit_is_no_warning_one_more_is():
    ruleset = compile_text(doc(f"""\
        - name: full
          reply: "{'a' * 160}"
        - name: ucs-full
          reply: "{'ж' * 70}"
        """), PATH)
    assert encoding_warnings(ruleset) == [
        "/r.yaml:6: rule 'ucs-full': reply is UCS-2, 70 characters, 1 unit (UCS-2 because of 'ж')"]
    ruleset = compile_text(doc(f"""\
        - name: over
          reply: "{'a' * 159}€"
        """), PATH)
    assert encoding_warnings(ruleset) == [
        "/r.yaml:4: rule 'over': reply is GSM-7, 161 characters (^{}[]~|€\\ count twice), 2 units"]


def test_templated_replies_get_no_encoding_warning():
    ruleset = compile_text(doc("""\
        - name: t
          reply: ["Hi {{ from }}", "{% if media %}pic{% endif %}", "{# note #}x"]
          forward: {to: "14155550999"}
        """), PATH)
    assert ruleset.warnings == ()


# -- the shipped file ---------------------------------------------------------------
def test_shipped_rules_load_without_shadowed_rules():
    ruleset = load(str(ROOT / "rules.yaml"))
    assert shadow_warnings(ruleset) == []
    assert str(ruleset.tz) == "America/New_York"
    assert [r.name for r in ruleset.rules] == [
        "hours", "order-status", "address", "vip", "refund", "auto-replies",
        "to-the-team", "spanish-line", "photo", "weekend", "friday-evening", "after-hours", "everything-else",
    ]
    assert ruleset.compliance.enabled and ruleset.compliance.scope == "account"
    assert ruleset.compliance.help.reply.startswith("Acme support:")
    assert ruleset.limit.count == 10 and ruleset.limit.per.total_seconds() == 3600
    assert all(w.path == str(ROOT / "rules.yaml") for w in ruleset.warnings)


def test_shipped_rules_answer_the_documented_examples():
    ruleset = load(str(ROOT / "rules.yaml"))
    d = decide(ruleset, msg("Hours?"), MONDAY_10AM)
    assert [(o.rule, o.text) for o in d.outgoing] == [
        ("hours", "We are open 9am-5pm, Monday to Friday (New York time).")]
    d = decide(ruleset, msg("order #12345"), MONDAY_10AM)
    assert [o.text for o in d.outgoing] == [
        "Order 12345: see where it is at https://acme.example/o/12345"]


# -- files that once crashed the loader: each a `path:line` problem now ------------------
# Found by the fuzzer in tests/test_rules_fuzz.py and by a security review; PyYAML's own
# constructors raised ValueError, KeyError, TypeError, AttributeError or RecursionError
# (and libyaml's composer overflowed the C stack) on these.
@pytest.mark.parametrize("text, line, fragment", [
    ("version: !!float x\nrules: []\n", 1, "!!float takes a number, got 'x'"),
    ("version: !!timestamp x\nrules: []\n", 1, "unsupported YAML tag !!timestamp"),
    ("version: !!timestamp 2001-13-45\nrules: []\n", 1, "unsupported YAML tag !!timestamp"),
    ("version: !!bool x\nrules: []\n", 1, "!!bool takes true or false, got 'x'"),
    ("version: !!map [1]\nrules: []\n", 1, "the YAML tag !!map does not fit a list"),
    ("version: 1\nrules: !!seq {a: 1}\n", 2, "the YAML tag !!seq does not fit a mapping"),
    ("version: 1\nrules: !!str [1]\n", 2, "the YAML tag !!str does not fit a list"),
    ("version: 1\nrules: []\nx: !!binary aGVsbG8=\n", 3, "unsupported YAML tag !!binary"),
    ("version: 1\nrules: []\nx: !!set {a}\n", 3, "unsupported YAML tag !!set"),
    ("version: 1\nrules: []\nx: !!omap [{a: 1}]\n", 3, "unsupported YAML tag !!omap"),
    ("version: 1\nrules: []\nx: !!pairs [{a: 1}]\n", 3, "unsupported YAML tag !!pairs"),
    ("version: 1\nrules: []\nx: !mine 1\n", 3, "unsupported YAML tag !mine"),
    ("version: 1\nrules: []\nx: !!python/name:os.system\n", 3, "unsupported YAML tag !!python/name:os.system"),
    ("version: 1\nrules: &r [*r]\n", 2, "refers to a list or mapping that contains it"),
    ("version: 1\nrules: []\nx: &m {a: *m}\n", 3, "refers to a list or mapping that contains it"),
    ("version: 1\nrules: " + "[" * 1000 + "]" * 1000 + "\n", 2, "nested more than 50 deep"),
    ("version: 1\nrules:\n  - name: a\n    when: " + "{not: " * 1000 + "{}" + "}" * 1000 + "\n", 4,
     "nested more than 50 deep"),
    ("version: 1\nrules:\n" + "".join(" " * i + "- \n" for i in range(60)), 52, "nested more than 50 deep"),
])
def test_hostile_yaml_is_a_problem_at_its_line(text, line, fragment):
    found = problems(text)
    assert any(p.line == line and fragment in p.message for p in found), [str(p) for p in found]


def test_nesting_of_a_hundred_thousand_is_refused_without_recursing():
    text = "version: 1\nrules: " + "[" * 100_000 + "]" * 100_000 + "\n"
    one(text, 2, "nested more than 50 deep")


def test_aliases_cannot_nest_past_the_limit_either():
    chain = ["a0: &a0 " + "[" * 45 + "]" * 45] + [f"a{i}: &a{i} [[[[[[*a{i - 1}]]]]]]" for i in range(1, 4)]
    text = "version: 1\nrules: []\nx:\n" + "".join(f"  {line}\n" for line in chain)
    one(text, 5, "this alias nests lists and mappings more than 50 deep")


def test_billion_laughs_is_refused_at_the_alias_that_expands_too_far():
    lines = ["  l0: &l0 [lol]"] + [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    text = "version: 1\nrules: []\nlaughs:\n" + "\n".join(lines) + "\n"
    found = problems(text)
    assert [p.line for p in found] == [10] and "expand to more than 1,000,000 values" in found[0].message


def test_a_file_too_large_is_refused_before_reading_it():
    one("version: 1\nrules: []\n" + "# padding\n" * 500_000, 1, "larger than 4,000,000 characters")


@pytest.mark.parametrize("text, line, fragment", [
    ("version: 1\nrules: []\nx: \"\\0\"\nstop: \"\0\"\n", 4, "is not allowed in YAML"),
    ("version: 1\nrules: []\nx: \ud800\n", 3, "character '\\ud800' is not allowed in YAML"),  # str, not a file
    ("version: 1\n---\nrules: []\n", 2, "YAML syntax error"),
    ("version: 1\nrules: []\n? [1]\n: x\n", 3, "a key must be a plain value"),
    ("version: 1\nrules: []\n<<: 1\n", 3, "YAML syntax error"),
])
def test_other_corners_of_yaml_say_where(text, line, fragment):
    at(text, line, fragment)


@pytest.mark.parametrize("text", [
    "\ufeffversion: 1\nrules: []\n",                     # a byte order mark, as some editors write
    "version: 1\nrules: []\nx: =\ny: <<\n",               # '=' and '<<' as values are text
    "version: 1\nrules: []\n~: 1\n1: 2\ntrue: 3\n",      # keys that are not text: unknown (1 and true are equal
                                                      # in Python: the second is a duplicate key)
    "version: !!int 1\nrules: !!seq []\nz: !!null x\n",  # the tags that fit
    "version: 1\nrules: [{name: a, reply: !!str 12, continue: !!bool TRUE}]\n",
])
def test_odd_but_harmless_yaml(text):
    try:
        compile_text(text, PATH)
    except RulesError as exc:
        assert all(p.line >= 1 and ("unknown key" in p.message or "duplicate key" in p.message)
                   for p in exc.problems), str(exc)


def test_the_tags_that_fit_keep_their_meaning():
    ruleset = compile_text("version: !!int 1\nrules:\n  - &a {name: a, reply: !!str 12, continue: !!bool True}\n"
                           "  - {<<: *a, name: b}\n", PATH)
    assert [r.name for r in ruleset.rules] == ["a", "b"]


@pytest.mark.server
def test_rules_check_answers_hostile_files_with_path_line_and_exit_1(tmp_path):
    """The real command, in its own process: a segfault or a traceback would show here."""
    import subprocess
    import sys
    files = {
        "float.yaml": ("version: !!float x\nrules: []\n", ":1: !!float takes a number"),
        "deep.yaml": ("version: 1\nrules:\n  - name: a\n    when: " + "{not: " * 100_000 + "{}" + "}" * 100_000 + "\n",
                      ":4: lists and mappings are nested more than 50 deep"),
    }
    for name, (text, expected) in files.items():
        path = tmp_path / name
        path.write_text(text)
        done = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "rules", "check", str(path)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
        assert "Traceback" not in done.stderr
        assert f"{path}{expected}" in done.stderr, done.stderr[-2000:]


def test_a_reload_of_a_hostile_file_keeps_the_rules_in_use(tmp_path):
    from app.rules.holder import RulesHolder
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\nrules: [{name: a, reply: A}]\n")
    holder = RulesHolder(str(path))
    assert holder.load()
    first = holder.current()
    path.write_text("version: 1\nrules: [{name: a, reply: A}]\nx: " + "[" * 5000 + "]" * 5000 + "\n")
    assert holder.load() is False
    assert holder.current() is first
    assert [(p.line, p.message) for p in holder.error.problems] == [
        (3, "lists and mappings are nested more than 50 deep")]


# -- what a problem says without quoting the file (issue 13) -------------------------
def test_every_problem_has_a_short_kind_that_quotes_nothing():
    """/readyz shows `path:line: kind` only: the kinds name what is wrong, never a value."""
    found = problems(MANY_PROBLEMS)
    assert [p.brief for p in found] == [
        "/r.yaml:2: unknown timezone", "/r.yaml:5: bad regex", "/r.yaml:5: bad value",
        "/r.yaml:6: bad template", "/r.yaml:7: duplicate name", "/r.yaml:9: duplicate key",
        "/r.yaml:11: bad time", "/r.yaml:11: unknown value", "/r.yaml:12: bad value",
        "/r.yaml:13: bad url", "/r.yaml:14: unknown key", "/r.yaml:15: bad value"]
    assert str(found[0]).startswith("/r.yaml:2: unknown timezone 'Nowhere/Land'")  # the message says more


def test_a_url_error_quotes_the_url_without_its_password_or_query():
    p = one(doc("""\
        - name: crm
          webhook: 'htps://admin:S3cret@crm.example.com/hooks?api_key=k3y'
        """), 4)
    assert p.message == "'webhook' takes an http(s) URL, got 'htps://…@crm.example.com/hooks?…'"
    assert p.kind == "bad url"
    p = one(doc("""\
        - name: pic
          reply: here
          media: ['https://bob:pw@cdn.example.com/a b.png?sig=x']
        """), 5)
    assert "S3cret" not in p.message and "bob:pw" not in p.message and "sig=x" not in p.message


def test_a_bad_regex_is_reported_once_not_again_as_a_rule_without_a_regex():
    """A template's `match.*` names cannot be checked against a regex that does not compile:
    the regex's own error is the one problem, not also "the rule has no regex"."""
    for when in ("{regex: '(?P<order>[0-9]+'}", "{regex: 5}", "{regex: '(?P<a>x){1,99999999999}'}"):
        found = problems(doc(f"""\
            - name: order
              when: {when}
              reply: "Order {{{{ match.order }}}} is on its way"
            """))
        assert [(p.line, p.kind) for p in found] == [(4, "bad regex")], [str(p) for p in found]
    # a good regex still has its group names checked
    one(doc("""\
        - name: order
          when: {regex: '(?P<order>[0-9]+)'}
          reply: "Order {{ match.number }}"
        """), 5, "the regex has no group 'number' (groups: order)")


@pytest.mark.parametrize("given, suggested", [
    ("America/New_Yrok", "America/New_York"), ("Europe/Londn", "Europe/London"),
    ("america/new_york", "America/New_York"), ("Berlin", "Europe/Berlin"), ("US/Pacifc", "US/Pacific")])
def test_an_unknown_timezone_suggests_the_closest_names(given, suggested):
    p = one(f"version: 1\nsettings:\n  timezone: {given}\nrules: []\n", 3)
    assert p.message == f"unknown timezone {given!r}; did you mean {suggested}?"
