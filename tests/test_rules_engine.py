"""`decide()`: every condition both ways, the actions, templates, and
the keyword/text index (speed and file order)."""

from __future__ import annotations

import textwrap
import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from app.inbound import Inbound, parse_message
from app.rules import Decision, Outgoing, RulesError, Webhook, compile_text, decide

NY = ZoneInfo("America/New_York")
#: Monday 23 November 2026, 10:00 in New York.
MONDAY_10AM = datetime(2026, 11, 23, 10, 0, tzinfo=NY)
SENDER = "14155550123"
OURS = "14155550100"


def rules(body: str, tz: str | None = None):
    head = "version: 1\n" + (f"settings: {{timezone: {tz}}}\n" if tz else "") + "rules:\n"
    return compile_text(head + textwrap.dedent(body), "r.yaml")


def msg(text: str = "", **kw) -> Inbound:
    kw.setdefault("from_", SENDER)
    kw.setdefault("to", OURS)
    kw.setdefault("uuid", "uuid-1")
    return Inbound(text=text, **kw)


def matched(ruleset, text="", now=MONDAY_10AM, **kw) -> tuple[str, ...]:
    return decide(ruleset, msg(text, **kw), now).matched


def when(condition: str):
    """One rule 'r' with the given flow-mapping condition body."""
    return rules(f"""\
        - name: r
          when: {{{condition}}}
          reply: "yes"
        """)


def reply(rule_name: str, text: str) -> Outgoing:
    return Outgoing(rule_name, "reply", OURS, (SENDER,), text)


# -- keyword -------------------------------------------------------------------------
@pytest.mark.parametrize("text, hit", [
    ("hours", True),
    ("HOURS", True),
    ("Hours?!", True),
    ("hours.", True),
    ("¿Hours?", True),
    ('"hours"', True),
    ("...hours", True),
    ("  hours  ", True),
    ("hours please", True),
    ("Hours, please", True),
    ("\thours\nplease", True),
    ("open", True),
    ("Open now?", True),
    ("what are your hours", False),
    ("hour", False),
    ("hoursx", False),
    ("hours-open", False),
    ("", False),
    ("?!", False),
])
def test_keyword(text, hit):
    assert matched(when("keyword: [hours, open]"), text) == (("r",) if hit else ())


def test_keyword_single_value_and_rule_side_normalisation():
    ruleset = when("keyword: ' HELP! '")
    assert matched(ruleset, "help me") == ("r",)
    assert matched(ruleset, "helpme") == ()


def test_keyword_is_unicode_case_insensitive():
    ruleset = when("keyword: [straße, ÉTÉ]")
    assert matched(ruleset, "STRASSE") == ("r",)
    assert matched(ruleset, "été!") == ("r",)


# -- text ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, hit", [
    ("where are you", True),
    ("Where Are You", True),
    ("  where   are\tyou \n", True),
    ("address", True),
    ("ADDRESS ", True),
    ("where are you?", False),
    ("where are you now", False),
    ("whereareyou", False),
    ("address please", False),
])
def test_text(text, hit):
    assert matched(when("text: ['where  are you', Address]"), text) == (("r",) if hit else ())


# -- contains --------------------------------------------------------------------------
@pytest.mark.parametrize("text, hit", [
    ("refund", True),
    ("I want a REFUND now", True),
    ("refunded?", True),
    ("give me my Money Back", True),
    ("money  back", False),
    ("ref und", False),
    ("", False),
])
def test_contains(text, hit):
    assert matched(when("contains: [refund, 'money back']"), text) == (("r",) if hit else ())


# -- regex -----------------------------------------------------------------------------
def test_regex_is_a_case_insensitive_search_with_named_groups():
    ruleset = rules(r"""
        - name: order
          when: {regex: 'order\s*#?\s*(?P<order>\d+)'}
          reply: "Order {{ match.order }} ok"
        """)
    assert decide(ruleset, msg("my ORDER #1234 please"), MONDAY_10AM) == Decision(
        ("order",), (reply("order", "Order 1234 ok"),), ())
    assert matched(ruleset, "order number 12") == ()


def test_regex_anchors():
    ruleset = when(r"regex: '^stop$'")
    assert matched(ruleset, "STOP") == ("r",)
    assert matched(ruleset, "please stop") == ()


def test_regex_optional_group_missing_renders_empty():
    ruleset = rules(r"""
        - name: size
          when: {regex: '^size(?:\s+(?P<n>\d+))?'}
          reply: "size=[{{ match.n }}]"
        """)
    assert [o.text for o in decide(ruleset, msg("size 42"), MONDAY_10AM).outgoing] == ["size=[42]"]
    assert [o.text for o in decide(ruleset, msg("Size"), MONDAY_10AM).outgoing] == ["size=[]"]


def test_regex_groups_in_forward_text():
    ruleset = rules(r"""
        - name: fwd
          when: {regex: 'call (?P<who>\w+)'}
          forward: {to: "14155550999", text: "{{ from }} wants {{ match.who }}"}
        """)
    d = decide(ruleset, msg("please call Bob"), MONDAY_10AM)
    assert d.outgoing == (Outgoing("fwd", "forward", OURS, ("14155550999",), "14155550123 wants Bob"),)


