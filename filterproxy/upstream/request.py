"""The request as it goes upstream, and what a failed connection attempt tells the client."""

from __future__ import annotations

import re

from twisted.internet import error
from twisted.python.failure import Failure

from filterproxy.config import EndpointConfig
from filterproxy.filters.api import RequestHead
from filterproxy.filters.header_rewrite import apply_rules
from filterproxy.http.headers import (
    Headers,
    UnsafeHeaderError,
    encode_header_block,
    forward_request_headers,
)
from filterproxy.upstream.pool import ConnectTimeout

__all__ = ["build_request_head", "connect_failure_reply", "serialize_request_head"]

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


def build_request_head(
    head: RequestHead, endpoint: EndpointConfig, body_length: int | None
) -> bytes:
    """The request head for *endpoint*: forwarding headers, the endpoint's own header
    rules (its API key), its base path."""
    headers = forward_request_headers(
        head.headers,
        host=endpoint.host_header,
        client_ip=head.client_ip,
        scheme=head.scheme,
        body_length=body_length,
    )
    if endpoint.request_headers:
        apply_rules(headers, endpoint.request_headers)
    return serialize_request_head(head.method, endpoint.base_path + head.path, headers)
