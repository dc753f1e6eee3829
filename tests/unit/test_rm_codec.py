"""The rm's pure HTTP codecs: paths, conditions, cursors, list queries and items, error bodies."""

from __future__ import annotations

import base64
import json
import re

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rangekv
from rangekv import errors, limits, sequencer
from rangekv.request_manager import http_codec as codec
from rangekv.request_manager import openapi
from rangekv.request_manager.metrics import Metrics
from rangekv.testing import scrape

SEQ = sequencer.make(1_700_000_000_000_000_000, 7, 3)


# -- path keys and table names ----------------------------------------------------------------


def test_path_key_is_percent_decoded_bytes() -> None:
    assert codec.decode_path_key("a%2Fb%25c", None) == b"a/b%c"
    assert codec.decode_path_key("a/b", None) == b"a/b"  # an unencoded "/" is part of the key
    assert codec.decode_path_key("%E2%82%AC", "utf8") == "€".encode()
    assert codec.decode_path_key("%FF%00", None) == b"\xff\x00"  # any bytes, not only UTF-8
    assert codec.decode_path_key("a+b", None) == b"a+b"  # "+" is not a space in a path
    assert codec.decode_path_key("..", None) == b".."


def test_path_key_base64url() -> None:
    key = b"\x00\xff/+binary"
    text = base64.urlsafe_b64encode(key).decode()
    assert codec.decode_path_key(text, "base64") == key
    assert codec.decode_path_key(text.rstrip("="), "base64") == key
    assert codec.decode_path_key(text.replace("=", "%3D"), "base64") == key
    for bad in ["!!!!", "a+b/", "abcde"]:
        with pytest.raises(errors.InvalidArgument):
            codec.decode_path_key(bad, "base64")
    with pytest.raises(errors.InvalidArgument):
        codec.decode_path_key("abc", "hex")


def test_path_key_limits() -> None:
    with pytest.raises(errors.InvalidArgument, match="empty"):
        codec.decode_path_key("", None)
    assert codec.decode_path_key("k" * limits.KEY_BYTES_MAX, None) == b"k" * limits.KEY_BYTES_MAX
    with pytest.raises(errors.InvalidArgument) as info:
        codec.decode_path_key("k" * (limits.KEY_BYTES_MAX + 1), None)
    assert info.value.status == 400
    assert info.value.details["limit"] == limits.KEY_BYTES_MAX


@given(st.binary(min_size=1, max_size=64))
def test_path_key_round_trips(key: bytes) -> None:
    from urllib.parse import quote_from_bytes

    assert codec.decode_path_key(quote_from_bytes(key, safe=""), None) == key
    assert codec.decode_path_key(codec.b64url_encode(key), "base64") == key


@pytest.mark.parametrize("raw", ["a%zz", "a%4", "%", "a%", "%g0", "ok%2", "%%41", "a%2Fb%z1"])
def test_a_malformed_escape_in_a_path_is_400_not_a_literal_key(raw: str) -> None:
    for encoding in (None, "utf8", "base64"):
        with pytest.raises(errors.InvalidArgument, match="malformed percent-escape") as info:
            codec.decode_path_key(raw, encoding)
        assert info.value.status == 400 and info.value.details["field"] == "key"
    with pytest.raises(errors.InvalidArgument, match="malformed percent-escape") as info:
        codec.decode_table_segment("T" + raw)
    assert info.value.details["field"] == "table"


def test_a_byte_outside_ascii_in_a_path_is_400() -> None:
    """The raw target is latin-1 text of the bytes sent: a raw "€" (E2 82 AC) would otherwise
    have become six other bytes. HAProxy refuses such a target too."""
    raw = "€".encode().decode("latin-1")
    with pytest.raises(errors.InvalidArgument, match="outside ASCII"):
        codec.decode_path_key(raw, None)
    with pytest.raises(errors.InvalidArgument, match="outside ASCII"):
        codec.parse_query("start=" + raw)


def test_percent_decode_takes_every_escape_and_case() -> None:
    assert codec.percent_decode("%41%4a%4A%2f%25%00", "key") == b"AJJ/%\x00"
    assert codec.percent_decode("plain-key_1.~", "key") == b"plain-key_1.~"
    assert codec.percent_decode("", "key") == b""


