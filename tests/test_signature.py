"""Tests for app.signature: known answers, failure modes, and a cross-check
against the official `plivo` SDK (a test-only oracle)."""

import random
from urllib.parse import parse_qs, quote, quote_plus, urlparse

import pytest

from app.signature import (
    HEADER_MA_V2,
    HEADER_MA_V3,
    HEADER_V2,
    HEADER_V2_NONCE,
    HEADER_V3,
    HEADER_V3_NONCE,
    BadSignature,
    MissingNonce,
    MissingSignature,
    SignatureError,
    request_digest,
    sign_headers,
    v2_signature,
    v3_signature,
    verify,
)

TOKEN = "my_auth_token"
OTHER = "MAXXXXXXXXXXXXXXXXXX_other_token"
NONCE = "12345"
URL = "https://answer.url/message"
PARAMS = [("From", "14155550123"), ("To", "14155550100"), ("Text", "hello"),
          ("MessageUUID", "0936ec98-7c4c-11e3-9a3b-1231400165f3"), ("Type", "sms")]


def v3_only(token=TOKEN, method="POST", url=URL, params=PARAMS, nonce=NONCE):
    return {HEADER_V3: v3_signature(token, method, url, params, nonce), HEADER_V3_NONCE: nonce}


def v2_only(token=TOKEN, url=URL, nonce=NONCE):
    return {HEADER_V2: v2_signature(token, url, nonce), HEADER_V2_NONCE: nonce}


# --- known answers ------------------------------------------------------------

def test_v2_known_answer():
    assert v2_signature("my_auth_token", "https://answer.url", "12345") == \
        "ehV3IKhLysWBxC1sy8INm0qGoQYdYsHwuoKjsX7FsXc="


def test_v2_ignores_query_and_fragment_but_not_port_or_slash():
    base = v2_signature(TOKEN, "https://answer.url/m", NONCE)
    assert v2_signature(TOKEN, "https://answer.url/m?a=1#f", NONCE) == base
    assert v2_signature(TOKEN, "https://answer.url/m/", NONCE) != base
    assert v2_signature(TOKEN, "https://answer.url:443/m", NONCE) != base


# Computed once with plivo 4.63.0 (signature_v3.construct_*_url + get_signature_v3),
# token "my_auth_token", nonce "12345". The string signed is shown in comments.
V3_VECTORS = [
    # https://answer.url/message?From=14155550123&Text=hi there&To=14155550100&Type=sms.12345
    ("GET", "https://answer.url/message?To=14155550100&From=14155550123&Text=hi+there&Type=sms",
     None, "u4Mm8fU1sTtg5BqWGr06nwZR6InIlWbDklA9QO1Bvak="),
    # https://answer.url/message?From14155550123MessageUUIDabc-123TextHello, world!To14155550100Typesms.12345
    ("POST", "https://answer.url/message",
     {"From": "14155550123", "To": "14155550100", "Text": "Hello, world!",
      "MessageUUID": "abc-123", "Type": "sms"},
     "83RdBWV3DiIuLYQKt+/6+BSMv3SpGWj1GqI7dbcuEuk="),
    # https://answer.url/message?b=2&tenant=acme.From1Textx.12345
    ("POST", "https://answer.url/message?tenant=acme&b=2", {"Text": "x", "From": "1"},
     "SwcE/HehFPOLXyMeY2WWDGwXVQ6eGTzuTXj63TeJfxs="),
    # https://answer.url/message?a=&a=1&a=3&b=2&c=.12345
    ("GET", "https://answer.url/message?b=2&a=3&a=1&a=&c", None,
     "VKjiwe+BYpFF2xkLSFWgKy85Fto+h9ADug1cIiaJRT0="),
    # https://answer.url/message?k=a&k=z.A1Mediahttps://m/1Mediahttps://m/2.12345
    ("POST", "https://answer.url/message?k=z&k=a",
     [("Media", "https://m/2"), ("A", "1"), ("Media", "https://m/1")],
     "gw+vkRFYuZHKNluwjJvpH/P5lkAG+n5Vnu5zpZ8THv4="),
    # https://answer.url/message?Textcafé 中文 😀éü.12345
    ("POST", "https://answer.url/message", {"Text": "café 中文 😀", "é": "ü"},
     "tMf/TWPOFVMepBoy8YEoOrAWBJ2Cl8zTBo+bzd2v2YI="),
    # https://answer.url:8443/message/?Texthi.12345
    ("POST", "https://answer.url:8443/message/", {"Text": "hi"},
     "Ff9mbeKl42j9tpqn71ioCn8ZJNNAPuYvzUzwmoXS030="),
    # https://answer.url:8443/message/?x=1.12345
    ("GET", "https://answer.url:8443/message/?x=1", None,
     "4g4VNnVz3zzqGidnKBvSj8CRmPkzHGcKKhqLRjJy84w="),
    # a POST with one (empty) parameter still gets its "?": https://answer.url/message?.12345
    ("POST", "https://answer.url/message", {"": ""},
     "LfaYLdYqLhz0iQFX0l3t83sV9qRoBG7ZtLohQSzurKU="),
    # Non-ASCII in the URL query: the SDK raises here; UTF-8 like parse_qs on str.
    # https://answer.url/message?From=1&Text=café 中文&e=😀.12345
    ("GET", "https://answer.url/message?Text=caf%C3%A9+%E4%B8%AD%E6%96%87&From=1&e=%F0%9F%98%80",
     None, "QJCzYeFTcyJuobAArpjFCk7Iw/qx/F3fKU9XKxesRoY="),
]


