"""Property tests (Hypothesis): form parsing, the inbound message, the XML builder, and the
app end to end through Flask's test client. Each says what holds for every input, not for
a few chosen ones; the `ci` profile (tests/property_settings.py) keeps them reproducible
and short.
"""

from __future__ import annotations

import uuid as uuidlib
from urllib.parse import quote, urlencode

from conftest import send, sms
from hypothesis import assume, event, given
from hypothesis import strategies as st
from lxml import etree
from property_settings import examples

from app import inbound
from app.inbound import InboundError, check_content_type, parse_form, parse_message
from app.plivoxml import MAX_MESSAGES, Message, clean_text, render
from app.smsenc import split

# Text a form can carry: any character but lone surrogates, which no UTF-8 body can hold.
chars = st.characters(blacklist_categories=("Cs",))
texts = st.text(alphabet=chars, max_size=40)
# Characters that matter to the parsers, drawn often next to any others.
FORMISH = "&=%+;?# \t\r\n\x00\x85\u2028\ufeff"
form_texts = st.text(alphabet=st.one_of(st.sampled_from(FORMISH), st.sampled_from("0123456789abcdefABCDEF"), chars),
                     max_size=60)


# -- form parsing --------------------------------------------------------------------
def parsed_or_refused(raw):
    try:
        pairs = parse_form(raw)
    except InboundError as exc:
        assert str(exc) and exc.status == 400
        return None
    assert isinstance(pairs, list)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in pairs)
    assert len(pairs) <= inbound.MAX_FIELDS
    return pairs


@given(st.binary(max_size=300))
@examples(300)
def test_any_bytes_are_parsed_or_refused(raw):
    parsed_or_refused(raw)


@given(form_texts)
@examples(300)
def test_any_form_text_is_parsed_or_refused(raw):
    parsed_or_refused(raw)
    parsed_or_refused(raw.encode("utf-8"))


@given(st.lists(st.tuples(texts, texts), max_size=12), st.sampled_from([None, quote]))
@examples(300)
def test_urlencoded_pairs_come_back_as_they_were(pairs, quote_via):
    body = urlencode(pairs, quote_via=quote_via) if quote_via else urlencode(pairs)
    assert parse_form(body.encode("ascii")) == pairs
    assert parse_form(body) == pairs  # a GET's query string arrives as text


@given(st.one_of(st.none(), st.text(max_size=60), st.sampled_from([
    "application/x-www-form-urlencoded", "Application/X-WWW-Form-Urlencoded; charset=utf-8",
    "application/json", "multipart/form-data; boundary=x", ";", " "])), st.binary(max_size=20))
@examples(200)
def test_any_content_type_is_accepted_or_refused(content_type, body):
    try:
        check_content_type(content_type, body)
    except InboundError as exc:
        assert str(exc).startswith("body must be") and exc.status == 400
        assert body  # an empty body is never refused for its type


# -- the inbound message -------------------------------------------------------------
FIELDS = ["From", "To", "MessageUUID", "Type", "Text", "Body", "MessageIntent", "MediaCount", "Media0", "Media1",
          "Media2", "Media10", "Media999", "Media1000", "Units", "PowerpackUUID"]
VALUES = ["", " ", "14155550123", "+14155550100", "1" * 21, "<x>", "sms", "MMS", "WhatsApp", "optout", "HELP",
          "-1", "0", "3", "99999999999999999999999", "1e3", "https://m.example/1.jpg", "x" * 65, "\x00", "\u00a0"]
params = st.lists(st.tuples(st.one_of(st.sampled_from(FIELDS), texts),
                            st.one_of(st.sampled_from(VALUES), texts)), max_size=20)


@given(params)
@examples(300)
def test_any_parameters_give_a_message_or_a_short_refusal(pairs):
    try:
        msg = parse_message(pairs)
    except InboundError as exc:
        assert 0 < len(str(exc)) < 120 and exc.status == 400
        return
    assert msg.from_.isdigit() and msg.to.isdigit() and len(msg.from_) <= 20 and len(msg.to) <= 20
    assert msg.uuid and msg.uuid.isprintable() and len(msg.uuid) <= inbound.MAX_UUID
    assert 1 <= len(msg.type) <= 16 and msg.type.replace("_", "").replace("-", "").isalnum() and msg.type.isascii()
    assert msg.intent in ("", *inbound.INTENTS)
    assert isinstance(msg.text, str) and msg.media_count >= 0
    assert all(isinstance(url, str) and url == url.strip() and url for url in msg.media)