def test_regex_groups_do_not_leak_between_rules():
    ruleset = rules(r"""
        - name: a
          when: {regex: '(?P<x>\d+)'}
          reply: "a={{ match.x }}"
          continue: true
        - name: b
          when: {regex: '(?P<x>[a-z]+)'}
          reply: "b={{ match.x }}"
        """)
    assert [o.text for o in decide(ruleset, msg("abc 123"), MONDAY_10AM).outgoing] == ["a=123", "b=abc"]


# -- from / to -------------------------------------------------------------------------
@pytest.mark.parametrize("written", [
    "14155550123", "'+14155550123'", "'+1 (415) 555-0123'", "'1.415.555.0123'", "'+1 415 555 0123'",
    "'1-415-555-0123'",
])
def test_from_any_notation(written):
    ruleset = when(f"from: {written}")
    assert matched(ruleset, "x") == ("r",)
    assert matched(ruleset, "x", from_="+1 415-555-0123") == ("r",)
    assert matched(ruleset, "x", from_="14155550124") == ()
    assert matched(ruleset, "x", from_="141555501230") == ()


def test_from_prefix():
    ruleset = when("from: ['+1 (415) 555-077*', '44 20*']")
    assert matched(ruleset, "x", from_="14155550771") == ("r",)
    assert matched(ruleset, "x", from_="1415555077") == ("r",)
    assert matched(ruleset, "x", from_="442079460000") == ("r",)
    assert matched(ruleset, "x", from_="14155550781") == ()
    assert matched(ruleset, "x", from_="14155550123") == ()


def test_to_list():
    ruleset = when("to: ['+1 (415) 555-0200', '1 415 555 0100']")
    assert matched(ruleset, "x") == ("r",)
    assert matched(ruleset, "x", to="14155550200") == ("r",)
    assert matched(ruleset, "x", to="14155550300") == ()


# -- type / intent / media -------------------------------------------------------------
@pytest.mark.parametrize("msg_type, hit", [("sms", False), ("mms", True), ("whatsapp", True)])
def test_type(msg_type, hit):
    assert matched(when("type: [MMS, whatsapp]"), "x", type=msg_type) == (("r",) if hit else ())


@pytest.mark.parametrize("intent, hit", [("", False), ("optout", False), ("help", True)])
def test_intent(intent, hit):
    assert matched(when("intent: help"), "x", intent=intent) == (("r",) if hit else ())


def _inbound(**params) -> Inbound:
    pairs = [("From", SENDER), ("To", OURS), ("MessageUUID", "uuid-1")] + list(params.items())
    return parse_message(pairs)


@pytest.mark.parametrize("params, has_media", [
    ({"Type": "mms", "Body": "pic", "MediaCount": "1", "Media1": "https://m.example/1.jpg"}, True),
    ({"Type": "mms", "Body": "pic", "MediaCount": "2"}, True),
    ({"Type": "mms", "Body": "pic", "Media1": "https://m.example/1.jpg"}, True),
    ({"Type": "mms", "Body": "pic", "MediaCount": "0"}, False),
    ({"Text": "plain"}, False),
])
def test_media(params, has_media):
    yes = when("media: true")
    no = when("media: false")
    m = _inbound(**params)
    assert decide(yes, m, MONDAY_10AM).matched == (("r",) if has_media else ())
    assert decide(no, m, MONDAY_10AM).matched == (() if has_media else ("r",))


def test_mms_conditions_and_templates_use_body():
    ruleset = rules("""\
        - name: pic
          when: {type: mms, media: true, keyword: look}
          reply: "{{ type }}: {{ text }} / {{ media | length }} / {{ media | join(' ') }}"
        """)
    m = _inbound(Type="mms", Body="Look at this", Text="ignored", MediaCount="2",
                 Media1="https://m.example/1.jpg", Media2="https://m.example/2.jpg")
    assert [o.text for o in decide(ruleset, m, MONDAY_10AM).outgoing] == [
        "mms: Look at this / 2 / https://m.example/1.jpg https://m.example/2.jpg"]


# -- days / hours ------------------------------------------------------------------------
def at_ny(day: int, hour: int, minute: int = 0) -> datetime:
    """November 2026 in New York: the 23rd is a Monday."""
    return datetime(2026, 11, day, hour, minute, tzinfo=NY)


@pytest.mark.parametrize("now, hit", [
    (at_ny(23, 17, 0), True),      # start included
    (at_ny(23, 23, 59), True),
    (at_ny(24, 0, 0), True),       # past midnight
    (at_ny(24, 8, 59), True),
    (at_ny(24, 9, 0), False),      # end excluded
    (at_ny(23, 12, 0), False),
    (at_ny(23, 16, 59), False),
])
def test_hours_wrapping_past_midnight(now, hit):
    ruleset = rules("""\
        - name: r
          when: {hours: "17:00-09:00"}
          reply: closed
        """, tz="America/New_York")
    assert matched(ruleset, "x", now=now) == (("r",) if hit else ())


@pytest.mark.parametrize("now, hit", [
    (at_ny(23, 8, 59), False),
    (at_ny(23, 9, 0), True),
    (at_ny(23, 16, 59), True),
    (at_ny(23, 17, 0), False),
])
def test_hours_same_day(now, hit):
    ruleset = rules("""\
        - name: r
          when: {hours: "09:00-17:00"}
          reply: open
        """, tz="America/New_York")
    assert matched(ruleset, "x", now=now) == (("r",) if hit else ())


