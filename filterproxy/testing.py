"""Test a filter on its own: `FilterHarness` runs a filter (or a chain of them) in the
real filter chain, between a recording client and a recording upstream — no sockets, no
reactor.

The chain is the gateway's own (`filterproxy.chain.manager.FilterManager`), so the
filter meets exactly the rules it meets in production: statuses, buffering, replacement
data, hooks that return a Deferred, local replies through the encoders, a swallowed end
of stream reported. The filter and its callbacks are checked against `IStreamFilter`,
`IFilterCallbacks` and `IStreamOwner`.

Time is a `twisted.internet.task.Clock` (``harness.clock``, the filters'
``callbacks.clock``): a test moves it on with ``harness.clock.advance(seconds)``, never
waits. The upstream's side has a producer that records what the chain does to it
(``harness.producer``: paused, resumed, stopped), and the client can fall behind and
catch up (`FilterHarness.client_slow`, `FilterHarness.client_ready`), so that a filter's
flow control can be checked.

Example::

    from filterproxy.testing import FilterHarness

    def test_the_filter_refuses_unknown_teams():
        h = FilterHarness(TeamQuota, {"teams": ["research"]})
        h.request(b'{"model": "m"}', headers={"x-team": "sales"})
        assert h.client.status == 403 and not h.upstream.reached

    def test_the_filter_rewrites_the_stream():
        h = FilterHarness(MyFilter)
        h.request(b'{"model": "m", "stream": true}')
        response = h.respond(200, {"content-type": "text/event-stream"},
                             [b'data: {"n": 1}\\n\\n', b"data: [DONE]\\n\\n"])
        assert [e.data for e in response.events()] == [...]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from filterproxy.chain.interfaces import IDownstream
from filterproxy.chain.manager import FilterManager
from filterproxy.config import DEFAULT_MAX_REQUEST_BYTES, Config
from filterproxy.extensions.builtin import parse_config
from filterproxy.filters.api import (
    FilterContext,
    IFilterCallbacks,
    IStreamFilter,
    RequestHead,
    StreamInfo,
)
from filterproxy.filters.resources import Resources
from filterproxy.filters.stream_owner import IStreamOwner
from filterproxy.http.headers import Headers
from filterproxy.http.sse import SSEDecoder, SSEEvent

__all__ = ["ClientResponse", "FilterHarness", "RecordingProducer", "UpstreamRequest"]

#: The config a harness gives the filter when the test gives none.
DEFAULT_CONFIG = """
clusters:
  upstream: {url: "http://upstream.test"}
"""


@dataclass
class UpstreamRequest:
    """What reached the upstream side of the chain."""

    head: RequestHead | None = None
    pieces: list[bytes] = field(default_factory=list)
    #: The end of the request body arrived.
    ended: bool = False
    #: The chain gave the upstream exchange up (a local reply, the client left).
    cancelled: bool = False

    @property
    def reached(self) -> bool:
        """Whether the request head got through the filter."""
        return self.head is not None

    @property
    def body(self) -> bytes:
        return b"".join(self.pieces)

    def json(self) -> Any:
        return json.loads(self.body)


@implementer(IDownstream)
@dataclass
class ClientResponse:
    """What reached the client: a response head, body pieces, how it ended."""

    scheme: str = "http"
    client_ip: str = "127.0.0.1"
    status: int | None = None
    headers: Headers | None = None
    pieces: list[bytes] = field(default_factory=list)
    #: The response ended properly (its last piece had the end of the stream).
    ended: bool = False
    #: The response was cut off (after an error mid-stream).
    aborted: bool = False
    #: What the chain registered to be paused while this client cannot keep up (the
    #: upstream's producer, or what stands for a filter that took flow control), or None.
    producer: Any = None

    @property
    def body(self) -> bytes:
        return b"".join(self.pieces)

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[SSEEvent]:
        """The body as server-sent events."""
        return SSEDecoder().feed(self.body)

    # -- IDownstream --------------------------------------------------------------------

    def send_head(self, status: int, headers: Headers, end_stream: bool) -> None:
        self.status = status
        self.headers = headers
        self.ended = end_stream

    def send_data(self, data: bytes, end_stream: bool) -> None:
        if data:
            self.pieces.append(data)
        self.ended = self.ended or end_stream

    def hold(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True

    def register_producer(self, producer: object) -> None:
        self.producer = producer

    def unregister_producer(self) -> None:
        self.producer = None


@dataclass
class RecordingProducer:
    """The upstream's side of backpressure: records what the chain asks of it."""

    #: Every call, in order: "pause", "resume", "stop".
    calls: list[str] = field(default_factory=list)
    #: Paused now (the upstream is not read).
    paused: bool = False
    #: The chain stopped it (the upstream exchange is given up).
    stopped: bool = False

    def pauseProducing(self) -> None:
        self.calls.append("pause")
        self.paused = True

    def resumeProducing(self) -> None:
        self.calls.append("resume")
        self.paused = False

    def stopProducing(self) -> None:
        self.calls.append("stop")
        self.stopped = True


