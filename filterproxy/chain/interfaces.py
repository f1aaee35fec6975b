"""The two ends of a request as the filter chain sees them.

- The client's side: `IDownstream`, one request/response exchange with a client,
  whatever protocol it speaks (HTTP/1.1 and HTTP/2 implement it in
  `filterproxy.downstream`; `filterproxy.chain.client_stream.ClientStream` is the compiled
  base class of the data path's implementation).
- The upstream's side: `Terminal`, the end of the request direction (the router).

Nothing in the chain knows which protocol either side speaks.
"""

from __future__ import annotations

from typing import Protocol

from zope.interface import Attribute, Interface

from filterproxy.filters.api import RequestHead
from filterproxy.http.headers import Headers

__all__ = ["IDownstream", "Terminal"]


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


class Terminal(Protocol):
    """The end of the request direction: the router (or a test double)."""

    def on_request_headers(self, head: RequestHead, end_stream: bool) -> None: ...

    def on_request_data(self, data: bytes, end_stream: bool) -> None: ...

    def cancel(self) -> None: ...
