"""A gateway on a fake clock, with StringTransports for the client and each upstream
connection: the real protocol objects, no sockets."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock, StringTransport

from filterproxy.downstream.http11 import HTTP11ServerConnection
from filterproxy.downstream.server import GatewayServerFactory
from filterproxy.extensions.builtin import parse_config
from filterproxy.server.service import Gateway
from filterproxy.upstream.connection import HTTP11ClientConnection

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    """*data* as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def post(body: bytes = b'{"model": "m", "stream": true}') -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


class ClientSide:
    """A client connection made by the gateway's own listener factory, on *transport*.

    The factory's protocol selector stands in until the first bytes show the protocol,
    then hands the transport over (as on a socket, later calls reach the chosen
    protocol, not the selector): `protocol` is whichever has the transport now."""

    def __init__(self, gateway: Gateway, transport: StringTransport) -> None:
        self.transport = transport
        self.selector: Any = GatewayServerFactory(gateway).buildProtocol(None)
        self.selector.makeConnection(transport)

    @property
    def protocol(self) -> Any:
        return getattr(self.transport, "protocol", None) or self.selector


class Harness:
    """One client connection to a gateway whose upstream connections are recorded."""

    def __init__(self, config: str, client_transport: StringTransport | None = None) -> None:
        self.reactor = MemoryReactorClock()
        self.gateway = Gateway(parse_config(config, environ={}), self.reactor)
        self.upstreams: list[tuple[HTTP11ClientConnection, StringTransport]] = []
        for cluster in self.gateway.clusters.values():
            for endpoint in cluster.endpoints:
                endpoint.pool.acquire = self._acquirer(endpoint.pool)  # type: ignore[method-assign]
                # Every attempt gets a new recorded connection: no reuse from the pool.
                endpoint.pool.take_idle = lambda: None  # type: ignore[method-assign]
        self.client_transport = client_transport or StringTransport()
        self.client_side = ClientSide(self.gateway, self.client_transport)

    @property
    def client(self) -> HTTP11ServerConnection:
        """The client connection (the listener's selector until the first bytes)."""
        return self.client_side.protocol  # type: ignore[no-any-return]

    def _acquirer(self, pool: object) -> object:
        def acquire(timeout: float, fresh: bool = False) -> defer.Deferred[HTTP11ClientConnection]:
            connection = HTTP11ClientConnection(pool)  # type: ignore[arg-type]
            transport = StringTransport()
            connection.makeConnection(transport)
            self.upstreams.append((connection, transport))
            return defer.succeed(connection)

        return acquire

    @property
    def upstream(self) -> HTTP11ClientConnection:
        return self.upstreams[-1][0]

    @property
    def upstream_transport(self) -> StringTransport:
        return self.upstreams[-1][1]

    def received(self) -> bytes:
        return self.client_transport.value()
