"""A pool of persistent connections to one endpoint of a cluster: HTTP/1.1 (one request
per connection at a time) or HTTP/2 (many streams per connection), as the cluster's
``protocol`` says — ``auto`` lets TLS's ALPN decide, connection by connection.

`max_connections` caps connections open at once (idle or busy); a request beyond it
waits for a connection (or, with HTTP/2, a stream) to come free. `max_idle_connections`
caps HTTP/1.1 connections kept open while idle, and `idle_connection_timeout` closes an
idle one before the upstream would, so a request rarely meets a connection the upstream
has already dropped.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from typing import TYPE_CHECKING, Any, TypeAlias

from twisted.internet import defer
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.interfaces import IHandshakeListener, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from filterproxy.runtime.deadlines import deadlines_for
from filterproxy.runtime.teardown import forget_traceback, release_connector, tls_factory
from filterproxy.upstream.connection import (
    HTTP11ClientConnection,
    State,
    UpstreamExchange,
    tls_error,
)
from filterproxy.upstream.errors import ConnectTimeout, NotHTTP2, TLSHandshakeFailed

if TYPE_CHECKING:
    from filterproxy.config import ClusterConfig, EndpointConfig
    from filterproxy.upstream.h2 import H2ClientConnection

__all__ = ["ConnectTimeout", "ConnectionPool", "NotHTTP2", "TLSHandshakeFailed"]

log = Logger(namespace=__name__)


#: A connection the pool hands out.
_Upstream: TypeAlias = "HTTP11ClientConnection | H2ClientConnection"


def _may_speak_h2(cluster: ClusterConfig, endpoint: EndpointConfig) -> bool:
    """Whether connections to *endpoint* may speak HTTP/2: the cluster asks for it, or
    leaves it to ALPN over TLS."""
    return cluster.protocol == "http2" or (
        cluster.protocol == "auto" and endpoint.scheme == "https"
    )


def _h2_connection(pool: ConnectionPool) -> H2ClientConnection:
    """A new HTTP/2 connection. `filterproxy.upstream.h2` (with the h2 package, about
    1 MB of memory that a gateway whose upstreams speak HTTP/1.1 does without) is
    imported when a pool is made for a cluster that may speak HTTP/2 (`_may_speak_h2`)."""
    from filterproxy.upstream.h2 import H2ClientConnection

    return H2ClientConnection(pool)


@implementer(IHandshakeListener)
class _ALPNSelector(Protocol):
    """Stands in until the TLS handshake has settled the protocol (ALPN), then hands
    the transport to an HTTP/2 or an HTTP/1.1 connection; `ready` fires with it."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        #: Fires once with the connection (None after: its canceller refers back to this
        #: selector, a cycle that would keep both for the cycle collector).
        self.ready: defer.Deferred[_Upstream] | None = defer.Deferred(self._cancel)
        self.chosen: _Upstream | None = None

    def _settle(self, outcome: _Upstream | Exception | Failure) -> None:
        ready, self.ready = self.ready, None
        if ready is None:
            return
        if isinstance(outcome, Exception | Failure):
            ready.errback(outcome)
        else:
            ready.callback(outcome)

    def handshakeCompleted(self) -> None:
        transport: Any = self.transport
        negotiated = getattr(transport, "negotiatedProtocol", None)
        if negotiated == b"h2":
            chosen: _Upstream = _h2_connection(self.pool)
        elif self.pool.cluster.protocol == "http2":
            self._settle(
                NotHTTP2(
                    f"{self.pool.address.url} did not agree to HTTP/2 in its TLS handshake "
                    "(ALPN); set the cluster's protocol to auto or http1"
                )
            )
            transport.abortConnection()
            return
        else:
            chosen = HTTP11ClientConnection(self.pool)
        self.chosen = chosen
        transport.wrappedProtocol = chosen
        chosen.makeConnection(transport)
        self._settle(chosen)

    def dataReceived(self, data: bytes) -> None:
        if self.chosen is not None:
            self.chosen.dataReceived(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.ready is not None:
            problem = tls_error(reason)
            if problem is not None:
                self._settle(
                    TLSHandshakeFailed(f"TLS handshake with the upstream failed: {problem}")
                )
            else:
                self._settle(reason)
        release_connector(self.transport)
        forget_traceback(reason)

    def _cancel(self, _: object) -> None:
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def buildProtocol(self, addr: object) -> Protocol | HTTP11ClientConnection:  # type: ignore[override]
        pool = self.pool
        if pool.address.scheme == "https":
            if pool.cluster.protocol == "http1":
                return HTTP11ClientConnection(pool)
            return _ALPNSelector(pool)
        if pool.cluster.protocol == "http2":
            return _h2_connection(pool)  # cleartext: prior knowledge (h2c)
        return HTTP11ClientConnection(pool)


class ConnectionPool:
    """Connections to one endpoint, handed out one request at a time."""

    def __init__(self, reactor: Any, cluster: ClusterConfig, endpoint: EndpointConfig) -> None:
        self.reactor = reactor
        self.cluster = cluster
        self.address = endpoint
        self.idle: list[HTTP11ClientConnection] = []
        self.waiters: deque[defer.Deferred[UpstreamExchange]] = deque()
        #: HTTP/2 connections that may take new streams (or will once streams end).
        self.h2_connections: list[H2ClientConnection] = []
        #: Connections being opened that will (or may) speak HTTP/2.
        self.h2_connecting = 0
        #: Connections open or being opened.
        self.open_count = 0
        self.closed = False
        #: Idle connections' limits (idle_connection_timeout), as coarse deadlines.
        self.deadlines = deadlines_for(reactor)
        if _may_speak_h2(cluster, endpoint):
            # Now, at start-up or on reload, rather than on a request's path.
            import filterproxy.upstream.h2  # noqa: F401
        connector = _tcp_endpoint(reactor, endpoint, cluster.timeouts.connect)
        if endpoint.scheme == "https":
            connector = _TLSClientEndpoint(_tls_options(cluster, endpoint.host), connector)
        self.connector = connector

    def acquire(
        self, connect_timeout: float, *, fresh: bool = False
    ) -> defer.Deferred[UpstreamExchange]:
        """A connection (or HTTP/2 stream) for one request, within *connect_timeout*
        seconds (else it fails with `ConnectTimeout`); cancel the Deferred to give up
        waiting. Callers on the request path try `take_idle` first, which needs no
        Deferred. With *fresh*, never an existing connection."""
        if not fresh:
            conn = self.take_idle()
            if conn is not None:
                return defer.succeed(conn)
            if self.h2_connecting:
                from filterproxy.upstream.h2 import MAX_STREAMS

                if len(self.waiters) < self.h2_connecting * MAX_STREAMS:
                    # An HTTP/2 connection on its way will take this request too.
                    return self._wait(connect_timeout)
        if self.open_count >= self.cluster.max_connections:
            return self._wait(connect_timeout)
        return self._connect(connect_timeout)

    def take_idle(self) -> UpstreamExchange | None:
        """A stream on an HTTP/2 connection with room, or a pooled idle HTTP/1.1
        connection, if there is one."""
        for h2 in self.h2_connections:
            if h2.has_capacity():
                return h2.new_stream()
        while self.idle:
            conn = self.idle.pop()
            self.deadlines.clear(conn)
            if conn.state is State.IDLE:
                return conn
        return None

    def _wait(self, timeout: float) -> defer.Deferred[UpstreamExchange]:
        """Wait for a connection or stream to come free (all `max_connections` are busy,
        or an HTTP/2 connection is being opened)."""
        waiter: defer.Deferred[UpstreamExchange] = defer.Deferred(self.waiters.remove)
        self.waiters.append(waiter)

        def busy(result: object, timeout: float) -> Failure:
            return Failure(
                ConnectTimeout(
                    f"all {self.cluster.max_connections} connections to {self.address.url} "
                    f"stayed busy for {timeout:g}s (max_connections)"
                )
            )

        return waiter.addTimeout(timeout, self.reactor, onTimeoutCancel=busy)

    def _connect(self, timeout: float) -> defer.Deferred[UpstreamExchange]:
        self.open_count += 1
        may_be_h2 = _may_speak_h2(self.cluster, self.address)
        if may_be_h2:
            self.h2_connecting += 1

        def too_slow(result: object, timeout: float) -> Failure:
            return Failure(
                ConnectTimeout(
                    f"no connection to {self.address.host}:{self.address.port} within "
                    f"{timeout:g}s (timeouts.connect)"
                )
            )

        def settled(result: object) -> object:
            if may_be_h2:
                self.h2_connecting -= 1
            return result

        def failed(failure: Failure) -> Failure:
            self.open_count -= 1
            self._wake_waiter()
            return failure

        # A factory per connection rather than one kept by the pool: the pool would refer
        # to it and it to the pool, a cycle that outlives a config reload.
        attempt = self.connector.connect(_ConnectionFactory(self))
        attempt.addCallback(self._negotiated)
        attempt.addTimeout(timeout, self.reactor, onTimeoutCancel=too_slow)
        attempt.addBoth(settled)
        attempt.addErrback(failed)
        return attempt  # type: ignore[no-any-return]

    def _negotiated(self, protocol: _Upstream) -> Any:
        """The exchange a new connection offers, once its protocol is known."""
        if isinstance(protocol, _ALPNSelector):
            assert protocol.ready is not None, "negotiated before the handshake"
            return protocol.ready.addCallback(self._negotiated)
        if not isinstance(protocol, HTTP11ClientConnection):  # HTTP/2
            self.h2_connections.append(protocol)
            stream = protocol.new_stream()
            self.reactor.callLater(0, self.h2_capacity, protocol)  # for those waiting
            return stream
        return protocol

    def h2_capacity(self, connection: H2ClientConnection) -> None:
        """*connection* may take more streams: give them to waiting requests."""
        while self.waiters and connection.has_capacity():
            self.waiters.popleft().callback(connection.new_stream())

    def h2_discard(self, connection: H2ClientConnection) -> None:
        """*connection* closed."""
        if connection in self.h2_connections:
            self.h2_connections.remove(connection)
            self.open_count -= 1
            self._wake_waiter()

    def release(self, conn: HTTP11ClientConnection) -> None:
        """*conn* finished a response and can take another request. Only a connection
        that is idle (at a message boundary) and reading is kept: one whose socket is
        paused would leave the next request's answer unread in it."""
        if conn.state is not State.IDLE or conn.paused or self.closed:
            conn.abort()
            return
        if self.waiters:
            self.waiters.popleft().callback(conn)
            return
        if len(self.idle) >= self.cluster.max_idle_connections:
            conn.abort()
            return
        self.deadlines.set(conn, self.cluster.idle_connection_timeout, conn.idle_expired)
        self.idle.append(conn)

    def expire(self, conn: HTTP11ClientConnection) -> None:
        """*conn* stayed idle for ``idle_connection_timeout``: close it."""
        if conn in self.idle:
            self.idle.remove(conn)
        conn.abort()

    def discard(self, conn: HTTP11ClientConnection) -> None:
        """*conn* closed."""
        self.open_count -= 1
        self.deadlines.clear(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self._wake_waiter()

    def _wake_waiter(self) -> None:
        if self.waiters and self.open_count < self.cluster.max_connections and not self.closed:
            waiter = self.waiters.popleft()
            self._connect(self.cluster.timeouts.connect).chainDeferred(waiter)

    def close(self) -> None:
        """Close every idle connection; busy ones close when their response ends."""
        self.closed = True
        for conn in list(self.idle):
            conn.abort()
        self.idle.clear()
        for h2 in list(self.h2_connections):
            h2.goaway = True  # no new streams; it closes after its last one
            if not h2.streams and not h2.reserved:
                h2.abort()
        while self.waiters:
            self.waiters.popleft().cancel()


def _tcp_endpoint(reactor: Any, endpoint: EndpointConfig, timeout: float) -> Any:
    """A client endpoint for *endpoint*'s host: IP literals skip name resolution."""
    try:
        address = ipaddress.ip_address(endpoint.host)
    except ValueError:
        return HostnameEndpoint(reactor, endpoint.host, endpoint.port, timeout=timeout)
    endpoint_type = TCP4ClientEndpoint if address.version == 4 else TCP6ClientEndpoint
    return endpoint_type(reactor, endpoint.host, endpoint.port, timeout=timeout)


def alpn_protocols(protocol: str) -> list[bytes]:
    """What a TLS client offers by ALPN for a cluster's ``protocol``."""
    return {"http1": [b"http/1.1"], "http2": [b"h2"]}.get(protocol, [b"h2", b"http/1.1"])


@implementer(IStreamClientEndpoint)
class _TLSClientEndpoint:
    """TLS over another client endpoint, as ``wrapClientTLS`` does: the connection's
    Deferred fires with the protocol the factory built, not the TLS layer under it.

    Ours rather than ``wrapClientTLS`` because Twisted's endpoints module decides at
    import whether it can do TLS, and a gateway started without TLS in its config
    imports it without pyOpenSSL (filterproxy.runtime.lazytls); the TLS layer is imported here,
    on a cluster's first https connection."""

    def __init__(self, options: Any, endpoint: Any) -> None:
        self.options = options
        self.endpoint = endpoint

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        connecting: defer.Deferred[Any] = self.endpoint.connect(
            tls_factory(self.options, True, factory)
        )
        connecting.addCallback(lambda tls: tls.wrappedProtocol)
        return connecting


def _tls_options(cluster: ClusterConfig, host: str) -> Any:
    """Client TLS options: TLS 1.2 at least, the system trust store (or the cluster's CA
    file), SNI and hostname verification, the cluster's client certificate (mTLS), and
    ALPN for its ``protocol``. With ``tls.verify: false`` the certificate is not checked."""
    from twisted.internet.ssl import (
        Certificate,
        CertificateOptions,
        PrivateCertificate,
        TLSVersion,
        optionsForClientTLS,
        platformTrust,
    )

    client_certificate = None
    if cluster.client_cert is not None:
        with open(cluster.client_cert, "rb") as f:
            pem = f.read()
        if cluster.client_key is not None:
            with open(cluster.client_key, "rb") as f:
                pem += b"\n" + f.read()
        client_certificate = PrivateCertificate.loadPEM(pem)
    protocols = alpn_protocols(cluster.protocol)
    if not cluster.tls_verify:
        extra: dict[str, Any] = {}
        if client_certificate is not None:
            extra = {
                "privateKey": client_certificate.privateKey.original,
                "certificate": client_certificate.original,
            }
        return CertificateOptions(
            verify=False,
            raiseMinimumTo=TLSVersion.TLSv1_2,
            acceptableProtocols=protocols,
            **extra,
        )
    trust = platformTrust()
    if cluster.ca_file is not None:
        with open(cluster.ca_file, "rb") as f:
            trust = Certificate.loadPEM(f.read())
    return optionsForClientTLS(
        host,
        trustRoot=trust,
        clientCertificate=client_certificate,
        acceptableProtocols=protocols,
        extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
    )
