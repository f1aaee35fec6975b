"""The router: the terminal decoder. It sends the request to the chosen cluster and
pumps the response back through the encoders, chunk by chunk, as it arrives.

Backpressure: once the response head arrives, the upstream connection is registered as
a streaming producer on the client's stream. When the client cannot keep up, Twisted
pauses it, the upstream socket is no longer read, and TCP pushes back on the provider.

Cancellation: `cancel()` gives up a pending connection attempt or aborts the upstream
connection at once, so a client that hangs up stops the generation upstream.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from twisted.internet import defer, error
from twisted.logger import Logger
from twisted.python.failure import Failure

from filterproxy.filters.api import RequestHead
from filterproxy.http.headers import (
    Headers,
    UnsafeHeaderError,
    encode_header_block,
    forward_request_headers,
)
from filterproxy.upstream.connection import HTTP11ClientConnection, UpstreamFailure
from filterproxy.upstream.pool import ConnectTimeout

if TYPE_CHECKING:
    from filterproxy.filters.manager import FilterManager
    from filterproxy.service import Gateway

__all__ = ["Router", "connect_failure_reply", "serialize_request_head"]

log = Logger()


_UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f]")


def serialize_request_head(method: str, target: str, headers: Headers) -> bytes:
    """The HTTP/1.1 request line and header block.

    Raises:
        UnsafeHeaderError: a filter set a path or header that would break the framing.
    """
    if _UNSAFE_TARGET.search(target):
        raise UnsafeHeaderError(
            f"request path {target[:80]!r} contains a space or control character"
        )
    return f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + encode_header_block(headers)


def connect_failure_reply(failure: Failure, cluster: str) -> tuple[int, str, str]:
    """Status, message and code for a failed connection attempt to *cluster*."""
    if failure.check(ConnectTimeout, error.TimeoutError):
        return (
            504,
            f"upstream cluster {cluster!r}: {failure.getErrorMessage()}",
            "upstream_connect_timeout",
        )
    if failure.check(error.ConnectionRefusedError):
        return (
            502,
            f"upstream cluster {cluster!r} refused the connection",
            "upstream_connect_refused",
        )
    if failure.check(error.DNSLookupError):
        return 502, f"upstream cluster {cluster!r}: host name lookup failed", "upstream_dns_failure"
    message = failure.getErrorMessage()
    if "certificate" in message.lower() or "verify" in message.lower():
        return (
            502,
            f"upstream cluster {cluster!r}: TLS certificate verification failed ({message})",
            "upstream_tls_failure",
        )
    return (
        502,
        f"upstream cluster {cluster!r}: connection failed ({message})",
        "upstream_connect_failure",
    )


class Router:
    """Sends one request upstream and streams the response back."""

    def __init__(self, manager: FilterManager, gateway: Gateway) -> None:
        self.manager = manager
        self.gateway = gateway
        self.head: RequestHead | None = None
        self.body_parts: list[bytes] = []
        self.pending: defer.Deferred[HTTP11ClientConnection] | None = None
        self.connection: HTTP11ClientConnection | None = None
        self.request_bytes = b""
        self.body = b""
        self.retried_stale = False
        self.cancelled = False

    # -- terminal decoder -------------------------------------------------------------

    def on_request_headers(self, head: RequestHead, end_stream: bool) -> None:
        self.head = head
        if end_stream:
            self._send(b"")

    def on_request_data(self, data: bytes, end_stream: bool) -> None:
        if data:
            self.body_parts.append(data)
        if end_stream:
            parts, self.body_parts = self.body_parts, []
            self._send(parts[0] if len(parts) == 1 else b"".join(parts))

    def _send(self, body: bytes) -> None:
        manager, head = self.manager, self.head
        assert head is not None
        info = manager.stream_info
        cluster_name = info.cluster or (info.route.cluster if info.route else None)
        if cluster_name is None:
            manager.send_local_reply(
                404, f"no route for {head.method} {head.path}", code="route_not_found"
            )
            return
        info.cluster = cluster_name
        pool = self.gateway.pools[cluster_name]
        cluster = pool.cluster
        if manager.replaced_body is not None:
            body = manager.replaced_body
        has_body = bool(body) or head.method in ("POST", "PUT", "PATCH")
        headers = forward_request_headers(
            head.headers,
            host=cluster.host_header,
            client_ip=head.client_ip,
            scheme=head.scheme,
            body_length=len(body) if has_body else None,
        )
        self.request_bytes = serialize_request_head(
            head.method, cluster.base_path + head.path, headers
        )
        self.body = body
        self._acquire(fresh=False)

    def _acquire(self, *, fresh: bool) -> None:
        assert self.manager.stream_info.cluster is not None
        pool = self.gateway.pools[self.manager.stream_info.cluster]
        self.pending = pool.acquire(fresh=fresh)
        self.pending.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, connection: HTTP11ClientConnection) -> None:
        self.pending = None
        if self.cancelled:
            connection.pool.release(connection)
            return
        assert self.head is not None
        self.connection = connection
        connection.send_request(
            self.request_bytes, self.body, self, is_head=self.head.method == "HEAD"
        )

    def _connect_failed(self, failure: Failure) -> None:
        self.pending = None
        if self.cancelled:
            return
        cluster = self.manager.stream_info.cluster or "?"
        status, message, code = connect_failure_reply(failure, cluster)
        log.warn(
            "request {request_id}: {message}",
            request_id=self.manager.stream_info.request_id,
            message=message,
        )
        self.manager.fail_response(status, message, code)

    # -- IUpstreamHandler ---------------------------------------------------------------

    def on_response_head(self, status: int, headers: Headers) -> None:
        manager = self.manager
        if self.connection is not None:
            manager.downstream.register_producer(self.connection)
        manager.encode_headers(status, headers, False)

    def on_response_data(self, data: bytes, end_stream: bool) -> None:
        if end_stream:
            self.connection = None
        self.manager.encode_data(data, end_stream)

    def on_upstream_failure(self, kind: UpstreamFailure, detail: str) -> None:
        connection, self.connection = self.connection, None
        if (
            kind is UpstreamFailure.RESET_BEFORE_RESPONSE
            and connection is not None
            and connection.requests_served > 0
            and not self.retried_stale
        ):
            # A pooled keep-alive connection the upstream had closed while it was idle:
            # the request never reached the upstream, so send it again on a new one.
            self.retried_stale = True
            self._acquire(fresh=True)
            return
        cluster = self.manager.stream_info.cluster
        if kind is UpstreamFailure.TLS_FAILURE:
            log.warn(
                "request {request_id}: cluster {cluster}: {detail}",
                request_id=self.manager.stream_info.request_id,
                cluster=cluster,
                detail=detail,
            )
        self.manager.fail_response(502, f"upstream cluster {cluster!r}: {detail}", kind.value)

    # -- cancellation -------------------------------------------------------------------

    def cancel(self) -> None:
        """Abandon the upstream exchange at once (client gone or local reply)."""
        self.cancelled = True
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.cancel()
        if self.connection is not None:
            connection, self.connection = self.connection, None
            connection.abort()
