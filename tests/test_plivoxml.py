from dataclasses import FrozenInstanceError

import pytest
from lxml import etree

from app import smsenc
from app.plivoxml import CONTENT_TYPE, EMPTY, Message, clean_text, render

DECL = b'<?xml version="1.0" encoding="UTF-8"?>\n'
US = "14155550100"  # the number that received the message (reply src)
THEM = "14155550123"  # the sender (reply dst)


def parse(body: bytes):
    """Parse the answer back; proves it is well-formed XML."""
    root = etree.fromstring(body)
    assert root.tag == "Response"
    return root


def one_sms(content: bytes) -> bytes:
    """The whole answer with one SMS from US to THEM whose text is written as `content`."""
    return (DECL + b'<Response><Message src="14155550100" dst="14155550123" type="sms">'
            + content + b"</Message></Response>")


def test_content_type():
    assert CONTENT_TYPE == "application/xml; charset=utf-8"


def test_empty():
    assert EMPTY == b'<?xml version="1.0" encoding="UTF-8"?>\n<Response/>'
    assert render([]) == EMPTY
    assert len(parse(EMPTY)) == 0


def test_one_reply():
    body = render([Message(US, (THEM,), "Thanks, 14155550123!")])
    assert body == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<Response><Message src="14155550100" dst="14155550123" type="sms">'
        b"Thanks, 14155550123!</Message></Response>"
    )


def test_two_messages_in_order():
    body = render(
        [
            Message(US, (THEM,), "Thanks, 14155550123!"),
            Message(US, (THEM,), "A person will answer soon."),
        ]
    )
    assert body == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b"<Response>"
        b'<Message src="14155550100" dst="14155550123" type="sms">Thanks, 14155550123!</Message>'
        b'<Message src="14155550100" dst="14155550123" type="sms">A person will answer soon.</Message>'
        b"</Response>"
    )
    assert [m.text for m in parse(body)] == ["Thanks, 14155550123!", "A person will answer soon."]


def test_forward_to_several():
    body = render([Message(US, ("14155550999", "14155550998"), "From 14155550123: hi")])
    assert body == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<Response><Message src="14155550100" dst="14155550999&lt;14155550998" type="sms">'
        b"From 14155550123: hi</Message></Response>"
    )
    assert parse(body)[0].get("dst") == "14155550999<14155550998"


def test_dst_given_as_string_or_list():
    assert Message(US, THEM, "x").dst == (THEM,)
    assert Message(US, ["1", "2"], "x").dst == ("1", "2")
    assert render([Message(US, "14155550999<14155550998", "x")]) == render(
        [Message(US, ("14155550999", "14155550998"), "x")]
    )


def test_message_is_frozen():
    m = Message(US, (THEM,), "x")
    with pytest.raises(FrozenInstanceError):
        m.text = "y"
    assert m.callback_url is None


def test_escaping():
    body = render([Message('1&<>"\'', (THEM,), "Tom & Jerry <3 > \"quotes\" 'single'")])
    assert body == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<Response><Message src="1&amp;&lt;&gt;&quot;\'" dst="14155550123" type="sms">'
        b"Tom &amp; Jerry &lt;3 &gt; \"quotes\" 'single'</Message></Response>"
    )
    m = parse(body)[0]
    assert m.get("src") == '1&<>"\''
    assert m.text == "Tom & Jerry <3 > \"quotes\" 'single'"


def test_msg_and_data_rates_text():
    body = render([Message(US, (THEM,), "Msg&data rates may apply. Reply STOP to unsubscribe.")])
    assert b">Msg&amp;data rates may apply. Reply STOP to unsubscribe.</Message>" in body


def test_callback_attributes():
    body = render([Message(US, (THEM,), "hi", "https://sms.example.com/status?a=1&b=2")])
    assert body == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<Response><Message src="14155550100" dst="14155550123" type="sms" '
        b'callbackUrl="https://sms.example.com/status?a=1&amp;b=2" callbackMethod="POST">'
        b"hi</Message></Response>"
    )
    m = parse(body)[0]
    assert list(m.attrib.keys()) == ["src", "dst", "type", "callbackUrl", "callbackMethod"]
    assert m.get("callbackUrl") == "https://sms.example.com/status?a=1&b=2"


def test_no_callback_for_empty_url():
    assert b"callback" not in render([Message(US, (THEM,), "hi", "")])


def test_invalid_xml_chars_removed():
    text = "a\x00b\x01c\x08d\x0be\x0cf\x1fg\ud800h\udfffi\ufffej\uffffk\x7f\t\n\r"
    body = render([Message(US, (THEM,), text)])
    assert body == one_sms(b"abcdefghijk\x7f\t\n&#13;")
    assert parse(body)[0].text == "abcdefghijk\x7f\t\n\r"