def test_hours_until_midnight():
    ruleset = when("hours: '22:00-24:00'")
    assert matched(ruleset, "x", now=datetime(2026, 1, 1, 23, 59, tzinfo=timezone.utc)) == ("r",)
    assert matched(ruleset, "x", now=datetime(2026, 1, 1, 0, 0, tzinfo=timezone.utc)) == ()


@pytest.mark.parametrize("day, hit", [(23, True), (24, False), (27, True), (28, False), (29, True)])
def test_days(day, hit):
    ruleset = rules("""\
        - name: r
          when: {days: [mon, fri, SUN]}
          reply: x
        """, tz="America/New_York")
    assert matched(ruleset, "x", now=at_ny(day, 12)) == (("r",) if hit else ())


def test_days_and_hours_are_each_checked_against_local_time():
    ruleset = rules("""\
        - name: r
          when: {days: mon, hours: "17:00-09:00"}
          reply: x
        """, tz="America/New_York")
    assert matched(ruleset, "x", now=at_ny(23, 23, 0)) == ("r",)   # Monday night
    assert matched(ruleset, "x", now=at_ny(23, 2, 0)) == ("r",)    # Monday early morning
    assert matched(ruleset, "x", now=at_ny(24, 2, 0)) == ()        # Tuesday early morning


def test_dst_with_local_now():
    ruleset = rules("""\
        - name: open
          when: {hours: "09:00-17:00"}
          reply: x
        """, tz="America/New_York")
    # 2026-03-08 is the spring-forward day in New York.
    assert matched(ruleset, "x", now=datetime(2026, 3, 9, 9, 30, tzinfo=NY)) == ("open",)
    assert matched(ruleset, "x", now=datetime(2026, 3, 6, 8, 30, tzinfo=NY)) == ()


def test_hours_and_days_convert_utc_now_to_the_rules_timezone_with_dst():
    ruleset = rules("""\
        - name: open
          when: {days: [mon, tue, wed, thu, fri], hours: "09:00-17:00"}
          reply: x
        """, tz="America/New_York")
    # Friday 6 March 2026, 13:30 UTC = 08:30 EST: closed.
    assert matched(ruleset, "x", now=datetime(2026, 3, 6, 13, 30, tzinfo=timezone.utc)) == ()
    # Monday 9 March 2026 (after spring forward), 13:30 UTC = 09:30 EDT: open.
    assert matched(ruleset, "x", now=datetime(2026, 3, 9, 13, 30, tzinfo=timezone.utc)) == ("open",)
    # Saturday 7 March 2026, 02:00 UTC = Friday 21:00 EST: a weekday, but after hours.
    assert matched(ruleset, "x", now=datetime(2026, 3, 7, 2, 0, tzinfo=timezone.utc)) == ()
    # Tuesday 10 March 2026, 00:30 UTC = Monday 20:30 EDT: closed.
    assert matched(ruleset, "x", now=datetime(2026, 3, 10, 0, 30, tzinfo=timezone.utc)) == ()


def test_now_template_is_in_the_rules_timezone_when_given_utc():
    ruleset = rules("""\
        - name: r
          reply: "{{ now | strftime('%Y-%m-%d %H:%M %Z') }}"
        """, tz="America/New_York")
    d = decide(ruleset, msg("x"), datetime(2026, 7, 1, 12, 0, tzinfo=timezone.utc))
    assert [o.text for o in d.outgoing] == ["2026-07-01 08:00 EDT"]


def test_naive_now_is_taken_as_local_time():
    ruleset = rules("""\
        - name: r
          when: {hours: "09:00-17:00"}
          reply: "{{ now | strftime('%H:%M %Z') }}"
        """, tz="America/New_York")
    d = decide(ruleset, msg("x"), datetime(2026, 7, 1, 9, 0))
    assert [o.text for o in d.outgoing] == ["09:00 EDT"]


def test_plain_now_prints_local_time_to_the_minute():
    ruleset = rules("""\
        - name: r
          reply: ["Received {{ now }}.", "At {{ now.time() }} on {{ now.date() }}."]
        """, tz="America/New_York")
    moment = datetime(2026, 7, 1, 12, 34, 56, 789012, tzinfo=timezone.utc)
    assert [o.text for o in decide(ruleset, msg("x"), moment).outgoing] == [
        "Received 2026-07-01 08:34.", "At 08:34 on 2026-07-01."]


@pytest.mark.parametrize("template, expected", [
    ('{{ now | strftime("%A %H:%M") }}', "Monday 10:00"),
    ('{{ now | strftime("%d %B %Y, %I:%M %p %Z") }}', "23 November 2026, 10:00 AM EST"),
    ('{{ now.date() | strftime("%a %d") }}', "Mon 23"),
    ('{{ now | strftime("%%") }}', "%"),
])
def test_strftime_filter_formats_now(template, expected):
    ruleset = rules(f"""\
        - name: r
          reply: '{template}'
        """, tz="America/New_York")
    d = decide(ruleset, msg("x"), MONDAY_10AM)
    assert d.errors == () and [o.text for o in d.outgoing] == [expected]