@given(st.dictionaries(st.sampled_from(FIELDS), st.one_of(st.sampled_from(VALUES), texts), max_size=12))
@examples(200)
def test_a_complete_message_with_any_extras(extra):
    pairs = list(sms(**{k: v for k, v in extra.items() if k not in ("From", "To", "MessageUUID")}).items())
    msg = parse_message(pairs)  # From, To and MessageUUID are good: never refused
    assert (msg.from_, msg.to) == ("14155550123", "14155550100")


# -- the XML builder -----------------------------------------------------------------
xml_texts = st.text(alphabet=st.one_of(st.sampled_from("<>&\"'\t\r\n\x00\x0b\ufffe\uffff\ud800]]>"), chars),
                    max_size=80)
numbers = st.one_of(st.from_regex(r"\A[0-9]{1,15}\Z"), xml_texts)


def parsed(xml: bytes) -> etree._Element:
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    root = etree.fromstring(xml, parser=etree.XMLParser(resolve_entities=False, huge_tree=False))
    assert root.tag == "Response"
    return root


@given(st.lists(st.tuples(numbers, st.lists(numbers, min_size=1, max_size=3), xml_texts,
                          st.one_of(st.none(), xml_texts)), max_size=4))
@examples(300)
def test_any_texts_and_numbers_give_well_formed_xml_with_the_same_texts(messages):
    xml = render([Message(src, tuple(dst), text, callback) for src, dst, text, callback in messages])
    elements = list(parsed(xml))
    expected = []
    for src, dst, text, callback in messages:
        for piece in split(clean_text(text)):
            attrib = {"src": clean_text(src), "dst": clean_text("<".join(dst)), "type": "sms"}
            if callback and clean_text(callback):
                attrib.update(callbackUrl=clean_text(callback), callbackMethod="POST")
            expected.append((attrib, piece))
    expected = expected[:MAX_MESSAGES]
    # XML reads a raw CR as LF; lxml escapes CR as &#13; so that it survives.
    assert [(dict(el.attrib), el.text or "") for el in elements] == expected


@given(st.text(alphabet=st.one_of(st.sampled_from(" \n\u00e9\u20ac\U0001F600"), chars), min_size=300, max_size=3000))
@examples(60)
def test_long_texts_are_split_into_pieces_that_lose_only_the_cut_spaces(text):
    clean = clean_text(text)
    assume(clean)
    pieces = [el.text or "" for el in parsed(render([Message("1", ("2",), text)]))]
    assert pieces == split(clean)[:MAX_MESSAGES]
    if len(pieces) < MAX_MESSAGES:  # all of it was sent: only whitespace at the cuts is gone
        assert "".join("".join(pieces).split()) == "".join(clean.split())


# -- the app, end to end -------------------------------------------------------------
@given(data=st.data())
@examples(120)
def test_any_signed_webhook_gets_a_short_answer_and_never_a_500(client, data):
    base = sms(MessageUUID=str(uuidlib.uuid4()))
    extra = data.draw(st.dictionaries(st.sampled_from(FIELDS), st.one_of(st.sampled_from(VALUES), texts),
                                      max_size=8), label="overrides")
    odd = data.draw(st.lists(st.tuples(texts, texts), max_size=4), label="extra parameters")
    pairs = list({**base, **extra}.items()) + odd
    method = data.draw(st.sampled_from(["POST", "GET"]), label="method")
    path = data.draw(st.sampled_from(["/message", "/status"]), label="path")
    response = send(client, pairs, method=method, path=path)
    event(f"{path} {response.status_code}")  # --hypothesis-show-statistics: how often each answer came
    assert response.status_code < 500, response.data[:300]
    assert 200 <= response.status_code < 300 or 400 <= response.status_code < 500
    if response.status_code == 200 and response.mimetype == "application/xml":
        parsed(response.data)
    elif response.status_code >= 400:
        assert len(response.data) < 300, response.data[:300]
