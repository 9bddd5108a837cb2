"""SMS text encoding: GSM-7 versus UCS-2, message units, and splitting.

Pure and stdlib only. A text is GSM-7 when every character is in the GSM 03.38
basic character set or its extension table (extension characters take an
escape plus the character: 2 septets). Any other character makes the whole
text UCS-2, measured in UTF-16 code units (a character outside the BMP, such as
most emoji, takes a surrogate pair: 2 units).

Units are counted the way a phone fills segments: greedily, and an escape
sequence or a surrogate pair never straddles two segments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "Encoding",
    "GSM7",
    "UCS2",
    "MAX_GSM7",
    "MAX_UCS2",
    "GSM7_SINGLE",
    "GSM7_PART",
    "UCS2_SINGLE",
    "UCS2_PART",
    "analyse",
    "cut",
    "split",
]

GSM7 = "GSM-7"
UCS2 = "UCS-2"

#: Longest text one Plivo message can carry (septets / UTF-16 code units).
MAX_GSM7 = 1600
MAX_UCS2 = 737

#: Capacity of a single unit, and of each unit of a multi-unit (concatenated) message.
GSM7_SINGLE = 160
GSM7_PART = 153
UCS2_SINGLE = 70
UCS2_PART = 67

# GSM 03.38 default alphabet (basic character set), in code order 0x00-0x7F.
# 0x1B (ESC) is the escape to the extension table and is not a character itself.
_GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
assert len(_GSM_BASIC) == 128
GSM_BASIC: frozenset[str] = frozenset(_GSM_BASIC) - {"\x1b"}

#: Extension table: each of these costs 2 septets (ESC + code).
GSM_EXTENSION: frozenset[str] = frozenset("\x0c^{}\\[~]|€")

GSM_ALL: frozenset[str] = GSM_BASIC | GSM_EXTENSION

# ASCII fast path: ASCII characters that are in neither GSM table
# (C0 controls other than LF, CR and FF; backtick; DEL).
_ASCII_NON_GSM = re.compile("[" + re.escape("".join(
    chr(c) for c in range(128) if chr(c) not in GSM_ALL
)) + "]")
# bytes.translate(None, delete) table that keeps only the ASCII extension characters.
_KEEP_ASCII_EXT = bytes(c for c in range(128) if chr(c) not in GSM_EXTENSION)

# Where split() may break a text: whitespace, except the no-break spaces.
_BREAK_CHARS: frozenset[str] = frozenset(
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2008\u2009\u200a"
    "\u2028\u2029\u205f\u3000"
)


@dataclass(frozen=True)
class Encoding:
    name: str  # "GSM-7" or "UCS-2"
    length: int  # septets for GSM-7, UTF-16 code units for UCS-2
    units: int  # message units (segments) billed; 0 for ""

    @property
    def is_gsm7(self) -> bool:
        return self.name == GSM7


_EMPTY = Encoding(GSM7, 0, 0)


def _greedy_units(text: str, part: int, double) -> int:
    """Segments needed when filling ``part``-sized segments greedily, where a
    character in/matching ``double`` takes 2 slots and never straddles."""
    units = 1
    used = 0
    for ch in text:
        w = 2 if double(ch) else 1
        if used + w > part:
            units += 1
            used = w
        else:
            used += w
    return units


def _is_gsm_ext(ch: str) -> bool:
    return ch in GSM_EXTENSION


def _is_astral(ch: str) -> bool:
    return ch > "\uffff"


def _units(length: int, n_double: int, text: str, single: int, part: int, double) -> int:
    if length == 0:
        return 0
    if length <= single:
        return 1
    if n_double == 0:
        return -(-length // part)
    return _greedy_units(text, part, double)


def analyse(text: str) -> Encoding:
    """Encoding, length and billed units of ``text``."""
    if not text:
        return _EMPTY
    if text.isascii():
        if _ASCII_NON_GSM.search(text) is None:
            n_ext = len(text.encode("ascii").translate(None, _KEEP_ASCII_EXT))
            length = len(text) + n_ext
            return Encoding(GSM7, length, _units(length, n_ext, text, GSM7_SINGLE, GSM7_PART, _is_gsm_ext))
        length = len(text)  # ASCII, so no surrogate pairs
        return Encoding(UCS2, length, _units(length, 0, text, UCS2_SINGLE, UCS2_PART, _is_astral))
    chars = set(text)
    if chars <= GSM_ALL:
        n_ext = sum(text.count(c) for c in chars & GSM_EXTENSION)
        length = len(text) + n_ext
        return Encoding(GSM7, length, _units(length, n_ext, text, GSM7_SINGLE, GSM7_PART, _is_gsm_ext))
    n_astral = sum(1 for c in chars if c > "\uffff")
    if n_astral:
        n_astral = sum(text.count(c) for c in chars if c > "\uffff")
    length = len(text) + n_astral
    return Encoding(UCS2, length, _units(length, n_astral, text, UCS2_SINGLE, UCS2_PART, _is_astral))


def _fit(text: str, start: int, limit: int, double) -> int:
    """Largest end such that text[start:end] costs at most ``limit``."""
    used = 0
    i = start
    n = len(text)
    while i < n:
        used += 2 if double(text[i]) else 1
        if used > limit:
            return i
        i += 1
    return n


_ALWAYS_FITS = MAX_UCS2 // 2  # characters that fit in one message in any encoding

#: What `cut` puts where it cut: three dots keep a GSM-7 text GSM-7 (U+2026 would make the
#: whole text UCS-2, 737 characters instead of 1,600); a UCS-2 text takes the one character.
GSM7_ELLIPSIS = "..."
UCS2_ELLIPSIS = "\u2026"


def cut(text: str) -> tuple[str, str]:
    """(what one Plivo message carries of ``text``, the rest that it does not).

    A text that fits (``split`` gives one piece) comes back whole with ``""``. Otherwise
    the longer of two starts: the GSM-7 characters that fit in ``MAX_GSM7`` septets with
    ``...`` after them, or the characters that fit in ``MAX_UCS2`` UTF-16 units with
    ``…``. Trailing whitespace before the ellipsis is dropped; the rest is the text from
    the cut on. Never inside a character or a surrogate pair.
    """
    if len(text) <= _ALWAYS_FITS:
        return text, ""
    enc = analyse(text)
    if enc.length <= (MAX_GSM7 if enc.is_gsm7 else MAX_UCS2):
        return text, ""
    room, gsm = MAX_GSM7 - len(GSM7_ELLIPSIS), 0
    for ch in text:
        if ch not in GSM_ALL:
            break
        room -= 2 if ch in GSM_EXTENSION else 1
        if room < 0:
            break
        gsm += 1
    ucs = _fit(text, 0, MAX_UCS2 - len(UCS2_ELLIPSIS), _is_astral)
    end, ellipsis = (gsm, GSM7_ELLIPSIS) if gsm >= ucs else (ucs, UCS2_ELLIPSIS)
    return text[:end].rstrip() + ellipsis, text[end:]


def split(text: str) -> list[str]:
    """Cut ``text`` into pieces that each fit in one Plivo message.

    The encoding is decided by the whole text; the limit is ``MAX_GSM7``
    septets or ``MAX_UCS2`` UTF-16 units. Cuts fall on whitespace, and the one
    whitespace character at each cut is dropped (pieces are not otherwise
    stripped). A piece without whitespace is cut hard, never inside a
    character. ``""`` gives ``[]``; a text within the limit gives ``[text]``.
    """
    if not text:
        return []
    n = len(text)
    if n <= _ALWAYS_FITS or (n <= MAX_UCS2 and text.isascii()):
        # Fits whatever the encoding: at most 2 units a character (1,600 >= 2 x 737 > 737),
        # and an ASCII character is 1 UTF-16 unit or at most 2 septets.
        return [text]
    enc = analyse(text)
    if enc.name == GSM7:
        limit, double = MAX_GSM7, _is_gsm_ext
        simple = enc.length == len(text)  # no extension characters
    else:
        limit, double = MAX_UCS2, _is_astral
        simple = enc.length == len(text)  # no surrogate pairs
    if enc.length <= limit:
        return [text]

    pieces: list[str] = []
    n = len(text)
    start = 0
    while start < n:
        end = min(start + limit, n) if simple else _fit(text, start, limit, double)
        if end >= n:
            pieces.append(text[start:])
            break
        if text[end] in _BREAK_CHARS:
            # The first character that does not fit is whitespace: cut there.
            pieces.append(text[start:end])
            start = end + 1
            continue
        cut = -1
        for i in range(end - 1, start, -1):  # a cut at `start` would give an empty piece
            if text[i] in _BREAK_CHARS:
                cut = i
                break
        if cut > start:
            pieces.append(text[start:cut])
            start = cut + 1
        else:
            pieces.append(text[start:end])  # no whitespace: hard cut
            start = end
    return pieces