@pytest.mark.parametrize("template, fragment", [
    ("{{ now | strftime }}", "strftime takes one format in quotes"),
    ("{{ now | strftime('%H', '%M') }}", "strftime takes one format in quotes"),
    ("{{ now | strftime(fmt='%H') }}", "strftime takes one format in quotes"),
    ("{{ now | strftime(5) }}", "strftime's format must be text in quotes"),
    ("{{ now | strftime(text) }}", "strftime's format must be text in quotes"),
    ("{{ text | strftime('%H') }}", "strftime formats now (a date and time), not text"),
    ("{{ 'x' | strftime('%H') }}", "strftime formats now (a date and time), not 'x'"),
    ("{% filter strftime('%H') %}x{% endfilter %}", "not a block of text"),
    ("{{ now | strfime('%H') }}", "No filter named 'strfime'"),
    # the format is the template's, in quotes: never the sender's text, whatever the route
    ("{{ now | strftime('') }}", "strftime format '' prints nothing"),
    ("{{ now | strftime('%5000Y') }}", "strftime format '%5000Y' prints nothing"),
    ("{{ now.strftime(text) }}", "strftime is a filter, not a method"),
    ("{{ now.strftime('%H') }}", "strftime is a filter, not a method"),
    ("{{ now.date().strftime(text) }}", "strftime is a filter, not a method"),
    ("{{ now['strftime'](text) }}", "strftime is a filter, not a method"),
    ("{{ (now | attr('strftime'))(text) }}", "strftime is a filter, not a method"),
    ("{{ [now] | map('strftime', text) | join }}", "strftime cannot be used through map"),
    ("{{ [now] | map('strftime', '%H') | join }}", "strftime cannot be used through map"),
])
def test_strftime_misuse_is_an_error_at_load(template, fragment):
    with pytest.raises(RulesError) as info:
        rules(f"""\
            - name: r
              reply: "{template}"
            """)
    assert [p.line for p in info.value.problems] == [4]
    assert fragment in info.value.problems[0].message, str(info.value)
    assert 'use it as now | strftime("%A %H:%M")' in info.value.problems[0].message or "strfime" in template


def test_map_takes_a_filter_name_in_quotes():
    with pytest.raises(RulesError) as info:
        rules("""\
            - name: r
              reply: "{{ [now] | map(text, text) | join }}"
            """)
    assert [p.message for p in info.value.problems] == [
        "map takes the name of a filter in quotes, e.g. map('upper')"]
    ruleset = rules("""\
        - name: r
          reply: "{{ media | map('upper') | join(' ') }}"
        """)
    m = Inbound(from_=SENDER, to=OURS, uuid="u", type="mms", text="", media=("a.jpg", "b.jpg"), media_count=2)
    assert [o.text for o in decide(ruleset, m, MONDAY_10AM).outgoing] == ["A.JPG B.JPG"]


@pytest.mark.parametrize("template, text", [
    ("{{ '{0:{1}}'.format(now, text) }}", "%c" * 800),               # the sender's text as the spec
    ("{{ text.format(now) }}", "{0:" + "%c" * 800 + "}"),            # ... as the format
    ("{{ text.format_map({'d': now}) }}", "{d:" + "%c" * 800 + "}"),
    ("{{ ('{0:{1}}' | safe).format(now, text) }}", "%c" * 800),
    ("{{ '{0[0]:{1}}'.format([now.date()], text) }}", "%c" * 800),
    ("{{ (now | attr(text[:8]))(text[8:]) }}", "strftime" + "%c" * 800),  # a method the message names
])
def test_a_date_is_never_formatted_with_the_senders_text(template, text):
    """A text of "%c" repeated 800 times, as a date format, would make a reply of 19,200
    characters: every way to give a date a format from the message fails when it renders."""
    ruleset = rules(f"""\
        - name: r
          reply: ["{template}", "after"]
        """, tz="America/New_York")
    d = decide(ruleset, msg(text), MONDAY_10AM)
    assert [o.text for o in d.outgoing] == ["after"]
    assert len(d.errors) == 1 and ("SecurityError" in d.errors[0] or "unsafe" in d.errors[0]), d.errors


def test_str_format_still_formats_text_and_prints_a_date_without_a_spec():
    ruleset = rules("""\
        - name: r
          reply: "{{ '{:>4}|{}'.format(from[-2:], now) }}"
        """, tz="America/New_York")
    d = decide(ruleset, msg("x"), MONDAY_10AM)
    assert d.errors == () and [o.text for o in d.outgoing] == ["  23|2026-11-23 10:00:00-05:00"]


def test_strftime_format_that_cannot_work_is_an_error_at_load():
    from app.rules.templates import TemplateProblem, compile_template
    with pytest.raises(TemplateProblem) as info:
        compile_template("{{ now | strftime('%H \ud800') }}", 4, None)
    assert str(info.value).startswith("strftime format '%H \\ud800' does not work: ")


def test_strftime_on_what_only_the_message_tells_is_a_render_error():
    ruleset = rules("""\
        - name: r
          when: {regex: '^at (?P<when>.+)$'}
          reply: ["{{ match.when | strftime('%H') }}", "after"]
        """)
    d = decide(ruleset, msg("at noon"), MONDAY_10AM)
    assert [o.text for o in d.outgoing] == ["after"]
    assert d.errors == ("rule 'r' line 5: TemplateRuntimeError: strftime formats now (a date and time), not str",)


def test_now_defaults_to_the_current_time_in_the_rules_timezone():
    ruleset = rules("""\
        - name: r
          when: {days: [mon, tue, wed, thu, fri, sat, sun]}
          reply: "{{ now.tzinfo }} {{ now.year >= 2024 }}"
        """, tz="Asia/Tokyo")
    assert [o.text for o in decide(ruleset, msg("x")).outgoing] == ["Asia/Tokyo True"]