@pytest.mark.parametrize("method,url,params,expected", V3_VECTORS)
def test_v3_known_answers(method, url, params, expected):
    assert v3_signature(TOKEN, method, url, params, NONCE) == expected
    headers = {HEADER_V3: expected, HEADER_V3_NONCE: NONCE}
    assert verify([TOKEN], method, url, headers, params or ()) == "V3"


def test_v3_method_is_case_insensitive_and_get_ignores_params():
    url = "https://answer.url/message?a=1"
    get = v3_signature(TOKEN, "GET", url, None, NONCE)
    assert v3_signature(TOKEN, "get", url, {"x": "y"}, NONCE) == get
    assert v3_signature(TOKEN, "post", url, {"x": "y"}, NONCE) == \
        v3_signature(TOKEN, "POST", url, {"x": "y"}, NONCE)


def test_v3_post_without_params_signs_like_get():
    url = "https://answer.url/message?a=1"
    assert v3_signature(TOKEN, "POST", url, (), NONCE) == v3_signature(TOKEN, "GET", url, (), NONCE)


def test_v3_post_key_without_values_still_adds_question_mark():
    # plivo tests len(params), not the text they produce: same string as {"": ""}
    assert v3_signature(TOKEN, "POST", URL, {"k": []}, NONCE) == \
        "LfaYLdYqLhz0iQFX0l3t83sV9qRoBG7ZtLohQSzurKU="


def test_v3_params_forms_are_equivalent():
    pairs = [("b", "2"), ("a", "x"), ("b", "1")]
    as_map = {"a": "x", "b": ["1", "2"]}
    one = v3_signature(TOKEN, "POST", URL, pairs, NONCE)
    assert v3_signature(TOKEN, "POST", URL, as_map, NONCE) == one
    assert v3_signature(TOKEN, "POST", URL, iter(pairs), NONCE) == one
    datastructures = pytest.importorskip("werkzeug.datastructures")
    assert v3_signature(TOKEN, "POST", URL, datastructures.MultiDict(pairs), NONCE) == one


def test_v3_url_quirks():
    # urlparse drops ";params" of the last path segment and the fragment,
    # lower-cases the scheme; "+" and "%20" in the query are the same space.
    plain = v3_signature(TOKEN, "GET", "https://answer.url/message?a=b c", None, NONCE)
    assert v3_signature(TOKEN, "GET", "https://answer.url/message;v=1?a=b+c", None, NONCE) == plain
    assert v3_signature(TOKEN, "GET", "HTTPS://answer.url/message?a=b%20c#frag", None, NONCE) == plain
    # but the host is kept as written
    assert v3_signature(TOKEN, "GET", "https://Answer.url/message?a=b c", None, NONCE) != plain