def test_table_segment() -> None:
    assert codec.decode_table_segment("Stocks") == "Stocks"
    assert codec.decode_table_segment("a.b-c_1") == "a.b-c_1"
    assert codec.decode_table_segment("St%6Fcks") == "Stocks"
    for bad in ["", "a b", "a%2Fb", "x" * 129, "%FF", "é"]:
        with pytest.raises(errors.InvalidArgument):
            codec.decode_table_segment(bad)


# -- conditions -------------------------------------------------------------------------------


def test_conditions() -> None:
    assert codec.parse_conditions(None, None) is None
    assert codec.parse_conditions(None, "*") == sequencer.ZERO
    assert codec.parse_conditions(SEQ.hex(), None) == SEQ
    assert codec.parse_conditions(f'"{SEQ.hex()}"', None) == SEQ
    assert codec.parse_conditions(f' "{SEQ.hex()}" ', None) == SEQ
    bad = [
        (SEQ.hex(), "*"),  # both
        ("*", None),
        ("abc", None),
        (f'W/"{SEQ.hex()}"', None),
        (f'"{SEQ.hex()}", "{SEQ.hex()}"', None),
        (sequencer.ZERO.hex(), None),
        (None, f'"{SEQ.hex()}"'),
    ]
    for if_match, if_none_match in bad:
        with pytest.raises(errors.InvalidArgument):
            codec.parse_conditions(if_match, if_none_match)
    assert codec.etag(SEQ) == f'"{SEQ.hex()}"'


def test_if_match_with_spaces_inside_is_400_not_a_short_seq() -> None:
    """bytes.fromhex skips whitespace between bytes: 32 characters such as "aa bb ... 44" were
    taken as an 11-byte seq and sent to the node, which refused it with a confusing message."""
    spaced = " ".join(["aa"] * 10) + " 44"
    assert len(spaced) == 32
    for text in [spaced, f'"{spaced}"', SEQ.hex()[:30] + " 1"]:
        with pytest.raises(errors.InvalidArgument, match="32 hex digits"):
            codec.parse_conditions(text, None)
    assert codec.parse_conditions(SEQ.hex().upper(), None) == SEQ


_IF_MATCH_CANDIDATES = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"[0-9a-fA-F ]{32}", fullmatch=True),
    st.builds(lambda s: f'"{s}"', st.from_regex(r"[0-9a-fA-F]{31,33}", fullmatch=True)),
    st.from_regex(openapi.IF_MATCH_PATTERN),
    st.sampled_from(["0" * 32, '"' + "0" * 32 + '"', "*", SEQ.hex(), f'"{SEQ.hex()}']),
)


@given(_IF_MATCH_CANDIDATES)
def test_if_match_pattern_in_the_document_is_what_the_rm_accepts(text: str) -> None:
    """The document's If-Match pattern and the codec agree on every value (the header's
    surrounding whitespace aside: HTTP strips it before either sees it)."""
    text = text.strip(" \t")
    documented = re.fullmatch(openapi.IF_MATCH_PATTERN, text) is not None
    try:
        codec.parse_conditions(text, None)
        accepted = True
    except errors.InvalidArgument:
        accepted = False
    assert documented == accepted, repr(text)


@given(
    st.integers(0, 2**32),
    st.binary(min_size=1, max_size=limits.KEY_BYTES_MAX),
    st.one_of(st.none(), st.binary(max_size=limits.KEY_BYTES_MAX)),
)
def test_every_cursor_matches_the_documented_pattern(
    table_id: int, after: bytes, end: bytes | None
) -> None:
    text = codec.encode_cursor(codec.Cursor(table_id, after, end))
    assert re.fullmatch(openapi.CURSOR_PATTERN, text)
    assert len(text) <= limits.CURSOR_BYTES_MAX


# -- cursors ----------------------------------------------------------------------------------


@given(
    st.integers(0, 2**32),
    st.binary(min_size=1, max_size=limits.KEY_BYTES_MAX),
    st.one_of(st.none(), st.binary(max_size=limits.KEY_BYTES_MAX)),
)
def test_cursor_round_trip(table_id: int, after: bytes, end: bytes | None) -> None:
    cursor = codec.Cursor(table_id, after, end)
    text = codec.encode_cursor(cursor)
    assert len(text) <= limits.CURSOR_BYTES_MAX
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert codec.decode_cursor(text.encode()) == cursor


