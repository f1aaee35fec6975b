"""Every private attribute of Twisted, pyOpenSSL, h2, hpack and botocore listed in
`filterproxy.runtime._private_apis` exists, as the kind of thing listed, in the installed
versions: a release that drops one fails here, by name."""

from __future__ import annotations

import gc
import socket
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import endpoints, tcp
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.reflect import namedAny

from filterproxy.runtime._epoll import GatewayReactor
from filterproxy.runtime._private_apis import PRIVATE_APIS, PrivateAPI


def _tcp_server(reactor: Any) -> Any:
    """The server transport of a real loopback connection (accepted by hand: the
    reactor does not run)."""
    built: list[Protocol] = []

    class Recording(Factory):
        def buildProtocol(self, addr: Any) -> Protocol:
            built.append(Protocol())
            return built[-1]

    port = reactor.listenTCP(0, Recording(), interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        port.doRead()
        (protocol,) = built
        return protocol.transport
    finally:
        client.close()
        port.stopListening()


def _tcp_client(reactor: Any) -> Any:
    connector = tcp.Connector("127.0.0.1", 9, ClientFactory(), 30, None, reactor)
    connector.connect()
    return connector.transport


def _tls(reactor: Any) -> Any:
    from twisted.internet.ssl import CertificateOptions
    from twisted.protocols.tls import TLSMemoryBIOFactory

    protocol = TLSMemoryBIOFactory(
        CertificateOptions(), True, Factory.forProtocol(Protocol)
    ).buildProtocol(None)
    protocol.makeConnection(StringTransport())
    return protocol


def _openssl(reactor: Any) -> Any:
    from OpenSSL.SSL import TLS_METHOD, VERIFY_PEER, Connection, Context

    connection = Connection(Context(TLS_METHOD))
    connection.set_verify(VERIFY_PEER, lambda *args: True)
    assert callable(connection._verify_helper.callback)
    return connection


def _wrapping_factory(reactor: Any) -> Any:
    factory = endpoints._WrappingFactory(Factory.forProtocol(Protocol))
    factory.startedConnecting(object())
    return factory


def _h2(reactor: Any) -> Any:
    from h2.connection import H2Connection

    connection = H2Connection()
    assert isinstance(connection._frame_dispatch_table, dict)
    return connection


def _refreshable_credentials(reactor: Any) -> Any:
    import datetime

    from botocore.credentials import RefreshableCredentials

    expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    return RefreshableCredentials("AKID", "secret", "token", expiry, lambda: {}, "test")


def _h2_stream(reactor: Any) -> Any:
    from h2.connection import H2Connection

    connection = H2Connection()
    connection.initiate_connection()
    connection.send_headers(
        1, [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", "a")]
    )
    return connection.streams[1]


#: How to get an object that has each owner's attributes.
INSTANCES: dict[str, Callable[[Any], Any]] = {
    "twisted.internet.base.ReactorBase": lambda reactor: reactor,
    "twisted.internet.epollreactor.EPollReactor": lambda reactor: reactor,
    "twisted.internet.posixbase.PosixReactorBase": lambda reactor: reactor,
    "twisted.internet.abstract.FileDescriptor": _tcp_server,
    "twisted.internet.tcp.Connection": _tcp_server,
    "twisted.internet.tcp.BaseClient": _tcp_client,
    "twisted.internet.base.BaseConnector": lambda reactor: _tcp_client(reactor).connector,
    "twisted.internet.endpoints._WrappingFactory": _wrapping_factory,
    "twisted.protocols.tls.TLSMemoryBIOProtocol": _tls,
    "OpenSSL.SSL.Connection": _openssl,
    "h2.connection.H2Connection": _h2,
    "h2.frame_buffer.FrameBuffer": lambda reactor: _h2(reactor).incoming_buffer,
    "h2.stream.H2Stream": _h2_stream,
    "hpack.table.HeaderTable": lambda reactor: _h2(reactor).decoder.header_table,
    "botocore.credentials.RefreshableCredentials": _refreshable_credentials,
}


@pytest.mark.parametrize("api", PRIVATE_APIS, ids=lambda a: f"{a.owner}.{a.name}")
def test_each_private_attribute_relied_on_exists(api: PrivateAPI) -> None:
    reactor = GatewayReactor()  # not installed: a private instance for the check
    instance = None
    try:
        owner = namedAny(api.owner)
        instance = INSTANCES[api.owner](reactor)
        assert isinstance(instance, owner)
        if api.kind == "method":
            found = callable(getattr(owner, api.name, None))
        else:
            assert api.kind == "attribute"
            found = hasattr(instance, api.name)
        assert found, f"{api.owner}.{api.name} is gone; it was for {api.used_by}"
    finally:
        reactor._poller.close()
        del reactor, instance
        gc.collect()  # a reactor and its transports refer to each other