def test_sign_headers_round_trip():
    headers = sign_headers(TOKEN, "POST", URL, PARAMS)
    assert set(headers) == {HEADER_V2, HEADER_MA_V2, HEADER_V2_NONCE,
                            HEADER_V3, HEADER_MA_V3, HEADER_V3_NONCE}
    nonce = headers[HEADER_V3_NONCE]
    assert nonce.isdigit() and len(nonce) == 20
    assert headers[HEADER_V2] == headers[HEADER_MA_V2] == v2_signature(TOKEN, URL, nonce)
    assert headers[HEADER_V3] == headers[HEADER_MA_V3]
    assert verify([TOKEN], "POST", URL, headers, PARAMS) == "V3"
    assert sign_headers(TOKEN, "POST", URL, PARAMS)[HEADER_V3_NONCE] != nonce
    fixed = sign_headers(TOKEN, "GET", URL + "?a=1", nonce="777")
    assert fixed[HEADER_V2_NONCE] == fixed[HEADER_V3_NONCE] == "777"


# --- verify: what matches ---------------------------------------------------------

def test_verify_v2_and_ma_variants():
    assert verify([TOKEN], "POST", URL, v2_only(), PARAMS) == "V2"
    ma2 = {HEADER_MA_V2: v2_signature(TOKEN, URL, NONCE), HEADER_V2_NONCE: NONCE}
    assert verify([TOKEN], "POST", URL, ma2, PARAMS) == "Ma-V2"
    ma3 = {HEADER_MA_V3: v3_signature(TOKEN, "POST", URL, PARAMS, NONCE), HEADER_V3_NONCE: NONCE}
    assert verify([TOKEN], "POST", URL, ma3, PARAMS) == "Ma-V3"


def test_subaccount_v3_wrong_but_main_account_ma_v3_right():
    headers = {HEADER_V3: v3_signature("subaccount", "POST", URL, PARAMS, NONCE),
               HEADER_MA_V3: v3_signature(TOKEN, "POST", URL, PARAMS, NONCE),
               HEADER_V3_NONCE: NONCE}
    assert verify([TOKEN], "POST", URL, headers, PARAMS) == "Ma-V3"


def test_comma_list_with_the_right_one_among_wrong_ones():
    good = v3_signature(TOKEN, "POST", URL, PARAMS, NONCE)
    wrong = v3_signature(OTHER, "POST", URL, PARAMS, NONCE)
    headers = {HEADER_V3: f"{wrong}, bogus ,{good} ,", HEADER_V3_NONCE: NONCE}
    assert verify([TOKEN], "POST", URL, headers, PARAMS) == "V3"


def test_several_tokens_second_matches():
    assert verify(["old-token", TOKEN], "POST", URL, v3_only(), PARAMS) == "V3"
    assert verify(("old-token", TOKEN), "POST", URL, v2_only(), PARAMS) == "V2"


def test_header_names_are_case_insensitive():
    headers = {k.lower(): v for k, v in v3_only().items()}
    assert verify([TOKEN], "POST", URL, headers, PARAMS) == "V3"
    headers = {k.upper(): v for k, v in v2_only().items()}
    assert verify([TOKEN], "POST", URL, headers, PARAMS) == "V2"
    datastructures = pytest.importorskip("werkzeug.datastructures")
    assert verify([TOKEN], "POST", URL, datastructures.Headers(v3_only()), PARAMS) == "V3"


def test_repeated_v3_headers_are_all_considered():
    datastructures = pytest.importorskip("werkzeug.datastructures")
    headers = datastructures.Headers()
    headers.add(HEADER_V3, v3_signature(OTHER, "POST", URL, PARAMS, NONCE))
    headers.add(HEADER_V3, v3_signature(TOKEN, "POST", URL, PARAMS, NONCE))
    headers.add(HEADER_V3_NONCE, NONCE)
    assert verify([TOKEN], "POST", URL, headers, PARAMS) == "V3"


def test_single_token_string_is_one_token():
    assert verify(TOKEN, "POST", URL, v3_only(), PARAMS) == "V3"


# --- verify: failure modes -------------------------------------------------------

def test_no_header():
    with pytest.raises(MissingSignature) as err:
        verify([TOKEN], "POST", URL, {"Content-Type": "x"}, PARAMS)
    assert err.value.present == ()
    assert URL in str(err.value)


