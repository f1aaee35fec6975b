"""The filter manager: runs one request through the chain and the router.

Decoders run in config order and end at the router; encoders run in reverse and end at
the client; both directions follow the rules of `FilterIteration`.

What the gateway writes itself goes through the encoders like any response, so that a
filter can reshape it: a local reply passes the encoders of the filters before the one
that made it (all of them when the router or the gateway makes it), a mid-stream error
frame and a heartbeat pass every encoder. Only the reply to a filter that failed (an
exception, a swallowed end of stream, a buffer overflow) goes straight to the client.

The request body's JSON document has one owner, this manager (`request_json`,
`set_request_json`): it is parsed once for the whole chain, and a document a filter sets
is serialised once and is the body every later filter and the upstream see.

The response direction has a fast path: when no filter overrides ``encode_data``, each
upstream chunk goes straight to the client with no per-chunk work here.

A request goes through the states of `RequestState` (its ``state``)::

    DECODING ──(response head to the client)──► ENCODING ──► DONE
        │                                           │
        └──(client gone, a filter keeps going)──► DETACHED ──► DONE

Any state may go straight to DONE (an answer, a failure, the client leaving).
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from twisted.logger import Logger
from zope.interface import classImplements

from filterproxy.chain.client_stream import ClientStream
from filterproxy.chain.interfaces import IDownstream, Terminal
from filterproxy.chain.iteration import (
    DecodeIteration,
    EncodeIteration,
    FilterIteration,
    ResponseSink,
)
from filterproxy.filters.api import (
    IFilterCallbacks,
    IStreamFilter,
    RequestHead,
    RequestTooLarge,
    ResponseHead,
    StreamFilter,
    StreamInfo,
)
from filterproxy.filters.stream_owner import IStreamOwner
from filterproxy.http.apis import client_api
from filterproxy.http.body import BadBody, parse_body
from filterproxy.http.encoding import narrowed
from filterproxy.http.errors import error_body
from filterproxy.http.headers import Headers, forward_response_headers
from filterproxy.http.tracing import TraceContext, child_context, request_id_from

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime
    from twisted.python.failure import Failure

__all__ = ["ChainShape", "FilterManager", "RequestObserver", "RequestState", "chain_shape"]

log = Logger(namespace="filterproxy.filters.manager")


class RequestState(enum.Enum):
    """Where a request is (`FilterManager.state`)."""

    #: No response head has gone to the client yet: the request is passing the
    #: decoders, is with the upstream, or its answer is passing the encoders.
    DECODING = "decoding"
    #: The response head went to the client; its body is on its way.
    ENCODING = "encoding"
    #: The client has left (or was dropped) and the response goes on without it, for a
    #: filter that asked (`IStreamOwner.keep_going_without_client`).
    DETACHED = "detached"
    #: The request is over: the filters' ``on_destroy`` ran, the observer heard of it.
    DONE = "done"


_DECODING: Final = RequestState.DECODING
_ENCODING: Final = RequestState.ENCODING
_DETACHED: Final = RequestState.DETACHED
_DONE: Final = RequestState.DONE


class RequestObserver(Protocol):
    """Who hears of each request's start and end (the gateway: metrics, access log,
    tracing, in-flight counts)."""

    def request_started(self, manager: FilterManager) -> None:
        """The head arrived; the request id and trace context are set (an observer may
        replace the trace context's ids with those of its own span)."""

    def stream_started(self, manager: FilterManager) -> None:
        """An event-stream response head went to the client."""

    def request_finished(self, manager: FilterManager) -> None:
        """The request is over (called exactly once, after the filters' on_destroy)."""


class _Callbacks:
    """The callbacks one filter gets; it knows the filter's place in each direction."""

    __slots__ = ("_decode_index", "_encode_index", "_manager", "stream_info")

    def __init__(self, manager: FilterManager, decode_index: int, encode_index: int | None) -> None:
        self._manager = manager
        self._decode_index = decode_index
        self._encode_index = encode_index
        self.stream_info = manager.stream_info

    def continue_decoding(self) -> None:
        self._manager.decoder.resume(self._decode_index)

    def continue_encoding(self) -> None:
        if self._encode_index is not None and self._manager.encoder is not None:
            self._manager.encoder.resume(self._encode_index)

    def _reply_start(self) -> int:
        """Where a reply this filter makes enters the encoders: after this filter when
        the response is already passing them, else at the first filter before it."""
        manager = self._manager
        encoder = manager.encoder
        if encoder is not None and encoder.head is not None and self._encode_index is not None:
            return self._encode_index + 1
        return manager.shape.reply_start[self._decode_index]

    def send_local_reply(
        self,
        status: int,
        message: str,
        code: str | None = None,
        error_type: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._manager.send_local_reply(
            status,
            message,
            code=code,
            error_type=error_type,
            extra_headers=headers,
            start=self._reply_start(),
        )

    def send_local_response(self, status: int, body: bytes, content_type: str) -> None:
        self._manager.send_local_response(status, body, content_type, start=self._reply_start())

    def fail_response(
        self,
        status: int,
        message: str,
        code: str = "upstream_error",
        frame: bytes | None = None,
    ) -> None:
        self._manager.fail_response(status, message, code, start=self._reply_start(), frame=frame)

    def buffered_request_body(self) -> bytes:
        return b"".join(self._manager.decoder.buffers.get(self._decode_index, ()))

    def request_json(self) -> dict[str, Any] | None:
        return self._manager.request_json()

    def set_request_json(self, document: dict[str, Any], *, changed: bool = True) -> None:
        self._manager.set_request_json(document, self._decode_index, changed=changed)

    def inject_decoded_data(self, data: bytes, end_stream: bool) -> None:
        self._manager.decoder.inject(self._decode_index, data, end_stream)

    def inject_encoded_data(self, data: bytes, end_stream: bool) -> None:
        encoder = self._manager.encoder
        if encoder is None or self._encode_index is None:
            return
        encoder.inject(self._encode_index, data, end_stream)

    def pass_response_data(self) -> None:
        encoder = self._manager.encoder
        if encoder is not None and self._encode_index is not None:
            encoder.skip_data(self._encode_index)

    @property
    def clock(self) -> IReactorTime:
        return self._manager.clock

    def own_stream(self) -> IStreamOwner:
        return _StreamOwner(self)


class _StreamOwner:
    """What `IFilterCallbacks.own_stream` gives a filter: the calls of `IStreamOwner`,
    for the request and the place in the chain of the callbacks it came from."""

    __slots__ = ("_callbacks",)

    def __init__(self, callbacks: _Callbacks) -> None:
        self._callbacks = callbacks

    def keep_going_without_client(self, on_client_gone: Callable[[], None]) -> None:
        self._callbacks._manager.keep_going_without_client(on_client_gone)

    def take_flow_control(
        self,
        on_pause: Callable[[], None],
        on_resume: Callable[[], None],
        on_gone: Callable[[], None] | None = None,
    ) -> None:
        self._callbacks._manager.take_flow_control(on_pause, on_resume, on_gone)

    def pause_upstream(self) -> None:
        self._callbacks._manager.pause_upstream()

    def resume_upstream(self) -> None:
        self._callbacks._manager.resume_upstream()

    def drop_client(self) -> None:
        self._callbacks._manager.drop_client()

    def abandon(self) -> None:
        self._callbacks._manager.abandon()

    def send_local_stream(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        callbacks = self._callbacks
        callbacks._manager.send_local_stream(status, headers, start=callbacks._reply_start())


classImplements(_StreamOwner, IStreamOwner)


class _Finished:
    """Stands in for the router and the client's stream of a request that is over.

    A request's objects refer to each other (manager and router, manager and stream,
    filters and their callbacks), so without help they would be freed only by Python's
    cycle collector: on small requests its passes took 14% of the gateway's CPU. Once a
    request is over, `FilterManager.release` cuts the manager's references to them and puts
    this in their place; late calls (a heartbeat timer, a flush) do nothing.
    """

    scheme = "http"
    client_ip = ""

    def on_request_headers(self, head: RequestHead, end_stream: bool) -> None:
        pass

    def on_request_data(self, data: bytes, end_stream: bool) -> None:
        pass

    def cancel(self) -> None:
        pass

    def send_head(self, status: int, headers: Headers, end_stream: bool) -> None:
        pass

    def send_data(self, data: bytes, end_stream: bool) -> None:
        pass

    def hold(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def register_producer(self, producer: object) -> None:
        pass

    def unregister_producer(self) -> None:
        pass


classImplements(_Finished, IDownstream)
_FINISHED = _Finished()


class _NoProducer:
    """The producer of a filter's own stream (`FilterManager._local_flow`): nothing to
    pause; the filter's flow callbacks are told instead."""

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


_NO_PRODUCER: Final = _NoProducer()


class _ClientFlow:
    """What the client's stream pauses and resumes, when a filter has a say in it: the
    upstream's producer, or the filter's own callbacks (`take_flow_control`). For a
    response that goes on without its client (`keep_going_without_client`), the end of
    the client's connection resumes the upstream instead of stopping it."""

    __slots__ = ("flow", "keep_going", "producer")

    def __init__(
        self,
        producer: Any,
        flow: tuple[Callable[[], None], Callable[[], None]] | None,
        keep_going: bool,
    ) -> None:
        self.producer = producer
        self.flow = flow
        self.keep_going = keep_going

    def pauseProducing(self) -> None:
        if self.flow is not None:
            self.flow[0]()
        else:
            self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        if self.flow is not None:
            self.flow[1]()
        else:
            self.producer.resumeProducing()

    def stopProducing(self) -> None:
        if self.keep_going:
            self.producer.resumeProducing()
        else:
            self.producer.stopProducing()


def _overrides(cls: type, name: str) -> bool:
    return getattr(cls, name, None) is not getattr(StreamFilter, name)


# Declared here, not with @implementer: mypyc compiles a decorated class as a Python
# class (instance dict, Python calls); four of these are made per request.
classImplements(_Callbacks, IFilterCallbacks)


@dataclass(frozen=True)
class ChainShape:
    """What the filter classes of a chain do, worked out once per chain, not per request."""

    #: Indexes (in config order) of the filters with an encode hook, in encode order.
    encoders: tuple[int, ...]
    #: Position of each filter in the encode order, or None.
    encode_position: tuple[int | None, ...]
    #: No decoder looks at body data / no encoder looks at response data.
    decode_passthrough: bool
    encode_passthrough: bool
    #: Per filter (config order): whether it overrides decode_data / encode_data.
    decodes_data: tuple[bool, ...]
    encodes_data: tuple[bool, ...]
    #: `encodes_data` in encode order.
    encoder_takes_data: tuple[bool, ...]
    #: Per filter (config order): the encode position where a local reply it makes
    #: starts — the first encoder of a filter before it.
    reply_start: tuple[int, ...] = ()
    #: The first filter after the one that chooses the cluster (``chooses_cluster``):
    #: from there the chain runs again for a fallback cluster. -1: no such filter.
    fallback_from: int = -1
    #: Indexes of the filters that say which response codings they can read
    #: (``response_codings``); none: the request's Accept-Encoding goes as it is.
    reads_codings: tuple[int, ...] = ()

    @classmethod
    def of(cls, classes: tuple[type, ...]) -> ChainShape:
        encoders = tuple(
            i
            for i in reversed(range(len(classes)))
            if _overrides(classes[i], "encode_headers") or _overrides(classes[i], "encode_data")
        )
        position = {i: pos for pos, i in enumerate(encoders)}
        return cls(
            encoders=encoders,
            encode_position=tuple(position.get(i) for i in range(len(classes))),
            decode_passthrough=not any(_overrides(c, "decode_data") for c in classes),
            encode_passthrough=not any(_overrides(classes[i], "encode_data") for i in encoders),
            decodes_data=tuple(_overrides(c, "decode_data") for c in classes),
            encodes_data=tuple(_overrides(c, "encode_data") for c in classes),
            encoder_takes_data=tuple(_overrides(classes[i], "encode_data") for i in encoders),
            reply_start=tuple(sum(1 for j in encoders if j >= i) for i in range(len(classes))),
            fallback_from=max(
                (i + 1 for i, c in enumerate(classes) if getattr(c, "chooses_cluster", False)),
                default=-1,
            ),
            reads_codings=tuple(
                i
                for i, c in enumerate(classes)
                if callable(getattr(c, "response_codings", None))
                and _overrides(c, "response_codings")
            ),
        )


def chain_shape(filters: Sequence[IStreamFilter]) -> ChainShape:
    """The `ChainShape` of *filters*' classes, worked out anew: whoever makes requests
    with the same classes keeps it (`filterproxy.chain.registry.FilterChain.shape`)."""
    return ChainShape.of(tuple(type(f) for f in filters))


class FilterManager(ResponseSink):
    """Drives one request: decoders → router → upstream → encoders → client."""

    def __init__(
        self,
        downstream: IDownstream,
        filters: list[IStreamFilter],
        router_factory: Callable[[FilterManager], Terminal],
        buffer_limit: int,
        shape: ChainShape | None = None,
        observer: RequestObserver | None = None,
        labels: Sequence[str] = (),
        factories: Sequence[Callable[[], IStreamFilter]] = (),
        clock: IReactorTime | None = None,
    ) -> None:
        #: Typed with `ClientStream` first so that the compiled calls of the response path
        #: (per chunk: `send_data`, and `hold`/`flush` per upstream read) go straight to
        #: the HTTP/1.1 exchange, which derives from it; any other `IDownstream` (HTTP/2
        #: streams, test doubles) is called as a Python object.
        self.downstream: ClientStream | IDownstream = downstream
        self.filters = filters
        #: What to call each filter in log lines and errors (``usage (filters[3])``).
        self.labels = labels
        #: What makes each filter (config order): the filters after the route filter are
        #: made anew for a fallback cluster (`redecode`). Empty: they are not.
        self.factories = factories
        self.stream_info = StreamInfo()
        self.head: RequestHead | None = None
        #: Where the request is (changed only by this class's methods).
        self.state = _DECODING
        #: The response head went to the client (it stays true once the request is
        #: DONE: the observer reads it then).
        self.response_started = False
        #: The response is an event stream (failures after the head become SSE frames).
        self.event_stream = False
        #: The upstream's body is compressed: nothing of the gateway's own (an error
        #: frame, a heartbeat) can be put between its bytes.
        self.upstream_coded = False
        #: The last piece of body written to the client (SSE frames need line boundaries).
        self.last_chunk = b""
        #: How the response the encoders are passing ends the request, when it is the
        #: gateway's own (a local reply); "" for the upstream's.
        self.reply_outcome = ""
        self.observer = observer
        #: This hop's trace context (set with the request head).
        self.trace: TraceContext | None = None
        #: When the whole request had been read (time.monotonic()), 0.0 until then.
        self.request_read_at = 0.0
        #: The upstream's producer, registered on the client's stream (backpressure).
        self.producer: Any = None
        #: Called when the client leaves a response that goes on without it
        #: (`keep_going_without_client`); None: the upstream stops with the client.
        self.on_client_gone: Callable[[], None] | None = None
        #: The filters' clock (`IFilterCallbacks.clock`); None: the observer's reactor,
        #: looked up when a filter first asks.
        self._clock = clock
        #: A filter's (on_pause, on_resume), when it controls the client's flow.
        self.flow: tuple[Callable[[], None], Callable[[], None]] | None = None
        #: That filter's call for a client that left a response going on without it.
        self.flow_gone: Callable[[], None] | None = None
        #: The client's flow is registered for a filter's local stream (no upstream).
        self.local_flow = False
        self.router = router_factory(self)

        if shape is None:
            shape = chain_shape(filters)
        self.shape = shape
        for i, f in enumerate(filters):
            f.callbacks = _Callbacks(self, i, shape.encode_position[i])

        self.decoder: DecodeIteration = DecodeIteration(
            filters,
            shape.decodes_data,
            self._to_upstream if shape.reads_codings else self.router.on_request_headers,
            self.router.on_request_data,
            buffer_limit,
            self._request_too_large,
            data_passthrough=shape.decode_passthrough,
            on_end_swallowed=self._request_end_swallowed,
            stream_info=self.stream_info,
            fallback_from=shape.fallback_from if factories else -1,
            manager=self,
        )
        self.encoder: FilterIteration[ResponseHead] | None = None
        self.buffer_limit = buffer_limit
        self._make_encoder()

    def _to_upstream(self, head: RequestHead, end_stream: bool) -> None:
        """The request head leaves the chain: ask the upstream only for the content
        codings every filter that reads the response can read."""
        readable: frozenset[str] | None = None
        filters: list[Any] = self.filters  # those that override StreamFilter.response_codings
        for i in self.shape.reads_codings:
            codings: frozenset[str] | None = filters[i].response_codings()
            if codings is not None:
                readable = codings if readable is None else readable & codings
        if readable is not None:
            value = narrowed(head.headers.get("accept-encoding"), readable)
            if value is not None:
                head.headers.set("accept-encoding", value)
        self.router.on_request_headers(head, end_stream)

    def _make_encoder(self) -> None:
        shape = self.shape
        if shape.encoders:
            filters = self.filters
            self.encoder = EncodeIteration(
                [filters[i] for i in shape.encoders],
                shape.encoder_takes_data,
                self,
                self.buffer_limit,
                self._response_too_large,
                data_passthrough=shape.encode_passthrough,
                on_end_swallowed=self._response_end_swallowed,
            )

    @property
    def done(self) -> bool:
        """The request is over (state DONE)."""
        return self.state is _DONE

    @property
    def detached(self) -> bool:
        """The response goes on without its client (state DETACHED)."""
        return self.state is _DETACHED

    @property
    def clock(self) -> IReactorTime:
        """The clock the filters' timers use (`IFilterCallbacks.clock`): the one given,
        else the reactor of the gateway that made this request."""
        clock = self._clock
        if clock is None:
            clock = getattr(self.observer, "reactor", None)
            if clock is None:
                from twisted.internet import reactor

                clock = reactor
            self._clock = clock
        return clock

    # -- request path ------------------------------------------------------------------

    def decode_headers(self, head: RequestHead, end_stream: bool) -> None:
        """The client's request head arrived."""
        self.head = head
        info = self.stream_info
        info.client_path = head.path
        headers = head.headers
        client_id = headers.get("x-request-id")
        info.request_id = request_id = request_id_from(client_id)
        if request_id != client_id:
            headers.set("x-request-id", request_id)  # the upstream sees the same id
        self.trace = trace = child_context(headers.get("traceparent"))
        if end_stream:
            self.request_read_at = time.monotonic()
        if self.observer is not None:
            self.observer.request_started(self)
        info.trace_id = trace.trace_id
        info.span_id = trace.span_id
        headers.set("traceparent", trace.traceparent())
        try:
            self.decoder.headers(head, end_stream)
        except RequestTooLarge as e:
            self._grown_too_large(e)
        except Exception:
            self._internal_error()

    def decode_data(self, data: bytes, end_stream: bool) -> None:
        """A piece of the client's request body arrived."""
        if self.state is _DONE:
            return
        self.stream_info.bytes_in += len(data)
        if end_stream:
            self.request_read_at = time.monotonic()
        try:
            self.decoder.data(data, end_stream)
        except RequestTooLarge as e:
            self._grown_too_large(e)
        except Exception:
            self._internal_error()

    def redecode(self, cluster: str) -> bool:
        """The router fails over to *cluster*: the filters after the route filter are
        made anew and given the request again, as it left the route filter, for that
        cluster — its own header rules, credentials, path, API and translation, nothing
        of the previous attempt's. The request reaches the router again when they pass
        it on. False when there is nothing to run again (no fallback cluster, or the
        chain has no route filter): the router sends the request it has."""
        decoder = self.decoder
        start = decoder.fallback_from
        if self.state is not _DECODING or decoder.kept_head is None or start < 0:
            return False
        self.stream_info.cluster = cluster
        filters = self.filters
        shape = self.shape
        for i in range(start, len(filters)):
            try:
                filters[i].on_destroy()
            except Exception:
                log.failure("filter {filter!r} failed in on_destroy", filter=filters[i])
            fresh = self.factories[i]()
            fresh.callbacks = _Callbacks(self, i, shape.encode_position[i])
            filters[i] = fresh
        self._make_encoder()
        try:
            return decoder.rerun()
        except RequestTooLarge as e:
            self._grown_too_large(e)
        except Exception:
            self._internal_error()
        return True

    def request_json(self) -> dict[str, Any] | None:
        """The request body as a JSON object (see `IFilterCallbacks.request_json`)."""
        info = self.stream_info
        whole_body = self.decoder.whole_body
        if info.body_json is None and whole_body is not None and self.head is not None:
            try:
                info.body_json = parse_body(whole_body, self.head.headers.get("content-type"))
            except BadBody:
                return None
        return info.body_json

    def set_request_json(
        self, document: dict[str, Any], index: int, *, changed: bool = True
    ) -> None:
        """Filter *index* says the request body is *document* (see
        `IFilterCallbacks.set_request_json`)."""
        decoder = self.decoder
        if changed:
            if not decoder.body_whole_at(index):
                label = self._label(index)
                raise ValueError(
                    f"{label} changed the request body before it had all of it; "
                    "put it after body-accumulate"
                )
            body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
            if len(body) > self.buffer_limit:
                raise RequestTooLarge(len(body), self.buffer_limit)
            decoder.new_body = body
        self.stream_info.body_json = document

    def _internal_error(self) -> None:
        log.failure(
            "request {request_id} failed in the gateway", request_id=self.stream_info.request_id
        )
        self.fail_response(
            500,
            "the gateway failed to handle this request",
            "internal_error",
            "internal_error",
            through_filters=False,
        )

    def hook_failed(self, iteration: FilterIteration[Any], position: int, failure: Failure) -> None:
        """The Deferred a hook returned failed: the request fails as when a hook
        raises."""
        index = position if iteration is self.decoder else self.shape.encoders[position]
        log.failure(
            "request {request_id}: the Deferred {label}'s hook returned failed",
            failure,
            request_id=self.stream_info.request_id,
            label=self._label(index),
        )
        self.fail_response(
            500,
            "the gateway failed to handle this request",
            "internal_error",
            "internal_error",
            through_filters=False,
        )

    def _grown_too_large(self, error: RequestTooLarge) -> None:
        """A filter made the request larger than the limit on a request."""
        self.send_local_reply(
            413,
            f"{error}; send a smaller request or raise max_request_bytes",
            code="request_too_large",
        )

    def _request_too_large(self) -> None:
        self.send_local_reply(
            413,
            f"request body is larger than the gateway's limit of {self.buffer_limit} bytes; "
            "send a smaller body or raise max_request_bytes",
            code="request_too_large",
        )

    def _label(self, index: int) -> str:
        if index < len(self.labels):
            return self.labels[index]
        filters = self.filters
        name = type(filters[index]).__name__ if index < len(filters) else "a filter"
        return f"{name} (filters[{index}])"

    def _request_end_swallowed(self, index: int) -> None:
        label = self._label(index)
        log.error(
            "request {request_id}: {label} returned STOP_ITERATION with the end of the request "
            "body and did not pass it on; the request was answered 500",
            request_id=self.stream_info.request_id,
            label=label,
        )
        self.send_local_reply(
            500,
            f"the gateway's filter {label} kept the end of the request body",
            code="internal_error",
            outcome="internal_error",
        )

    def _response_end_swallowed(self, position: int) -> None:
        label = self._label(self.shape.encoders[position])
        log.error(
            "request {request_id}: {label} returned STOP_ITERATION with the end of the "
            "response and did not pass it on; the response was ended with an error",
            request_id=self.stream_info.request_id,
            label=label,
        )
        self.fail_response(
            502,
            f"the gateway's filter {label} kept the end of the response",
            "internal_error",
            "internal_error",
            through_filters=False,
        )

    # -- response path -----------------------------------------------------------------

    def encode_headers(self, status: int, headers: Headers, end_stream: bool) -> None:
        """The upstream's response head (headers as received; hygiene applied here)."""
        coding = headers.get("content-encoding")
        self.upstream_coded = coding is not None and coding.strip().lower() != "identity"
        head = ResponseHead(status, forward_response_headers(headers))
        try:
            if self.encoder is None:
                self.send_response_head(head, end_stream)
            else:
                self.encoder.headers(head, end_stream)
        except Exception:
            self._internal_error()

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        """A piece of the upstream's response body, passed on as it is."""
        if end_stream and self.producer is not None:
            self._upstream_ended()
        try:
            if self.encoder is None:
                self.send_response_data(data, end_stream)
            else:
                self.encoder.data(data, end_stream)
        except Exception:
            self._internal_error()

    def send_response_head(self, head: ResponseHead, end_stream: bool) -> None:
        """The response head, past the filters: to the client."""
        self.response_started = True
        if self.state is _DECODING:
            self.state = _ENCODING
        self.stream_info.status = head.status
        headers = head.headers
        self.event_stream = (headers.get("content-type") or "").startswith("text/event-stream")
        upstream_id = headers.get("x-request-id")
        if upstream_id is None:
            headers.add("x-request-id", self.stream_info.request_id)
        else:  # the provider's own id (what its support asks for) is kept
            self.stream_info.upstream_request_id = upstream_id
        self.downstream.send_head(head.status, headers, end_stream)
        if self.event_stream and self.observer is not None:
            self.observer.stream_started(self)
        if end_stream:
            self._finish(self.reply_outcome or "complete")

    def send_response_data(self, data: bytes, end_stream: bool) -> None:
        """A piece of the response body, past the filters: to the client."""
        self.stream_info.bytes_out += len(data)
        self.last_chunk = data or self.last_chunk
        self.downstream.send_data(data, end_stream)
        if end_stream:
            self._finish(self.reply_outcome or "complete")

    def send_heartbeat(self) -> None:
        """Silence in an event stream: an SSE comment line, through the encoders, so
        that proxies in front keep the connection open. The caller (the router) makes
        sure the upstream's stream is between events. No blank line follows it: once a
        stream's events carry ids, a bare blank line makes some clients (openai-python)
        parse an empty event and fail."""
        if self.state is _DONE or not self.response_started:
            return
        self.encode_data(b": keep-alive\n", False)

    def register_producer(self, producer: Any) -> None:
        """The upstream's *producer* is paused while the client cannot keep up."""
        self.producer = producer
        if self.on_client_gone is not None or self.flow is not None:
            producer = _ClientFlow(producer, self.flow, self.on_client_gone is not None)
        self.downstream.register_producer(producer)

    def _upstream_ended(self) -> None:
        """The upstream's response is over: its connection may serve another request
        from now on (HTTP/1.1 connections go back to their pool), so nothing of this
        request may pause or resume it any more — neither the client's stream, when the
        last of the response fills its buffer or waits for its window, nor a filter
        (`pause_upstream`). Done before the end passes the filters, which may write
        much then (a translation's last events)."""
        self.producer = None
        if self.state is not _DETACHED:
            self.downstream.unregister_producer()

    def _reregister(self) -> None:
        state = self.state
        if self.producer is not None and state is not _DETACHED and state is not _DONE:
            self.downstream.unregister_producer()
            self.register_producer(self.producer)

    def keep_going_without_client(self, on_client_gone: Callable[[], None]) -> None:
        """See `IStreamOwner.keep_going_without_client`."""
        if self.state is _DONE or self.on_client_gone is not None:
            return
        self.on_client_gone = on_client_gone
        self._reregister()

    def take_flow_control(
        self,
        on_pause: Callable[[], None],
        on_resume: Callable[[], None],
        on_gone: Callable[[], None] | None = None,
    ) -> None:
        """See `IStreamOwner.take_flow_control`."""
        if self.state is _DONE or self.flow is not None:
            return
        self.flow = (on_pause, on_resume)
        self.flow_gone = on_gone
        self._reregister()

    def pause_upstream(self) -> None:
        """See `IStreamOwner.pause_upstream`."""
        producer = self.producer
        if producer is not None:
            producer.pauseProducing()

    def resume_upstream(self) -> None:
        """See `IStreamOwner.resume_upstream`."""
        producer = self.producer
        if producer is not None:
            producer.resumeProducing()

    def drop_client(self) -> None:
        """See `IStreamOwner.drop_client`."""
        if self.state is _DONE or self.state is _DETACHED:
            return
        downstream = self.downstream
        if self.on_client_gone is None:
            self.router.cancel()
            downstream.abort()
            self._finish("client_gone")
            return
        downstream.unregister_producer()
        downstream.abort()
        self._detach()

    def _detach(self) -> None:
        self.state = _DETACHED
        self.downstream = _FINISHED
        if self.producer is not None:
            self.producer.resumeProducing()
        callback = self.on_client_gone
        if callback is not None:
            callback()
        gone = self.flow_gone
        if gone is not None:
            gone()  # the filter that held what the client could not take drops it

    def abandon(self) -> None:
        """See `IStreamOwner.abandon`."""
        if self.state is _DONE:
            return
        self.router.cancel()
        if self.state is not _DETACHED:
            self.downstream.abort()
        self._finish("client_gone")

    def send_local_stream(
        self, status: int, headers: Sequence[tuple[str, str]], *, start: int = 0
    ) -> None:
        """See `IStreamOwner.send_local_stream`."""
        if self.state is _DONE or self.response_started:
            return
        self._stop_request()
        head = ResponseHead(status, Headers(list(headers)), local=True)
        self.reply_outcome = "complete"
        encoder = self.encoder
        if encoder is None or start >= len(encoder.filters):
            self.send_response_head(head, False)
            self._local_flow()
            return
        try:
            encoder.restart_headers(start, head, False)
        except Exception:
            self._internal_error()
            return
        self._local_flow()

    def _local_flow(self) -> None:
        """A filter that controls the client's flow (`take_flow_control`) and answers
        with a stream of its own is told when its client cannot keep up, as it would be
        for an upstream's response."""
        if self.flow is not None and self.producer is None and self.state is not _DONE:
            self.local_flow = True
            self.downstream.register_producer(_ClientFlow(_NO_PRODUCER, self.flow, False))

    def _response_too_large(self) -> None:
        log.error("a response filter buffered more than {limit} bytes", limit=self.buffer_limit)
        self.fail_response(
            502,
            "the response was larger than a filter may buffer",
            "upstream_error",
            through_filters=False,
        )

    # -- endings -----------------------------------------------------------------------

    def _stop_request(self) -> None:
        """No more of the request goes anywhere, and nothing more comes from upstream."""
        self.decoder.stop()
        self.router.cancel()

    def send_local_reply(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        error_type: str | None = None,
        extra_headers: Sequence[tuple[str, str]] = (),
        outcome: str = "local_reply",
        start: int = 0,
    ) -> None:
        """Answer with an OpenAI-shaped JSON error; stop both directions and the upstream.

        The reply passes the encoders from position *start* on (0: all of them)."""
        if self.state is _DONE:
            return
        self._stop_request()
        if self.response_started:
            if self.encoder is not None:
                self.encoder.stop()
            self.downstream.abort()
            self._finish(outcome)
            return
        body = error_body(status, message, code=code, type=error_type, api=self._client_api())
        self.stream_info.error = self.stream_info.error or message
        self._reply(status, body, "application/json", extra_headers, outcome, start)

    def _client_api(self) -> str | None:
        """The client's API, for the shape of the gateway's own errors."""
        api = self.stream_info.api
        if api is None and self.head is not None:
            api = client_api(self.head.path)
        return api

    def send_local_response(
        self, status: int, body: bytes, content_type: str, *, start: int = 0
    ) -> None:
        """Answer with *body* from the gateway itself (e.g. the model list)."""
        if self.state is _DONE or self.response_started:
            return
        self._stop_request()
        self._reply(status, body, content_type, (), "local_reply", start)

    def _reply(
        self,
        status: int,
        body: bytes,
        content_type: str,
        extra_headers: Sequence[tuple[str, str]],
        outcome: str,
        start: int | None,
    ) -> None:
        """Send the gateway's own response through the encoders from position *start*
        (None: straight to the client)."""
        headers = Headers([("content-type", content_type), ("content-length", str(len(body)))])
        for name, value in extra_headers:
            headers.add(name, value)
        head = ResponseHead(status, headers, local=True)
        self.reply_outcome = outcome
        encoder = self.encoder
        if encoder is None or start is None or start >= len(encoder.filters):
            if encoder is not None:  # nothing of the upstream's response goes on now
                encoder.stop()
            self.send_response_head(head, False)
            self.send_response_data(body, True)
            return
        try:
            encoder.restart_headers(start, head, False)
            if self.state is not _DONE:
                encoder.data_from(start, body, True)
        except Exception:
            self._internal_error()

    def fail_response(
        self,
        status: int,
        message: str,
        code: str,
        outcome: str = "upstream_error",
        *,
        through_filters: bool = True,
        start: int = 0,
        frame: bytes | None = None,
    ) -> None:
        """The upstream exchange failed. Before the response head: a JSON error with
        *status*. After it: an event stream gets an ``event: error`` frame in the OpenAI
        error shape (through the encoders, unless a filter is what failed); then the
        response ends without its final framing, so no client can take it for complete.

        A filter that fails the response (`IFilterCallbacks.fail_response`) has its
        error enter the encoders at *start* (those after it), and may give the *frame*
        itself: its client API's error event, or none (``b""``)."""
        if self.state is _DONE:
            return
        self.stream_info.error = message
        if not self.response_started:
            if through_filters:
                self.send_local_reply(status, message, code=code, outcome=outcome, start=start)
            else:
                self._stop_request()
                body = error_body(status, message, code=code, api=self._client_api())
                self._reply(status, body, "application/json", (), outcome, None)
            return
        log.warn(
            "request {request_id} failed mid-response: {message}",
            request_id=self.stream_info.request_id,
            message=message,
        )
        self._stop_request()
        # Said before the error passes the filters: one that holds an unfinished event of
        # the upstream's drops it, so that the error is read as an event of its own.
        self.stream_info.outcome = outcome
        encoder = self.encoder
        if frame is None and self.event_stream and not self.upstream_coded:
            body = error_body(status, message, code=code, api=self._client_api())
            frame = b"event: error\ndata: " + body + b"\n\n"
            if self.last_chunk and not self.last_chunk.endswith(b"\n\n"):
                frame = b"\n\n" + frame  # end the event the upstream left unfinished
        if frame:
            if encoder is not None and through_filters and not encoder.stopped:
                try:
                    if start:
                        encoder.data_from(start, frame, False)
                    else:
                        encoder.data(frame, False)
                except Exception:
                    log.failure("a filter failed on the mid-stream error frame")
            elif not self.done:  # (a filter may have ended it, on the frame)
                self.downstream.send_data(frame, False)
        if encoder is not None:
            encoder.stop()
        self.downstream.abort()
        self._finish(outcome)

    def client_gone(self) -> None:
        """The client hung up: stop the upstream at once (or, for a response that goes
        on without it, tell the filter that asked)."""
        state = self.state
        if state is _DONE:
            return
        if self.on_client_gone is not None:
            if state is not _DETACHED:
                self._detach()
            return
        self.router.cancel()
        self._finish("client_gone")

    def _finish(self, outcome: str) -> None:
        if self.state is _DONE:
            return
        self.state = _DONE
        self.stream_info.outcome = outcome
        if self.local_flow:
            self.local_flow = False
            self.downstream.unregister_producer()
        self.decoder.stop()
        if self.encoder is not None:
            self.encoder.stop()
        for f in self.filters:
            try:
                f.on_destroy()
            except Exception:
                log.failure("filter {filter!r} failed in on_destroy", filter=f)
        if self.observer is not None:
            self.observer.request_finished(self)
        self.release()

    def release(self) -> None:
        """Cut this finished request's reference cycles (see `_Finished`): what is left of
        it is freed as soon as the last outside reference goes. The manager's own state
        (`stream_info`, `head`, `done`) stays readable."""
        self.decoder.release()
        if self.encoder is not None:
            self.encoder.release()
        self.filters = []
        self.router = _FINISHED
        self.downstream = _FINISHED
        # A filter's callbacks (`keep_going_without_client`, `take_flow_control`) are
        # its bound methods: the filter holds its callbacks, which hold this manager.
        self.on_client_gone = None
        self.flow = None
        self.flow_gone = None
