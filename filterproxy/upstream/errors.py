"""Why a connection to an upstream could not be had (what the pool's attempts fail with)."""

from __future__ import annotations

__all__ = ["ConnectTimeout", "NotHTTP2", "TLSHandshakeFailed"]


class ConnectTimeout(Exception):
    """No connection was established within the cluster's connect_timeout."""


class NotHTTP2(Exception):
    """The cluster asked for HTTP/2 and the upstream's TLS did not agree to it (ALPN)."""


class TLSHandshakeFailed(Exception):
    """The TLS handshake with the upstream failed (certificate, host name, versions)."""