def test_cursor_with_inclusive_start() -> None:
    cursor = codec.Cursor(4, None, b"z", b"m")
    assert codec.decode_cursor(codec.encode_cursor(cursor).encode()) == cursor


def _raw_cursor(body: object, version: int = codec.CURSOR_VERSION) -> bytes:
    return codec.b64url_encode(bytes([version]) + msgpack.packb(body)).encode()


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"!!!",
        b"A" * (limits.CURSOR_BYTES_MAX + 1),
        codec.b64url_encode(b"\x01").encode(),
        codec.b64url_encode(b"\x01\xc1garbage").encode(),
        _raw_cursor({"t": 1, "a": b"k", "e": None}, version=2),
        _raw_cursor([1, b"k", None]),
        _raw_cursor({"t": 1, "a": b"k"}),
        _raw_cursor({"t": 1, "a": b"k", "e": None, "x": 1}),
        _raw_cursor({"t": 1, "a": b"k", "s": b"", "e": None}),
        _raw_cursor({"t": -1, "a": b"k", "e": None}),
        _raw_cursor({"t": True, "a": b"k", "e": None}),
        _raw_cursor({"t": 1, "a": b"", "e": None}),
        _raw_cursor({"t": 1, "a": "text", "e": None}),
        _raw_cursor({"t": 1, "a": b"k" * (limits.KEY_BYTES_MAX + 1), "e": None}),
        _raw_cursor({"t": 1, "a": b"k", "e": 5}),
        _raw_cursor({"t": 1, "s": None, "e": None}),
    ],
)
def test_malformed_cursors_are_400(raw: bytes) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        codec.decode_cursor(raw)
    assert info.value.status == 400
    assert info.value.details["field"] == "after"


# -- list queries -----------------------------------------------------------------------------


def test_parse_query() -> None:
    q = codec.parse_query("start=a+b&end=%FF&limit=5&start=ignored&flag")
    assert q == {"start": b"a b", "end": b"\xff", "limit": b"5", "flag": b""}
    assert codec.parse_query("") == {}
    for bad in ["start=a%zz", "end=%4", "limit=1&after=%", "x%q=1"]:
        with pytest.raises(errors.InvalidArgument, match="malformed percent-escape"):
            codec.parse_query(bad)


def test_list_query_defaults_and_limits() -> None:
    q = codec.parse_list_query({})
    assert (q.start, q.end, q.cursor, q.limit, q.encoding) == (
        b"",
        None,
        None,
        limits.LIST_LIMIT_DEFAULT,
        "utf8",
    )
    assert codec.parse_list_query({"limit": b"1"}).limit == 1
    assert codec.parse_list_query({"limit": b"1000"}).limit == 1000
    assert codec.parse_list_query({"limit": b"5000"}).limit == limits.LIST_LIMIT_MAX
    for bad in [b"0", b"-1", b"x", b"1.5", b"\xff", b"", b"000", "\u0661".encode()]:
        with pytest.raises(errors.InvalidArgument):
            codec.parse_list_query({"limit": bad})
    with pytest.raises(errors.InvalidArgument):
        codec.parse_list_query({"encoding": b"hex"})
    with pytest.raises(errors.InvalidArgument):
        codec.parse_list_query({"start": b"k" * (limits.KEY_BYTES_MAX + 1)})


def test_list_limit_of_any_size_is_reduced_as_documented() -> None:
    """Found by the OpenAPI fuzzer: the document says larger limits are reduced to 1000, but a
    limit of 10 digits or more was a 400 (and the schema's maximum said larger was invalid)."""
    for text in [b"1001", b"99999999999", b"9" * 100, b"0" * 50 + b"7"]:
        expected = 7 if text.endswith(b"07") else limits.LIST_LIMIT_MAX
        assert codec.parse_list_query({"limit": text}).limit == expected
    params = openapi.document()["paths"]["/v1/tables/{table}/keys"]["get"]["parameters"]
    (limit,) = [p for p in params if p["name"] == "limit"]
    assert "maximum" not in limit["schema"]


