"""A TCP port bound with ``SO_REUSEPORT`` (for `filterproxy.server.workers`; its own module so
that importing `filterproxy.server.workers` does not import Twisted's TCP support)."""

from __future__ import annotations

import socket

from twisted.internet import tcp

__all__ = ["ReusePort"]


class ReusePort(tcp.Port):
    """A TCP port bound with SO_REUSEPORT, so several processes can listen on it."""

    def createInternetSocket(self) -> socket.socket:
        sock: socket.socket = super().createInternetSocket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return sock