# -- not / several conditions / no when -------------------------------------------------
def test_not():
    ruleset = when("not: {type: whatsapp}")
    assert matched(ruleset, "x") == ("r",)
    assert matched(ruleset, "x", type="whatsapp") == ()


def test_not_with_several_conditions_negates_their_conjunction():
    ruleset = when("not: {keyword: stop, type: sms}")
    assert matched(ruleset, "stop") == ()
    assert matched(ruleset, "stop", type="mms") == ("r",)
    assert matched(ruleset, "go") == ("r",)


def test_nested_not():
    ruleset = when("not: {not: {keyword: hi}}")
    assert matched(ruleset, "hi there") == ("r",)
    assert matched(ruleset, "bye") == ()


def test_not_containing_a_regex():
    ruleset = rules(r"""
        - name: no-digits
          when: {keyword: order, not: {regex: '\d'}}
          reply: "Which order?"
        """)
    assert matched(ruleset, "order please") == ("no-digits",)
    assert matched(ruleset, "order 42") == ()


def test_all_conditions_must_hold():
    ruleset = rules("""\
        - name: r
          when: {keyword: hola, to: "+1 (415) 555-0200", type: sms, contains: ayuda}
          reply: x
        """)
    assert matched(ruleset, "Hola, ayuda", to="14155550200") == ("r",)
    assert matched(ruleset, "Hola, ayuda", to="14155550100") == ()
    assert matched(ruleset, "Hola", to="14155550200") == ()
    assert matched(ruleset, "ayuda hola", to="14155550200") == ()
    assert matched(ruleset, "Hola, ayuda", to="14155550200", type="mms") == ()


def test_rule_without_when_matches_everything():
    ruleset = rules("""\
        - name: all
          reply: x
        """)
    assert matched(ruleset, "") == ("all",)
    assert matched(ruleset, "anything", type="whatsapp", intent="optout") == ("all",)


# -- actions -------------------------------------------------------------------------
def test_reply_list_in_order():
    ruleset = rules("""\
        - name: r
          reply: ["one", "two {{ rule }}", "three"]
        """)
    assert decide(ruleset, msg("x"), MONDAY_10AM) == Decision(
        ("r",), (reply("r", "one"), reply("r", "two r"), reply("r", "three")), ())


def test_reply_goes_from_the_receiving_number_to_the_sender():
    ruleset = rules("""\
        - name: r
          reply: hi
        """)
    d = decide(ruleset, msg("x", from_="447700900123", to="14155550200"), MONDAY_10AM)
    assert d.outgoing == (Outgoing("r", "reply", "14155550200", ("447700900123",), "hi"),)


def test_forward_default_text_and_numbers_as_digits():
    ruleset = rules("""\
        - name: fwd
          forward: {to: ["+1 415 555 0999", "1 (415) 555-0998", "14155550999"]}
        """)
    assert decide(ruleset, msg("Need help"), MONDAY_10AM) == Decision(
        ("fwd",),
        (Outgoing("fwd", "forward", OURS, ("14155550999", "14155550998"), "From 14155550123: Need help"),),
        ())


def test_forward_single_number_custom_text_and_reply():
    ruleset = rules("""\
        - name: vip
          forward: {to: "+1 415 555 0999", text: "VIP {{ from }} ({{ rule }}): {{ text }}"}
          reply: "Thanks!"
        """)
    assert decide(ruleset, msg("hello"), MONDAY_10AM).outgoing == (
        reply("vip", "Thanks!"),
        Outgoing("vip", "forward", OURS, ("14155550999",), "VIP 14155550123 (vip): hello"),
    )


def test_silent_matches_answers_nothing_and_stops():
    ruleset = rules("""\
        - name: auto
          when: {contains: "out of office"}
          silent: true
        - name: all
          reply: x
        """)
    assert decide(ruleset, msg("I am OUT OF OFFICE"), MONDAY_10AM) == Decision(("auto",), (), ())
    assert decide(ruleset, msg("hi"), MONDAY_10AM) == Decision(("all",), (reply("all", "x"),), ())


def test_continue_accumulates_in_rule_order():
    ruleset = rules("""\
        - name: first
          reply: "1"
          continue: true
        - name: skipped
          when: {keyword: nope}
          reply: "never"
          continue: true
        - name: second
          reply: ["2a", "2b"]
          forward: {to: "14155550999", text: "2f"}
          continue: true
        - name: quiet
          silent: true
          continue: true
        - name: third
          reply: "3"
        - name: after-stop
          reply: "never"
        """)
    assert decide(ruleset, msg("x"), MONDAY_10AM) == Decision(
        ("first", "second", "quiet", "third"),
        (reply("first", "1"), reply("second", "2a"), reply("second", "2b"),
         Outgoing("second", "forward", OURS, ("14155550999",), "2f"), reply("third", "3")),
        ())


def test_first_match_stops():
    ruleset = rules("""\
        - name: a
          when: {keyword: hi}
          reply: A
        - name: b
          when: {contains: hi}
          reply: B
        """)
    assert decide(ruleset, msg("hi"), MONDAY_10AM) == Decision(("a",), (reply("a", "A"),), ())
    assert decide(ruleset, msg("oh hi"), MONDAY_10AM) == Decision(("b",), (reply("b", "B"),), ())


