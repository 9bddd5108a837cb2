"""Parse what Plivo sends for an inbound message. Pure: no Flask.

`parse_form` turns a raw form-encoded body or query string into (key, value)
pairs, strictly: invalid UTF-8 or too many fields is an `InboundError`, never a
silent replacement character. `parse_message` picks the fields the service uses
and tolerates every unknown extra parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

#: More fields than this is not a Plivo webhook (it sends about 20).
MAX_FIELDS = 500
#: Plivo's MessageUUIDs are 36 characters; a longer one cannot be kept (and is not Plivo's).
MAX_UUID = 64

FORM_TYPE = "application/x-www-form-urlencoded"

TYPES = ("sms", "mms", "whatsapp")
INTENTS = ("optout", "optin", "help")

_OTHER_TYPE = re.compile(r"[^a-z0-9_-]")
_MEDIA_KEY = re.compile(r"Media([1-9][0-9]{0,2})\Z")
#: Plivo sends numbers as digits with the country code (a short code is digits too).
#: Anything else, '<' above all, would change where a reply goes.
_NUMBER = re.compile(r"\+?[0-9]{1,20}\Z")


class InboundError(Exception):
    """The request is not a well-formed inbound message; `str()` is the short answer."""

    status = 400


@dataclass(slots=True)
class Inbound:
    """One inbound message, as the rules and templates see it."""

    from_: str
    to: str
    uuid: str
    type: str = "sms"
    text: str = ""
    intent: str = ""
    media: tuple[str, ...] = ()
    media_count: int = 0
    params: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def has_media(self) -> bool:
        return bool(self.media) or self.media_count > 0


def _unquote(text: str) -> str:
    if "+" in text:
        text = text.replace("+", " ")
    if "%" in text:
        text = unquote(text, errors="strict")
    return text


def parse_form(raw: bytes | str, *, max_fields: int = MAX_FIELDS) -> list[tuple[str, str]]:
    """Decode `a=1&b=2` strictly as UTF-8; keep blank values and repeated keys.

    What urllib.parse.parse_qsl does with `keep_blank_values`, `errors="strict"`
    and `max_num_fields`, without its per-field overhead (this runs per request).
    """
    if not raw:
        return []
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InboundError("body is not valid UTF-8") from None
    if raw.count("&") >= max_fields:
        raise InboundError(f"too many form fields (more than {max_fields})")
    try:
        if "%26" not in raw and "%3D" not in raw and "%3d" not in raw:
            # No escaped '&' or '=': decoding the whole body first cannot create a
            # separator, so it splits exactly as field-by-field decoding would.
            return [(key, value) for key, _, value in
                    (part.partition("=") for part in _unquote(raw).split("&")) if key or _]
        pairs = []
        for part in raw.split("&"):
            if part:
                key, _, value = part.partition("=")
                pairs.append((_unquote(key), _unquote(value)))
        return pairs
    except UnicodeDecodeError:
        raise InboundError("form values are not valid UTF-8") from None


def check_content_type(content_type: str | None, body: bytes) -> None:
    """A POST body must be form-encoded, as Plivo sends it; an empty body is fine."""
    if not body:
        return
    mimetype = (content_type or "").split(";", 1)[0].strip().lower()
    if mimetype != FORM_TYPE:
        shown = mimetype or "none"
        raise InboundError(f"body must be {FORM_TYPE} (got {shown})")


def _media(params: dict[str, str]) -> tuple[tuple[str, ...], int]:
    try:
        count = int(params.get("MediaCount") or 0)
    except ValueError:
        count = 0
    if count <= 0 and "Media1" not in params:
        return (), 0  # the common case (SMS): no scan of every key
    found = []
    for key, value in params.items():
        m = _MEDIA_KEY.match(key) if key.startswith("Media") else None
        if m and value.strip():
            found.append((int(m.group(1)), value.strip()))
    found.sort()
    return tuple(url for _, url in found), max(count, 0)


def parse_message(pairs: list[tuple[str, str]]) -> Inbound:
    """The inbound message from its parameters; missing From/To/MessageUUID is an error."""
    params = dict(reversed(pairs))  # the first value of a repeated key wins
    missing = [name for name in ("From", "To", "MessageUUID") if not params.get(name, "").strip()]
    if missing:
        raise InboundError("missing " + ", ".join(missing))
    for name in ("From", "To"):
        if not _NUMBER.match(params[name].strip()):
            raise InboundError(f"{name} is not a phone number")
    uuid = params["MessageUUID"].strip()
    if len(uuid) > MAX_UUID or not uuid.isprintable():
        raise InboundError(f"MessageUUID is not an id (printable, at most {MAX_UUID} characters)")
    msg_type = (params.get("Type") or "sms").strip().lower()
    if msg_type not in TYPES:
        msg_type = _OTHER_TYPE.sub("", msg_type)[:16] or "sms"  # a new type Plivo adds: kept, bounded
    intent = (params.get("MessageIntent") or "").strip().lower()
    if msg_type == "sms":
        text = params.get("Text") or params.get("Body") or ""
    else:
        text = params.get("Body") or params.get("Text") or ""
    media, count = _media(params)
    return Inbound(
        from_=params["From"].strip().lstrip("+"),  # digits, as Plivo sends them and opt-outs are kept
        to=params["To"].strip().lstrip("+"),
        uuid=uuid,
        type=msg_type,
        text=text,
        intent=intent if intent in INTENTS else "",
        media=media,
        media_count=count,
        params=params,
    )
