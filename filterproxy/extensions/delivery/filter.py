"""The delivery filter: an event stream as a client on a weak link needs it.

A client says what its network needs with ``Save-Data: on`` or ``x-stream-coalesce:
150ms`` (a route may also set a window for every stream): the events that arrive within
a window are sent together, runs of deltas folded into one event
(`filterproxy.http.folding.fold_events`: the same text and tool-call arguments, the id
of the last event each fold stands for), and the stream is compressed
(`filterproxy.extensions.delivery.codings`), flushed at every send. The first events go
at once: the window starts with the first delta sent, so the first token is never held.

A client that falls behind — its connection cannot take the events as they come — gets
the same on every route: the filter takes the client's flow control, holds what the
client has not taken (up to ``hold`` bytes, then the upstream is paused) and sends it
folded when the connection can take more.

Without any of it a stream passes byte for byte: the filter only looks at where the
upstream's pieces end, so that it knows where an event starts if it has to hold one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final

from filterproxy.config import Node
from filterproxy.extensions.delivery.codings import StreamEncoder, available_codings, choose_coding
from filterproxy.extensions.delivery.config import DeliveryConfig, DeliverySettings, delivery_of
from filterproxy.extensions.delivery.metrics import DeliveryMetrics
from filterproxy.extensions.delivery.pacing import (
    BadWindow,
    Window,
    parse_window,
    saves_data,
    window_for,
)
from filterproxy.filters.api import (
    DataResult,
    FilterContext,
    FilterStatus,
    RequestHead,
    ResponseHead,
    StreamFilter,
)
from filterproxy.filters.metrics import MetricFamilies
from filterproxy.filters.records import CompressStream, EventFolds
from filterproxy.filters.stream_owner import IStreamOwner
from filterproxy.http.apis import client_api
from filterproxy.http.encoding import IDENTITY
from filterproxy.http.errors import error_body
from filterproxy.http.folding import fold_events
from filterproxy.http.sse import DEFAULT_MAX_EVENT_BYTES, EventTooLarge, SSEDecoder, SSEEvent

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

__all__ = ["DeliveryFilter", "DeliveryFilterConfig"]

#: How the pieces of an event stream end when they end an event.
_EVENT_ENDS: Final = (b"\n\n", b"\r\n\r\n", b"\r\r")
_REASON: Final = (
    "the delivery filter sends the client the events exactly as the filters after it made "
    "them, so it comes before them"
)


def _event_end(data: bytes) -> int:
    """Where the first event of *data* ends (after its blank line), or -1."""
    ends = [at + len(end) for end in _EVENT_ENDS if (at := data.find(end)) >= 0]
    return min(ends) if ends else -1


def _carries_delta(event: SSEEvent) -> bool:
    """Whether *event* is a piece of the answer's content (a delta), not its framing (a
    role chunk, a block's start): the coalescing window starts with the first of these."""
    data = event.data
    return data is not None and '"delta"' in data and '"role"' not in data


@dataclass(frozen=True)
class DeliveryFilterConfig:
    #: The top-level ``delivery`` (each route's default).
    settings: DeliverySettings = field(default_factory=DeliverySettings)
    #: The codings this process can make, by name.
    makers: Mapping[str, Callable[[], StreamEncoder]] = field(default_factory=available_codings)
    #: The largest event the filter holds (``max_event_bytes``).
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    metrics: DeliveryMetrics = field(default_factory=lambda: DeliveryMetrics(MetricFamilies()))