def test_clean_text():
    assert clean_text("") == ""
    assert clean_text("plain text") == "plain text"
    assert clean_text("\x00\x01\x02") == ""
    assert clean_text("a\ud83d\ude00b") == "ab"  # surrogates as two code points are lone
    assert clean_text("\U0001F600 \U0010FFFF \ue000 \ufffd \ud7ff") == "\U0001F600 \U0010FFFF \ue000 \ufffd \ud7ff"
    assert clean_text("\ufffe\uffff\ud800\udfff") == ""
    for c in range(0x20):
        assert clean_text(chr(c)) == (chr(c) if chr(c) in "\t\n\r" else "")


def test_emoji_kept():
    body = render([Message(US, (THEM,), "Thanks \U0001F600\U0001F44D")])
    assert body == one_sms(b"Thanks \xf0\x9f\x98\x80\xf0\x9f\x91\x8d")
    assert parse(body)[0].text == "Thanks \U0001F600\U0001F44D"


def test_all_control_chars_yield_no_message():
    assert render([Message(US, (THEM,), "\x00\x01\x02\x1b\x1f")]) == EMPTY
    assert render([Message(US, (THEM,), "")]) == EMPTY
    body = render([Message(US, (THEM,), "\x00\x07"), Message(US, (THEM,), "ok"), Message(US, (THEM,), "")])
    assert body == one_sms(b"ok")


def test_long_gsm_text_split_at_whitespace():
    text = "abcdefghi " * 500  # 5,000 GSM characters
    body = render([Message(US, (THEM,), text, "https://sms.example.com/status")])
    head = (
        b'<Message src="14155550100" dst="14155550123" type="sms" '
        b'callbackUrl="https://sms.example.com/status" callbackMethod="POST">'
    )
    full = head + b"abcdefghi " * 159 + b"abcdefghi</Message>"
    assert body == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Response>'
        + full * 3
        + head + b"abcdefghi " * 20 + b"</Message>"
        + b"</Response>"
    )
    msgs = parse(body)
    assert len(msgs) == 4
    assert all(len(m.text) <= 1600 for m in msgs)
    assert " ".join(m.text for m in msgs) == text


def test_long_ucs2_text_split():
    text = ("привет " * 286)[:2000]
    body = render([Message(US, (THEM,), text)])
    msgs = parse(body)
    assert [len(m.text) for m in msgs] == [734, 734, 530]
    assert all(smsenc.analyse(m.text).length <= 737 for m in msgs)
    assert " ".join(m.text for m in msgs) == text
    head = '<Message src="14155550100" dst="14155550123" type="sms">'.encode()
    assert body == (
        DECL
        + b"<Response>"
        + (head + ("привет " * 105)[:734].encode() + b"</Message>") * 2
        + head + ("привет " * 75 + "приве").encode() + b"</Message>"
        + b"</Response>"
    )
    for m in msgs:
        assert m.attrib == {"src": US, "dst": THEM, "type": "sms"}


def test_split_after_cleaning():
    # 1,600 'a' plus NULs: cleaning first makes it fit in one message.
    text = "a" * 800 + "\x00" * 50 + "a" * 800
    msgs = parse(render([Message(US, (THEM,), text)]))
    assert [m.text for m in msgs] == ["a" * 1600]


def test_render_accepts_any_iterable():
    gen = (Message(US, (THEM,), t) for t in ["one", "two"])
    assert [m.text for m in parse(render(gen))] == ["one", "two"]


def test_render_random_round_trip():
    import random

    rng = random.Random(99)
    alphabet = "ab <>&\"' \n\r\t\x00\x01\ud800" + "ж€{\U0001F600"
    for _ in range(100):
        texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 2500))) for _ in range(rng.randint(0, 3))]
        body = render([Message(US, (THEM,), t) for t in texts])
        assert body.startswith(DECL)
        body.decode("utf-8")
        got = [m.text or "" for m in parse(body)]
        want = [p for t in texts for p in smsenc.split(clean_text(t))]
        assert got == want


def test_at_most_max_messages():
    from app.plivoxml import MAX_MESSAGES
    many = [Message("1", ("2",), f"text {i}") for i in range(MAX_MESSAGES + 5)]
    root = etree.fromstring(render(many))
    assert len(root) == MAX_MESSAGES == 10
    assert [m.text for m in root] == [f"text {i}" for i in range(MAX_MESSAGES)]
