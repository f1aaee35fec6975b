"""What client connections share, and what they need of the gateway in force.

The exchange with one client is an `filterproxy.chain.interfaces.IDownstream`; this module
holds what lies around it on the client side: the listener's counts and connections,
and `ServingGateway`, what a connection asks of the running gateway (declared here, so
that the client side depends on this small interface, not on `filterproxy.server.service`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from filterproxy.chain.interfaces import IDownstream
    from filterproxy.chain.manager import FilterManager
    from filterproxy.config import Config

__all__ = ["ClientConnection", "Listener", "ServingGateway"]


class ServingGateway(Protocol):
    """The gateway in force, as client connections use it."""

    #: Its config (the connections read ``limits``).
    config: Config
    #: The reactor the gateway runs on (timers).
    reactor: Any

    def new_request(self, downstream: IDownstream) -> FilterManager:
        """A filter manager for one request arriving on *downstream*."""
        ...


class ClientConnection(Protocol):
    """A client connection of either protocol, as the listener manages it."""

    def drain(self) -> None:
        """Finish what is in progress, take nothing new, then close."""

    def abort(self) -> None:
        """Close now."""


class Listener(Protocol):
    """What client connections share: the gateway in force and the counts behind
    ``limits.max_concurrent_streams`` and the graceful shutdown."""

    gateway: ServingGateway
    #: Requests in progress on this listener.
    active_streams: int
    #: Open client connections.
    connections: set[ClientConnection]
    #: Shutting down: connections close once idle.
    draining: bool