def test_v2_without_nonce():
    with pytest.raises(MissingNonce):
        verify([TOKEN], "POST", URL, {HEADER_V2: v2_signature(TOKEN, URL, NONCE)}, PARAMS)
    with pytest.raises(MissingNonce):
        verify([TOKEN], "POST", URL, {**v2_only(), HEADER_V2_NONCE: ""}, PARAMS)


def test_v3_without_nonce():
    headers = v3_only()
    del headers[HEADER_V3_NONCE]
    headers[HEADER_V2_NONCE] = NONCE  # the V2 nonce does not stand in for it
    with pytest.raises(MissingNonce) as err:
        verify([TOKEN], "POST", URL, headers, PARAMS)
    assert HEADER_V3 in str(err.value)


def test_wrong_v2():
    headers = {**v2_only(), HEADER_V2: v2_signature(TOKEN, URL, "other-nonce")}
    with pytest.raises(BadSignature):
        verify([TOKEN], "POST", URL, headers, PARAMS)


def test_wrong_v3_with_correct_v2_is_still_rejected():
    headers = {**v2_only(), HEADER_V3: v3_signature(OTHER, "POST", URL, PARAMS, NONCE),
               HEADER_V3_NONCE: NONCE}
    with pytest.raises(BadSignature):
        verify([TOKEN], "POST", URL, headers, PARAMS)
    # and a V3 header without its nonce does not fall back either
    del headers[HEADER_V3_NONCE]
    with pytest.raises(MissingNonce):
        verify([TOKEN], "POST", URL, headers, PARAMS)


def test_wrong_token():
    with pytest.raises(BadSignature):
        verify([OTHER], "POST", URL, v3_only(), PARAMS)
    with pytest.raises(BadSignature):
        verify([OTHER, "another"], "POST", URL, v2_only(), PARAMS)


@pytest.mark.parametrize("tampered", [
    PARAMS[:-1] + [("Type", "mms")],                  # changed value
    PARAMS + [("Extra", "1")],                        # added parameter
    PARAMS[1:],                                       # removed parameter
    PARAMS + [("Text", "hello")],                     # repeated parameter
    [(k, v) for k, v in PARAMS] + [("Text", "")],     # added blank value
])
def test_tampered_param(tampered):
    with pytest.raises(BadSignature):
        verify([TOKEN], "POST", URL, v3_only(), tampered)


@pytest.mark.parametrize("called", [
    "https://answer.url/message/",          # trailing slash
    "https://answer.url:443/message",       # explicit port
    "http://answer.url/message",            # scheme
    "https://answer.url/messages",          # path
    "https://evil.url/message",             # host
    "https://answer.url/message?x=1",       # added query
])
def test_tampered_url(called):
    with pytest.raises(BadSignature):
        verify([TOKEN], "POST", called, v3_only(), PARAMS)
    if "?" not in called:  # V2 does not cover the query
        with pytest.raises(BadSignature):
            verify([TOKEN], "POST", called, v2_only(), PARAMS)


def test_tampered_query_on_get():
    url = URL + "?From=1&Text=hi"
    headers = v3_only(method="GET", url=url, params=None)
    assert verify([TOKEN], "GET", url, headers) == "V3"
    with pytest.raises(BadSignature):
        verify([TOKEN], "GET", URL + "?From=1&Text=ho", headers)
    with pytest.raises(BadSignature):
        verify([TOKEN], "POST", url, headers, [("From", "1")])


@pytest.mark.parametrize("header", [HEADER_V3, HEADER_MA_V3, HEADER_V2, HEADER_MA_V2])
def test_empty_header_value(header):
    nonce_header = HEADER_V3_NONCE if "V3" in header else HEADER_V2_NONCE
    with pytest.raises(BadSignature):
        verify([TOKEN], "POST", URL, {header: "", nonce_header: NONCE}, PARAMS)
    with pytest.raises(BadSignature):
        verify([TOKEN], "POST", URL, {header: " , ,", nonce_header: NONCE}, PARAMS)


def test_empty_v3_header_does_not_fall_back_to_v2():
    with pytest.raises(BadSignature):
        verify([TOKEN], "POST", URL, {**v2_only(), HEADER_V3: "", HEADER_V3_NONCE: NONCE}, PARAMS)


def test_non_ascii_header_value_is_rejected_not_crashing():
    with pytest.raises(BadSignature):
        verify([TOKEN], "POST", URL, {HEADER_V3: "é\udcff", HEADER_V3_NONCE: NONCE}, PARAMS)


