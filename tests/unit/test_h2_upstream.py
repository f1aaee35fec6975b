"""The HTTP/2 upstream connection against an h2 server driven by the test: GOAWAY,
refused streams, flow control under a paused client, PING keep-alive."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, RequestReceived, StreamEnded, WindowUpdated
from hyperframe.frame import GoAwayFrame
from twisted.internet.testing import MemoryReactorClock, StringTransport

from filterproxy.extensions.builtin import parse_config
from filterproxy.http.headers import Headers
from filterproxy.upstream.connection import UpstreamFailure
from filterproxy.upstream.h2 import H2ClientConnection, H2ClientStream
from filterproxy.upstream.request import UpstreamRequest

CONFIG = parse_config(
    'clusters: {up: {url: "http://127.0.0.1:9", protocol: http2, ping_interval: 5s, ping_timeout: 2s}}',
    environ={},
)


class FakePool:
    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.cluster = CONFIG.clusters["up"]
        self.address = self.cluster.endpoints[0]
        self.capacity_calls = 0
        self.discarded: list[H2ClientConnection] = []

    def h2_capacity(self, connection: H2ClientConnection) -> None:
        self.capacity_calls += 1

    def h2_discard(self, connection: H2ClientConnection) -> None:
        self.discarded.append(connection)


class Handler:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_response_head(self, status: int, headers: Headers) -> None:
        self.events.append(("head", status))

    def on_response_data(self, data: bytes, end_stream: bool) -> None:
        self.events.append(("data", data, end_stream))

    def on_upstream_failure(self, kind: UpstreamFailure, detail: str) -> None:
        self.events.append(("failure", kind, detail))

    def on_read_done(self) -> None:
        pass


class Harness:
    def __init__(self) -> None:
        self.pool = FakePool()
        self.connection = H2ClientConnection(self.pool)  # type: ignore[arg-type]
        self.transport = StringTransport()
        self.connection.makeConnection(self.transport)
        self.server = H2Connection(H2Configuration(client_side=False))
        self.server.initiate_connection()
        self.to_server()
        self.to_client()

    def to_server(self) -> list[Any]:
        data = self.transport.value()
        self.transport.clear()
        return self.server.receive_data(data)

    def to_client(self) -> None:
        self.connection.dataReceived(self.server.data_to_send())

    def request(self) -> tuple[H2ClientStream, Handler, int]:
        stream = self.connection.new_stream()
        handler = Handler()
        request = UpstreamRequest(
            "POST", "/v1/chat/completions", Headers([("host", "up")]), "http", "up"
        )
        stream.send_request(request, b'{"model": "m"}', handler, is_head=False)
        received = [e for e in self.to_server() if isinstance(e, RequestReceived)]
        assert received
        return stream, handler, received[-1].stream_id

    def respond(self, sid: int, body: bytes = b"", end: bool = True) -> None:
        self.server.send_headers(sid, [(":status", "200"), ("content-type", "text/event-stream")])
        if body or end:
            self.server.send_data(sid, body, end_stream=end)
        self.to_client()


def test_requests_share_one_connection_with_its_pseudo_headers() -> None:
    h = Harness()
    _, first, sid1 = h.request()
    _, second, sid2 = h.request()
    assert (sid1, sid2) == (1, 3)
    h.respond(sid2, b"data: b\n\n")
    h.respond(sid1, b"data: a\n\n")
    assert first.events == [("head", 200), ("data", b"data: a\n\n", False), ("data", b"", True)]
    assert second.events[-1] == ("data", b"", True)
    assert h.connection.has_capacity() and not h.connection.streams


def test_goaway_lets_answered_streams_finish_and_refuses_the_rest() -> None:
    h = Harness()
    _, first, sid1 = h.request()
    second_stream, second, _ = h.request()
    # GOAWAY as a server that will still answer stream 1 sends it.
    goaway = GoAwayFrame(stream_id=0, last_stream_id=sid1, error_code=0).serialize()
    h.connection.dataReceived(goaway)
    assert second.events == [
        ("failure", UpstreamFailure.RESET_BEFORE_RESPONSE, "upstream sent GOAWAY (NO_ERROR)")
    ]
    assert second_stream.requests_served == 1  # refused: safe to send again at once
    assert not h.connection.has_capacity()
    h.respond(sid1, b"data: a\n\n")
    assert first.events[-1] == ("data", b"", True)
    assert h.transport.disconnecting  # closed after its last stream


def test_a_refused_stream_may_be_sent_again() -> None:
    h = Harness()
    stream, handler, sid = h.request()
    h.server.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
    h.to_client()
    assert handler.events[0][:2] == ("failure", UpstreamFailure.RESET_BEFORE_RESPONSE)
    assert stream.requests_served == 1
    assert h.connection.has_capacity()


def test_a_paused_stream_is_not_acknowledged_until_it_resumes() -> None:
    h = Harness()
    stream, handler, sid = h.request()
    h.respond(sid, end=False)
    stream.pauseProducing()  # the client of this request is slow
    for _ in range(10):  # more than half the stream's window: normally acknowledged
        h.server.send_data(sid, b"x" * 16000)
    h.to_client()
    assert sum(len(e[1]) for e in handler.events if e[0] == "data") == 160000
    updates = [e for e in h.to_server() if isinstance(e, WindowUpdated) and e.stream_id == sid]
    assert updates == []  # the upstream's window for this stream stays spent
    stream.resumeProducing()
    updates = [e for e in h.to_server() if isinstance(e, WindowUpdated) and e.stream_id == sid]
    assert sum(e.delta for e in updates) >= 160000


def test_an_unanswered_ping_closes_the_connection_and_fails_its_streams() -> None:
    h = Harness()
    _, handler, _ = h.request()
    h.pool.reactor.advance(5)
    assert b"\x06" in h.transport.value()  # a PING frame went out (type 6)
    h.to_server()  # the server reads it but never answers
    h.pool.reactor.advance(2)
    assert h.transport.disconnecting or h.transport.disconnected
    assert handler.events[-1][:2] == ("failure", UpstreamFailure.RESET_BEFORE_RESPONSE)


def test_an_answered_ping_keeps_the_connection() -> None:
    h = Harness()
    h.pool.reactor.advance(5)
    h.to_server()
    h.to_client()  # h2 answers PINGs by itself
    h.pool.reactor.advance(2)
    assert not h.transport.disconnecting


def test_pings_can_be_turned_off() -> None:
    h = Harness()
    h.pool.cluster = replace(CONFIG.clusters["up"], ping_interval=0)
    h.connection.ping_timer.cancel()  # type: ignore[union-attr]
    h.connection._arm_ping()
    assert h.connection.ping_timer is None or not h.connection.ping_timer.active()


def test_a_request_body_larger_than_the_window_is_sent_as_the_server_opens_it() -> None:
    h = Harness()
    stream = h.connection.new_stream()
    body = b"b" * 100_000  # more than the server's initial 65,535-byte window
    request = UpstreamRequest("POST", "/v1/embeddings", Headers([("host", "up")]), "http", "up")
    stream.send_request(request, body, Handler(), is_head=False)
    received = bytearray()
    ended = False
    for _ in range(10):
        for event in h.to_server():
            if isinstance(event, DataReceived):
                received += event.data
                h.server.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            ended = ended or isinstance(event, StreamEnded)
        h.to_client()
    assert bytes(received) == body and ended
