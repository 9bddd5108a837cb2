"""Masking recorded webhooks: stable fake phone numbers, placeholder texts. Pure, no Flask.

A real number becomes a fake one of the same shape: the same length, the same ``+``,
spaces, dashes, dots and parentheses, the same first digit, the other digits taken from
HMAC-SHA256 of the number's digits keyed with the folder's own random key. So the same
number gets the same fake in every file of one folder (a conversation stays readable),
written by any worker, before or after a restart, while the real number is stored
nowhere and cannot be worked out from the recordings alone. Another folder has another
key and so other fakes. Digits of any script count (fullwidth ``４１５``, Arabic-Indic
``٤١٥``): the HMAC is taken of their values, so a number gets the same fake digits however
it is written, and each fake digit is written in the script of the digit it replaces.

Masked are ``From`` and ``To`` (whole values), and every run that looks like a phone
number (8 digits or more, with ``+``, spaces, dashes, dots or parentheses between them)
in any other parameter value, except ids (``...UUID``) and dates (``2026-11-28``). A run
is a number wherever it stands, also glued to letters of any alphabet (``call4155550123``,
``电话13812345678谢谢``). With the text hidden too, only Plivo's own metadata
(`METADATA_PARAMS`) is kept; every other value becomes a placeholder of its length.

Only numbers the business owns are kept, as the rules file writes them: its lines (``to:``
conditions, a ``to:`` prefix keeping that prefix), the people it forwards to
(``forward.to``), and numbers of 8 digits or more written in its texts (a help text's
phone number, sent to every customer). A number a ``from:`` condition names is a
customer's and is masked like any other (so its recording replays without that match),
unless the business also forwards to it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote_plus, unquote_plus

from .. import phone

__all__ = ["KEY_FILE", "NONE", "NUMBERS", "NUMBERS_TEXT", "Masker", "Named", "folder_key", "numbers_named",
           "mask_form", "placeholder"]

NONE, NUMBERS, NUMBERS_TEXT = "none", "numbers", "numbers,text"
#: The folder's masking key: 32 random bytes, made once, readable by its owner only.
KEY_FILE = ".mask-key"
KEY_BYTES = 32
#: Parameters whose whole value is a phone number.
NUMBER_PARAMS = frozenset({"From", "To"})
#: With the text hidden (numbers,text), the parameters kept as they are: Plivo's metadata,
#: which holds nothing the sender wrote or chose. Every other value (Text, Body, WhatsApp's
#: Button and Context, Media URLs, parameters Plivo adds later) becomes a placeholder.
METADATA_PARAMS = frozenset({"MessageUUID", "Type", "Units", "TotalRate", "TotalAmount", "MessageIntent",
                             "PowerpackUUID", "MediaCount", "ContentType", "MimeType", "ErrorCode"})

#: In the rules file, shorter runs are kept too: short codes are numbers.
_RULE_RUN = re.compile(r"\+?\d(?:[ \-.()]*\d)*\*?")


class Masker:
    """Fake numbers for one folder (its key), keeping the numbers in `keep` and the
    `prefixes` numbers start with (digits)."""

    def __init__(self, key: bytes, keep: Iterable[str] = (), prefixes: Iterable[str] = ()):
        self._key = key
        self._fakes: dict[str, str] = {}
        self.named(keep, prefixes)

    def named(self, keep: Iterable[str], prefixes: Iterable[str]) -> None:
        """Keep what a version of the rules names (the fakes of other numbers do not change)."""
        self._fakes.clear()  # a cached fake may have kept a prefix no longer named
        self.keep = frozenset(keep)
        self.prefixes = tuple(sorted(set(prefixes), key=len, reverse=True))  # the longest first

    def fake_digits(self, digits: str) -> str:
        """The fake for a number given as digits: same length, same first digit."""
        fake = self._fakes.get(digits)
        if fake is None:
            stream, counter = "", 0
            while len(stream) < len(digits):
                mac = hmac.digest(self._key, f"{counter}:{digits}".encode("ascii"), "sha256")
                stream += str(int.from_bytes(mac, "big")).zfill(78)[1:]  # drop the biased lead digit
                counter += 1
            fake = digits[:1] + stream[:len(digits) - 1]
            for prefix in self.prefixes:
                if digits.startswith(prefix):
                    fake = prefix + fake[len(prefix):]
                    break
            if len(self._fakes) < 100_000:  # a bounded cache: a writer thread lives for months
                self._fakes[digits] = fake
        return fake

    def number(self, value: str) -> str:
        """A whole value that is a number (``From``, ``To``, a ``dst``): every digit replaced."""
        digits = phone.digits(value)
        if not digits or digits in self.keep:
            return value
        return _put_digits(value, self.fake_digits(digits))

    def numbers_in(self, text: str) -> str:
        """Text with every run that looks like a phone number replaced by its fake."""
        if not text or sum(c.isdecimal() for c in text) < phone.MIN_DIGITS:
            return text  # the common case: no run can be long enough
        return phone.RUN.sub(self._run, text)

    def _run(self, match: re.Match) -> str:
        run = match.group()
        digits = phone.digits(run)
        if len(digits) < phone.MIN_DIGITS or digits in self.keep or phone.DATE.fullmatch(run):
            return run
        return _put_digits(run, self.fake_digits(digits))

    def param(self, key: str, value: str, text: bool) -> str:
        """One form parameter's value, masked (`text`: hide the text too, and with it every
        value but Plivo's metadata)."""
        if key in NUMBER_PARAMS:
            return self.number(value)
        if text:
            return value if key in METADATA_PARAMS else placeholder(value)
        if key.endswith("UUID"):
            return value
        return self.numbers_in(value)

    def dst(self, value: str) -> str:
        """A ``dst`` attribute: numbers joined by ``<``."""
        return "<".join(self.number(part) for part in value.split("<"))