def test_empty_encoding_and_limit_are_400() -> None:
    """Found by the OpenAPI fuzzer: ``encoding=`` and ``limit=`` were taken as the defaults,
    although neither is a value the document allows (``key_encoding=`` was already a 400)."""
    for name in ("encoding", "limit"):
        with pytest.raises(errors.InvalidArgument) as info:
            codec.parse_list_query({name: b""})
        assert info.value.details["field"] == name


def test_list_query_base64_bounds() -> None:
    q = codec.parse_list_query({"encoding": b"base64", "start": b"AP8=", "end": b"+/8="})
    assert (q.start, q.end) == (b"\x00\xff", b"\xfb\xff")
    # A form encoder may have turned "+" into a space.
    assert codec.parse_list_query({"encoding": b"base64", "end": b" /8="}).end == b"\xfb\xff"
    with pytest.raises(errors.InvalidArgument):
        codec.parse_list_query({"encoding": b"base64", "start": b"not base64!"})


def test_list_query_cursor_carries_end() -> None:
    text = codec.encode_cursor(codec.Cursor(3, b"m", b"x")).encode()
    q = codec.parse_list_query({"after": text})
    assert q.cursor == codec.Cursor(3, b"m", b"x") and q.end == b"x"
    assert codec.parse_list_query({"after": text, "end": b"x"}).end == b"x"
    with pytest.raises(errors.InvalidArgument, match="end"):
        codec.parse_list_query({"after": text, "end": b"y"})
    assert codec.parse_list_query({"after": b""}).cursor is None


def test_encode_items() -> None:
    items = [(b"A", b"120", SEQ), (b"\xff", b"v", SEQ), (b"k", b"\x80", SEQ)]
    assert codec.encode_items(items, "utf8") == [
        {"key": "A", "value": "120", "seq": SEQ.hex()},
        {"key_base64": "/w==", "value": "v", "seq": SEQ.hex()},
        {"key": "k", "value_base64": "gA==", "seq": SEQ.hex()},
    ]
    assert codec.encode_items(items[:1], "base64") == [
        {"key": "QQ==", "value": "MTIw", "seq": SEQ.hex()}
    ]


# -- bodies -----------------------------------------------------------------------------------


def test_error_bodies() -> None:
    body = codec.error_body(errors.TooLarge("big", field="value", limit=limits.VALUE_BYTES_MAX))
    assert body == {
        "error": {
            "code": "too_large",
            "message": "big",
            "retryable": False,
            "field": "value",
            "limit": limits.VALUE_BYTES_MAX,
        }
    }
    body = codec.error_body(errors.PreconditionFailed("no", current_seq=SEQ))
    assert body["error"]["current_seq"] == SEQ.hex()  # bytes never reach JSON
    assert json.loads(codec.dump_json(body)) == body
    assert codec.error_body(errors.Unavailable("x"))["error"]["retryable"] is True


def test_metrics_render() -> None:
    m = Metrics(1)
    m.observe("get", 200, 0.0007)
    m.observe("get", 200, 0.2)
    m.observe("put", 412, 0.003)
    m.router.retry("not_leader")
    text = m.render(ready=True, revision=12)
    assert 'rangekv_rm_requests_total{op="get",status="200"} 2' in text
    # prometheus_client writes the labels of a histogram bucket in name order (le first)
    assert 'rangekv_rm_request_duration_seconds_bucket{le="0.001",op="get"} 1' in text
    assert 'rangekv_rm_request_duration_seconds_bucket{le="+Inf",op="get"} 2' in text
    assert 'rangekv_rm_routing_retries_total{reason="not_leader"} 1' in text
    assert "rangekv_rm_view_revision 12" in text
    assert text.endswith("\n")
    samples = scrape.parse(text)
    assert scrape.value(samples, "rangekv_rm_request_duration_seconds_sum", op="get") == (
        pytest.approx(0.2007))
    assert scrape.value(samples, "rangekv_rm_requests_total", op="put", status="412") == 1
    assert scrape.value(samples, "rangekv_rm_ready") == 1
    assert scrape.value(samples, "rangekv_build_info", version=rangekv.__version__,
                        component="rm", id="1") == 1
