"""The HTTP/2 frames the gateway writes around h2 (`filterproxy.http.h2wire`, and the
stream's HEADERS and DATA paths in `filterproxy.downstream.h2`) against h2 writing them.

Every scenario runs twice on identical connections: once as the gateway runs, once with
h2's own ``send_headers``/``send_data`` doing all the sending. A real h2 client (its
inbound validation on) reads both; what it sees — every event, header, byte of data,
stream end and reset — and what the server's h2 believes afterwards (each stream's state
and flow-control window, the connection's window) must be the same. Hypothesis drives the
scenarios: small and odd windows, frame sizes, header table sizes, resets, bodies split
anywhere, headers h2 must normalise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    DataReceived,
    Event,
    InformationalResponseReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes
from h2.stream import StreamState
from hpack import Decoder, Encoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from filterproxy.downstream.h2 import H2ServerConnection, H2Stream
from filterproxy.extensions.builtin import parse_config
from filterproxy.http.h2wire import first_frame, frame_head, header_block
from filterproxy.http.headers import Headers

# -- header blocks ------------------------------------------------------------------------


def decoded(block: bytes, decoder: Decoder, encoding: str = "latin-1") -> list[tuple[str, str]]:
    return [(n.decode(), v.decode(encoding)) for n, v in decoder.decode(block, raw=True)]


def test_a_block_indexes_static_pairs_and_names_and_leaves_the_table_alone() -> None:
    fields = [
        (":status", "200"),  # a static pair: one byte
        ("content-type", "application/json"),  # a static name
        ("x-request-id", "a" * 200),  # a new name, a value longer than a one-byte length
        ("authorization", "Bearer secret"),  # never indexed
        ("vary", ""),  # a static pair with an empty value: one byte
    ]
    block = header_block(fields, {})
    assert block is not None
    assert block[0] == 0x88  # indexed, static entry 8
    assert block[-1] == 0x80 | 59  # vary is entry 59
    assert block[1] == 0x0F and block[2] == 31 - 15  # content-type is entry 31: 4-bit prefix
    assert b"\x1f\x08\rBearer" in block  # never indexed (0x10), authorization is entry 23
    decoder = Decoder()
    assert decoded(block, decoder) == fields
    assert len(decoder.header_table.dynamic_entries) == 0


@pytest.mark.parametrize(
    "fields",
    [
        [(":status", "200"), ("cookie", "a=b")],  # h2 splits cookies into crumbs
        [(":status", "200"), ("te", "trailers")],
        [(":status", "200"), ("x-a", " padded ")],  # h2 strips surrounding whitespace
        [(":status", "200"), ("x-a", "line\nbreak")],
        [(":status", "200"), ("X-Upper", "v")],
        [(":status", "200"), ("x a", "v")],
        [(":status", "200"), ("x:a", "v")],
        [(":status", "200"), (":path", "/")],
        [(":status", "200"), ("", "v")],
        [(":status", "200"), ("x-é", "v")],
        [(":status", "200"), ("x-a", "π")],  # not latin-1: h2 sends it as UTF-8
    ],
)
def test_fields_h2_must_normalise_or_refuse_are_left_to_it(fields: list[tuple[str, str]]) -> None:
    assert header_block(fields, {}) is None
    names: dict[str, bytes] = {}
    assert header_block([(":status", "200"), ("x-a", "v"), ("x-upper", "v")], names)
    assert header_block(fields, names) is None  # whatever the connection has sent before


_names = st.one_of(
    st.sampled_from(["content-type", "content-length", "server", "date", "set-cookie"]),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.!#", min_size=1, max_size=40),
)
_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=300).filter(
    lambda v: v == v.strip(" \t")
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.booleans(), st.lists(st.tuples(_names, _values), max_size=12)), max_size=6
    )
)
def test_blocks_interleave_with_h2s_encoder_on_one_decoder(
    blocks: list[tuple[bool, list[tuple[str, str]]]],
) -> None:
    """Ours and hpack's blocks, in any order on one connection: the client's decoder
    reads every one back exactly (ours never moved the table hpack's encoder relies on)."""
    encoder, decoder = Encoder(), Decoder()
    names: dict[str, bytes] = {}  # the connection's, remembered from block to block
    for ours, fields in blocks:
        fields = [(":status", "200"), *fields]
        block = header_block(fields, names) if ours else encoder.encode(fields)
        assert block is not None
        assert decoded(block, decoder, "latin-1" if ours else "utf-8") == fields


@given(st.integers(min_value=0, max_value=2**24 - 1), st.integers(1, 2**31 - 1))
def test_frame_heads_are_what_hyperframe_reads(length: int, stream_id: int) -> None:
    from hyperframe.frame import Frame

    frame, size = Frame.parse_frame_header(memoryview(frame_head(length, 0x0, 0x1, stream_id)))
    assert size == length and frame.stream_id == stream_id and "END_STREAM" in frame.flags


# -- the stream's paths against h2's --------------------------------------------------------


class _Manager:
    """What a request's filter chain is told (only that the client left matters here)."""

    def __init__(self) -> None:
        self.gone = False
        #: The request body as the chain got it.
        self.body: list[tuple[bytes, bool]] = []

    def decode_headers(self, head: Any, end_stream: bool) -> None:
        pass

    def decode_data(self, data: bytes, end_stream: bool) -> None:
        self.body.append((data, end_stream))

    def client_gone(self) -> None:
        self.gone = True


@dataclass
class _Gateway:
    config: Any
    reactor: Clock = field(default_factory=Clock)

    def new_request(self, stream: H2Stream) -> _Manager:
        return _Manager()


@dataclass
class _Listener:
    gateway: _Gateway
    active_streams: int = 0
    connections: set[Any] = field(default_factory=set)
    draining: bool = False


class _ThroughH2(H2Stream):
    """The stream as it was before: h2 sends everything."""

    def _write_head(self, status: int, fields: list[tuple[str, str]], end_stream: bool) -> bool:
        return False

    def push(self) -> None:
        self._push_through_h2()


class _ServerThroughH2(H2ServerConnection):
    """The connection reading every frame through h2, one at a time, as the gateway hands
    h2 the frames it does not read itself."""

    def dataReceived(self, data: bytes) -> None:
        start = 0
        while start < len(data) and not self.gone:
            stop = first_frame(self.h2, data, start)
            if not self._receive_through_h2(data[start:stop]):
                return
            start = stop
        if not self.gone:
            self.write_pending()
            if self.closing and not self.streams:
                self._lose_connection()


def machine_state(machine: Any) -> tuple[Any, ...]:
    """Everything h2's stream state machine keeps."""
    return (
        machine.state,
        machine.client,
        machine.headers_sent,
        machine.trailers_sent,
        machine.headers_received,
        machine.trailers_received,
        machine.stream_closed_by,
    )


class World:
    """A gateway connection and an h2 client on the two ends of a transport."""

    def __init__(self, through_h2: bool) -> None:
        config = parse_config("clusters: {c: {url: 'http://127.0.0.1:9'}}\nroutes: [{cluster: c}]")
        kind = _ServerThroughH2 if through_h2 else H2ServerConnection
        self.server = kind(_Listener(_Gateway(config)), scheme="http")  # type: ignore[arg-type]
        self.through_h2 = through_h2
        self.transport = StringTransport()
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self.client.initiate_connection()
        self.server.makeConnection(self.transport)
        self.server.dataReceived(self.client.data_to_send())
        self.seen: list[tuple[Any, ...]] = []
        self.exchange()

    def exchange(self) -> None:
        """Deliver each side's bytes to the other until both are quiet."""
        while True:
            out = self.transport.value()
            self.transport.clear()
            if not out:
                return
            for event in self.client.receive_data(out):
                self.seen.append(_event(event))
            back = self.client.data_to_send()
            if back:
                self.server.dataReceived(back)

    def open(self, ended: bool) -> H2Stream:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(
            sid,
            [(":method", "POST"), (":scheme", "http"), (":authority", "gw"), (":path", "/x")],
            end_stream=ended,
        )
        self.server.dataReceived(self.client.data_to_send())
        stream = self.server.streams[sid]
        if self.through_h2:
            stream.__class__ = _ThroughH2
        self.exchange()
        return stream

    def state(self) -> list[Any]:
        h2 = self.server.h2
        streams = [
            (
                sid,
                *machine_state(s.state_machine),
                s.outbound_flow_control_window,
            )
            for sid, s in sorted(h2.streams.items())
        ]
        # A table size the client set is announced at the start of the next block.
        announce = h2.encoder.header_table.resized
        # What the client sent: h2's receive windows, what they have handed back, the
        # bodies' lengths (of streams still open: a closed one's window is never used).
        window = h2._inbound_flow_control_window_manager
        received = [
            (
                sid,
                s._actual_content_length,
                s._inbound_window_manager.current_window_size,
                s._inbound_window_manager._bytes_processed,
            )
            for sid, s in sorted(h2.streams.items())
            if s.open
        ]
        inbound = [window.current_window_size, window._bytes_processed, received]
        return [h2.outbound_flow_control_window, announce, streams, self.seen, inbound]


def _event(event: Event) -> tuple[Any, ...]:
    if isinstance(event, ResponseReceived | TrailersReceived | InformationalResponseReceived):
        return (type(event).__name__, event.stream_id, list(event.headers or ()))
    if isinstance(event, DataReceived):
        return ("data", event.stream_id, event.data, event.flow_controlled_length)
    if isinstance(event, StreamEnded | StreamReset):
        return (type(event).__name__, event.stream_id)
    return (type(event).__name__,)


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.booleans()),
        st.tuples(
            st.just("head"),
            st.integers(0, 3),
            st.sampled_from([200, 201, 404, 503, 103]),
            st.sampled_from(
                [
                    [("content-type", "text/event-stream")],
                    [("content-type", "application/json"), ("content-length", "12")],
                    [("x-request-id", "r" * 140), ("Server", "gw")],
                    [("set-cookie", "a=b"), ("x-a", " padded ")],
                    [("cookie", "a=b; c=d")],
                ]
            ),
            st.booleans(),
        ),
        st.tuples(st.just("data"), st.integers(0, 3), st.integers(0, 70_000), st.booleans()),
        st.tuples(st.just("window"), st.integers(0, 3), st.integers(1, 100_000)),
        st.tuples(
            st.just("settings"),
            st.sampled_from(
                [
                    SettingCodes.INITIAL_WINDOW_SIZE,
                    SettingCodes.MAX_FRAME_SIZE,
                    SettingCodes.HEADER_TABLE_SIZE,
                ]
            ),
            st.integers(0, 70_000),
        ),
        st.tuples(st.just("reset"), st.integers(0, 3)),
        st.tuples(st.just("body"), st.integers(0, 3), st.integers(0, 40_000), st.booleans()),
        st.tuples(st.just("body"), st.integers(0, 3), st.integers(0, 500), st.just(False)),
        st.tuples(st.just("padded body"), st.integers(0, 3), st.integers(0, 300)),
    ),
    max_size=25,
)


