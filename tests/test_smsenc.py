import random

import pytest

from app import smsenc
from app.smsenc import MAX_GSM7, MAX_UCS2, Encoding, analyse, split

EURO = "\u20ac"
EMOJI = "\U0001F600"  # outside the BMP: a surrogate pair in UTF-16


# --- analyse: known answers -------------------------------------------------


def test_empty():
    assert analyse("") == Encoding("GSM-7", 0, 0)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a", Encoding("GSM-7", 1, 1)),
        ("a" * 160, Encoding("GSM-7", 160, 1)),
        ("a" * 161, Encoding("GSM-7", 161, 2)),
        ("a" * 306, Encoding("GSM-7", 306, 2)),  # 153 * 2
        ("a" * 307, Encoding("GSM-7", 307, 3)),
        ("a" * 1600, Encoding("GSM-7", 1600, 11)),
        ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./", Encoding("GSM-7", 47, 1)),
        ("¡¿ÄÖÑÜ§äöñüà", Encoding("GSM-7", 12, 1)),
        # extension table: 2 septets each
        ("^{}\\[~]|" + EURO + "\x0c", Encoding("GSM-7", 20, 1)),
        ("a" * 158 + EURO, Encoding("GSM-7", 160, 1)),
        ("a" * 159 + EURO, Encoding("GSM-7", 161, 2)),
        ("a" * 80 + "[]" * 40, Encoding("GSM-7", 240, 2)),
        # the escape would straddle the 153rd septet: it moves to the next unit
        ("a" * 152 + EURO + "a" * 152, Encoding("GSM-7", 306, 3)),
        ("a" * 151 + EURO + "a" * 153, Encoding("GSM-7", 306, 2)),
        ("a" * 152 + "{" + "a" * 9, Encoding("GSM-7", 163, 2)),
        # UCS-2
        ("ж", Encoding("UCS-2", 1, 1)),
        ("ж" * 70, Encoding("UCS-2", 70, 1)),
        ("ж" * 71, Encoding("UCS-2", 71, 2)),
        ("ж" * 134, Encoding("UCS-2", 134, 2)),  # 67 * 2
        ("ж" * 135, Encoding("UCS-2", 135, 3)),
        ("a" * 160 + "ж", Encoding("UCS-2", 161, 3)),
        ("`", Encoding("UCS-2", 1, 1)),  # backtick is not GSM
        ("a\tb", Encoding("UCS-2", 3, 1)),  # tab is not GSM
        ("ç", Encoding("UCS-2", 1, 1)),  # only capital Ç is GSM
        (EURO + "ж", Encoding("UCS-2", 2, 1)),  # extension chars count 1 in UCS-2
        # emoji: 2 UTF-16 units
        (EMOJI, Encoding("UCS-2", 2, 1)),
        (EMOJI * 35, Encoding("UCS-2", 70, 1)),
        (EMOJI * 36, Encoding("UCS-2", 72, 2)),
        ("a" * 69 + EMOJI, Encoding("UCS-2", 71, 2)),
        # a surrogate pair never straddles the 67th unit
        ("a" * 66 + EMOJI + "a" * 66, Encoding("UCS-2", 134, 3)),
        ("a" * 65 + EMOJI + "a" * 67, Encoding("UCS-2", 134, 2)),
    ],
)
def test_analyse_known(text, expected):
    assert analyse(text) == expected


def test_constants():
    assert (MAX_GSM7, MAX_UCS2) == (1600, 737)
    assert smsenc.GSM_EXTENSION == frozenset("^{}\\[~]|\u20ac\x0c")
    assert len(smsenc.GSM_BASIC) == 127  # 128 codes minus ESC


def test_every_ascii_char():
    non_gsm = {chr(c) for c in range(128)} - smsenc.GSM_ALL
    assert non_gsm == {chr(c) for c in range(32) if c not in (10, 12, 13)} | {"`", "\x7f"}
    for c in range(128):
        ch = chr(c)
        enc = analyse(ch)
        if ch in non_gsm:
            assert enc == Encoding("UCS-2", 1, 1), repr(ch)
        elif ch in smsenc.GSM_EXTENSION:
            assert enc == Encoding("GSM-7", 2, 1), repr(ch)
        else:
            assert enc == Encoding("GSM-7", 1, 1), repr(ch)


