"""The listeners' factory: HTTP/1.1 or HTTP/2 per connection.

TLS listeners offer ``h2`` and ``http/1.1`` by ALPN; once the handshake has settled the
protocol, the connection's real protocol object takes the transport over. On cleartext
listeners a connection that opens with the HTTP/2 preface speaks HTTP/2 with prior
knowledge (h2c, as ``curl --http2-prior-knowledge`` and gRPC-style clients do); any
other speaks HTTP/1.1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import (
    IHandshakeListener,
    IProtocolNegotiationFactory,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol, ServerFactory
from zope.interface import implementer

from filterproxy.downstream.http11 import HTTP11ServerConnection

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from filterproxy.downstream.interfaces import ClientConnection, ServingGateway

__all__ = ["GatewayServerFactory"]

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _h2_connection(factory: GatewayServerFactory, scheme: str) -> Protocol:
    """An HTTP/2 client connection. The HTTP/2 stack (`filterproxy.downstream.h2` and
    the h2 package, about 1 MB of memory) is imported with the process's first HTTP/2
    client, once (7 to 9 ms measured): a gateway whose clients speak HTTP/1.1 never loads it."""
    from filterproxy.downstream.h2 import H2ServerConnection

    return H2ServerConnection(factory, scheme)


@implementer(IHandshakeListener)
class _ProtocolSelector(Protocol):
    """Stands in for the connection's protocol until it is known, then hands over."""

    def __init__(self, factory: GatewayServerFactory) -> None:
        self.factory = factory
        self.timer: IDelayedCall | None = None
        self.chosen: Protocol | HTTP11ServerConnection | None = None
        #: Cleartext: the first bytes, until they show whether this is HTTP/2.
        self.head = b""

    def connectionMade(self) -> None:
        # A client that never finishes its TLS handshake (or sends nothing) must not
        # hold the socket.
        limits = self.factory.gateway.config.limits
        self.timer = self.factory.gateway.reactor.callLater(
            limits.request_header_timeout, self._too_slow
        )

    def handshakeCompleted(self) -> None:
        negotiated = getattr(self.transport, "negotiatedProtocol", None)
        if negotiated == b"h2":
            chosen: Protocol | HTTP11ServerConnection = _h2_connection(self.factory, "https")
        else:
            chosen = HTTP11ServerConnection(self.factory.gateway, self.factory)
        self._hand_over(chosen)

    def _hand_over(self, chosen: Protocol | HTTP11ServerConnection) -> None:
        self._cancel_timer()
        self.chosen = chosen
        transport: Any = self.transport
        if ISSLTransport.providedBy(transport) and hasattr(transport, "wrappedProtocol"):
            transport.wrappedProtocol = chosen
        else:
            transport.protocol = chosen
        chosen.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self.chosen is None:
            if ISSLTransport.providedBy(self.transport):
                self.handshakeCompleted()  # a TLS transport that did not call it
            else:
                self.head += data
                if len(self.head) < len(_PREFACE) and _PREFACE.startswith(self.head):
                    return  # could still be the HTTP/2 preface
                if self.head.startswith(_PREFACE):
                    self._hand_over(_h2_connection(self.factory, "http"))
                else:
                    self._hand_over(HTTP11ServerConnection(self.factory.gateway, self.factory))
                data, self.head = self.head, b""
        assert self.chosen is not None
        self.chosen.dataReceived(data)

    def _too_slow(self) -> None:
        self.timer = None
        if self.chosen is None and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def connectionLost(self, reason: object = None) -> None:
        self._cancel_timer()


@implementer(IProtocolNegotiationFactory)
class GatewayServerFactory(ServerFactory):
    """Builds the protocol of each accepted client connection."""

    noisy = False

    def __init__(self, gateway: ServingGateway, *, http2: bool = True) -> None:
        #: The gateway in force; a config reload replaces it (new requests use the new one).
        self.gateway = gateway
        #: Offer HTTP/2 on TLS listeners (ALPN h2).
        self.http2 = http2
        #: Requests in progress on the listeners (limits.max_concurrent_streams).
        self.active_streams = 0
        #: Open client connections, for a graceful shutdown.
        self.connections: set[ClientConnection] = set()
        self.draining = False

    def acceptableProtocols(self) -> list[bytes]:
        """ALPN on TLS listeners. (Without an answer, Twisted's TLS server aborts the
        handshake of every client that offers ALPN.)"""
        return [b"h2", b"http/1.1"] if self.http2 else [b"http/1.1"]

    def drain(self) -> None:
        """Shutting down: close idle connections now, the others after their responses."""
        self.draining = True
        for connection in list(self.connections):
            connection.drain()

    def buildProtocol(self, addr: object) -> Protocol | HTTP11ServerConnection:  # type: ignore[override]
        if not self.http2:
            return HTTP11ServerConnection(self.gateway, self)
        return _ProtocolSelector(self)
