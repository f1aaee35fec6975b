"""The downstream stream interface: what the filter chain and router need of a client.

The HTTP/1.1 front end implements it today; an HTTP/2 front end implements it per
stream. Nothing above this line knows which protocol the client speaks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from zope.interface import Attribute, Interface

from filterproxy.http.headers import Headers

if TYPE_CHECKING:
    from filterproxy.service import Gateway

__all__ = ["ClientConnection", "IDownstream", "Listener"]


class ClientConnection(Protocol):
    """A client connection of either protocol, as the listener manages it."""

    def drain(self) -> None:
        """Finish what is in progress, take nothing new, then close."""

    def abort(self) -> None:
        """Close now."""


class Listener(Protocol):
    """What client connections share: the gateway in force and the counts behind
    ``limits.max_concurrent_streams`` and the graceful shutdown."""

    gateway: Gateway
    #: Requests in progress on this listener.
    active_streams: int
    #: Open client connections.
    connections: set[ClientConnection]
    #: Shutting down: connections close once idle.
    draining: bool


class IDownstream(Interface):
    """One client request/response exchange."""

    scheme = Attribute('"http" or "https": how the client reached us.')
    client_ip = Attribute("The client's IP address, or '' for a UNIX socket.")

    def send_head(status: int, headers: Headers, end_stream: bool) -> None:
        """Send the response status line and headers; framing is the stream's job."""

    def send_data(data: bytes, end_stream: bool) -> None:
        """Send a piece of the response body; dropped silently after the client left."""

    def hold() -> None:
        """One upstream read is being delivered: what is sent may be held back and written
        at once by the `flush` that ends the read (chunks that arrived together leave in one
        write). Never called outside such a read."""

    def flush() -> None:
        """Write anything held back (a response head waiting for its first body bytes, or
        what `hold` kept); stop holding."""

    def abort() -> None:
        """End the response abnormally, so the client cannot mistake it for complete."""

    def register_producer(producer: object) -> None:
        """Make *producer* (an IPushProducer) be paused while the client cannot keep up."""

    def unregister_producer() -> None:
        """Undo `register_producer`."""