def test_nothing_matched_is_an_empty_decision():
    ruleset = rules("""\
        - name: a
          when: {keyword: hi}
          reply: A
        """)
    assert decide(ruleset, msg("bye"), MONDAY_10AM) == Decision()
    assert Decision() == Decision((), (), ())
    assert decide(compile_text("version: 1\nrules: []\n"), msg("x"), MONDAY_10AM) == Decision()


# -- media and webhook -----------------------------------------------------------------
PIC = "https://m.example/a.png"
PIC2 = "https://m.example/b.png"


def test_media_goes_with_the_first_reply_only():
    ruleset = rules(f"""\
        - name: r
          reply: ["one", "two"]
          media: [{PIC}, {PIC2}]
          forward: {{to: "14155550999", text: "fwd"}}
        """)
    assert decide(ruleset, msg("x"), MONDAY_10AM).outgoing == (
        Outgoing("r", "reply", OURS, (SENDER,), "one", (PIC, PIC2)),
        reply("r", "two"),
        Outgoing("r", "forward", OURS, ("14155550999",), "fwd"),
    )


def test_media_goes_with_the_first_reply_that_is_sent():
    ruleset = rules(f"""\
        - name: r
          when: {{regex: '^x(?P<n>\\d+)?'}}
          reply: ["{{{{ match.n }}}}", "second", "third"]
          media: {PIC}
        """)
    d = decide(ruleset, msg("x"), MONDAY_10AM)
    assert d.outgoing == (Outgoing("r", "reply", OURS, (SENDER,), "second", (PIC,)), reply("r", "third"))


def test_media_only_rule_sends_the_picture_without_text():
    ruleset = rules(f"""\
        - name: logo
          when: {{keyword: logo}}
          media: {PIC}
          forward: {{to: "14155550999", text: "asked for the logo"}}
        """)
    assert decide(ruleset, msg("logo please"), MONDAY_10AM) == Decision(
        ("logo",),
        (Outgoing("logo", "reply", OURS, (SENDER,), "", (PIC,)),
         Outgoing("logo", "forward", OURS, ("14155550999",), "asked for the logo")),
        ())


def test_media_alone_when_every_reply_renders_empty():
    ruleset = rules(f"""\
        - name: r
          when: {{regex: '^x(?P<n>\\d+)?'}}
          reply: ["{{{{ match.n }}}}", "  "]
          media: {PIC}
        """)
    assert decide(ruleset, msg("x"), MONDAY_10AM).outgoing == (Outgoing("r", "reply", OURS, (SENDER,), "", (PIC,)),)
    assert decide(ruleset, msg("x7"), MONDAY_10AM).outgoing == (Outgoing("r", "reply", OURS, (SENDER,), "7", (PIC,)),)


def test_media_of_each_rule_goes_with_its_own_first_reply():
    ruleset = rules(f"""\
        - name: a
          reply: A
          media: {PIC}
          continue: true
        - name: b
          reply: [B1, B2]
        - name: c
          reply: C
          media: {PIC2}
        """)
    assert decide(ruleset, msg("x"), MONDAY_10AM).outgoing == (
        Outgoing("a", "reply", OURS, (SENDER,), "A", (PIC,)), reply("b", "B1"), reply("b", "B2"))


def test_reply_without_media_has_no_media():
    ruleset = rules("""\
        - name: r
          reply: hi
        """)
    [out] = decide(ruleset, msg("x"), MONDAY_10AM).outgoing
    assert out.media == ()


def test_webhooks_are_collected_in_rule_order_from_silent_and_continue_rules():
    ruleset = rules("""\
        - name: log-all
          webhook: https://hooks.example/all
          continue: true
        - name: not-this
          when: {keyword: nope}
          webhook: https://hooks.example/never
          continue: true
        - name: crm
          reply: "Thanks"
          webhook: {url: "https://crm.example/in", method: put}
          continue: true
        - name: quiet
          silent: true
          webhook: {url: "https://hooks.example/quiet", method: PATCH}
        - name: after-stop
          webhook: https://hooks.example/never
        """)
    d = decide(ruleset, msg("hello"), MONDAY_10AM)
    assert d == Decision(
        ("log-all", "crm", "quiet"),
        (reply("crm", "Thanks"),),
        (),
        (("log-all", Webhook("https://hooks.example/all", "POST")),
         ("crm", Webhook("https://crm.example/in", "PUT")),
         ("quiet", Webhook("https://hooks.example/quiet", "PATCH"))),
    )


def test_webhook_only_rule_matches_and_sends_nothing_to_the_sender():
    ruleset = rules("""\
        - name: tell
          when: {keyword: order}
          webhook: https://hooks.example/orders
        - name: fallback
          reply: "?"
        """)
    assert decide(ruleset, msg("order 42"), MONDAY_10AM) == Decision(
        ("tell",), (), (), (("tell", Webhook("https://hooks.example/orders")),))
    assert decide(ruleset, msg("hi"), MONDAY_10AM) == Decision(("fallback",), (reply("fallback", "?"),), ())


def test_webhook_not_collected_when_the_rule_does_not_match():
    ruleset = rules("""\
        - name: tell
          when: {keyword: order, type: whatsapp}
          webhook: https://hooks.example/orders
        """)
    assert decide(ruleset, msg("order 42"), MONDAY_10AM) == Decision()
    assert decide(ruleset, msg("order 42", type="whatsapp"), MONDAY_10AM).webhooks == (
        ("tell", Webhook("https://hooks.example/orders")),)


