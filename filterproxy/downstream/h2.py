"""The HTTP/2 front end: one Twisted `Protocol` per connection, framing by the `h2`
library, one `H2Stream` (an `IDownstream`) per request driving its own `FilterManager`.

Flow control and backpressure are per stream. A response body the client's stream window
cannot take yet waits in that stream, and the stream pauses its own producer (the
upstream connection or stream behind it), so one slow stream holds back its upstream and
no other. When the connection's socket cannot take more, every stream's producer pauses.
A client's RST_STREAM cancels that request's upstream exchange only.

Request bodies are acknowledged as they arrive: the filter chain holds them within
``body-accumulate``'s limit, as it does for HTTP/1.1.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, cast

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes
from h2.stream import StreamState
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from filterproxy.chain.interfaces import IDownstream
from filterproxy.filters.api import RequestHead
from filterproxy.http.errors import error_body
from filterproxy.http.h2wire import (
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    acknowledge,
    end_sent,
    first_frame,
    forget_closed_stream,
    frame_head,
    header_block,
    read_data_frame,
    read_request_head,
    request_fields,
    response_headers_sent,
    trailer_problem,
)
from filterproxy.http.headers import Headers
from filterproxy.runtime._transport import PassWrites, keep_unsent_small
from filterproxy.runtime.deadlines import deadlines_for
from filterproxy.runtime.teardown import forget_traceback, release_h2

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from filterproxy.chain.manager import FilterManager
    from filterproxy.downstream.interfaces import Listener

__all__ = ["H2ServerConnection", "H2Stream"]

log = Logger(namespace=__name__)

#: Streams one client may have open at once on a connection (SETTINGS_MAX_CONCURRENT_STREAMS).
MAX_STREAMS_PER_CONNECTION = 256
#: Header fields that HTTP/2 forbids (RFC 9113 8.2.2); never sent in a response.
_CONNECTION_SPECIFIC = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)
#: The states in which a server's stream may still send (RFC 9113 5.1).
_SENDING = (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)


def response_header_list(status: int, headers: Headers) -> list[tuple[str, str]]:
    """The HTTP/2 header list of a response: ``:status`` first, names in lower case,
    connection-specific fields left out."""
    fields = [(":status", str(status))]
    for name, value in headers:
        lower = name.lower()
        if lower not in _CONNECTION_SPECIFIC:
            fields.append((lower, value))
    return fields


def request_head(fields: list[tuple[str, str]], scheme: str, client_ip: str) -> RequestHead | str:
    """The `RequestHead` of an HTTP/2 request's header list, or what is wrong with it.

    ``:authority`` becomes the ``Host`` header the filters and routes see.
    """
    method = path = authority = None
    headers = Headers()
    for name, value in fields:
        if name.startswith(":"):
            if name == ":method":
                method = value
            elif name == ":path":
                path = value
            elif name == ":authority":
                authority = value
        else:
            headers.add(name, value)
    if method is None or path is None:
        return "an HTTP/2 request needs :method and :path"
    if method == "CONNECT":
        return "CONNECT is not supported by this gateway"
    if not path.startswith("/"):
        return f"request target {path[:60]!r} is not a path"
    if authority is not None and "host" not in headers:
        headers.set("host", authority)
    return RequestHead(
        method=method, path=path, headers=headers, scheme=scheme, client_ip=client_ip
    )


@implementer(IDownstream)
class H2Stream:
    """One request on an HTTP/2 connection and the response to it."""

    def __init__(self, connection: H2ServerConnection, stream_id: int) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.scheme = connection.scheme
        self.client_ip = connection.client_ip
        self.manager: FilterManager | None = None
        #: Body bytes the stream's flow-control window could not take yet.
        self.pending = b""
        self.pending_end = False
        self.response_started = False
        self.response_complete = False
        self.request_ended = False
        self.producer: Any = None
        self.producer_paused = False
        #: Counted in the listener's active_streams.
        self.counted = True
        #: limits.request_body_timeout is watched (a deadline) while the body arrives.
        self.body_watched = False

    # -- IDownstream ------------------------------------------------------------------------

    def send_head(self, status: int, headers: Headers, end_stream: bool) -> None:
        if self.response_complete or self.connection.gone:
            return
        self.response_started = True
        fields = response_header_list(status, headers)
        try:
            if not self._write_head(status, fields, end_stream):
                self.connection.h2.send_headers(self.stream_id, fields, end_stream=end_stream)
        except H2Error:  # the stream is gone under us (reset, connection closing)
            self.client_gone()
            return
        self.connection.write_pending()
        if end_stream:
            self._complete()

    def _write_head(self, status: int, fields: list[tuple[str, str]], end_stream: bool) -> bool:
        """Write the response's HEADERS frame as h2's ``send_headers`` would — the same
        state transitions, an HPACK block that leaves the dynamic table alone
        (`filterproxy.http.h2wire`) — or return False for h2 to do it: an informational
        response, a header h2 must normalise, a table size change to announce, a block
        larger than one frame, a stream or connection no longer sending."""
        h2 = self.connection.h2
        stream = h2.streams.get(self.stream_id)
        if (
            stream is None
            or status < 200
            or h2.state_machine.state is not ConnectionState.SERVER_OPEN
            or stream.state_machine.state not in _SENDING
            or stream.state_machine.headers_sent
            or h2.encoder.header_table.resized
        ):
            return False
        block = header_block(fields, self.connection.names)
        if block is None or len(block) > h2.max_outbound_frame_size:
            return False
        machine = stream.state_machine
        response_headers_sent(machine)
        flags = END_HEADERS
        if end_stream:
            end_sent(machine)
            flags |= END_STREAM
        stream.request_method = None  # as h2 records it from a response's headers
        self.connection.write_frames(
            [frame_head(len(block), HEADERS, flags, self.stream_id), block]
        )
        return True

    def send_data(self, data: bytes, end_stream: bool) -> None:
        if self.response_complete or self.connection.gone:
            return
        self.pending = self.pending + data if self.pending else data
        self.pending_end = self.pending_end or end_stream
        self.push()

    def hold(self) -> None:
        """Frames are written as they are sent; nothing is held back here."""

    def flush(self) -> None:
        """Everything is written as it is sent; nothing is held back here."""

    def abort(self) -> None:
        """End the response abnormally: RST_STREAM after what could be sent, so the
        client sees an incomplete response (never an END_STREAM)."""
        if self.response_complete:
            return
        self.pending_end = False
        self.push()  # what the window allows of an error frame the chain sent last
        self.pending = b""
        if not self.connection.gone:
            with contextlib.suppress(H2Error):
                self.connection.h2.reset_stream(self.stream_id, ErrorCodes.INTERNAL_ERROR)
            self.connection.write_pending()
        self.request_ended = True  # the reset ends both directions
        self._complete()

    def register_producer(self, producer: object) -> None:
        if self.response_complete or self.connection.gone:
            return
        self.producer = producer
        self.producer_paused = False
        self.update_producer()

    def unregister_producer(self) -> None:
        self.producer = None

    # -- flow control ---------------------------------------------------------------------

    def push(self) -> None:
        """Send as much of the pending body as the flow-control windows allow; the end of
        the stream goes with the last of it.

        DATA frames are written here, with h2's windows and stream state moved exactly
        as its ``send_data`` moves them; h2 sends them itself (and raises what it raises)
        when the stream or connection is no longer in a state to send."""
        h2 = self.connection.h2
        sid = self.stream_id
        stream = h2.streams.get(sid)
        if (
            stream is None
            or h2.state_machine.state is not ConnectionState.SERVER_OPEN
            or stream.state_machine.state not in _SENDING
        ):
            self._push_through_h2()
            return
        frames: list[bytes] = []
        pending = self.pending
        ended = False
        while pending or (self.pending_end and not ended):
            size = len(pending)
            window = min(
                h2.outbound_flow_control_window,
                stream.outbound_flow_control_window,
                h2.max_outbound_frame_size,
            )
            if size > window and size:  # an empty frame goes whatever the window
                if window <= 0:
                    break
                size = window
            flags = 0
            if self.pending_end and size == len(pending):
                end_sent(stream.state_machine)
                flags = END_STREAM
                ended = True
            frames.append(frame_head(size, DATA, flags, sid))
            if size == len(pending):
                frames.append(pending)
                pending = b""
            else:
                frames.append(pending[:size])
                pending = pending[size:]
            h2.outbound_flow_control_window -= size
            stream.outbound_flow_control_window -= size
        self.pending = pending
        if frames:
            self.connection.write_frames(frames)
        if ended:
            self._complete()
        else:
            self.update_producer()

    def _push_through_h2(self) -> None:
        """`push` by h2's own ``send_data``: it raises for a stream that can no longer
        send, and its errors end the response here."""
        h2 = self.connection.h2
        sid = self.stream_id
        ended = False
        try:
            while self.pending:
                window = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk, self.pending = self.pending[:window], self.pending[window:]
                ended = self.pending_end and not self.pending
                h2.send_data(sid, chunk, end_stream=ended)
            if self.pending_end and not self.pending and not ended:
                h2.send_data(sid, b"", end_stream=True)  # an empty (rest of the) body
                ended = True
        except H2Error:
            # The stream was closed under us (the client reset it): nothing to send.
            self.pending = b""
        self.connection.write_pending()
        if ended:
            self._complete()
        else:
            self.update_producer()

    def update_producer(self) -> None:
        """Pause the producer while this stream's data waits or the socket is full."""
        producer = self.producer
        if producer is None:
            return
        paused = bool(self.pending) or self.connection.transport_paused
        if paused and not self.producer_paused:
            self.producer_paused = True
            producer.pauseProducing()
        elif not paused and self.producer_paused:
            self.producer_paused = False
            producer.resumeProducing()

    # -- endings ----------------------------------------------------------------------------

    def watch_body(self) -> None:
        self.body_watched = True
        self.connection.deadlines.set(
            self, self.connection.limits.request_body_timeout, self.body_too_slow
        )

    def _unwatch_body(self) -> None:
        if self.body_watched:
            self.body_watched = False
            self.connection.deadlines.clear(self)

    def body_arrived(self) -> None:
        """The whole request body is here."""
        self.request_ended = True
        self._unwatch_body()

    def body_too_slow(self) -> None:
        self.body_watched = False
        if self.manager is not None and not self.response_started:
            limit = self.connection.limits.request_body_timeout
            self.manager.send_local_reply(
                408,
                f"request body not received within {limit:g}s (limits.request_body_timeout)",
            )

    def _complete(self) -> None:
        self.response_complete = True
        self.producer = None
        self._unwatch_body()
        if not self.request_ended and not self.connection.gone:
            # Answered before the whole request arrived (a 413, say): tell the client to
            # stop sending it (RFC 9113 8.1).
            with contextlib.suppress(H2Error):
                self.connection.h2.reset_stream(self.stream_id, ErrorCodes.NO_ERROR)
            self.connection.write_pending()
        self.connection.stream_done(self)

    def client_gone(self) -> None:
        """The client reset this stream, or the connection is gone."""
        self.pending = b""
        self.producer = None
        self._unwatch_body()
        was_complete, self.response_complete = self.response_complete, True
        self.connection.stream_done(self)
        if self.manager is not None and not was_complete:
            self.manager.client_gone()