class _RecordingUpstream:
    """The chain's terminal: records the request (the router's place)."""

    def __init__(self, request: UpstreamRequest) -> None:
        self.request = request

    def on_request_headers(self, head: RequestHead, end_stream: bool) -> None:
        self.request.head = head
        self.request.ended = end_stream

    def on_request_data(self, data: bytes, end_stream: bool) -> None:
        if data:
            self.request.pieces.append(data)
        self.request.ended = self.request.ended or end_stream

    def cancel(self) -> None:
        self.request.cancelled = True


def _headers(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> Headers:
    if headers is None:
        return Headers()
    items = headers.items() if isinstance(headers, Mapping) else headers
    return Headers((name.lower(), value) for name, value in items)


#: One filter of a harness's chain: a class (configured with no options), a class and
#: its options, or an instance.
FilterEntry = type | tuple[type, Mapping[str, Any]] | IStreamFilter


def _make(
    entry: FilterEntry, options: Mapping[str, Any] | None, context: FilterContext
) -> IStreamFilter:
    """The per-request instance of *entry*, configured as the gateway does."""
    if isinstance(entry, tuple):
        entry, options = entry
    if isinstance(entry, type):
        configure = getattr(entry, "configure", None)
        filter_config = configure(dict(options or {}), context) if configure else None
        variant = getattr(entry, "variant", None)  # as the gateway builds its chain
        cls = variant(filter_config) if variant is not None else entry
        instance: IStreamFilter = cls(filter_config)
        return instance
    if options:
        raise ValueError("options are for a filter class; this is an instance")
    return entry


class FilterHarness:
    """A filter (or a chain of filters) in the real chain, for one request.

    Args:
        filter: The filter class (configured with *options* through its
            ``configure``, as the gateway does at start-up) or a filter instance; or a
            list of them, the chain in config order, each a class, a ``(class,
            options)`` pair or an instance.
        options: The filter's options, as its config entry would give them (for a
            single filter class).
        config: The gateway's config the filter may consult (`FilterContext.config`);
            by default one cluster named ``upstream``.
        environ: Where ``${VAR}`` in the options are looked up.
        buffer_limit: What the chain may buffer (body-accumulate's limit).
        clock: The filters' clock (``callbacks.clock``); by default a new
            `twisted.internet.task.Clock`, at ``harness.clock``.
        resources: The process's shared things (`filterproxy.filters.resources`) the
            filters' ``configure`` gets; by default new ones on `clock`.
    """

    def __init__(
        self,
        filter: FilterEntry | Sequence[FilterEntry],
        options: Mapping[str, Any] | None = None,
        *,
        config: Config | None = None,
        environ: Mapping[str, str] | None = None,
        buffer_limit: int = DEFAULT_MAX_REQUEST_BYTES,
        clock: Clock | None = None,
        resources: Resources | None = None,
    ) -> None:
        environ = {} if environ is None else environ
        #: The clock the filters' timers run on: move it with ``clock.advance(seconds)``.
        self.clock = clock if clock is not None else Clock()
        #: What the filters' ``configure`` gets as the process's shared things (its
        #: clock is `clock`).
        self.resources = resources if resources is not None else Resources(clock=self.clock)
        if config is None:
            config = parse_config(DEFAULT_CONFIG, environ=environ)
        entries: list[FilterEntry]
        if isinstance(filter, list | tuple) and not _is_pair(filter):
            if options:
                raise ValueError("options are for a single filter class; give (class, options)")
            entries = list(filter)
        else:
            entries = [filter]  # type: ignore[list-item]
        instances = [
            _make(
                entry,
                options,
                FilterContext(
                    config=config, path=f"filters[{i}]", environ=environ, resources=self.resources
                ),
            )
            for i, entry in enumerate(entries)
        ]
        #: The chain's filters, in config order (`filter`: the first).
        self.filters = instances
        self.filter = instances[0]
        self.upstream = UpstreamRequest()
        #: The upstream's producer, registered with the response head.
        self.producer = RecordingProducer()
        self.client = ClientResponse()
        verifyObject(IDownstream, self.client)
        self.manager = FilterManager(
            self.client,
            list(instances),
            lambda manager: _RecordingUpstream(self.upstream),
            buffer_limit,
            labels=tuple(f"{type(f).__name__} (filters[{i}])" for i, f in enumerate(instances)),
            clock=self.clock,
        )
        # Checked once the chain has given them their callbacks.
        for instance in instances:
            verifyObject(IStreamFilter, instance)
            verifyObject(IFilterCallbacks, instance.callbacks)
            verifyObject(IStreamOwner, instance.callbacks.own_stream())

    @property
    def stream_info(self) -> StreamInfo:
        return self.manager.stream_info

    @property
    def done(self) -> bool:
        """The request is over (the filter's ``on_destroy`` has run)."""
        return self.manager.done

    def request(
        self,
        body: bytes | Sequence[bytes] = b"",
        *,
        method: str = "POST",
        path: str = "/v1/chat/completions",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    ) -> UpstreamRequest:
        """Send a request through the filter (the body in one piece, or in the pieces
        given); what reached the upstream side. A JSON body gets
        ``content-type: application/json`` unless *headers* say otherwise."""
        pieces = [body] if isinstance(body, bytes) else list(body)
        pieces = [p for p in pieces if p]
        head_headers = _headers(headers)
        if pieces and "content-type" not in head_headers:
            head_headers.set("content-type", "application/json")
        head = RequestHead(method, path, head_headers, scheme="http", client_ip="127.0.0.1")
        self.manager.decode_headers(head, not pieces)
        for i, piece in enumerate(pieces):
            self.manager.decode_data(piece, i == len(pieces) - 1)
        return self.upstream

    def respond(
        self,
        status: int = 200,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        body: bytes | Sequence[bytes] = b"",
        *,
        end: bool = True,
    ) -> ClientResponse:
        """Send the upstream's response through the filter (its body in the pieces
        given; with *end* false, the stream stays open for `more`); what reached the
        client."""
        pieces = [body] if isinstance(body, bytes) else list(body)
        if not self.done:  # as the router does with the upstream's response head
            self.manager.register_producer(self.producer)
        self.manager.encode_headers(status, _headers(headers), not pieces and end)
        self.more(pieces, end=end)
        return self.client

    def more(self, pieces: Sequence[bytes], *, end: bool = True) -> ClientResponse:
        """More of the upstream's response body; with *end*, the last of it."""
        for i, piece in enumerate(pieces):
            self.manager.encode_data(piece, end and i == len(pieces) - 1)
        if end and not pieces and self.client.status is not None and not self.done:
            self.manager.encode_data(b"", True)
        return self.client

    def fail(self, status: int, message: str, code: str) -> ClientResponse:
        """The upstream exchange fails (as the router reports a failure or a timeout):
        a JSON error before the response head, an ``event: error`` frame after it."""
        self.manager.fail_response(status, message, code)
        return self.client

    def heartbeat(self) -> ClientResponse:
        """A route heartbeat (an SSE comment) through the encoders."""
        self.manager.send_heartbeat()
        return self.client

    def hang_up(self) -> None:
        """The client goes away: its connection stops what was registered to be paused
        with it (as a transport does when its connection is lost), and the chain hears
        of it."""
        producer = self.client.producer
        if producer is not None:
            self.client.producer = None
            producer.stopProducing()
        self.manager.client_gone()

    def client_slow(self) -> None:
        """The client cannot keep up: its stream pauses what the chain registered (the
        upstream's producer, or a filter's flow control)."""
        producer = self.client.producer
        if producer is not None:
            producer.pauseProducing()

    def client_ready(self) -> None:
        """The client can take more again."""
        producer = self.client.producer
        if producer is not None:
            producer.resumeProducing()


def _is_pair(entry: object) -> bool:
    """Whether *entry* is one ``(class, options)`` pair rather than a chain."""
    return (
        isinstance(entry, tuple)
        and len(entry) == 2
        and isinstance(entry[0], type)
        and isinstance(entry[1], Mapping)
    )