def test_webhook_collected_even_when_a_template_fails():
    ruleset = rules("""\
        - name: r
          reply: "{{ media[5] }}"
          webhook: https://hooks.example/r
        """)
    d = decide(ruleset, msg("x"), MONDAY_10AM)
    assert d.outgoing == () and len(d.errors) == 1
    assert d.webhooks == (("r", Webhook("https://hooks.example/r")),)


# -- templates -------------------------------------------------------------------------
def test_every_template_name():
    ruleset = rules(r"""
        - name: all-names
          when: {regex: '^(?P<word>\w+)'}
          reply: >-
            from={{ from }} to={{ to }} text={{ text }} type={{ type }} uuid={{ uuid }}
            media={{ media | join(',') }} n={{ media | length }} match={{ match.word }}
            now={{ now | strftime('%Y-%m-%d %H:%M') }} rule={{ rule }}
        """, tz="America/New_York")
    m = Inbound(from_=SENDER, to=OURS, uuid="abc-123", type="mms", text="Hello there",
                media=("https://m.example/1.jpg", "https://m.example/2.jpg"), media_count=2)
    assert [o.text for o in decide(ruleset, m, MONDAY_10AM).outgoing] == [
        "from=14155550123 to=14155550100 text=Hello there type=mms uuid=abc-123 "
        "media=https://m.example/1.jpg,https://m.example/2.jpg n=2 match=Hello "
        "now=2026-11-23 10:00 rule=all-names"]


@pytest.mark.parametrize("text", ["{{ 7*7 }}", "{% for x in range(3) %}{{ x }}{% endfor %}",
                                  "{{ text.__class__ }}", "{# hidden #}", "{{ from }}"])
def test_sender_text_is_data_not_a_template(text):
    ruleset = rules("""\
        - name: echo
          reply: "You said: {{ text }}"
          forward: {to: "14155550999"}
        """)
    d = decide(ruleset, msg(text), MONDAY_10AM)
    assert [o.text for o in d.outgoing] == [f"You said: {text}", f"From 14155550123: {text}"]
    assert d.errors == ()


def test_fixed_reply_with_braces_from_sender_is_untouched():
    ruleset = rules("""\
        - name: r
          reply: "{{ text | upper }}"
        """)
    assert [o.text for o in decide(ruleset, msg("{{ 7*7 }}"), MONDAY_10AM).outgoing] == ["{{ 7*7 }}".upper()]


@pytest.mark.parametrize("template", [
    "{{ text.__class__ }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ now.__class__.__init__.__globals__ }}",
    "{{ media.append('x') }}",
    "{{ match.update({'a': 1}) }}",
])
def test_sandbox_blocks_attribute_access(template):
    body = f"""\
        - name: evil
          reply: ["{template}", "still here"]
          continue: true
        - name: next
          reply: "next"
        """
    try:
        ruleset = rules(body)
    except RulesError:
        return  # refused at load: fine
    d = decide(ruleset, msg("x"), MONDAY_10AM)
    assert d.matched == ("evil", "next")
    assert [o.text for o in d.outgoing] == ["still here", "next"]
    assert len(d.errors) == 1
    assert "evil" in d.errors[0] and ("SecurityError" in d.errors[0] or "unsafe" in d.errors[0])


@pytest.mark.parametrize("template, error", [
    ("{{ 1/0 }}", "ZeroDivisionError"),
    ("{{ media[5] }}", "UndefinedError"),
    ("{{ now.replace(year=0) }}", "ValueError"),
    ("{{ range(1000000) | list }}", "OverflowError"),
    ("{{ text | wordwrap(0) }}", "ValueError"),
])
def test_render_error_is_reported_and_skipped(template, error):
    ruleset = rules(f"""\
        - name: broken
          reply: ["before", "{template}", "after {{{{ rule }}}}"]
          forward: {{to: "14155550999"}}
          continue: true
        - name: next
          reply: "next"
        """)
    d = decide(ruleset, msg("hello"), MONDAY_10AM)
    assert d.matched == ("broken", "next")
    assert [o.text for o in d.outgoing] == ["before", "after broken", "From 14155550123: hello", "next"]
    assert len(d.errors) == 1
    assert d.errors[0].startswith("rule 'broken' line 4: ")
    assert error in d.errors[0]


def test_render_error_in_forward_keeps_replies():
    ruleset = rules("""\
        - name: r
          reply: "ok"
          forward: {to: "14155550999", text: "{{ media[0] }}"}
        """)
    d = decide(ruleset, msg("x"), MONDAY_10AM)
    assert d.outgoing == (reply("r", "ok"),)
    assert len(d.errors) == 1 and "rule 'r' line 5" in d.errors[0]


@pytest.mark.parametrize("template", ["{{ text | dictsort }}", "{{ text | xmlattr }}", "{{ text | truncate(-10) }}"])
def test_any_render_error_is_contained(template):
    ruleset = rules(f"""\
        - name: r
          reply: ["{template}", "after"]
        """)
    d = decide(ruleset, msg("x"), MONDAY_10AM)
    assert [o.text for o in d.outgoing] == ["after"]
    assert len(d.errors) == 1