def _reference(text):
    """Slow, obvious implementation to compare analyse() against."""
    if not text:
        return Encoding("GSM-7", 0, 0)
    if all(c in smsenc.GSM_ALL for c in text):
        name, costs, single, part = "GSM-7", [2 if c in smsenc.GSM_EXTENSION else 1 for c in text], 160, 153
    else:
        name, costs, single, part = "UCS-2", [len(c.encode("utf-16-le")) // 2 for c in text], 70, 67
    length = sum(costs)
    if length <= single:
        return Encoding(name, length, 1)
    units, used = 1, 0
    for w in costs:
        if used + w > part:
            units, used = units + 1, 0
        used += w
    return Encoding(name, length, units)


ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyz      ",
    "abcXYZ0123 .,!?\n" + "^{}\\[~]|" + EURO,
    "äöüÄÖÜßéèΩΔ @£$ ",
    "abc жшщ привет  ",
    "ab " + EMOJI + "\u00a0" + "é€{",
    "abcdefghijklmnopqrstuvwxyz",  # no whitespace at all: hard cuts
    EMOJI + "ж",
    "a\t\n\r \u3000\u2028" + EURO,
]


def _random_texts(seed, count):
    rng = random.Random(seed)
    for _ in range(count):
        alphabet = rng.choice(ALPHABETS)
        n = rng.choice([0, 1, rng.randint(1, 200), rng.randint(150, 900), rng.randint(700, 5000)])
        yield "".join(rng.choice(alphabet) for _ in range(n))


def test_analyse_matches_reference_random():
    for text in _random_texts(1234, 400):
        assert analyse(text) == _reference(text), text


# --- split -------------------------------------------------------------------


def test_split_empty_and_short():
    assert split("") == []
    assert split("hello") == ["hello"]
    assert split(" ") == [" "]
    assert split("a" * 1600) == ["a" * 1600]
    assert split("ж" * 737) == ["ж" * 737]
    assert split(EMOJI * 368 + "a") == [EMOJI * 368 + "a"]  # 737 units
    assert split(" a " * 300) == [" a " * 300]  # 900, untouched


def test_split_gsm_at_whitespace():
    text = "abcdefghi " * 500  # 5,000 septets
    assert split(text) == ["abcdefghi " * 159 + "abcdefghi"] * 3 + ["abcdefghi " * 20]


def test_split_cut_exactly_on_whitespace():
    text = "a" * 1600 + " " + "b" * 10
    assert split(text) == ["a" * 1600, "b" * 10]
    # trailing whitespace at the cut is dropped, no empty piece follows
    assert split("a" * 1600 + " ") == ["a" * 1600]


def test_split_only_one_whitespace_dropped():
    text = "a" * 1590 + "  \n" + "b" * 20
    assert split(text) == ["a" * 1590 + "  ", "b" * 20]


def test_split_no_break_space_is_not_a_break():
    text = "a" * 1000 + " " + "b" * 500 + "\u00a0" + "c" * 500
    assert analyse(text).name == "UCS-2"  # NBSP is not in the GSM alphabet
    assert split(text) == ["a" * 737, "a" * 263, "b" * 500 + "\u00a0" + "c" * 236, "c" * 264]


def test_split_hard_cut_gsm():
    assert split("a" * 2000) == ["a" * 1600, "a" * 400]
    # an escape sequence is never cut in two
    assert split("a" * 1599 + EURO + "a" * 10) == ["a" * 1599, EURO + "a" * 10]
    assert split("{" * 1000) == ["{" * 800, "{" * 200]


def test_split_hard_cut_ucs2_keeps_surrogate_pairs():
    assert split(EMOJI * 800) == [EMOJI * 368, EMOJI * 368, EMOJI * 64]
    assert split("ж" * 736 + EMOJI + "ж") == ["ж" * 736, EMOJI + "ж"]


