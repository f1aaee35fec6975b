"""A pool of persistent HTTP/1.1 connections to one cluster endpoint.

`max_connections` caps connections open at once (idle or busy); a request beyond it
waits for a connection to come back. `max_idle_connections` caps those kept open while
idle, and `idle_connection_timeout` closes an idle one before the upstream would, so a
request rarely meets a connection the upstream has already dropped.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, error
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
    from twisted.internet.interfaces import IDelayedCall

    from filterproxy.config import ClusterConfig

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
    """Connections to one cluster, handed out one request at a time."""

    def __init__(self, reactor: Any, cluster: ClusterConfig) -> None:
        self.reactor = reactor
        self.cluster = cluster
        self.idle: list[HTTP11ClientConnection] = []
        self.waiters: deque[defer.Deferred[HTTP11ClientConnection]] = deque()
        #: Connections open or being opened.
        self.open_count = 0
        self.closed = False
        endpoint = _tcp_endpoint(reactor, cluster)
        if cluster.scheme == "https":
            endpoint = wrapClientTLS(_tls_options(cluster), endpoint)
        self.endpoint = endpoint
        self.factory = _ConnectionFactory(self)

    def acquire(self, *, fresh: bool = False) -> defer.Deferred[HTTP11ClientConnection]:
        """A connection for one request; cancel the Deferred to give up waiting."""
        while self.idle and not fresh:
            conn = self.idle.pop()
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            if conn.state is State.IDLE:
                return defer.succeed(conn)
        if self.open_count >= self.cluster.max_connections:
            waiter: defer.Deferred[HTTP11ClientConnection] = defer.Deferred(self.waiters.remove)
            self.waiters.append(waiter)
            return waiter
        return self._connect()

    def _connect(self) -> defer.Deferred[HTTP11ClientConnection]:
        self.open_count += 1
        attempt = self.endpoint.connect(self.factory)
        timer: IDelayedCall = self.reactor.callLater(self.cluster.connect_timeout, attempt.cancel)
        timed_out = []

        def settle(result: object) -> object:
            if timer.active():
                timer.cancel()
            else:
                timed_out.append(True)
            return result

        def failed(failure: Failure) -> Failure:
            self.open_count -= 1
            self._wake_waiter()
            if timed_out and failure.check(defer.CancelledError, error.ConnectingCancelledError):
                raise ConnectTimeout(
                    f"no connection to {self.cluster.host}:{self.cluster.port} within "
                    f"{self.cluster.connect_timeout:g}s"
                )
            return failure

        attempt.addBoth(settle)
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
            self._connect().chainDeferred(waiter)

    def close(self) -> None:
        """Close every idle connection; busy ones close when their response ends."""
        self.closed = True
        for conn in list(self.idle):
            conn.abort()
        self.idle.clear()
        while self.waiters:
            self.waiters.popleft().cancel()


def _tcp_endpoint(reactor: Any, cluster: ClusterConfig) -> Any:
    """An endpoint for the cluster's host: IP literals skip name resolution."""
    try:
        address = ipaddress.ip_address(cluster.host)
    except ValueError:
        return HostnameEndpoint(
            reactor, cluster.host, cluster.port, timeout=cluster.connect_timeout
        )
    endpoint_type = TCP4ClientEndpoint if address.version == 4 else TCP6ClientEndpoint
    return endpoint_type(reactor, cluster.host, cluster.port, timeout=cluster.connect_timeout)


def _tls_options(cluster: ClusterConfig) -> Any:
    """Client TLS options: the system trust store (or the cluster's CA file), SNI and
    hostname verification. With ``tls.verify: false`` the certificate is not checked."""
    if not cluster.tls_verify:
        from twisted.internet.ssl import CertificateOptions

        return CertificateOptions(verify=False)
    trust = platformTrust()
    if cluster.ca_file is not None:
        with open(cluster.ca_file, "rb") as f:
            trust = Certificate.loadPEM(f.read())
    return optionsForClientTLS(cluster.host, trustRoot=trust)
