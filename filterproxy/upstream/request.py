"""The request as it goes upstream, and what a failed connection attempt tells the client."""

from __future__ import annotations

import re

from twisted.internet import error
from twisted.python.failure import Failure

from filterproxy.config import EndpointConfig
from filterproxy.filters.api import RequestHead
from filterproxy.filters.records import UpstreamAuthorizer
from filterproxy.http.headers import (
    Headers,
    UnsafeHeaderError,
    encode_header_block,
    forward_request_headers,
)
from filterproxy.upstream.errors import ConnectTimeout, NotHTTP2, TLSHandshakeFailed

__all__ = [
    "UpstreamRequest",
    "build_request",
    "connect_failure_reply",
    "serialize_request_head",
]

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
    if failure.check(TLSHandshakeFailed):
        return (
            502,
            f"upstream cluster {cluster!r}: {failure.getErrorMessage()}",
            "upstream_tls_failure",
        )
    if failure.check(NotHTTP2):
        return (
            502,
            f"upstream cluster {cluster!r}: {failure.getErrorMessage()}",
            "upstream_not_http2",
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


class UpstreamRequest:
    """The request as it goes to one endpoint: its HTTP/1.1 head (built, which also
    checks it), and the parts an HTTP/2 stream sends as its header list."""

    __slots__ = ("authority", "head_bytes", "headers", "method", "scheme", "target")

    def __init__(
        self, method: str, target: str, headers: Headers, scheme: str, authority: str
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.scheme = scheme
        self.authority = authority
        self.head_bytes = serialize_request_head(method, target, headers)

    def h2_fields(self) -> list[tuple[str, str]]:
        """The HTTP/2 header list: pseudo-headers first, then the fields in lower case
        (``Host`` becomes ``:authority``)."""
        fields = [
            (":method", self.method),
            (":scheme", self.scheme),
            (":authority", self.authority),
            (":path", self.target),
        ]
        for name, value in self.headers:
            lower = name.lower()
            if lower != "host":
                fields.append((lower, value))
        return fields


def build_request(
    head: RequestHead,
    endpoint: EndpointConfig,
    body_length: int | None,
    model: str | None = None,
    authorizer: UpstreamAuthorizer | None = None,
    body: bytes = b"",
) -> UpstreamRequest:
    """The request for *endpoint*: forwarding headers, the endpoint's own header rules
    (its API key), its base path (or its provider's paths, for *model*), then the
    *authorizer*'s credentials over the final request and its *body*.

    Raises:
        UnsafeHeaderError: a filter set a path or header that would break the framing.
    """
    headers = forward_request_headers(
        head.headers,
        host=endpoint.host_header,
        client_ip=head.client_ip,
        scheme=head.scheme,
        body_length=body_length,
    )
    if endpoint.request_headers:
        endpoint.request_headers.apply_to(headers)
    target = endpoint.target(head.path, model)
    if authorizer is not None:
        url = f"{endpoint.scheme}://{endpoint.host_header}{target}"
        authorizer.authorize(head.method, url, headers, body)
    return UpstreamRequest(head.method, target, headers, endpoint.scheme, endpoint.host_header)