def test_split_ucs2_at_whitespace():
    text = ("привет " * 286)[:2000]
    pieces = split(text)
    assert [len(p) for p in pieces] == [734, 734, 530]
    assert pieces[0] == ("привет " * 105)[:734]
    assert pieces[2] == "привет " * 75 + "приве"
    assert all(analyse(p).length <= 737 for p in pieces)


def test_split_encoding_decided_by_whole_text():
    # The GSM-only first part is still cut at 737, because the text is UCS-2.
    text = "a " * 500 + "ж"
    pieces = split(text)
    assert pieces == ["a " * 368 + "a", "a " * 131 + "ж"]  # the space at index 737 is dropped


def _units16(s):
    return len(s.encode("utf-16-le", "surrogatepass")) // 2


def _check_split(text):
    pieces = split(text)
    enc = analyse(text)
    if not text:
        assert pieces == []
        return
    limit = MAX_GSM7 if enc.name == "GSM-7" else MAX_UCS2
    if enc.length <= limit:
        assert pieces == [text]
        return
    pos = 0
    for k, piece in enumerate(pieces):
        assert piece, "empty piece"
        size = analyse(piece).length if enc.name == "GSM-7" else _units16(piece)
        assert size <= limit
        assert text.startswith(piece, pos)
        pos += len(piece)
        last = k == len(pieces) - 1
        if pos < len(text) and text[pos] in smsenc._BREAK_CHARS:
            pos += 1  # the whitespace at the cut
        elif not last:
            # hard cut: only when the piece had nowhere to break, and it is full
            assert not any(c in smsenc._BREAK_CHARS for c in piece[1:])
            grown = piece + text[pos]
            grown_size = analyse(grown).length if enc.name == "GSM-7" else _units16(grown)
            assert grown_size > limit
    assert pos == len(text)


def test_split_invariants_random():
    for text in _random_texts(20240601, 400):
        _check_split(text)


def test_split_invariants_long_random():
    rng = random.Random(7)
    for _ in range(60):
        alphabet = rng.choice(ALPHABETS)
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1500, 6000)))
        _check_split(text)


def test_split_reconstructs_with_removed_whitespace():
    text = ("word " * 700).rstrip() + "\nend"
    pieces = split(text)
    assert len(pieces) == 3
    assert " ".join(pieces) == text


# --- cut: a text to one message, with an ellipsis -----------------------------------


@pytest.mark.parametrize("text", ["", "hello", "a" * MAX_GSM7, "ж" * MAX_UCS2, EURO * 800, EMOJI * 368])
def test_cut_keeps_a_text_that_fits(text):
    assert smsenc.cut(text) == (text, "")


@pytest.mark.parametrize("text, kept, ellipsis", [
    ("a" * 1601, "a" * 1597, "..."),                      # GSM-7 stays GSM-7: 3 dots, not U+2026
    ("word " * 400, ("word " * 320)[:1597].rstrip(), "..."),  # no space left before the dots
    (EURO * 801, EURO * 798, "..."),                       # extension characters count twice
    ("ж" * 738, "ж" * 736, "\u2026"),                       # UCS-2 already: the one character
    (EMOJI * 369, EMOJI * 368, "\u2026"),                   # never half a surrogate pair
    ("a" * 1000 + "ж" * 10, "a" * 1000, "..."),             # the longer start: 1,000 GSM-7 ...
    ("a" * 10 + "ж" * 1000, "a" * 10 + "ж" * 726, "\u2026"),  # ... or 736 UCS-2 characters
])
def test_cut_to_one_message(text, kept, ellipsis):
    sent, rest = smsenc.cut(text)
    assert sent == kept + ellipsis
    assert len(split(sent)) == 1 and text.startswith(sent[:-len(ellipsis)].rstrip())
    assert text.endswith(rest) and len(text) - len(rest) >= len(kept)
    assert analyse(sent).is_gsm7 == (ellipsis == "...")


def test_cut_random_texts_always_fit_one_message():
    for text in _random_texts(20261207, 300):
        sent, rest = smsenc.cut(text)
        assert len(split(sent)) <= 1
        if rest:
            assert sent.endswith(("...", "\u2026")) and len(split(text)) > 1
            assert text.startswith(sent[:-3] if sent.endswith("...") else sent[:-1])
        else:
            assert sent == text
