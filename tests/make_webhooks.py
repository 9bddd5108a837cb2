"""Write the synthetic recorded webhooks in tests/webhooks/ (format: docs/recordings.md).

    .venv/bin/python tests/make_webhooks.py [OUT_DIR]

Each recording is a request the way Plivo sends it (form parameters, headers, V2 and V3
signatures made with ``app.signature.sign_headers``) plus the answer the shipped
``rules.yaml`` calls for. The expected answers are written here by hand from docs/rules.md and docs/endpoints.md
and the rules, never taken from the service. Everything is deterministic (UUIDs and
nonces derive from the recording's name, clocks are fixed), so running this again writes
byte-identical files; ``tests/test_webhooks.py`` checks that.
"""

from __future__ import annotations

import base64
import hashlib
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for entry in (str(ROOT), str(HERE)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from webhooks import DIR, dumps  # noqa: E402

from app import smsenc  # noqa: E402  (after the sys.path set-up)
from app.signature import (  # noqa: E402
    HEADER_MA_V2,
    HEADER_MA_V3,
    HEADER_V2,
    HEADER_V2_NONCE,
    HEADER_V3,
    HEADER_V3_NONCE,
    sign_headers,
    v3_signature,
)

#: Made-up auth tokens the synthetic requests are signed with (not secrets).
TOKEN = "SynthRecToken0NotASecret0000000000000000"
OLD_TOKEN = "SynthRecToken0Rotated0Out00000000000000"
AUTH_ID = "MASYNTHETIC0RECORDING"

HOST = "sms.example.com"
URL = f"https://{HOST}/message"
PUBLIC_URL = f"https://{HOST}"
USER_AGENT = "PlivoHttpClient/1.0"
PLIVO_IP = "203.0.113.7"  # documentation range, standing in for Plivo's callback servers

LINE = "14155550100"  # the customer's main number
SPANISH_LINE = "14155550200"  # the number of the spanish-line rule
SENDER = "14155550123"
TEAM = "14155550999"  # where the to-the-team and VIP rules forward
REFUND_TEAM = ("14155550999", "14155550998")

CT_XML = "application/xml; charset=utf-8"
CT_TEXT = "text/plain; charset=utf-8"

# Clocks (rules.yaml works in America/New_York; in November that is UTC-05:00).
MONDAY_10AM = "2026-11-23T10:00:00-05:00"
MONDAY_8PM = "2026-11-23T20:00:00-05:00"
SATURDAY_NOON = "2026-11-28T12:00:00-05:00"
MONDAY_1630_UTC = "2026-11-23T21:30:00+00:00"  # 16:30 in New York: still business hours

THANKS = "Thanks, we got your message. A person will answer soon."
HOURS = "We are open 9am-5pm, Monday to Friday (New York time)."
CLOSED = "Thanks, we got your message. We are closed now and open again at 9am; a person will answer then."
WEEKEND = ("Thanks, we got your message. We are closed for the weekend; a person will answer on Monday "
           "after 9am.")


# --- deterministic ids ----------------------------------------------------------

def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\0".join(parts).encode("utf-8")).digest()


def uuid_for(*parts: str) -> str:
    """A version-4 style UUID derived from `parts` (Plivo's MessageUUIDs look like this)."""
    return str(uuid.UUID(bytes=_digest("uuid", *parts)[:16], version=4))


def nonce_for(name: str) -> str:
    """A 20-digit nonce, like the ones Plivo sends."""
    return f"{int.from_bytes(_digest('nonce', name)[:9], 'big') % 10 ** 20:020d}"


# --- what Plivo sends ----------------------------------------------------------

def plivo_params(name: str, text: str, *, frm: str = SENDER, to: str = LINE, type_: str = "sms",
                 intent: str = "", media: tuple[str, ...] = (), extra: dict | None = None,
                 drop: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """The form parameters of an inbound message, sorted by name (as Plivo sends them)."""
    msg_uuid = uuid_for(name, "message")
    units = smsenc.analyse(text).units if type_ == "sms" else 1
    rate = "0.00000" if type_ == "sms" else "0.00400"
    params = {
        "From": frm,
        "To": to,
        "Type": type_,
        "MessageUUID": msg_uuid,
        "Units": str(max(units, 1)),
        "TotalRate": rate,
        "TotalAmount": f"{float(rate) * max(units, 1):.5f}",
        "MessageIntent": intent,
        "PowerpackUUID": uuid_for("powerpack") if type_ == "sms" else "",
    }
    if type_ == "sms":
        params["Text"] = text
    else:
        params["Body"] = text
    if type_ != "sms":
        params["MediaCount"] = str(len(media))
        for i, url in enumerate(media, 1):
            params[f"Media{i}"] = url
    params.update(extra or {})
    for key in drop:
        del params[key]
    return sorted(params.items())


def media_url(name: str, i: int) -> str:
    return (f"https://api.plivo.com/v1/Account/{AUTH_ID}/Message/{uuid_for(name, 'message')}"
            f"/Media/{uuid_for(name, 'media', str(i))}/")


def signature_headers(name: str, method: str, url: str, params: list, signatures: str,
                      extra_v3_tokens: tuple[str, ...]) -> dict[str, str]:
    """The X-Plivo-Signature headers `signatures` asks for ("both", "v2", "v3" or "none"),
    in the order Plivo sends them; each of `extra_v3_tokens` adds a V3 signature in front."""
    signed = sign_headers(TOKEN, method, url, params, nonce=nonce_for(name))
    for old in extra_v3_tokens:  # token rotation: Plivo signs with each valid token
        sig = v3_signature(old, method, url, params, signed[HEADER_V3_NONCE])
        signed[HEADER_V3] = f"{sig},{signed[HEADER_V3]}"
        signed[HEADER_MA_V3] = f"{sig},{signed[HEADER_MA_V3]}"
    keep = {
        "both": (HEADER_V2, HEADER_MA_V2, HEADER_V2_NONCE, HEADER_V3, HEADER_MA_V3, HEADER_V3_NONCE),
        "v2": (HEADER_V2, HEADER_MA_V2, HEADER_V2_NONCE),
        "v3": (HEADER_V3, HEADER_MA_V3, HEADER_V3_NONCE),
        "none": (),
    }[signatures]
    return {key: signed[key] for key in keep}


def recording(name: str, description: str, params: list[tuple[str, str]], expect: dict, *,
              method: str = "POST", url: str = URL, host: str | None = None,
              scheme: str | None = None, proxy_headers: dict | None = None,
              signatures: str = "both", settings: dict | None = None, now: str = MONDAY_10AM,
              body: bytes | None = None, sign_params: list | None = None,
              extra_v3_tokens: tuple[str, ...] = ()) -> dict:
    """One recording: the request as it reaches the service, signed, and its expected answer.

    signatures: "both" (V2, Ma-V2, V3, Ma-V3, as Plivo sends them), "v2", "v3" or "none".
    body: raw bytes to send instead of the encoded `params` (tampering, bad encodings).
    sign_params: the parameters to sign instead of `params` (tampering).
    """
    if method == "GET":
        url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
        raw = b""
    else:
        raw = urlencode(params).encode("ascii") if body is None else body

    headers = {"Host": host or url.split("/")[2], "User-Agent": USER_AGENT}
    if method != "GET":
        headers["Content-Length"] = str(len(raw))
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    headers.update(signature_headers(name, method, url, params if sign_params is None else sign_params,
                                     signatures, extra_v3_tokens))
    headers["Accept-Encoding"] = "gzip"
    headers.update(proxy_headers or {})

    rec: dict = {"description": description, "method": method, "url": url}
    if scheme:
        rec["scheme"] = scheme
    rec["headers"] = headers
    try:
        rec["body"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        rec["body_base64"] = base64.b64encode(raw).decode("ascii")
    rec["token"] = TOKEN
    if settings:
        rec["settings"] = settings
    rec["now"] = now
    rec["expect"] = expect
    return rec


# --- what the service answers --------------------------------------------------

def msg(text: str, dst: str | tuple[str, ...] = SENDER, src: str = LINE,
        callback: str | None = None) -> dict:
    """One expected <Message>."""
    m = {"src": src, "dst": dst if isinstance(dst, str) else "<".join(dst), "type": "sms"}
    if callback:
        m["callbackUrl"] = callback
        m["callbackMethod"] = "POST"
    m["text"] = text
    return m


def xml(*messages: dict) -> dict:
    return {"status": 200, "content_type": CT_XML, "messages": list(messages)}


def rejected(status: int, body: str) -> dict:
    return {"status": status, "content_type": CT_TEXT, "body": body}


def catch_all(text: str, frm: str = SENDER, to: str = LINE, callback: str | None = None,
              reply: str = THANKS) -> list[dict]:
    """A message no special rule answers: the to-the-team forward, then the one reply
    (everything-else's in business hours, `reply` otherwise).

    `callback`, when given, is the delivery report URL; each text adds `.N` (its place) to it.
    """
    cb = [f"{callback}.{i}" if callback else None for i in range(2)]
    return [msg(f"From {frm}: {text}", TEAM, to, cb[0]), msg(reply, frm, to, cb[1])]


def _long_text(sentence: str, limit: int) -> str:
    """`sentence` repeated, cut at the last space so that it holds at most `limit` characters."""
    text = " ".join([sentence] * (limit // len(sentence) + 2))
    return text[:text.rindex(" ", 0, limit + 1)]


GSM_SENTENCE = ("Hello, I ordered a set of four garden chairs on the 2nd and only three arrived, "
                "one of them with a cracked leg.")
UCS2_SENTENCE = "Здравствуйте! Я заказал четыре садовых стула, а пришли только три, один сломан."
TEXT_400 = _long_text(GSM_SENTENCE, 400)
TEXT_1600 = _long_text(GSM_SENTENCE, smsenc.MAX_GSM7)
TEXT_737 = _long_text(UCS2_SENTENCE, smsenc.MAX_UCS2)


# --- the recordings ------------------------------------------------------------

Add = Callable[..., None]
"""``add(name, description, params, expect, **recording_options)``: one more recording."""


def build() -> dict[str, dict]:
    """Every synthetic recording, by file stem (in the order of the groups below)."""
    out: dict[str, dict] = {}

    def add(name: str, description: str, params, expect, **kw) -> None:
        assert name not in out, name
        out[name] = recording(name, description, params, expect, **kw)

    for group in (_text_rules, _clock_rules, _forward_and_silent_rules, _unusual_characters,
                  _long_texts, _other_message_types, _message_intents, _urls_and_signatures,
                  _proxies_and_clocks, _rejected_requests):
        group(add)
    return out


def _text_rules(add: Add) -> None:
    """Rules of the shipped rules.yaml that match the text: keyword, regex, exact text."""
    n = "sms-keyword-hours"
    add(n, "SMS keyword 'Hours?' (punctuation ignored) answered by the hours rule",
        plivo_params(n, "Hours?"), xml(msg(HOURS)))

    n = "sms-regex-order-status"
    add(n, "SMS 'Order #4521, where is it?' matched by the order-status regex; match.order in the reply",
        plivo_params(n, "Order #4521, where is it?"),
        xml(msg("Order 4521: see where it is at https://acme.example/o/4521")))

    n = "sms-exact-text-address"
    add(n, "SMS whose whole text, trimmed and spaces collapsed, is 'where are you located?': address rule",
        plivo_params(n, "  Where are   you located? "),
        xml(msg("Acme, 1 Market St, San Francisco, CA 94105.")))


def _clock_rules(add: Add) -> None:
    """A message no special rule answers, in business hours, after hours and at the weekend."""
    n = "sms-catch-all-business-hours"
    add(n, "SMS matching no special rule on a Monday at 10:00 New York: the forward to the team "
           "(to-the-team, continue), then the one business-hours reply (everything-else)",
        plivo_params(n, "Is the blue model back in stock?"),
        xml(*catch_all("Is the blue model back in stock?")), now=MONDAY_10AM)

    n = "sms-after-hours"
    add(n, "The same kind of SMS on a Monday at 20:00 New York: the forward to the team, then "
           "the after-hours reply instead of the business-hours one",
        plivo_params(n, "Is the blue model back in stock?"),
        xml(*catch_all("Is the blue model back in stock?", reply=CLOSED)), now=MONDAY_8PM)

    n = "sms-weekend"
    add(n, "SMS on a Saturday at noon New York: the forward to the team, then the weekend reply "
           "(one text, not three)",
        plivo_params(n, "Anyone there?"), xml(*catch_all("Anyone there?", reply=WEEKEND)),
        now=SATURDAY_NOON)


def _forward_and_silent_rules(add: Add) -> None:
    """The VIP rule (by sender prefix), the refund rule (two forwards) and the silent rule."""
    n = "sms-vip-prefix"
    add(n, "SMS from 14155550777, matched by the VIP rule's prefix 1415555077*: reply to the "
           "sender, then the forward to the account manager",
        plivo_params(n, "Can you call me back today?", frm="14155550777"),
        xml(msg("Thanks, 14155550777! Your account manager has your message.", "14155550777"),
            msg("VIP 14155550777: Can you call me back today?", TEAM)))

    n = "sms-refund-two-forwards"
    add(n, "SMS containing 'money back': reply, and one forward to two numbers (dst joined by '<') "
           "with the default forward text",
        plivo_params(n, "I want my money back for order 881"),
        xml(msg("Sorry to hear that. A person will contact you within one business day."),
            msg(f"From {SENDER}: I want my money back for order 881", REFUND_TEAM)))

    n = "sms-auto-reply-silent"
    add(n, "SMS that is someone's auto-reply ('out of office'): silent rule, empty <Response/>",
        plivo_params(n, "Automatic reply: I am out of office until Monday."), xml())


def _unusual_characters(add: Add) -> None:
    """Texts beyond ASCII (the Spanish line's UCS-2 reply, CJK, emoji) and control characters."""
    n = "sms-spanish-line-unicode"
    add(n, "SMS 'Hola, ¿me ayudan?' to the Spanish line (to rule written '+1 (415) 555-0200'): "
           "the forward to the team (to-the-team), then a UCS-2 reply with '¡' and 'á' that names "
           "the business hours",
        plivo_params(n, "Hola, ¿me ayudan?", to=SPANISH_LINE),
        xml(msg(f"From {SENDER}: Hola, ¿me ayudan?", TEAM, SPANISH_LINE),
            msg("¡Hola! Un agente le responderá lun-vie, 9-17 h (hora de Nueva York).", src=SPANISH_LINE)))

    n = "sms-unicode-cjk"
    text = "Café crème? 你好，请问你们几点开门？"
    add(n, "SMS with accents and CJK characters: carried unchanged into the forward",
        plivo_params(n, text), xml(*catch_all(text)))

    n = "sms-emoji"
    text = "Love the new chairs 😍👍🏽"
    add(n, "SMS with emoji (characters outside the BMP, one with a skin-tone modifier): "
           "carried unchanged into the forward",
        plivo_params(n, text), xml(*catch_all(text)))

    n = "sms-control-characters"
    add(n, "SMS with characters XML 1.0 cannot hold (NUL, BEL, ESC): removed from the forward",
        plivo_params(n, "Hello\x00 are you\x07 there?\x1b"), xml(*catch_all("Hello are you there?")))


def _long_texts(add: Add) -> None:
    """A multi-unit SMS, and forwards cut at the GSM-7 and the UCS-2 limits."""
    n = "sms-multi-unit-400"
    add(n, f"A {len(TEXT_400)}-character SMS (3 units): the forward carries it whole in one Message",
        plivo_params(n, TEXT_400), xml(*catch_all(TEXT_400)))

    # A forward too long for one Message is cut to the encoding's limit, ending included.
    for n, text, kind, limit, ending, note in (
            ("sms-long-forward-cut-gsm7", TEXT_1600, "GSM-7 SMS (11 units)", smsenc.MAX_GSM7, "...",
             " (it stays GSM-7)"),
            ("sms-long-forward-cut-ucs2", TEXT_737, "Cyrillic (UCS-2) SMS", smsenc.MAX_UCS2, "\u2026", "")):
        forward = f"From {SENDER}: {text}"
        add(n, f"A {len(text)}-character {kind}: its {len(forward)}-character forward exceeds {limit:,} "
               f"and is cut to one Message, ending in '{ending}'{note}",
            plivo_params(n, text),
            xml(msg(forward[:limit - len(ending)].rstrip() + ending, TEAM), msg(THANKS)))


def _other_message_types(add: Add) -> None:
    """An MMS with two pictures, and a WhatsApp message (answered with no XML)."""
    n = "mms-photo"
    add(n, "MMS with Body (not Text), MediaCount=2, Media1 and Media2: the forward to the team "
           "with the pictures' URLs in its text (to-the-team), then the photo rule's reply",
        plivo_params(n, "Here is the box it came in", type_="mms",
                     media=(media_url(n, 1), media_url(n, 2))),
        xml(msg(f"From {SENDER}: Here is the box it came in {media_url(n, 1)} {media_url(n, 2)}", TEAM),
            msg("Thanks for the picture! We received 2 file(s); a person will look at them in business "
                "hours, 9am-5pm Monday to Friday (New York time).")))

    n = "whatsapp-no-xml"
    ctx = '{"MessageUUID":"%s","From":"%s","To":"%s"}' % (uuid_for(n, "context"), LINE, SENDER)
    add(n, "WhatsApp 'Hours?' (hours rule matches) with ContentType and Context: Plivo takes no "
           "XML for WhatsApp, so the answer is an empty <Response/>",
        plivo_params(n, "Hours?", type_="whatsapp", extra={"ContentType": "text", "Context": ctx}),
        xml())


def _message_intents(add: Add) -> None:
    """MessageIntent: the built-in opt-out, an opt-in with nothing to undo, and help."""
    n = "intent-optout"
    add(n, "'STOP' with MessageIntent=optout: the built-in opt-out, confirmed once",
        plivo_params(n, "STOP", intent="optout"),
        xml(msg("You are unsubscribed. Reply START to resubscribe.")))

    n = "intent-optin"
    add(n, "'START' with MessageIntent=optin from a sender who never opted out: an ordinary "
           "message for the rules (the built-in opt-in acts only after an opt-out)",
        plivo_params(n, "START", intent="optin"), xml(*catch_all("START")))

    n = "intent-help"
    add(n, "'HELP' with MessageIntent=help: the help reply of the rules' compliance section",
        plivo_params(n, "HELP", intent="help"),
        xml(msg("Acme support: help@acme.example or call 415-555-0100. Msg&data rates may apply. "
                "Reply STOP to unsubscribe.")))


def _urls_and_signatures(add: Add) -> None:
    """How the request arrives: GET, a URL with port and query, V2 or V3 only, rotated tokens."""
    n = "get-query-string"
    add(n, "GET with the parameters in the query string (signed, V3 covering the query): "
           "order-status rule",
        plivo_params(n, "order 98765"),
        xml(msg("Order 98765: see where it is at https://acme.example/o/98765")), method="GET")

    n = "post-query-port-trailing-slash"
    add(n, "POST to a message URL with a port, a trailing slash and a query "
           "(https://sms.example.com:8443/message/?tenant=acme): all signed as called",
        plivo_params(n, "open on Sunday?"), xml(msg(HOURS)),
        url=f"https://{HOST}:8443/message/?tenant=acme")

    n = "signature-v3-only"
    add(n, "Signed with X-Plivo-Signature-V3 and Ma-V3 only (no V2 headers)",
        plivo_params(n, "opening times"), xml(msg(HOURS)), signatures="v3")

    n = "signature-v2-only"
    add(n, "Signed with X-Plivo-Signature-V2 and Ma-V2 only (no V3 headers)",
        plivo_params(n, "where are you"), xml(msg("Acme, 1 Market St, San Francisco, CA 94105.")),
        signatures="v2")

    n = "signature-v3-rotated-tokens"
    add(n, "V3 headers holding two comma-separated signatures (old and current token, during "
           "rotation); the current one matches",
        plivo_params(n, "hours"), xml(msg(HOURS)), extra_v3_tokens=(OLD_TOKEN,))


def _proxies_and_clocks(add: Add) -> None:
    """Behind a reverse proxy, with PUBLIC_URL set, and with the clock recorded in UTC."""
    n = "reverse-proxy"
    add(n, "Through a reverse proxy ending TLS (TRUSTED_PROXIES=1, no PUBLIC_URL): internal Host "
           "10.0.0.5:8000 over http, X-Forwarded-Proto/Host give the URL Plivo signed",
        plivo_params(n, "Hours?"), xml(msg(HOURS)),
        host="10.0.0.5:8000", scheme="http",
        proxy_headers={"X-Forwarded-For": PLIVO_IP, "X-Forwarded-Proto": "https",
                       "X-Forwarded-Host": HOST, "X-Real-Ip": PLIVO_IP, "Connection": "close"},
        settings={"TRUSTED_PROXIES": 1})

    n = "public-url-callbacks"
    cb = f"{PUBLIC_URL}/status?ref={uuid_for(n, 'message')}"
    add(n, "PUBLIC_URL set (proxy headers not trusted): signatures checked against PUBLIC_URL + "
           "path, and every Message asks for delivery reports at PUBLIC_URL/status",
        plivo_params(n, "Do you ship to Canada?"),
        xml(*catch_all("Do you ship to Canada?", callback=cb)),
        host="responder:8000", scheme="http",
        proxy_headers={"X-Forwarded-For": PLIVO_IP, "X-Forwarded-Proto": "https",
                       "X-Forwarded-Host": HOST},
        settings={"PUBLIC_URL": PUBLIC_URL})

    n = "clock-in-utc"
    add(n, "The clock recorded in UTC (21:30Z = 16:30 Monday in New York, business hours): "
           "time rules must use the rules' timezone, so the business-hours reply",
        plivo_params(n, "Is the blue model back in stock?"),
        xml(*catch_all("Is the blue model back in stock?")), now=MONDAY_1630_UTC)


def _rejected_requests(add: Add) -> None:
    """Requests the service refuses: tampered with, unsigned, without To, not UTF-8."""
    n = "rejected-tampered-body"
    signed = plivo_params(n, "Hours?")
    tampered = [(k, "Send me a refund" if k == "Text" else v) for k, v in signed]
    add(n, "Text changed after Plivo signed the request (V2 still valid, V3 decides): 403",
        tampered, rejected(403, "invalid Plivo signature\n"), sign_params=signed)

    n = "rejected-unsigned"
    add(n, "No X-Plivo-Signature headers at all: 403",
        plivo_params(n, "Hours?"), rejected(403, "missing Plivo signature\n"), signatures="none")

    n = "rejected-missing-to"
    add(n, "Correctly signed but without the To parameter: 400",
        plivo_params(n, "Hours?", drop=("To",)), rejected(400, "missing To\n"))

    n = "rejected-body-not-utf8"
    params = plivo_params(n, "Café")
    raw = urlencode(params).replace("Caf%C3%A9", "Caf\udce9").encode("ascii", "surrogateescape")
    add(n, "A body with a raw Latin-1 byte (not UTF-8, so stored as body_base64): 400",
        params, rejected(400, "body is not valid UTF-8\n"), body=raw, signatures="v2")


def write(directory: Path = DIR) -> list[Path]:
    """Write every recording into `directory`; return the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rec in build().items():
        path = directory / f"{name}.json"
        path.write_bytes(dumps(rec).encode("utf-8"))
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    if len(argv) > 2 or (len(argv) == 2 and argv[1].startswith("-")):
        print(__doc__.split("\n\n")[1].rstrip(), file=sys.stderr)
        return 2
    directory = Path(argv[1]) if len(argv) > 1 else DIR
    for path in write(directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
