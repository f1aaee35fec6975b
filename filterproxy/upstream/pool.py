"""A pool of persistent HTTP/1.1 connections to one endpoint of a cluster.

`max_connections` caps connections open at once (idle or busy); a request beyond it
waits for a connection to come back. `max_idle_connections` caps those kept open while
idle, and `idle_connection_timeout` closes an idle one before the upstream would, so a
request rarely meets a connection the upstream has already dropped.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.protocol import Factory
from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust
from twisted.logger import Logger
from twisted.python.failure import Failure

from filterproxy.upstream.connection import HTTP11ClientConnection, State

if TYPE_CHECKING:
    from filterproxy.config import ClusterConfig, EndpointConfig

__all__ = ["ConnectTimeout", "ConnectionPool"]

log = Logger()


class ConnectTimeout(Exception):
    """No connection was established within the cluster's connect_timeout."""


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def buildProtocol(self, addr: object) -> HTTP11ClientConnection:
        return HTTP11ClientConnection(self.pool)


class ConnectionPool:
    """Connections to one endpoint, handed out one request at a time."""

    def __init__(self, reactor: Any, cluster: ClusterConfig, endpoint: EndpointConfig) -> None:
        self.reactor = reactor
        self.cluster = cluster
        self.address = endpoint
        self.idle: list[HTTP11ClientConnection] = []
        self.waiters: deque[defer.Deferred[HTTP11ClientConnection]] = deque()
        #: Connections open or being opened.
        self.open_count = 0
        self.closed = False
        connector = _tcp_endpoint(reactor, endpoint, cluster.timeouts.connect)
        if endpoint.scheme == "https":
            connector = wrapClientTLS(_tls_options(cluster, endpoint.host), connector)
        self.connector = connector
        self.factory = _ConnectionFactory(self)

    def acquire(
        self, connect_timeout: float, *, fresh: bool = False
    ) -> defer.Deferred[HTTP11ClientConnection]:
        """A connection for one request, within *connect_timeout* seconds (else it fails
        with `ConnectTimeout`); cancel the Deferred to give up waiting. Callers on the
        request path try `take_idle` first, which needs no Deferred."""
        conn = None if fresh else self.take_idle()
        if conn is not None:
            return defer.succeed(conn)
        if self.open_count >= self.cluster.max_connections:
            return self._wait(connect_timeout)
        return self._connect(connect_timeout)

    def take_idle(self) -> HTTP11ClientConnection | None:
        """A pooled idle connection, if there is one."""
        while self.idle:
            conn = self.idle.pop()
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            if conn.state is State.IDLE:
                return conn
        return None

    def _wait(self, timeout: float) -> defer.Deferred[HTTP11ClientConnection]:
        """Wait for a connection to come back (all `max_connections` are busy)."""
        waiter: defer.Deferred[HTTP11ClientConnection] = defer.Deferred(self.waiters.remove)
        self.waiters.append(waiter)

        def busy(result: object, timeout: float) -> Failure:
            return Failure(
                ConnectTimeout(
                    f"all {self.cluster.max_connections} connections to {self.address.url} "
                    f"stayed busy for {timeout:g}s (max_connections)"
                )
            )

        return waiter.addTimeout(timeout, self.reactor, onTimeoutCancel=busy)

    def _connect(self, timeout: float) -> defer.Deferred[HTTP11ClientConnection]:
        self.open_count += 1

        def too_slow(result: object, timeout: float) -> Failure:
            return Failure(
                ConnectTimeout(
                    f"no connection to {self.address.host}:{self.address.port} within "
                    f"{timeout:g}s (timeouts.connect)"
                )
            )

        def failed(failure: Failure) -> Failure:
            self.open_count -= 1
            self._wake_waiter()
            return failure

        attempt = self.connector.connect(self.factory)
        attempt.addTimeout(timeout, self.reactor, onTimeoutCancel=too_slow)
        attempt.addErrback(failed)
        return attempt  # type: ignore[no-any-return]

    def release(self, conn: HTTP11ClientConnection) -> None:
        """*conn* finished a response and can take another request."""
        if conn.state is not State.IDLE or self.closed:
            conn.abort()
            return
        conn.resumeProducing()  # it may have been paused by a slow client at the end
        if self.waiters:
            self.waiters.popleft().callback(conn)
            return
        if len(self.idle) >= self.cluster.max_idle_connections:
            conn.abort()
            return
        conn.idle_timer = self.reactor.callLater(
            self.cluster.idle_connection_timeout, self._expire, conn
        )
        self.idle.append(conn)

    def _expire(self, conn: HTTP11ClientConnection) -> None:
        conn.idle_timer = None
        if conn in self.idle:
            self.idle.remove(conn)
        conn.abort()

    def discard(self, conn: HTTP11ClientConnection) -> None:
        """*conn* closed."""
        self.open_count -= 1
        if conn.idle_timer is not None:
            conn.idle_timer.cancel()
            conn.idle_timer = None
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


def _tls_options(cluster: ClusterConfig, host: str) -> Any:
    """Client TLS options: the system trust store (or the cluster's CA file), SNI and
    hostname verification. With ``tls.verify: false`` the certificate is not checked."""
    if not cluster.tls_verify:
        from twisted.internet.ssl import CertificateOptions

        return CertificateOptions(verify=False)
    trust = platformTrust()
    if cluster.ca_file is not None:
        with open(cluster.ca_file, "rb") as f:
            trust = Certificate.loadPEM(f.read())
    return optionsForClientTLS(host, trustRoot=trust)