def test_unparseable_url_is_a_bad_signature():
    with pytest.raises(BadSignature):
        verify([TOKEN], "POST", "https://[::1/message", v3_only(), PARAMS)


@pytest.mark.parametrize("tokens", [[], (), [""], [TOKEN, ""], [None]])
def test_bad_token_configuration_is_a_programming_error(tokens):
    with pytest.raises(ValueError):
        verify(tokens, "POST", URL, v3_only(), PARAMS)


def test_errors_are_signature_errors():
    for cls in (MissingSignature, MissingNonce, BadSignature):
        assert issubclass(cls, SignatureError)


def test_error_text_names_url_and_headers_but_no_secrets():
    url = "https://answer.url/message?tenant=acme"
    good = [v3_signature(t, "POST", url, PARAMS, NONCE) for t in (TOKEN, OTHER)]
    good += [v2_signature(t, url, NONCE) for t in (TOKEN, OTHER)]
    headers = {HEADER_V3: "bogus", HEADER_V3_NONCE: NONCE, HEADER_V2: "bogus2",
               HEADER_V2_NONCE: NONCE}
    with pytest.raises(BadSignature) as err:
        verify([TOKEN, OTHER], "POST", url, headers, PARAMS)
    exc = err.value
    text = str(exc)
    assert "\n" not in text
    assert text.startswith("bad signature (")
    assert url in text and exc.url == url
    assert HEADER_V3 in text and HEADER_V2 in text
    assert exc.present == (HEADER_V3, HEADER_V3_NONCE, HEADER_V2, HEADER_V2_NONCE)
    everything = text + repr(exc) + repr(exc.args) + repr(vars(exc))
    for secret in [TOKEN, OTHER] + good:
        assert secret not in everything


def test_error_str_format():
    exc = BadSignature("bad signature", "https://x/message", (HEADER_V3,))
    assert str(exc) == "bad signature (X-Plivo-Signature-V3 present; checked https://x/message)"
    import pickle
    again = pickle.loads(pickle.dumps(exc))
    assert (again.reason, again.url, again.present) == (exc.reason, exc.url, exc.present)


# --- cross-check against the official SDK ------------------------------------------

ASCII_TEXT = ["", "a", "hi there", "a&b", "x=y", "1+1", "50%", "a.b", "?", "~_-", "O'Neil", "  "]
WIDE_TEXT = ["é", "café", "中文", "😀", "naïve 😀 中文", "Ünïcödé"]
KEYS = ["From", "To", "Text", "Type", "a", "b", "A", "Media1", "x y", "k&", ""]


def _encode_query(rng, pairs):
    parts = []
    for key, value in pairs:
        encode = rng.choice([quote_plus, lambda s: quote(s, safe=""), lambda s: quote(s, safe="/ ")])
        if " " in key + value and encode is not quote_plus:
            encode = quote_plus
        form = rng.random()
        if value == "" and form < 0.3:
            parts.append(encode(key))               # "key" with no "="
        else:
            parts.append(f"{encode(key)}={encode(value)}")
    if parts and rng.random() < 0.2:
        parts.insert(rng.randrange(len(parts)), "")  # stray "&&"
    return "&".join(parts)


def _pairs(rng, texts, n_max):
    keys = KEYS + [t for t in texts if t and t not in ASCII_TEXT]
    pairs = [(rng.choice(keys), rng.choice(texts)) for _ in range(rng.randint(0, n_max))]
    if pairs and rng.random() < 0.4:  # a repeated key
        pairs.append((pairs[0][0], rng.choice(texts)))
    return [(k, v) for k, v in pairs if not (k == "" and v == "")] if rng.random() < 0.5 else pairs


