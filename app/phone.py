"""Phone numbers in free text: what counts as one, in one place. Pure.

Two callers look for numbers in text they did not write, and a mistake costs each the
opposite thing, so there are two rules, side by side here:

- `STANDING_ALONE`, for log lines (`app.logs.scrub`, which every log line goes through):
  a number is cut to its last four digits (`last_four`), and what is wrongly taken for one is
  lost from the log. So a number must stand alone and be written as numbers are written
  (`+1 415 555 0100`, `(415) 555-0100`, 8 to 15 bare digits), and uuids, digests, versions,
  addresses, dates and times stay readable.
- `RUN`, for recorded webhooks (`app.recording.mask`): a number is replaced by a fake of the
  same shape, kept in a file for months. A number missed is a customer's number on disk, while
  a run wrongly taken (an order number) only gets other digits. So any run of digits of any
  script with separators between them is one, glued to letters or not (`call4155550123`,
  `电话13812345678`), unless it is shaped like a date (`DATE`).

Both: fewer than MIN_DIGITS digits is not a phone number.
"""

from __future__ import annotations

import re
import unicodedata

#: Fewer digits than this is not a phone number (`+00` of a time zone, `+1 415`, prices,
#: order numbers).
MIN_DIGITS = 8

#: For logs (a pattern to put in a larger one, re.VERBOSE; groups `number` and `sep`): `+`
#: (or `%2B`) and digits, grouped or not (`+1 415 555 0100`, `+1 (415) 555-0100`), a North
#: American number written `(415) 555-0100` or `415-555-0100`, or a run of 8 to 15 digits
#: standing alone. Standing alone is judged with ASCII letters and digits, so `id_14155550100`
#: and `14155550100.` are numbers, while uuid groups, hex digests, versions, addresses, dates
#: and times are not. A `+` with fewer than MIN_DIGITS digits matches too: `last_four` keeps it.
STANDING_ALONE = r"""
    (?P<number>
      (?<![\dA-Za-z+])                      # not inside a word or a longer number
      (?<![\dA-Fa-f]-)(?<![\dA-Za-z]\.)     # nor a later group of a uuid, a version or an address
      (?:
          (?:\+|%2[Bb])\d{1,15}(?:(?:[\ -]\(?|\(|\)[\ -]?)\d{1,6})*(?<=\d\d)(?!\d)
        | (?:\(\d{3}\)\ ?\d{3}[\ .-]|\d{3}(?P<sep>[.-])\d{3}(?P=sep))\d{4}(?![\dA-Za-z]|-[\dA-Za-z]|\.\d)
        | \d{8,15}(?![\dA-Za-z]|-[\dA-Za-z]|\.\d)
      )
    )
"""

#: For recordings: what may stand between the digits of a number: spaces (also no-break and
#: ideographic), dashes (also Unicode and fullwidth ones, and the minus sign), dots and
#: parentheses (also fullwidth).
_SEPARATORS = " \u00a0\u3000\\-\u2010-\u2015\u2212\uff0d.\uff0e()\uff08\uff09"
_PLUS = "+\uff0b"
#: A run of digits (of any script) that may be a phone number: digits with a leading plus
#: and separators between them. Letters around it do not matter. Only a digit or a plus
#: before it is part of it. A run is a number when it has MIN_DIGITS digits and is not a `DATE`.
RUN = re.compile(rf"(?<![\d{_PLUS}])[{_PLUS}]?[(\uff08]?\d(?:[{_SEPARATORS}]*\d)+")
#: Runs shaped like dates are not numbers: 2026-11-28, 2026.11.28, 28.11.2026.
DATE = re.compile(r"\d{4}([-.])\d{2}\1\d{2}|\d{2}([-.])\d{2}\2\d{4}")


def digits(text: str) -> str:
    """The decimal digits of `text`, of any script, as ASCII digits (``４１５`` is ``415``)."""
    return "".join(c if c < "\x80" else str(unicodedata.decimal(c)) for c in text if c.isdecimal())


def last_four(found: str) -> str:
    """A number as logs show it: `…` and its last four digits (as written); `found` itself
    when it has fewer than MIN_DIGITS digits."""
    kept = [c for c in found if c.isdecimal()]
    if len(kept) < MIN_DIGITS:
        return found
    return "…" + "".join(kept[-4:])