def test_template_rendering_to_blank_sends_nothing():
    ruleset = rules(r"""
        - name: r
          when: {regex: '^x(?P<n>\d+)?'}
          reply: ["{{ match.n }}", "  {{ match.n }}  ", "n={{ match.n }}"]
        """)
    d = decide(ruleset, msg("x"), MONDAY_10AM)
    assert d == Decision(("r",), (reply("r", "n="),), ())


# -- the index -------------------------------------------------------------------------
def _many_keywords(n: int) -> str:
    lines = ["version: 1", "rules:",
             "  - {name: g-first, when: {type: mms}, reply: mms, continue: true}"]
    lines += [f"  - {{name: k{i}, when: {{keyword: kw{i}}}, reply: 'r{i}'}}" for i in range(n)]
    lines += ["  - {name: t-hello, when: {text: 'hello there'}, reply: t}",
              "  - {name: g-zzz, when: {contains: zzz}, reply: z}",
              "  - {name: g-re, when: {regex: 'q{3}'}, reply: q}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def big_and_small():
    return compile_text(_many_keywords(10_000)), compile_text(_many_keywords(10))


def _time(ruleset, message, n=2000) -> float:
    start = time.perf_counter()
    for _ in range(n):
        decide(ruleset, message, MONDAY_10AM)
    return time.perf_counter() - start


def _ratio(big, small, message, rounds=7) -> float:
    """Best-of-N time of `big` over best-of-N time of `small`, measured alternately."""
    best_big = best_small = float("inf")
    for _ in range(rounds):
        best_small = min(best_small, _time(small, message))
        best_big = min(best_big, _time(big, message))
    return best_big / best_small


def test_index_answers_correctly(big_and_small):
    big, _ = big_and_small
    assert decide(big, msg("KW9999!"), MONDAY_10AM) == Decision(("k9999",), (reply("k9999", "r9999"),), ())
    assert decide(big, msg("kw5 zzz"), MONDAY_10AM).matched == ("k5",)
    assert decide(big, msg("nothing zzz"), MONDAY_10AM).matched == ("g-zzz",)
    assert decide(big, msg("Hello   THERE"), MONDAY_10AM).matched == ("t-hello",)
    assert decide(big, msg("kw7", type="mms"), MONDAY_10AM).matched == ("g-first", "k7")
    assert decide(big, msg("none"), MONDAY_10AM) == Decision()


@pytest.mark.parametrize("text", ["kw5 hello", "no keyword here qqq", "Hello there"])
def test_index_makes_10000_keyword_rules_as_fast_as_10(big_and_small, text):
    big, small = big_and_small
    message = msg(text)
    assert decide(big, message, MONDAY_10AM).matched == decide(small, message, MONDAY_10AM).matched
    ratio = _ratio(big, small, message)
    assert ratio < 3, ratio


def test_file_order_kept_across_indexed_and_general_rules():
    ruleset = rules("""\
        - name: g1
          when: {contains: hi}
          reply: g1
          continue: true
        - name: k1
          when: {keyword: hi}
          reply: k1
          continue: true
        - name: t1
          when: {text: "hi there"}
          reply: t1
          continue: true
        - name: g2
          when: {not: {type: whatsapp}}
          reply: g2
          continue: true
        - name: k2
          when: {keyword: [hello, hi], type: sms}
          reply: k2
          continue: true
        - name: t2
          when: {text: ["hi there", "yo"], keyword: hi}
          reply: t2
          continue: true
        - name: g3
          reply: g3
          continue: true
        - name: k3
          when: {keyword: hi}
          reply: k3
        - name: g4
          reply: never
        """)
    assert decide(ruleset, msg("Hi there"), MONDAY_10AM).matched == (
        "g1", "k1", "t1", "g2", "k2", "t2", "g3", "k3")
    assert decide(ruleset, msg("hi"), MONDAY_10AM).matched == ("g1", "k1", "g2", "k2", "g3", "k3")
    assert decide(ruleset, msg("hello"), MONDAY_10AM).matched == ("g2", "k2", "g3", "g4")
    assert decide(ruleset, msg("yo"), MONDAY_10AM).matched == ("g2", "g3", "g4")


def test_keyword_rule_stops_before_later_general_rule():
    ruleset = rules("""\
        - name: general-first
          when: {type: sms}
          reply: a
          continue: true
        - name: kw
          when: {keyword: stop}
          silent: true
        - name: general-last
          reply: b
        """)
    assert decide(ruleset, msg("STOP"), MONDAY_10AM) == Decision(
        ("general-first", "kw"), (reply("general-first", "a"),), ())
    assert decide(ruleset, msg("go"), MONDAY_10AM).matched == ("general-first", "general-last")


def test_facts_derive_on_first_use_and_know_only_their_names():
    from datetime import datetime, timezone
    from zoneinfo import ZoneInfo

    from app.inbound import Inbound
    from app.rules.engine import Facts
    facts = Facts(Inbound("+1 (415) 555-0123", "14155550100", "u", text="  Hours?!  now "),
                  datetime(2026, 11, 23, 15, 30, tzinfo=timezone.utc), ZoneInfo("America/New_York"))
    assert "keyword" not in vars(facts)
    assert (facts.keyword, facts.normalized, facts.from_digits) == ("hours", "hours?! now", "14155550123")
    assert (facts.weekday, facts.minute) == (0, 10 * 60 + 30)
    assert "keyword" in vars(facts)
    assert not hasattr(facts, "nonsense")