def _case(rng, wide_url):
    scheme = rng.choice(["http", "https"])
    host = rng.choice(["answer.url", "Sub.Example.ORG", "127.0.0.1", "[::1]", "localhost"])
    port = rng.choice(["", "", ":80", ":443", ":8443"])
    path = rng.choice(["", "/", "/message", "/message/", "/a/b/c", "/plivo/sms;v=1",
                       "/x%20y/", "/caf%C3%A9"] + (["/café", "/中文/"] if wide_url else []))
    query_texts = WIDE_TEXT + ASCII_TEXT if wide_url else ASCII_TEXT
    query = _encode_query(rng, _pairs(rng, query_texts, 4))
    url = f"{scheme}://{host}{port}{path}"
    if query or rng.random() < 0.1:
        url += "?" + query
    if rng.random() < 0.1:
        url += "#frag"
    method = rng.choice(["GET", "POST", "POST"])
    params = _pairs(rng, WIDE_TEXT + ASCII_TEXT, 6) if method == "POST" else []
    nonce = str(rng.randrange(10 ** 20))
    return method, url, params, nonce


def _as_plivo_params(rng, params):
    """The SDK takes a dict: repeated keys as lists, others as str or 1-lists."""
    grouped = {}
    for key, value in params:
        grouped.setdefault(key, []).append(value)
    return {k: (v[0] if len(v) == 1 and rng.random() < 0.5 else v) for k, v in grouped.items()}


def _check_against(plivo_v3, plivo_v2, rng, method, url, params, nonce):
    token = rng.choice([TOKEN, "AB" * 20, "tökén"])
    mine = v3_signature(token, method, url, params, nonce)
    plivo_params = _as_plivo_params(rng, params) if method == "POST" else None
    assert plivo_v3(method, url, nonce, token, mine, plivo_params) is True, (method, url, params)
    # a signature for something else is refused by both
    other = v3_signature(token, method, url, params + [("zz", "1")], nonce + "0")
    assert plivo_v3(method, url, nonce, token, other, plivo_params) is False
    # verify() with the same headers Plivo would send
    headers = {HEADER_V3: f"{other},{mine}", HEADER_V3_NONCE: nonce}
    assert verify(["nope", token], method.lower() if rng.random() < 0.3 else method,
                  url, headers, params) == "V3"
    # V2 against plivo.utils.validate_signature
    v2 = v2_signature(token, url, nonce)
    assert plivo_v2(url, nonce, v2, token) is True, url
    assert plivo_v2(url, nonce + "1", v2, token) is False
    assert verify([token], method, url, {HEADER_MA_V2: v2, HEADER_V2_NONCE: nonce}, params) == "Ma-V2"


def test_cross_check_with_plivo_sdk():
    pytest.importorskip("plivo")
    from plivo.utils import validate_signature
    from plivo.utils.signature_v3 import validate_v3_signature

    rng = random.Random(20240611)
    for _ in range(400):
        _check_against(validate_v3_signature, validate_signature, rng, *_case(rng, wide_url=False))


@pytest.fixture
def plivo_utf8(monkeypatch):
    """The SDK with its bytes-based URL parsing made UTF-8 aware.

    Stock plivo raises UnicodeError as soon as the URL (path or decoded query)
    holds a non-ASCII character: it parses ``uri.encode()`` as ASCII bytes.
    Swapping just those two parsing calls leaves all of its sorting and
    string-building logic in place as the oracle.
    """
    pytest.importorskip("plivo")
    import plivo.utils
    from plivo.utils import signature_v3

    def urlparse_utf8(raw):
        return urlparse(raw.decode("utf-8")).encode("utf-8")

    def parse_qs_utf8(raw, **kwargs):
        return parse_qs(raw.decode("utf-8"), **kwargs)

    monkeypatch.setattr(signature_v3, "urlparse", urlparse_utf8)
    monkeypatch.setattr(signature_v3, "parse_qs", parse_qs_utf8)
    monkeypatch.setattr(plivo.utils, "urlparse", urlparse_utf8)
    return plivo.utils.validate_signature, signature_v3.validate_v3_signature


def test_stock_plivo_cannot_handle_non_ascii_urls():
    pytest.importorskip("plivo")
    from plivo.utils.signature_v3 import validate_v3_signature
    for url in ["https://answer.url/message?Text=caf%C3%A9", "https://answer.url/café"]:
        with pytest.raises(UnicodeError):
            validate_v3_signature("GET", url, NONCE, TOKEN, "x")


def test_cross_check_non_ascii_urls_with_utf8_plivo(plivo_utf8):
    validate_signature, validate_v3_signature = plivo_utf8
    rng = random.Random(8675309)
    for _ in range(250):
        _check_against(validate_v3_signature, validate_signature, rng, *_case(rng, wide_url=True))


