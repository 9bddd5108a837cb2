"""app.inbound: strict form parsing and the message model (pure, known answers)."""

import pytest

from app.inbound import InboundError, check_content_type, parse_form, parse_message


def test_parse_form_keeps_blanks_and_repeats():
    assert parse_form(b"a=1&b=&a=2&c") == [("a", "1"), ("b", ""), ("a", "2"), ("c", "")]


def test_parse_form_decodes_utf8_and_plus():
    assert parse_form(b"Text=caf%C3%A9+%F0%9F%91%8D") == [("Text", "café 👍")]


@pytest.mark.parametrize("raw", [b"Text=\xff", b"Text=%FF", b"Text=%ED%A0%80"])
def test_parse_form_rejects_invalid_utf8(raw):
    with pytest.raises(InboundError, match="not valid UTF-8"):
        parse_form(raw)


def test_parse_form_limits_fields():
    with pytest.raises(InboundError, match="too many form fields"):
        parse_form("&".join(["a=1"] * 501))


def test_content_type():
    check_content_type("application/x-www-form-urlencoded; charset=UTF-8", b"a=1")
    check_content_type(None, b"")
    with pytest.raises(InboundError):
        check_content_type("application/json", b"{}")


def test_sms_message():
    msg = parse_message([("From", "14155550123"), ("To", "14155550100"), ("MessageUUID", "u"),
                         ("Text", "Hi"), ("MessageIntent", "HELP"), ("Extra", "x")])
    assert (msg.from_, msg.to, msg.uuid, msg.type, msg.text, msg.intent) == \
        ("14155550123", "14155550100", "u", "sms", "Hi", "help")
    assert msg.media == () and not msg.has_media


def test_mms_uses_body_and_orders_media():
    msg = parse_message([("From", "1"), ("To", "2"), ("MessageUUID", "u"), ("Type", "mms"),
                         ("Body", "pic"), ("Media10", "j"), ("Media2", "b"), ("Media1", "a"), ("MediaCount", "3")])
    assert msg.text == "pic" and msg.media == ("a", "b", "j") and msg.media_count == 3 and msg.has_media


def test_first_value_wins():
    msg = parse_message([("From", "1"), ("To", "2"), ("MessageUUID", "u"), ("Text", "a"), ("Text", "b")])
    assert msg.text == "a"


@pytest.mark.parametrize("drop", ["From", "To", "MessageUUID"])
def test_missing_fields(drop):
    pairs = [(k, "1") for k in ("From", "To", "MessageUUID") if k != drop]
    with pytest.raises(InboundError, match=f"missing {drop}"):
        parse_message(pairs)


def test_parse_form_agrees_with_parse_qsl():
    """The hand-written parser is parse_qsl(keep_blank_values, strict, max 500 fields), faster."""
    import random
    from urllib.parse import parse_qsl
    rnd = random.Random(1)
    alphabet = list("ab=&+%é中 👍\x00;") + ["%41", "%C3%A9", "%ZZ", "%FF", "%F0%9F%91%8D", "%26", "%3D", "%3d"]
    for _ in range(5000):
        raw = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 20)))
        try:
            want = parse_qsl(raw, keep_blank_values=True, errors="strict", max_num_fields=500)
        except (UnicodeDecodeError, ValueError):
            want = "error"
        try:
            got = parse_form(raw)
        except InboundError:
            got = "error"
        assert got == want, raw
