"""Backpressure and cancellation through the real protocols on StringTransports.

The client's connection and the upstream connection are the gateway's own protocol
objects; only the sockets are replaced by transports that record what happens to them.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport

from filterproxy.extensions.builtin import parse_config
from filterproxy.server.service import Gateway
from filterproxy.upstream.connection import HTTP11ClientConnection, State

from .harness import ClientSide

# The core's own backpressure: without the delivery filter, which holds (and folds) what
# a slow client has not taken before it pauses the upstream (tests/unit/test_delivery.py).
CONFIG = """
delivery: off
clusters:
  up:
    url: http://upstream.test:8000
    request_headers: {set: {authorization: Bearer sk-provider}}
routes: [{models: [m], cluster: up}]
"""

REQUEST_BODY = json.dumps({"model": "m", "stream": True}).encode()
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer client\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    % (len(REQUEST_BODY), REQUEST_BODY)
)
RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


class Harness:
    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.gateway = Gateway(parse_config(CONFIG, environ={}), self.reactor)
        self.pool = self.gateway.clusters["up"].endpoints[0].pool
        self.upstream = HTTP11ClientConnection(self.pool)
        self.upstream_transport = StringTransport()
        self.upstream.makeConnection(self.upstream_transport)
        self.pool.open_count = 1
        self.pool.acquire = lambda timeout, fresh=False: defer.succeed(self.upstream)  # type: ignore[method-assign]
        self.client_transport = StringTransport()
        self.client_side = ClientSide(self.gateway, self.client_transport)

    @property
    def client(self) -> Any:
        return self.client_side.protocol

    def start_stream(self) -> None:
        self.client.dataReceived(REQUEST)
        sent = self.upstream_transport.value()
        assert sent.startswith(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: upstream.test:8000\r\n"
        )
        assert b"authorization: Bearer sk-provider\r\n" in sent
        assert sent.endswith(REQUEST_BODY)
        self.upstream.dataReceived(RESPONSE_HEAD + b"6\r\ndata: \r\n")


def test_pausing_the_client_pauses_the_upstream_and_resuming_resumes_it() -> None:
    h = Harness()
    h.start_stream()
    assert h.client_transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
    # The upstream connection is the streaming producer of the client's socket.
    assert h.client_transport.producer is h.upstream
    assert h.client_transport.streaming is True
    assert h.upstream_transport.producerState == "producing"

    h.client_transport.producer.pauseProducing()  # the client's socket buffer is full
    assert h.upstream_transport.producerState == "paused"
    h.client_transport.producer.resumeProducing()  # it drained
    assert h.upstream_transport.producerState == "producing"


def test_chunks_are_written_to_the_client_as_they_arrive() -> None:
    h = Harness()
    h.start_stream()
    h.client_transport.clear()
    h.upstream.dataReceived(b"3\r\nabc\r\n")
    assert h.client_transport.value() == b"3\r\nabc\r\n"
    h.upstream.dataReceived(b"2\r\nde\r\n0\r\n\r\n")
    assert h.client_transport.value() == b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"


def test_at_the_end_the_producer_is_unregistered_and_the_connection_pooled_unpaused() -> None:
    h = Harness()
    h.start_stream()
    h.client_transport.producer.pauseProducing()
    h.upstream.dataReceived(b"0\r\n\r\n")
    assert h.client_transport.producer is None
    assert h.upstream.state is State.IDLE
    assert h.pool.idle == [h.upstream]
    assert h.upstream_transport.producerState == "producing"


def test_client_disconnect_after_the_head_aborts_the_upstream_connection() -> None:
    h = Harness()
    h.start_stream()
    h.client.connectionLost(None)  # type: ignore[arg-type]
    assert h.upstream_transport.disconnected
    assert h.upstream.state is State.CLOSED


def test_client_disconnect_before_the_head_aborts_the_upstream_connection() -> None:
    h = Harness()
    h.client.dataReceived(REQUEST)
    assert h.upstream_transport.value()
    h.client.connectionLost(None)  # type: ignore[arg-type]
    assert h.upstream_transport.disconnected


def test_upstream_reset_mid_stream_aborts_the_client_instead_of_a_clean_end() -> None:
    h = Harness()
    h.start_stream()
    h.upstream.connectionLost(None)  # type: ignore[arg-type]
    assert h.client_transport.disconnecting
    assert not h.client_transport.value().endswith(b"0\r\n\r\n")
