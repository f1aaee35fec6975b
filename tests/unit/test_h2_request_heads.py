"""A request's HEADERS frame read around h2 (`filterproxy.http.h2wire.read_request_head`,
with its HPACK block decoded by `filterproxy.http.hpackread.decode_block`), held to h2.

Two server connections get the same bytes: one reads each frame as the gateway does
(around h2 where it can, else through h2), the other hands every frame to h2. Both must
tell the same story — the same header lists, the same stream ends, the same refusals and
connection errors — and leave h2 in the same state: the stream's state machine and
windows, its expected content-length, the highest stream id, the HPACK table. Hypothesis
makes the blocks: literal and indexed fields, Huffman-coded or not, never-indexed ones,
entries that evict others, content-length fields right, wrong or in disagreement,
priorities, bytes flipped to make blocks hpack refuses.
"""

from __future__ import annotations

from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import RequestReceived
from h2.exceptions import H2Error
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hpack.exceptions import HPACKError
from hyperframe.frame import HeadersFrame, SettingsFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filterproxy.http.h2wire import forget_closed_stream, read_request_head
from filterproxy.http.hpackread import decode_block

# -- the HPACK decoder against hpack's ---------------------------------------------------------

_names = st.sampled_from(
    [b":method", b":path", b":authority", b"content-type", b"content-length", b"x-a", b"cookie"]
) | st.binary(min_size=1, max_size=12)
_values = st.sampled_from([b"POST", b"/v1/chat/completions", b"", b"12", b"application/json"]) | (
    st.binary(max_size=300)
)
_header = st.tuples(_names, _values, st.sampled_from(["indexed", "never", "plain"]))
_block = st.tuples(st.lists(_header, max_size=12), st.booleans())


def _encode(encoder: Encoder, fields: list[tuple[bytes, bytes, str]], huffman: bool) -> bytes:
    headers: list[Any] = []
    for name, value, how in fields:
        if how == "never":
            headers.append(NeverIndexedHeaderTuple(name, value))
        else:
            headers.append((name, value))
    return encoder.encode(headers, huffman=huffman)


def _table(decoder: Decoder) -> tuple[Any, ...]:
    table = decoder.header_table
    return (list(table.dynamic_entries), table._current_size, table.maxsize)


def _hpack(decoder: Decoder, block: bytes) -> list[tuple[bytes, bytes]] | str:
    try:
        return [(bytes(n), bytes(v)) for n, v in decoder.decode(block, raw=True)]
    except (HPACKError, IndexError, TypeError, UnicodeDecodeError) as e:
        return type(e).__name__


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_block, min_size=1, max_size=6),
    st.integers(0, 4096),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
    st.integers(100, 64 * 1024),
)
def test_blocks_decode_as_hpack_decodes_them(
    blocks: list[tuple[list[tuple[bytes, bytes, str]], bool]],
    table_size: int,
    flips: list[tuple[int, int]],
    list_limit: int,
) -> None:
    """Block after block on one connection: where `decode_block` takes a block its header
    list and the table it leaves are hpack's; where it does not, the table is untouched
    (and hpack decides). An undamaged block of fields that fit is always taken."""
    encoder = Encoder()
    encoder.header_table_size = table_size
    ours, theirs = Decoder(), Decoder()
    for decoder in (ours, theirs):
        decoder.max_allowed_table_size = 4096
        decoder.max_header_list_size = list_limit
    announced = False
    for number, (fields, huffman) in enumerate(blocks):
        block = bytearray(_encode(encoder, fields, huffman))
        if number == len(blocks) - 1:
            for at, value in flips:  # the last block damaged
                if block:
                    block[at % len(block)] = value
        data = b"\x00" * 3 + bytes(block) + b"\xff" * 4  # read within a larger buffer
        before = _table(ours)
        decoded = decode_block(ours, data, 3, 3 + len(block))
        expected = _hpack(theirs, bytes(block))
        if decoded is None:
            assert _table(ours) == before
            resize = table_size != 4096 and not announced
            plain = not flips or number < len(blocks) - 1
            size = sum(32 + len(n) + len(v) for n, v, _ in fields)
            assert not (plain and not resize and size <= list_limit), "a plain block refused"
            if isinstance(expected, str):
                return  # hpack fails it: the connection ends here
            _hpack(ours, bytes(block))  # as h2 hands it over
        else:
            assert decoded.fields == expected
            decoded.commit(ours)
        assert _table(ours) == _table(theirs)
        announced = True


