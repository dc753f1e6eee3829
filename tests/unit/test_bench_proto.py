"""The generator's HTTP and RESP parsers frame the same messages however the bytes are cut."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rangekv.bench.proto import (
    HttpResponseParser,
    ProtocolError,
    RespError,
    RespParser,
    http_request,
    resp_command,
)

HTTP_STREAM = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"
    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4\r\nWiki\r\n6;ext=1\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\n\r\n"
    b"HTTP/1.1 204 No Content\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\n{}"
)
HTTP_WANT = [(200, b"hello"), (404, b""), (200, b"Wikipedia in \r\n\r\nchunks."), (204, b""),
             (200, b"abc"), (500, b"{}")]

RESP_STREAM = (b"+OK\r\n-ERR wrong type\r\n:42\r\n$5\r\nhe\r\nl\r\n$-1\r\n$0\r\n\r\n"
               b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n+x\r\n$-1\r\n*0\r\n")


def feed_in_pieces(parser: object, data: bytes, cuts: list[int]) -> list[object]:
    out: list[object] = []
    last = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        out += parser.feed(data[last:cut])  # type: ignore[attr-defined]
        last = cut
    return out


@given(st.lists(st.integers(min_value=0, max_value=len(HTTP_STREAM)), max_size=12))
def test_http_responses_split_anywhere(cuts: list[int]) -> None:
    parser = HttpResponseParser()
    assert feed_in_pieces(parser, HTTP_STREAM, cuts) == HTTP_WANT
    assert not parser.buf


def test_http_one_byte_at_a_time() -> None:
    assert feed_in_pieces(HttpResponseParser(), HTTP_STREAM, list(range(len(HTTP_STREAM)))) \
        == HTTP_WANT


def test_http_refuses_what_it_cannot_frame() -> None:
    with pytest.raises(ProtocolError):
        HttpResponseParser().feed(b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(ProtocolError):
        HttpResponseParser().feed(b"HTTP/1.1 200 OK\r\n\r\n")  # read-to-close body
    with pytest.raises(ProtocolError):
        HttpResponseParser().feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")


def test_http_request_has_a_content_length() -> None:
    req = http_request("PUT", "/v1/tables/t/keys/k", "h", b"abc", "X-A: 1\r\n")
    assert req == (b"PUT /v1/tables/t/keys/k HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                   b"X-A: 1\r\n\r\nabc")


@given(st.lists(st.integers(min_value=0, max_value=len(RESP_STREAM)), max_size=12))
def test_resp_replies_split_anywhere(cuts: list[int]) -> None:
    parser = RespParser()
    got = feed_in_pieces(parser, RESP_STREAM, cuts)
    assert len(got) == 8, got
    ok, err, n, bulk, nil, empty, array, none = got
    assert ok == "OK" and isinstance(err, RespError) and str(err) == "ERR wrong type"
    assert n == 42 and bulk == b"he\r\nl" and nil is None and empty == b""
    assert array == [b"a", [1, "x"], None] and none == []
    assert not parser.buf


def test_resp_command_round_trips_through_a_bulk_array() -> None:
    cmd = resp_command(b"SET", "k", 7)
    assert cmd == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n7\r\n"
    assert RespParser().feed(cmd) == [[b"SET", b"k", b"7"]]
    with pytest.raises(ProtocolError):
        RespParser().feed(b"?what\r\n")
