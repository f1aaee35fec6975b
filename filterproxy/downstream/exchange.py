"""One request on an HTTP/1.x client connection and the response to it: the
`IDownstream` the filter chain and router write to.

Responses are framed here: a `Content-Length` from upstream is kept; otherwise HTTP/1.1
clients get chunked encoding and HTTP/1.0 clients a body delimited by the close. A
response head is held back until its first body bytes (or the end of the upstream read
that brought it), so that a small response leaves in one packet.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final

from filterproxy.chain.client_stream import ClientStream
from filterproxy.filters.api import RequestHead
from filterproxy.http.errors import reason_phrase
from filterproxy.http.headers import Headers, encode_header_block
from filterproxy.runtime._transport import NativeProtocol

if TYPE_CHECKING:
    from filterproxy.chain.manager import FilterManager

__all__ = ["ConnectionState", "Exchange", "ExchangeConnection"]

_NO_BODY_STATUSES = frozenset({204, 304})


class ConnectionState(enum.Enum):
    """The states of an HTTP/1.x client connection (see `filterproxy.downstream.http11`)."""

    #: Waiting for the next request head.
    IDLE = "idle"
    #: A request is being handled: its body may still be arriving, its response may be
    #: streaming. Requests pipelined behind it are parsed and queued.
    ACTIVE = "active"
    #: The connection closes once the current response (if any) is written: the client
    #: asked for it, a body was refused before it was read, the input was bad, or the
    #: gateway is shutting down. Nothing more is read or started.
    CLOSING = "closing"
    #: The socket is gone.
    CLOSED = "closed"


_CLOSED: Final = ConnectionState.CLOSED
_IDLE: Final = ConnectionState.IDLE


class ExchangeConnection(NativeProtocol):
    """What an exchange needs of its connection; the HTTP/1.1 server connection
    (`filterproxy.downstream.http11`) derives from it. A compiled base class: the
    exchange's calls on it (``send``, per chunk) are direct calls."""

    def __init__(self) -> None:
        super().__init__()
        self.state = _IDLE

    def send(self, data: bytes) -> None:
        """Write response bytes (override)."""
        raise NotImplementedError

    def exchange_done(self, exchange: Exchange) -> None:
        """The response of *exchange* is written (override)."""
        raise NotImplementedError

    def uncount(self, exchange: Exchange) -> None:
        """*exchange* no longer counts against the concurrency limit (override)."""
        raise NotImplementedError

    def abort(self) -> None:
        """End the connection without completing the response (override)."""
        raise NotImplementedError


class Exchange(ClientStream):
    """One request on the connection and the response to it (the `IDownstream`)."""

    def __init__(
        self,
        connection: ExchangeConnection,
        head: RequestHead,
        has_body: bool,
        keep_alive: bool,
        http10: bool,
    ) -> None:
        # ClientStream's fields, set here rather than by a call of its __init__ (one
        # exchange per request).
        self.scheme = head.scheme
        self.client_ip = head.client_ip
        self.connection = connection
        self.head = head
        self.has_body = has_body
        self.keep_alive = keep_alive
        self.http10 = http10
        self.request_complete = not has_body
        self.response_started = False
        self.response_complete = False
        self.chunked = False
        #: A response head not yet written (see `send_head`).
        self.pending_head = b""
        #: Within one upstream read (`hold`): body bytes kept for the `flush` that ends it
        #: (not yet framed).
        self.holding = False
        self.held: list[bytes] = []
        self.manager: FilterManager | None = None
        #: Counted in the listener's active_streams.
        self.counted = False
        #: Body events parsed before this exchange became active (pipelining).
        self.pending: list[tuple[bytes, bool]] = []
        self.producer_registered = False

    # -- request events from the parser ---------------------------------------------------

    def start(self, manager: FilterManager) -> None:
        self.manager = manager
        manager.decode_headers(self.head, not self.has_body)
        if (
            not self.request_complete
            and not self.http10
            and not self.response_started
            and (self.head.headers.get("expect") or "").lower() == "100-continue"
        ):
            # The filters have seen the head and did not refuse it (a 413 for a declared
            # length would have been sent already): ask the client for the body now rather
            # than let it wait (curl waits a second for this before sending a large body).
            self.connection.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        pending, self.pending = self.pending, []
        for data, end in pending:
            manager.decode_data(data, end)

    def body(self, data: bytes, end_stream: bool) -> None:
        if end_stream:
            self.request_complete = True
        if self.manager is None:
            self.pending.append((data, end_stream))
        else:
            self.manager.decode_data(data, end_stream)

    # -- IDownstream ----------------------------------------------------------------------

    def send_head(self, status: int, headers: Headers, end_stream: bool) -> None:
        if self.response_complete or self.connection.state is _CLOSED:
            return
        self.response_started = True
        bodyless = status in _NO_BODY_STATUSES or status < 200 or self.head.method == "HEAD"
        if "content-length" in headers or bodyless:
            pass
        elif end_stream:
            headers.add("content-length", "0")
        elif self.http10:
            self.keep_alive = False
        else:
            self.chunked = True
            headers.add("transfer-encoding", "chunked")
        if not self.keep_alive or not self.request_complete:
            # A body we have not read cannot be skipped safely: close after this response.
            self.keep_alive = False
            headers.add("connection", "close")
        status_line = b"%s %d %s\r\n" % (
            b"HTTP/1.0" if self.http10 else b"HTTP/1.1",
            status,
            reason_phrase(status),
        )
        head = status_line + encode_header_block(headers)
        if end_stream:
            self.connection.send(head)
            self._complete()
        else:
            # Held until the first body bytes or the end of this upstream read (`flush`),
            # so that a head and the body that came with it leave in one packet.
            self.pending_head = head

    def send_data(self, data: bytes, end_stream: bool) -> None:
        if self.response_complete or self.connection.state is _CLOSED:
            return
        if self.holding and not end_stream:
            if data:
                self.held.append(data)
            return
        self._write(data, end_stream)

    def _write(self, data: bytes, end_stream: bool) -> None:
        """Write what is held, then *data*: the body bytes framed as one chunk (when
        chunked; where upstream chunks began does not matter to the client, and one read
        of several of them costs one chunk header), after the head if it is still held."""
        held = self.held
        if held:
            if data:
                held.append(data)
            data = b"".join(held) if len(held) > 1 else held[0]
            held.clear()
        if self.chunked:
            if data:
                data = b"%x\r\n%s\r\n" % (len(data), data)
            if end_stream:
                data += b"0\r\n\r\n"
        if self.pending_head:
            data = self.pending_head + data
            self.pending_head = b""
        if data:
            self.connection.send(data)
        if end_stream:
            self._complete()

    def hold(self) -> None:
        self.holding = True

    def flush(self) -> None:
        self.holding = False
        if self.connection.state is not _CLOSED and not self.response_complete:
            self._write(b"", False)

    def abort(self) -> None:
        self.flush()
        if self.response_complete:
            return
        self.response_complete = True
        self.unregister_producer()
        self.connection.uncount(self)
        self.connection.abort()

    def register_producer(self, producer: object) -> None:
        if self.connection.state is _CLOSED or self.response_complete:
            return
        self.producer_registered = True
        self.connection.transport.registerProducer(producer, True)

    def unregister_producer(self) -> None:
        if self.producer_registered:
            self.producer_registered = False
            if self.connection.state is not _CLOSED:
                self.connection.transport.unregisterProducer()

    def _complete(self) -> None:
        self.response_complete = True
        self.unregister_producer()
        self.connection.exchange_done(self)