class DeliveryFilter(StreamFilter):
    """Coalesced, compressed and folded event streams (see the module's description)."""

    config: DeliveryFilterConfig
    provides = ("delivery",)
    precedes: ClassVar[Mapping[str, str]] = {
        name: _REASON
        for name in (
            "spend",
            "resume",
            "responses",
            "translate",
            "usage",
            "cache",
            "bedrock",
            "vertex",
        )
    }

    @classmethod
    def configure(cls, options: Mapping[str, Any], context: FilterContext) -> DeliveryFilterConfig:
        Node(dict(options), context.path, context.environ).mapping(set())
        return DeliveryFilterConfig(
            context.config.section(DeliverySettings) or DeliverySettings(),
            available_codings(),
            context.config.max_event_bytes,
            DeliveryMetrics.of(context.resources),
        )

    def __init__(self, config: DeliveryFilterConfig) -> None:
        super().__init__(config)
        #: What the client asked: Save-Data, a window (x-stream-coalesce), its codings.
        self.save_data = False
        self.asked: float | None = None
        self.accept_encoding: str | None = None
        #: The route's delivery (set with the response head of an event stream).
        self.route_config: DeliveryConfig | None = None
        #: The coalescing window, when the stream is coalesced.
        self.window: Window | None = None
        self.timer: IDelayedCall | None = None
        #: A delta has been sent: from then on, events wait for the window.
        self.delta_sent = False
        #: The client's compressed stream, when it gets one.
        self.encoder: StreamEncoder | None = None
        #: Reads the events while the filter holds them (coalescing, or a slow client).
        self.decoder: SSEDecoder | None = None
        #: What is held: bytes that go first as they are (the end of an event the client
        #: was already sent the start of), then whole events.
        self.prefix: list[bytes] = []
        self.held: list[SSEEvent] = []
        self.held_bytes = 0
        #: The last piece passed ended an event (where holding may start).
        self.at_boundary = True
        #: Looking for the end of an event the client got the start of.
        self.partial = False
        #: The client cannot take more (its connection's buffer is full).
        self.slow = False
        self.fell_behind = False
        #: The client left; the response goes on without it (resume).
        self.gone = False
        self.upstream_paused = False
        self.own: IStreamOwner | None = None
        #: Told of every fold (a resumable stream counts its client's chunks).
        self.on_fold: Callable[[str | None, int], None] | None = None
        #: The stream's bytes as they came and as sent, and the events folded away.
        self.bytes_in = 0
        self.bytes_out = 0
        self.folded = 0
        self.reason: str | None = None

    # -- the request -------------------------------------------------------------------

    def decode_headers(self, head: RequestHead, end_stream: bool) -> FilterStatus:
        headers = head.headers
        self.save_data = saves_data(headers.get("save-data"))
        self.accept_encoding = headers.get("accept-encoding")
        value = headers.get("x-stream-coalesce")
        if value is not None:
            headers.remove("x-stream-coalesce")  # the gateway's; not the provider's
            try:
                self.asked = parse_window(value)
            except BadWindow as e:
                self.callbacks.send_local_reply(400, str(e), code="invalid_request_error")
                return FilterStatus.STOP_ITERATION
        return FilterStatus.CONTINUE

    def _config(self) -> DeliveryConfig:
        return delivery_of(self.callbacks.stream_info.route, self.config.settings)

    def response_codings(self) -> frozenset[str] | None:
        # A coalesced stream's events are read here: they must come as text.
        if window_for(self._config(), self.save_data, self.asked) is not None:
            return IDENTITY
        return None

    # -- the answer --------------------------------------------------------------------

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> FilterStatus:
        headers = head.headers
        if (
            end_stream
            or head.status != 200
            or not (headers.get("content-type") or "").startswith("text/event-stream")
            or (headers.get("content-encoding") or "identity").strip().lower() != "identity"
        ):
            self.callbacks.pass_response_data()
            return FilterStatus.CONTINUE
        config = self.route_config = self._config()
        state = self.callbacks.stream_info.state
        seconds = window_for(config, self.save_data, self.asked)
        coding = None
        if seconds is not None or state.get(CompressStream) is not None:
            coding = choose_coding(self.accept_encoding, config.compress, tuple(self.config.makers))
        if seconds is None and coding is None and not config.slow_reader:
            self.callbacks.pass_response_data()
            return FilterStatus.CONTINUE
        if seconds is not None:
            self.window = Window(seconds)
            self.decoder = SSEDecoder(self.config.max_event_bytes)
            self.reason = (
                "asked" if self.asked is not None else "save_data" if self.save_data else "route"
            )
            headers.set("x-stream-coalesce", f"{round(seconds * 1000)}ms")
        if coding is not None:
            self.encoder = self.config.makers[coding]()
            headers.set("content-encoding", coding)
            headers.remove("content-length")
            headers.add("vary", "accept-encoding")
        folds = state.get(EventFolds)
        if folds is not None:
            self.on_fold = folds.folded
        own = self.own = self.callbacks.own_stream()
        own.take_flow_control(self._client_slow, self._client_ready, self._client_gone)
        return FilterStatus.CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        if self.gone:
            return b""  # (a response going on without its client: nobody reads it)
        if self.callbacks.stream_info.outcome:
            return self._failed(data)
        decoder = self.decoder
        if decoder is None:
            if not self.slow:  # the client takes the events as they come
                if data:
                    self.at_boundary = data.endswith(_EVENT_ENDS)
                encoder = self.encoder
                if encoder is None:
                    return data
                self.bytes_in += len(data)
                out = encoder.finish(data) if end_stream else encoder.chunk(data)
                self.bytes_out += len(out)
                return out
            decoder = self._hold()
        self.bytes_in += len(data)
        if (
            data[:1] == b":"
            and not self.held
            and not self.prefix
            and not self.partial
            and decoder.between_events
        ):
            # A comment (a heartbeat) in a silence: it goes now, nothing waits for it.
            return self._send_now(data, end_stream)
        if data:
            try:
                self._feed(decoder, data)
            except EventTooLarge as e:
                return self._refuse(e)
        if end_stream:
            rest = decoder.close()
            if rest:
                self.prefix.append(rest)  # a last event without its blank line
            return self._send(True)
        if self.slow:
            if self.held_bytes > self.route_held_limit and not self.upstream_paused:
                self.upstream_paused = True
                self._own().pause_upstream()
            return b""
        window = self.window
        if window is None:
            # Caught up with a client that fell behind: back to passing.
            return self._send(False, self._stop_holding())
        if not self.held and not self.prefix:
            return b""
        if not self.delta_sent:
            return self._send(False)
        clock = self.callbacks.clock
        wait = window.wait(clock.seconds())
        if wait <= 0 or self.held_bytes > self.route_held_limit:
            return self._send(False)  # (a window holds at most `hold` bytes, too)
        if self.timer is None:
            self.timer = clock.callLater(wait, self._window_ends)
        return b""

    @property
    def route_held_limit(self) -> int:
        config = self.route_config
        return config.hold if config is not None else DeliveryConfig.hold

    def _hold(self) -> SSEDecoder:
        """The client fell behind: hold what comes, from where the last piece ended."""
        decoder = self.decoder = SSEDecoder(self.config.max_event_bytes)
        self.partial = not self.at_boundary
        return decoder

    def _feed(self, decoder: SSEDecoder, data: bytes) -> None:
        if self.partial:
            # The rest of an event the client has the start of goes as it is.
            end = _event_end(data)
            if end < 0:
                self.prefix.append(data)
                self.held_bytes += len(data)
                return
            self.partial = False
            self.prefix.append(data[:end])
            self.held_bytes += end
            data = data[end:]
            if not data:
                return
        events = decoder.feed(data)
        if events:
            self.held.extend(events)
        self.held_bytes += len(data)

    def _take(self) -> bytes:
        """What is held, folded (and nothing held any more)."""
        held = self.held
        parts = self.prefix
        if held:
            if not self.delta_sent and any(_carries_delta(event) for event in held):
                self.delta_sent = True
            parts.extend(fold_events(held, self._folded, drop_comments=True))
        out = b"".join(parts) if len(parts) != 1 else parts[0]
        self.prefix = []
        self.held = []
        self.held_bytes = 0
        return out

    def _folded(self, last_id: str | None, covers: int) -> None:
        self.folded += covers - 1
        if self.on_fold is not None:
            self.on_fold(last_id, covers)

    def _stop_holding(self) -> bytes:
        """The client takes what comes again (and nothing coalesces): the stream passes
        from here on. What the decoder holds of an unfinished event goes as it is, and
        the rest of that event after it."""
        decoder = self.decoder
        self.decoder = None
        rest = decoder.close() if decoder is not None else b""
        self.at_boundary = not rest and not self.partial
        self.partial = False
        return rest

    def _send(self, end_stream: bool, rest: bytes = b"") -> bytes:
        """What is held, folded and compressed, then *rest* as it is, to go now."""
        out = self._take() + rest if rest else self._take()
        window = self.window
        if window is not None and self.delta_sent:
            window.sent(self.callbacks.clock.seconds())
        timer = self.timer
        if timer is not None:
            self.timer = None
            if timer.active():
                timer.cancel()
        encoder = self.encoder
        if encoder is not None:
            out = encoder.finish(out) if end_stream else encoder.chunk(out) if out else b""
        self.bytes_out += len(out)
        return out

    def _send_now(self, data: bytes, end_stream: bool) -> bytes:
        encoder = self.encoder
        if encoder is not None:
            data = encoder.finish(data) if end_stream else encoder.chunk(data)
        self.bytes_out += len(data)
        return data

    def _window_ends(self) -> None:
        self.timer = None
        if self.slow or (not self.held and not self.prefix):
            return  # (a client that fell behind is sent what is held when it can take it)
        out = self._send(False)
        if out:
            self.callbacks.inject_encoded_data(out, False)

    def _failed(self, data: bytes) -> DataResult:
        """The gateway's error event (the upstream broke off, or a filter failed the
        answer): what is held goes first — not an event the upstream left unfinished —
        then the error, at once."""
        decoder = self.decoder
        if decoder is None and not self.held and not self.prefix:
            encoder = self.encoder
            return encoder.chunk(data) if encoder is not None and data else data
        self.decoder = None
        if self.partial:
            self.prefix = []  # the end of the unfinished event never came
        out = self._take() + data
        encoder = self.encoder
        if encoder is not None:
            out = encoder.chunk(out)
        return out

    def _refuse(self, error: EventTooLarge) -> DataResult:
        """The upstream sent an event past ``max_event_bytes``: the client gets what came
        before it, then the error event of its API, and the answer fails (as for every
        filter that reads the stream)."""
        self.held.extend(error.events)
        self.decoder = None
        self.partial = False
        info = self.callbacks.stream_info
        api = info.api or client_api(info.client_path)
        body = error_body(502, str(error), code="upstream_error", api=api)
        frame = self._take() + b"event: error\ndata: " + body + b"\n\n"
        encoder = self.encoder
        if encoder is not None:
            frame = encoder.chunk(frame)
        self.callbacks.fail_response(502, str(error), frame=frame)
        return FilterStatus.STOP_ITERATION

    # -- the client's flow -------------------------------------------------------------

    def _own(self) -> IStreamOwner:
        own = self.own
        if own is None:
            own = self.own = self.callbacks.own_stream()
        return own

    def _client_slow(self) -> None:
        self.slow = True
        self.fell_behind = True

    def _client_ready(self) -> None:
        self.slow = False
        if self.window is None and self.decoder is not None:
            out = self._send(False, self._stop_holding())
            if out:
                self.callbacks.inject_encoded_data(out, False)
        elif self.held or self.prefix:
            out = self._send(False)
            if out:
                self.callbacks.inject_encoded_data(out, False)
        if self.upstream_paused:
            self.upstream_paused = False
            self._own().resume_upstream()

    def _client_gone(self) -> None:
        """The client left a response that goes on without it: what is held will never
        be sent (and is not counted as sent)."""
        self.gone = True
        self.slow = False
        self.upstream_paused = False  # (the chain resumed the upstream)
        self.decoder = None
        self.held = []
        self.prefix = []
        self.held_bytes = 0
        timer = self.timer
        if timer is not None:
            self.timer = None
            if timer.active():
                timer.cancel()

    # -- the end -------------------------------------------------------------------------

    def on_destroy(self) -> None:
        timer = self.timer
        if timer is not None:
            self.timer = None
            if timer.active():
                timer.cancel()
        config = self.route_config
        if config is None:
            return
        route = self.callbacks.stream_info.route
        name = route.name if route is not None else "none"
        metrics = self.config.metrics
        if self.reason is not None:
            metrics.coalesced.inc((name, self.reason))
        if self.fell_behind:
            metrics.slow_readers.inc((name,))
        if self.folded:
            metrics.folded.inc((name,), self.folded)
        if self.bytes_in and (self.reason is not None or self.encoder is not None):
            metrics.bytes.inc((name, "events"), self.bytes_in)
            metrics.bytes.inc((name, "sent"), self.bytes_out)
        self.held = []
        self.prefix = []