def _put_digits(shape: str, digits: str) -> str:
    """`shape` with its digits replaced, in order, by the ASCII `digits`, each written in the
    script of the digit it replaces (a script's digits 0-9 are consecutive characters)."""
    out, i = [], 0
    for char in shape:
        if char.isdecimal():
            digit = digits[i]
            out.append(digit if char < "\x80" else chr(ord(char) - unicodedata.decimal(char) + int(digit)))
            i += 1
        else:
            out.append(char)
    return "".join(out)


def placeholder(text: str) -> str:
    """A hidden message text: as many characters as it had, all ``x``."""
    return "x" * len(text)


def mask_form(raw: str, masker: Masker, text: bool) -> str:
    """A form-encoded string (a body or a query) with its values masked, still form-encoded.

    Fields whose value does not change are kept byte for byte; a changed value is encoded
    the way Plivo encodes (``+`` for a space, everything else but letters, digits and
    ``_.-~`` percent-escaped). Raises ValueError for a field that is not valid UTF-8.
    """
    if not raw:
        return raw
    parts = raw.split("&")
    for i, part in enumerate(parts):
        key_raw, sep, value_raw = part.partition("=")
        try:
            key = unquote_plus(key_raw, errors="strict")
            value = unquote_plus(value_raw, errors="strict")
        except UnicodeDecodeError:
            raise ValueError("a form field is not valid UTF-8") from None
        masked = masker.param(key, value, text)
        if masked != value:
            parts[i] = f"{key_raw}{sep or '='}{quote_plus(masked, safe='')}"
    return "&".join(parts)


class Named(NamedTuple):
    """What a rules file says about numbers, as digits."""

    keep: frozenset[str]             # the business's own: kept as they are
    prefixes: frozenset[str]         # prefixes of its own numbers (``to: "1415555*"``): kept, the rest faked
    senders: frozenset[str]          # numbers ``from:`` conditions name (customers): masked
    sender_prefixes: frozenset[str]  # prefixes ``from:`` conditions name: masked


def numbers_named(rules_text: str) -> Named:
    """The numbers a rules file's values write (not its comments); a prefix is written with
    a trailing ``*``. Nothing for a file that is not YAML.

    Kept are the numbers under a ``to`` key (``when: {to: ...}``, ``forward: {to: ...}``) and
    runs of 8 digits or more in other values (numbers the business writes in its texts),
    but not the numbers ``from:`` conditions name, unless the business also sends to them.
    """
    import yaml

    try:
        data = yaml.load(rules_text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        data = None
    own, own_prefixes, written, senders, sender_prefixes = set(), set(), set(), set(), set()
    stack: list[tuple[object, str | None]] = [(data, None)]
    while stack:
        value, field = stack.pop()
        if isinstance(value, dict):
            stack.extend((v, k if k in ("to", "from") else field) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, field) for v in value)
        elif isinstance(value, (str, int)) and not isinstance(value, bool):
            if field is None:
                written.update(d for d in (phone.digits(r.group()) for r in phone.RUN.finditer(str(value))
                                           if not phone.DATE.fullmatch(r.group()))
                               if len(d) >= phone.MIN_DIGITS)
                continue
            numbers, prefixes = (own, own_prefixes) if field == "to" else (senders, sender_prefixes)
            for run in _RULE_RUN.findall(str(value)):
                digits = phone.digits(run)
                if run.endswith("*"):
                    prefixes.add(digits)
                elif len(digits) >= 3:
                    numbers.add(digits)
    written = {d for d in written if d not in senders and not d.startswith(tuple(sender_prefixes))}
    return Named(frozenset(own | written), frozenset(own_prefixes), frozenset(senders - own),
                 frozenset(sender_prefixes))


def folder_key(folder: str | Path) -> bytes:
    """The masking key of `folder`, made on first use: every worker and restart gets the same.

    Written whole to a private temporary file first and then linked to its name, which
    fails if another process got there first (then that key is used): no process ever
    reads a half-written key.
    """
    path = Path(folder) / KEY_FILE
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    tmp = Path(folder) / f".mask-key.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(KEY_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another worker made it first: use theirs
    finally:
        tmp.unlink(missing_ok=True)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise ValueError(f"{path} holds {len(key)} bytes, not a {KEY_BYTES}-byte key: remove it to "
                         "make a new one (fakes in recordings made from now on will differ)")
    return key


def digest_of(rules_text: str) -> str:
    """The digest the rules compiler gives this text (to tell whether a file is the one in use)."""
    return hashlib.sha256(rules_text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