def test_comma_stuffed_headers_are_cheap_and_still_rejected():
    import time
    url = "https://sms.example.com/message"
    headers = {HEADER_V2: "," * 100000 + "x", HEADER_V2_NONCE: "1"}
    started = time.perf_counter()
    with pytest.raises(BadSignature):
        verify(["tok"], "POST", url, headers)
    assert time.perf_counter() - started < 0.05


def test_the_good_signature_among_a_few_wrong_ones_still_counts():
    url = "https://sms.example.com/message"
    good = v2_signature("tok", url, "1")
    headers = {HEADER_V2: ",".join(["bad"] * 5 + [good]), HEADER_V2_NONCE: "1"}
    assert verify(["tok"], "POST", url, headers) == "V2"


# -- explaining a refusal (app.signature_hint) -------------------------------------------
def test_explain_without_an_environ_varies_the_url_itself():
    from app.signature_hint import explain
    why = explain([TOKEN, OTHER], "POST", "http://answer.url/message", v3_only(), PARAMS,
                  public_url=None, environ=None)
    assert (why.likely, why.matching_url) == ("url", URL)
    why = explain([OTHER], "POST", URL, v3_only(), PARAMS, public_url=None, environ=None)
    assert (why.likely, why.matching_url) == ("token", None)


def test_candidates_are_few_distinct_and_never_the_url_checked():
    from app.signature_hint import MAX_CANDIDATES, candidates
    url = "http://10.0.0.5:8000/message?a=1"
    environ = {"wsgi.url_scheme": "http", "HTTP_HOST": "10.0.0.5:8000",
               "HTTP_X_FORWARDED_PROTO": "https, http", "HTTP_X_FORWARDED_HOST": "sms.example.com, lb"}
    found = candidates(url, "https://sms.example.com", environ)
    urls = [u for u, _ in found]
    assert 0 < len(urls) <= MAX_CANDIDATES and len(set(urls)) == len(urls) and url not in urls
    assert all(u.endswith("?a=1") for u in urls)  # the query is kept: V3 signs it
    assert candidates(url, None, environ)[0] == (
        "https://sms.example.com/message?a=1",
        "a proxy in front sets X-Forwarded-Proto/Host: set TRUSTED_PROXIES=2 (the proxies that set them), "
        "or PUBLIC_URL=https://sms.example.com")


def test_explain_a_url_that_cannot_be_parsed_without_raising():
    from app.signature_hint import explain
    headers = v3_only()
    with pytest.raises(BadSignature):
        verify([TOKEN], "POST", "http://[/message", headers, PARAMS)
    why = explain([TOKEN], "POST", "http://[/message", headers, PARAMS, public_url=None,
                  environ={"HTTP_HOST": "[", "wsgi.url_scheme": "http"})
    assert (why.likely, why.message) == ("url", "http://[/message cannot be parsed as a URL (a malformed Host header?)")


# -- the request a nonce is kept with -------------------------------------------------------
def test_request_digest_tells_apart_what_v2_does_not_sign():
    """V2 signs the URL without its query, and the nonce: the digest kept with a used nonce
    covers the method, the query and the body too, so only the very same request matches."""
    body = b"From=14155550123&Text=hello"
    digest = request_digest("POST", URL, body)
    assert len(digest) == 16 and digest == request_digest("post", URL, body)
    others = {request_digest("GET", URL, body), request_digest("POST", URL + "?a=1", body),
              request_digest("POST", URL, body + b"x"), request_digest("POST", URL + "/", body),
              request_digest("POST", URL, b""),
              # the separators hold: the URL's end cannot be moved into the body
              request_digest("POST", URL + "F", body[1:])}
    assert digest not in others and len(others) == 6
    # the scheme and host are bound by the signature itself (a V2 for another host is another)
    assert request_digest("POST", "http://10.0.0.1:8000/message", body) == digest
    # and each of those still verifies with one V2 header set: the digest is what refuses them
    headers = {HEADER_V2: v2_signature(TOKEN, URL, NONCE), HEADER_V2_NONCE: NONCE}
    assert verify([TOKEN], "GET", URL + "?a=1", headers) == "V2"
    assert verify([TOKEN], "POST", URL, headers, [("Text", "forged")]) == "V2"