def test_a_table_size_update_is_left_to_hpack() -> None:
    encoder = Encoder()
    encoder.header_table_size = 100
    block = encoder.encode([(b"x-a", b"b")])
    decoder = Decoder()
    assert decode_block(decoder, block, 0, len(block)) is None
    assert decoder.decode(block, raw=True) == [(b"x-a", b"b")]
    block = encoder.encode([(b"x-a", b"b")])  # indexed now, no update
    decoded = decode_block(decoder, block, 0, len(block))
    assert decoded is not None and decoded.fields == [(b"x-a", b"b")]


def test_an_entry_larger_than_the_table_empties_it() -> None:
    decoder = Decoder()
    decoder.header_table.add(b"x-old", b"v")
    big = b"@\x03x-b\x7f\x81\x1f" + b"v" * 4096  # literal with indexing, a 4096-byte value
    decoded = decode_block(decoder, big, 0, len(big))
    assert decoded is not None and decoded.fields == [(b"x-b", b"v" * 4096)]
    decoded.commit(decoder)
    assert list(decoder.header_table.dynamic_entries) == []
    assert decoder.header_table._current_size == 0


@pytest.mark.parametrize(
    "block",
    [
        b"\x80",  # index 0
        b"\xff\x80\x80\x80\x80\x01",  # an index past the table, in too many octets
        b"\xbf",  # index 63: the dynamic table is empty
        b"\x40\x05x-a",  # a name shorter than its length says
        b"\x40\x83\xff\xff\xff\x01a",  # a Huffman name with EOS in it
        b"\x00\x03x-a\x7f",  # a value length cut off
    ],
)
def test_blocks_hpack_refuses_are_not_taken(block: bytes) -> None:
    decoder = Decoder()
    assert decode_block(decoder, block, 0, len(block)) is None
    assert isinstance(_hpack(Decoder(), block), str)


# -- the HEADERS frame against h2's reading ----------------------------------------------------


def _server() -> H2Connection:
    server = H2Connection(
        H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
        )
    )
    server.initiate_connection()
    server.update_settings({0x3: 3})  # at most three streams at once
    server.receive_data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SettingsFrame(0).serialize())
    server.receive_data(SettingsFrame(0, flags=["ACK"]).serialize())
    server.data_to_send()
    return server


def _state(server: H2Connection) -> tuple[Any, ...]:
    streams = [
        (
            sid,
            s.state_machine.state,
            s.state_machine.client,
            s.state_machine.headers_sent,
            s.state_machine.headers_received,
            s.state_machine.trailers_received,
            s.state_machine.stream_closed_by,
            s._expected_content_length,
            s._inbound_window_manager.current_window_size,
            s.outbound_flow_control_window,
        )
        for sid, s in sorted(server.streams.items())
        if not s.closed
    ]
    table = server.decoder.header_table
    return (
        server.state_machine.state,
        server.highest_inbound_stream_id,
        streams,
        list(table.dynamic_entries),
        table._current_size,
    )


def _around(server: H2Connection, frame: bytes) -> Any:
    """The gateway's reading: around h2 where it can, else h2's."""
    head = read_request_head(server, b"junk" + frame + b"more", 4)
    if head is None:
        return _through(server, frame)
    sid, fields, ended, end = head
    assert end == 4 + len(frame)
    return [("request", sid, fields, ended)]