@implementer(IPushProducer)
class H2ServerConnection(Protocol):
    """An HTTP/2 client connection: the `IPushProducer` of its socket's readers, too."""

    def __init__(self, listener: Listener, scheme: str = "https") -> None:
        self.listener = listener
        self.scheme = scheme
        self.client_ip = ""
        # A request's header list is checked and decoded by `request_fields` (h2's rules
        # in one pass, and a 400 that says what is wrong): h2 hands it over as it decoded it.
        self.h2 = H2Connection(
            config=H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_inbound_headers=False,
                normalize_inbound_headers=False,
            )
        )
        self.streams: dict[int, H2Stream] = {}
        #: Response header names as they start a field (`h2wire.header_block`), and
        #: request fields checked (`h2wire.request_fields`), remembered per connection.
        self.names: dict[str, bytes] = {}
        self.checked: dict[tuple[bytes, bytes], tuple[str, str]] = {}
        self.gone = False
        self.transport_paused = False
        self.closing = False
        self.timer: IDelayedCall | None = None
        self.deadlines = deadlines_for(listener.gateway.reactor)
        #: What is written to the transport, sent once per pass of the reactor.
        self.writes: PassWrites | None = None

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        self.writes = PassWrites(transport, self.listener.gateway.reactor)
        self.client_ip = getattr(transport.getPeer(), "host", "") or ""
        with contextlib.suppress(AttributeError, OSError):
            transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
        # (Its streams share the connection's buffer: Twisted's default size stays.)
        keep_unsent_small(transport, buffer=False)
        self.h2.initiate_connection()
        self.h2.update_settings(
            {
                SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS_PER_CONNECTION,
                SettingCodes.MAX_HEADER_LIST_SIZE: self.limits.max_header_bytes,
            }
        )
        transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self.listener.connections.add(self)
        self.write_pending()
        self._arm_idle()
        if self.listener.draining:
            self.drain()

    @property
    def limits(self) -> Any:
        return self.listener.gateway.config.limits

    def write_pending(self) -> None:
        """Write what h2 has framed."""
        if self.h2._data_to_send:  # mostly nothing: its data_to_send makes a new buffer
            data = self.h2.data_to_send()
            if not self.gone:
                self.writes.write(data)  # type: ignore[union-attr]

    def write_frames(self, frames: list[bytes]) -> None:
        """Write frames built outside h2, after what h2 has framed before them."""
        if self.gone:
            return
        if self.h2._data_to_send:
            frames.insert(0, self.h2.data_to_send())
        self.writes.write_pieces(frames)  # type: ignore[union-attr]

    # -- receiving --------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        start, end = 0, len(data)
        while start < end and not self.gone:
            # A request body's plain DATA frames are read around h2
            # (`h2wire.read_data_frame`); any other frame goes through h2, one at a time.
            read = read_data_frame(self.h2, data, start, self.streams)
            if read is not None:
                stream, chunk, ended = read
                start += 9 + len(chunk)
                self._body(stream, chunk, ended)
                continue
            # So are a new request's HEADERS (`h2wire.read_request_head`).
            head = read_request_head(self.h2, data, start)
            if head is not None:
                sid, raw, ended, start = head
                self._request(sid, raw, ended)
                continue
            stop = first_frame(self.h2, data, start)
            if not self._receive_through_h2(data[start:stop]):
                return
            start = stop
        if self.gone:
            return
        self.write_pending()
        if self.closing and not self.streams:
            self._lose_connection()

    def _receive_through_h2(self, data: bytes) -> bool:
        """Hand *data* to h2 and act on the events it makes of it; False when it broke
        the connection."""
        try:
            events = self.h2.receive_data(data)
        except H2Error as e:
            log.info("HTTP/2 protocol error from {client}: {error}", client=self.client_ip, error=e)
            self.write_pending()  # h2 queued a GOAWAY
            self._lose_connection()
            return False
        for event in events:
            if isinstance(event, RequestReceived):
                self._request(
                    event.stream_id,
                    cast("list[tuple[bytes, bytes]]", event.headers or ()),
                    event.stream_ended is not None,
                )
            elif isinstance(event, DataReceived):
                self._data(event)
            elif isinstance(event, StreamEnded):
                self._ended(event.stream_id)
            elif isinstance(event, TrailersReceived):
                self._trailers(event)
            elif isinstance(event, StreamReset):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.client_gone()
            elif isinstance(event, WindowUpdated):
                self._window_opened(event.stream_id)
            elif isinstance(event, RemoteSettingsChanged):
                if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    self._window_opened(0)
            elif isinstance(event, ConnectionTerminated):
                self.closing = True
        return True

    def _request(self, sid: int, raw: list[tuple[bytes, bytes]], ended: bool) -> None:
        """A request's header list arrived on stream *sid* (*ended*: with END_STREAM)."""
        fields = request_fields(raw, self.checked)
        if isinstance(fields, str):
            self._refuse(sid, 400, f"malformed HTTP/2 request: {fields}", malformed=True)
            return
        if len(fields) > self.limits.max_header_count + 4:  # + the pseudo-headers
            self._refuse(
                sid,
                431,
                f"too many request headers (the limit is {self.limits.max_header_count}, "
                "limits.max_header_count)",
            )
            return
        head = request_head(fields, self.scheme, self.client_ip)
        if isinstance(head, str):
            self._refuse(sid, 400, head)
            return
        listener = self.listener
        if listener.active_streams >= self.limits.max_concurrent_streams:
            self._refuse(
                sid,
                503,
                "the gateway is at its limit of concurrent requests "
                "(limits.max_concurrent_streams); retry shortly",
            )
            return
        self._disarm()
        stream = H2Stream(self, sid)
        stream.request_ended = ended
        if not stream.request_ended:
            stream.watch_body()
        self.streams[sid] = stream
        listener.active_streams += 1
        manager = listener.gateway.new_request(stream)
        stream.manager = manager
        manager.decode_headers(head, stream.request_ended)

    def _refuse(self, sid: int, status: int, message: str, *, malformed: bool = False) -> None:
        """Answer *status* with *message* on a stream the gateway will not serve.

        A refused request still arriving is reset with NO_ERROR after the answer (RFC 9113
        8.1). A *malformed* one is a stream error (8.1.1): the answer leaves the stream
        open (its body only if the window takes it whole) and RST_STREAM PROTOCOL_ERROR
        always follows."""
        body = error_body(status, message)
        with contextlib.suppress(H2Error):
            self.h2.send_headers(
                sid,
                [
                    (":status", str(status)),
                    ("content-type", "application/json"),
                    ("content-length", str(len(body))),
                ],
            )
            window = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if window >= len(body):
                self.h2.send_data(sid, body, end_stream=not malformed)
        stream = self.h2.streams.get(sid)
        if stream is not None and not stream.closed:
            with contextlib.suppress(H2Error):
                self.h2.reset_stream(
                    sid, ErrorCodes.PROTOCOL_ERROR if malformed else ErrorCodes.NO_ERROR
                )
        forget_closed_stream(self.h2, sid)

    def _data(self, event: DataReceived) -> None:
        sid = event.stream_id
        with contextlib.suppress(H2Error):
            self.h2.acknowledge_received_data(event.flow_controlled_length, sid)
        stream = self.streams.get(sid)
        if stream is not None:
            self._pass_body(stream, event.data or b"", bool(event.stream_ended))

    def _body(self, stream: H2Stream, chunk: bytes, ended: bool) -> None:
        """A request body's DATA frame, read around h2: acknowledged as h2 would, then
        passed to the stream's chain."""
        frames = acknowledge(self.h2, stream.stream_id, len(chunk))
        if frames:
            self.writes.write(self.h2.data_to_send() + frames)  # type: ignore[union-attr]
        self._pass_body(stream, chunk, ended)

    def _pass_body(self, stream: H2Stream, chunk: bytes, ended: bool) -> None:
        if stream.manager is None or stream.request_ended:
            return
        if ended:
            stream.body_arrived()
        stream.manager.decode_data(chunk, ended)

    def _trailers(self, event: TrailersReceived) -> None:
        """A request's trailers are not forwarded; malformed ones reset the stream
        (RFC 9113 8.1.1)."""
        problem = trailer_problem(cast("list[tuple[bytes, bytes]]", event.headers or ()))
        if problem is None:
            return
        log.info(
            "HTTP/2 malformed trailers from {client}: {problem}",
            client=self.client_ip,
            problem=problem,
        )
        stream = self.streams.get(event.stream_id)
        with contextlib.suppress(H2Error):
            self.h2.reset_stream(event.stream_id, ErrorCodes.PROTOCOL_ERROR)
        if stream is not None:
            stream.client_gone()

    def _ended(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is not None and not stream.request_ended and stream.manager is not None:
            stream.body_arrived()
            stream.manager.decode_data(b"", True)

    def _window_opened(self, sid: int) -> None:
        if sid == 0:
            for stream in list(self.streams.values()):
                if stream.pending:
                    stream.push()
        else:
            waiting = self.streams.get(sid)
            if waiting is not None and waiting.pending:
                waiting.push()

    # -- streams ----------------------------------------------------------------------------

    def stream_done(self, stream: H2Stream) -> None:
        """*stream*'s response is complete, aborted, or its client left."""
        if stream.counted:
            stream.counted = False
            self.listener.active_streams -= 1
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
        forget_closed_stream(self.h2, stream.stream_id)
        if self.gone:
            # Its streams end as the connection is lost: no idle timer for a connection
            # that is gone (it would keep the connection in memory until it fired).
            return
        if not self.streams:
            if self.closing:
                self._close_when_written()
            else:
                self._arm_idle()

    # -- lifecycle --------------------------------------------------------------------------

    def drain(self) -> None:
        """Shutting down: finish the streams in flight, then GOAWAY and close.

        The GOAWAY waits for the last stream to end: clients built on the h2 library
        (httpx among them) fail every open stream when a GOAWAY arrives, whatever its
        last stream id. Streams a client opens meanwhile are still served (within
        ``shutdown_grace``, after which the gateway closes every connection anyway).
        """
        if self.gone or self.closing:
            return
        self.closing = True
        if not self.streams:
            self._close_when_written()

    def _close_when_written(self) -> None:
        if not self.gone:
            with contextlib.suppress(H2Error):
                self.h2.close_connection()
            self.write_pending()
            self._lose_connection()

    def _lose_connection(self) -> None:
        """Close once what is written has gone. The connection stops being its socket's
        producer first: TLS does not shut down while a producer is registered, and the
        connection would stay open (idle past keepalive_timeout, or after a GOAWAY)."""
        transport = self.transport
        if transport is not None:
            if self.writes is not None:
                self.writes.send()
            transport.unregisterProducer()  # type: ignore[attr-defined]
            transport.loseConnection()

    def abort(self) -> None:
        if not self.gone:
            if self.writes is not None:
                self.writes.drop()
            self.transport.abortConnection()  # type: ignore[union-attr]

    def _arm_idle(self) -> None:
        self._disarm()
        reactor = self.listener.gateway.reactor
        self.timer = reactor.callLater(self.limits.keepalive_timeout, self._idle_timeout)

    def _disarm(self) -> None:
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None

    def _idle_timeout(self) -> None:
        self.timer = None
        if not self.streams:
            self.drain()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.gone = True
        if self.writes is not None:
            self.writes.drop()
        self._disarm()
        self.listener.connections.discard(self)
        for stream in list(self.streams.values()):
            stream.client_gone()
        self.streams.clear()
        if self.transport is not None:
            # TLS keeps its producer (this connection) after the connection is lost:
            # a reference cycle through the transport.
            self.transport.unregisterProducer()  # type: ignore[attr-defined]
        release_h2(self.h2)
        forget_traceback(reason)

    # -- IPushProducer: the socket toward the client ----------------------------------------

    def pauseProducing(self) -> None:
        self.transport_paused = True
        for stream in self.streams.values():
            stream.update_producer()

    def resumeProducing(self) -> None:
        self.transport_paused = False
        for stream in list(self.streams.values()):
            stream.update_producer()

    def stopProducing(self) -> None:
        self.transport_paused = True
