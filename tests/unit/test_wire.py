"""Internal frames, error round trips and replication message decoding, incl. hostile input."""

from __future__ import annotations

import asyncio
import itertools
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rangekv import errors, wire
from rangekv.limits import FRAME_BYTES_MAX
from rangekv.replication.messages import Entry, Msg

bodies = st.dictionaries(
    st.text(max_size=10),
    st.one_of(st.integers(-2**63, 2**63 - 1), st.binary(max_size=64), st.text(max_size=20),
              st.none(), st.booleans()),
    max_size=8,
)


@given(st.lists(bodies, max_size=5), st.integers(1, 50))
def test_decoder_round_trip_in_any_chunking(items: list[dict], chunk: int) -> None:
    data = b"".join(wire.encode(b) for b in items)
    dec = wire.FrameDecoder()
    out = []
    for i in range(0, len(data), chunk):
        out.extend(dec.feed(data[i : i + chunk]))
    assert out == items


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_decoder_never_crashes_on_garbage(data: bytes) -> None:
    dec = wire.FrameDecoder()
    try:
        dec.feed(data)
    except errors.ProtocolError:
        pass


def test_oversized_frame_refused_from_its_header() -> None:
    dec = wire.FrameDecoder()
    with pytest.raises(errors.ProtocolError):
        dec.feed(struct.pack(">II", FRAME_BYTES_MAX + 1, 0))


def test_checksum_mismatch_detected() -> None:
    frame = bytearray(wire.encode({"op": "put", "value": b"x" * 10}))
    frame[-1] ^= 0x01
    with pytest.raises(errors.ProtocolError):
        wire.FrameDecoder().feed(bytes(frame))


def test_stream_reader_refuses_oversized_frame_without_reading_it() -> None:
    async def go() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(struct.pack(">II", 2**31, 0))
        with pytest.raises(errors.ProtocolError):
            await wire.read_frame(reader)

    asyncio.run(go())


@pytest.mark.parametrize("cls", [errors.NotLeader, errors.TableNotFound, errors.TooLarge,
                                 errors.PreconditionFailed, errors.OutcomeUnknown])
def test_errors_round_trip_with_details(cls: type[errors.RangeKVError]) -> None:
    err = cls("boom", leader_hint=3, epoch=9)
    back = errors.from_dict(err.to_dict())
    assert type(back) is cls and back.message == "boom" and back.details["leader_hint"] == 3
    assert back.retryable == cls.retryable


def test_unknown_error_code_becomes_internal() -> None:
    assert isinstance(errors.from_dict({"code": "nope"}), errors.Internal)


def test_request_reply_over_tcp() -> None:
    async def go() -> None:
        async def on_request(body: dict, conn: wire.ServerConnection) -> dict:
            if body["op"] == "fail":
                raise errors.TableNotFound("no such table", table="t")
            return {"echo": body["x"]}

        server = await asyncio.start_server(
            lambda r, w: wire.serve_connection(r, w, on_request, lambda m, c: None),
            "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = wire.Connection(f"127.0.0.1:{port}")
        replies = await asyncio.gather(*[conn.request("echo", x=i) for i in range(50)])
        assert [r["echo"] for r in replies] == list(range(50))
        with pytest.raises(errors.TableNotFound):
            await conn.request("fail")
        await conn.close()
        server.close()
        await server.wait_closed()
        with pytest.raises(errors.Unavailable):
            await wire.Connection(f"127.0.0.1:{port}").request("echo", x=1)

    asyncio.run(go())


@given(st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 2**40), st.binary(max_size=30)),
                max_size=4))
def test_replication_message_round_trip(entries: list) -> None:
    msg = Msg("append", 1, 2, 5, index=3, log_epoch=4, commit=2,
              entries=[Entry(*e) for e in entries], ctx=7)
    raw = msgpack.unpackb(msgpack.packb(msg.to_wire(), use_bin_type=True), raw=False)
    assert Msg.from_wire(raw) == msg


@given(st.one_of(st.none(), st.integers(), st.lists(st.integers(), max_size=12),
                 st.lists(st.text(max_size=3), max_size=12)))
def test_malformed_replication_messages_rejected(raw: object) -> None:
    with pytest.raises(ValueError):
        Msg.from_wire(raw)


def test_error_codes_defined_elsewhere_round_trip() -> None:
    from rangekv.storage.wal import WALCorrupt

    back = errors.from_dict(WALCorrupt("bad record", path="x").to_dict())
    assert type(back) is WALCorrupt


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=300),
                                st.binary(min_size=16, max_size=16)), max_size=70),
       cuts=st.lists(st.integers(0, 70), max_size=4))
def test_packed_pieces_join_into_the_whole_list(items: list, cuts: list[int]) -> None:
    """Pages from several nodes, each packed alone, decode as one list when joined: what the
    rm does with a page that spans ranges."""
    bounds = sorted({0, len(items), *(min(c, len(items)) for c in cuts)})
    blob = b"".join(wire.pack_elements(items[a:b]) for a, b in itertools.pairwise(bounds))
    assert wire.unpack_elements(blob, len(items)) == [list(i) for i in items]


@given(blob=st.binary(max_size=64), n=st.integers(-2, 70))
def test_a_packed_list_that_does_not_hold_n_items_is_a_protocol_error(blob: bytes,
                                                                         n: int) -> None:
    """Garbage from a node never crashes the decoder: n items exactly, or ProtocolError."""
    try:
        items = wire.unpack_elements(blob, n)
    except errors.ProtocolError:
        return
    assert len(items) == n


def test_a_packed_list_with_one_item_too_many_or_too_few_is_refused() -> None:
    blob = wire.pack_elements([[b"a", b"1"], [b"b", b"2"]])
    assert wire.unpack_elements(blob, 2) == [[b"a", b"1"], [b"b", b"2"]]
    for n in (1, 3, -1):
        with pytest.raises(errors.ProtocolError):
            wire.unpack_elements(blob, n)