def _through(server: H2Connection, frame: bytes) -> Any:
    try:
        events = server.receive_data(frame)
    except H2Error as e:
        return [type(e).__name__, server.data_to_send()]
    told = []
    for event in events:
        if isinstance(event, RequestReceived):
            fields = [(bytes(n), bytes(v)) for n, v in event.headers or ()]
            told.append(("request", event.stream_id, fields, event.stream_ended is not None))
    return told


_request = st.lists(
    st.tuples(
        st.sampled_from(
            [
                (b":method", b"POST"),
                (b":path", b"/v1/chat/completions"),
                (b":scheme", b"https"),
                (b":authority", b"gw"),
                (b"content-length", b"12"),
                (b"content-length", b"13"),
                (b"content-length", b"1x"),
                (b"content-length", b"+1"),
                (b"x-request", b"r" * 90),
                (b"x-trace", b"t"),
            ]
        ),
        st.sampled_from(["indexed", "never", "plain"]),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            _request,
            st.booleans(),  # END_STREAM
            st.sampled_from([None, 0, "self", 3]),  # priority: none, on 0, itself, on 3
            st.integers(-2, 2),  # the stream id against the next one expected
            st.booleans(),  # END_HEADERS
            st.booleans(),  # close the stream before the next
        ),
        min_size=1,
        max_size=6,
    ),
    st.booleans(),
)
def test_heads_are_read_as_h2_reads_them(requests: list[Any], huffman: bool) -> None:
    ours, theirs = _server(), _server()
    encoder = Encoder()
    next_id = 1
    for fields, ended, priority, shift, whole, close in requests:
        headers = [
            NeverIndexedHeaderTuple(n, v) if how == "never" else (n, v) for (n, v), how in fields
        ]
        sid = max(1, next_id + shift)
        frame = HeadersFrame(sid)
        frame.data = encoder.encode(headers, huffman=huffman)
        if ended:
            frame.flags.add("END_STREAM")
        if whole:
            frame.flags.add("END_HEADERS")
        if priority is not None:
            frame.flags.add("PRIORITY")
            frame.depends_on = sid if priority == "self" else priority
            frame.stream_weight = 15
        data = frame.serialize()
        told = _around(ours, data)
        assert told == _through(theirs, data)
        assert _state(ours) == _state(theirs)
        if told and isinstance(told[0], str):
            return  # a connection error: both sent the same GOAWAY
        if not whole:
            return  # both wait for a CONTINUATION
        next_id = max(next_id, sid + 2)
        if close and told:
            for server in (ours, theirs):
                server.reset_stream(sid)
                server.data_to_send()
                forget_closed_stream(server, sid)
            assert _state(ours) == _state(theirs)


def test_a_plain_request_head_is_read_around_h2() -> None:
    """The case the gateway meets on every request (a client's indexed block): taken."""
    server = _server()
    encoder = Encoder()
    fields = [(b":method", b"POST"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"g")]
    for sid in (1, 3, 5, 7, 9):
        frame = HeadersFrame(sid, flags=["END_HEADERS", "END_STREAM"])
        frame.data = encoder.encode(fields)
        head = read_request_head(server, frame.serialize(), 0)
        assert head is not None and head[:3] == (sid, fields, True)
        server.send_headers(sid, [(":status", "204")], end_stream=True)
        forget_closed_stream(server, sid)
    assert server.streams == {}
    assert len(server._closed_streams) == 5


def test_the_stream_limit_counts_every_stream_h2_holds() -> None:
    server = _server()
    encoder = Encoder()
    fields = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"g")]
    frames = []
    for sid in (1, 3, 5, 7):
        frame = HeadersFrame(sid, flags=["END_HEADERS", "END_STREAM"])
        frame.data = encoder.encode(fields)
        frames.append(frame.serialize())
    for data in frames[:3]:
        assert read_request_head(server, data, 0) is not None
    assert read_request_head(server, frames[3], 0) is None  # h2's to refuse
    with pytest.raises(H2Error):
        server.receive_data(frames[3])