def _run(world: World, ops: list[tuple[Any, ...]]) -> list[Any]:
    streams: list[H2Stream] = []
    states: list[Any] = []
    for op in ops:
        try:
            _step(world, streams, op)
        except Exception as e:  # the same failure both ways (a client refusing, say)
            states.append(repr(e))
            break
        states.append(
            [
                world.state(),
                [
                    (len(s.pending), s.response_complete, s.manager and s.manager.body)
                    for s in streams
                ],
            ]
        )
    return states


def _step(world: World, streams: list[H2Stream], op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "open":
        if len(streams) < 4:
            streams.append(world.open(op[1]))
    elif kind == "settings":
        code, value = op[1], op[2]
        if code == SettingCodes.MAX_FRAME_SIZE:
            value = max(16384, value * 200)
        world.client.update_settings({code: value})
        world.server.dataReceived(world.client.data_to_send())
    elif streams:
        stream = streams[op[1] % len(streams)]
        if kind == "head" and not stream.response_started:
            stream.send_head(op[2], Headers(op[3]), op[4])
        elif kind == "data" and stream.response_started:
            stream.send_data(bytes(range(256)) * (op[2] // 256) + b"z" * (op[2] % 256), op[3])
        elif kind == "window":
            if world.client.streams.get(stream.stream_id) is not None:
                world.client.increment_flow_control_window(op[2], stream_id=None)
                world.client.increment_flow_control_window(op[2], stream_id=stream.stream_id)
                world.server.dataReceived(world.client.data_to_send())
        elif kind in ("body", "padded body"):
            sid = stream.stream_id
            client_stream = world.client.streams.get(sid)
            if client_stream is not None and client_stream.state_machine.state in (
                StreamState.OPEN,
                StreamState.HALF_CLOSED_REMOTE,
            ):
                size = min(
                    op[2],
                    world.client.local_flow_control_window(sid),
                    world.client.max_outbound_frame_size,
                )
                payload = bytes(i % 256 for i in range(size))
                if kind == "body":
                    world.client.send_data(sid, payload, end_stream=op[3])
                else:
                    world.client.send_data(sid, payload[: max(0, size - 8)], pad_length=7)
                world.server.dataReceived(world.client.data_to_send())
        elif kind == "reset" and not stream.response_complete:
            world.client.reset_stream(stream.stream_id)
            world.server.dataReceived(world.client.data_to_send())
    world.exchange()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ops)
def test_the_client_sees_what_h2_would_have_sent(ops: list[tuple[Any, ...]]) -> None:
    assert _run(World(False), ops) == _run(World(True), ops)


def test_a_response_and_its_body_in_small_windows() -> None:
    """One scenario spelled out: a 40,000-byte body into a 1,000-byte window goes as the
    window opens, the end with the last of it; the client reads the same both ways."""
    ops: list[tuple[Any, ...]] = [
        ("settings", SettingCodes.INITIAL_WINDOW_SIZE, 1000),
        ("open", True),
        ("head", 0, 200, [("content-type", "text/event-stream")], False),
        ("data", 0, 40_000, True),
        *[("window", 0, 5000)] * 8,
    ]
    world = World(False)
    assert _run(world, ops) == _run(World(True), ops)
    got = b"".join(e[2] for e in world.seen if e[0] == "data")
    assert len(got) == 40_000
    assert world.seen[-1] == ("StreamEnded", 1)


# -- a request's header list: request_fields against h2's own validation ---------------------

_request_names = st.sampled_from(
    [
        ":method", ":scheme", ":path", ":authority", ":status", ":protocol", ":other",
        "host", "cookie", "te", "connection", "keep-alive", "transfer-encoding", "upgrade",
        "content-type", "x-a", "X-Upper", "x a", "x:a", "", "x\x7f", "x-é",
    ]
)  # fmt: skip
_request_values = st.sampled_from(
    ["GET", "POST", "CONNECT", "http", "/", "", "gw", "other", "trailers", "gzip", " pad",
     "pad\t", "a\r\nb", "a\x00b", "a=b", "c=d", "text/plain"]
)  # fmt: skip
_required = [(":method", "POST"), (":scheme", "http"), (":path", "/x"), (":authority", "gw")]


def _h2_verdict(fields: list[tuple[str, str]]) -> list[tuple[bytes, bytes]] | None:
    """What h2, validating and normalising, makes of a request's header list: its fields,
    or None where it refuses them."""
    from h2.events import RequestReceived
    from h2.exceptions import H2Error

    client = H2Connection(H2Configuration(client_side=True, validate_outbound_headers=False,
                                          normalize_outbound_headers=False))  # fmt: skip
    server = H2Connection(H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    from hyperframe.frame import HeadersFrame

    frame = HeadersFrame(1, Encoder().encode([(n.encode(), v.encode()) for n, v in fields]))
    frame.flags.add("END_HEADERS")
    frame.flags.add("END_STREAM")
    try:
        events = server.receive_data(frame.serialize())
    except H2Error:
        return None
    [request] = [e for e in events if isinstance(e, RequestReceived)]
    return [(bytes(n), bytes(v)) for n, v in request.headers or ()]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(_request_names, _request_values), max_size=6),
    st.integers(0, 4),
    st.permutations(range(4)),
)
def test_a_request_is_refused_exactly_where_h2_refuses_it(
    extra: list[tuple[str, str]], keep: int, order: list[int]
) -> None:
    """request_fields, run where h2's validation no longer runs, accepts and refuses the
    header lists h2 would, and gives the same fields (cookies joined, last)."""
    from filterproxy.http.h2wire import request_fields

    required = [_required[i] for i in order[:keep]]
    fields = [*sorted(required, key=lambda f: not f[0].startswith(":")), *extra]
    h2s = _h2_verdict(fields)
    raw = [(n.encode(), v.encode()) for n, v in fields]
    ours = request_fields(raw, {})
    if h2s is None:
        assert isinstance(ours, str)
    else:
        assert ours == [(n.decode("latin-1"), v.decode("latin-1")) for n, v in h2s]
    # On a connection that remembers the fields of the requests before: the same answer.
    assert request_fields(raw, _REMEMBERED) == ours
    assert request_fields(raw, _REMEMBERED) == ours


#: Fields one long connection has checked, across the examples.
_REMEMBERED: dict[tuple[bytes, bytes], tuple[str, str]] = {}


def test_a_malformed_request_gets_a_400_that_says_why_and_a_reset() -> None:
    world = World(False)
    client = world.client
    client.config.validate_outbound_headers = False
    client.config.normalize_outbound_headers = False
    sid = client.get_next_available_stream_id()
    client.send_headers(
        sid,
        [(":method", "POST"), (":scheme", "http"), (":path", "/x"), (":authority", "gw"),
         ("connection", "keep-alive")],
    )  # fmt: skip
    world.server.dataReceived(client.data_to_send())
    world.exchange()
    seen = [e for e in world.seen if e[1:2] == (sid,)]
    # A stream error (RFC 9113 8.1.1): the answer does not end the stream, a reset does.
    assert [e[0] for e in seen] == ["ResponseReceived", "data", "StreamReset"]
    assert (":status", "400") in seen[0][2]
    assert b"connection-specific" in seen[1][2]
    assert not world.server.streams  # nothing reached a filter chain
    # The connection goes on: the next request is taken.
    world.open(True)
    assert len(world.server.streams) == 1


def test_a_connection_remembers_fields_by_name_and_value_and_only_so_many() -> None:
    from filterproxy.http.h2wire import FIELDS_KEPT, request_fields

    checked: dict[tuple[bytes, bytes], tuple[str, str]] = {}
    required = [(n.encode(), v.encode()) for n, v in _required]
    for n in range(2 * FIELDS_KEPT + 50):
        value = b"" if n % 2 else b"v%d" % n
        assert request_fields([*required, (b"x-a", value), (b"x-b", b"w" * 130)], checked) == [
            *_required,
            ("x-a", value.decode()),
            ("x-b", "w" * 130),
        ]
    assert len(checked) == FIELDS_KEPT
    assert (b"x-b", b"w" * 130) not in checked  # a long field is checked every time


def test_a_connection_remembers_only_so_many_short_response_names() -> None:
    from filterproxy.http.h2wire import NAMES_KEPT

    names: dict[str, bytes] = {}
    decoder = Decoder()
    for n in range(NAMES_KEPT + 20):
        fields = [(":status", "200"), (f"x-{n}", "v"), ("x-" + "l" * 100, "w")]
        block = header_block(fields, names)
        assert block is not None and decoded(block, decoder) == fields
    assert len(names) == NAMES_KEPT
    assert "x-" + "l" * 100 not in names
