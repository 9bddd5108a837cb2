"""Plivo Message XML answers.

Pure (no Flask), built on lxml. ``render`` turns a list of :class:`Message`
into the bytes of a ``<Response>`` document::

    <?xml version="1.0" encoding="UTF-8"?>
    <Response><Message src="14155550100" dst="14155550123" type="sms">Hi</Message></Response>
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from lxml import etree

from .smsenc import split

__all__ = ["Message", "CONTENT_TYPE", "XML_DECLARATION", "EMPTY", "clean_text", "render"]

CONTENT_TYPE = "application/xml; charset=utf-8"

#: The most <Message> elements one answer carries: a reply or forward never
#: multiplies into a flood (a 1,600-character forward needs 2).
MAX_MESSAGES = 10

# lxml writes the declaration with single quotes; Plivo's documentation and the
# spec use double quotes, so the declaration is written here and lxml only
# serialises the element (tostring with encoding="UTF-8" adds no declaration).
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'

# Everything outside XML 1.0's Char production:
# #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF]
# (this includes lone surrogates, which a Python str can hold).
_NOT_XML_CHAR = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class Message:
    src: str
    dst: tuple[str, ...]  # several -> joined by "<" in the dst attribute
    text: str
    callback_url: str | None = None  # when set: callbackUrl=... callbackMethod="POST"

    def __post_init__(self) -> None:
        # Accept a single number (or a ready "a<b" string) and lists for convenience.
        if isinstance(self.dst, str):
            object.__setattr__(self, "dst", (self.dst,))
        elif not isinstance(self.dst, tuple):
            object.__setattr__(self, "dst", tuple(self.dst))


def clean_text(text: str) -> str:
    """``text`` without the characters XML 1.0 cannot hold."""
    if _NOT_XML_CHAR.search(text) is None:
        return text
    return _NOT_XML_CHAR.sub("", text)


def render(messages: Iterable[Message]) -> bytes:
    """The XML answer for ``messages``, in order.

    Each text is cleaned and split (``smsenc.split``) into pieces one message
    can carry; each piece is its own ``<Message>`` with the same attributes.
    Texts that are empty (after cleaning) produce no ``<Message>``.
    """
    root = etree.Element("Response")
    sub = etree.SubElement
    for m in messages:
        pieces = split(clean_text(m.text))
        if not pieces:
            continue
        src = clean_text(m.src)
        dst = clean_text("<".join(m.dst))
        callback = clean_text(m.callback_url) if m.callback_url else None
        for piece in pieces:
            if len(root) >= MAX_MESSAGES:
                break
            el = sub(root, "Message")
            el.set("src", src)  # set one by one: attribute order is src, dst, type, callback*
            el.set("dst", dst)
            el.set("type", "sms")
            if callback:
                el.set("callbackUrl", callback)
                el.set("callbackMethod", "POST")
            el.text = piece
    return XML_DECLARATION + etree.tostring(root, encoding="UTF-8")


EMPTY: bytes = render([])
