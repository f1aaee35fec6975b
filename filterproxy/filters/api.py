"""The filter API: what a filter is, what it may return and what it may call.

A filter is created once per request from its class and sees the request on the way in
(``decode_*``, in config order) and the response on the way out (``encode_*``, in reverse
order). A headers hook returns a `FilterStatus`; a data hook returns a `FilterStatus` or
the data to pass on instead (`DataResult`: replacement bytes, or a list of pieces), which
is how a filter rewrites a stream. A hook whose answer comes later (a store, a remote
check) returns a `twisted.internet.defer.Deferred` that fires with that answer: the chain
holds the stream at the filter until it does. Filters share typed state through
``stream_info.state`` (`filterproxy.filters.state.FilterState`); the calls of a filter
that owns its stream are opt-in (``callbacks.own_stream()``,
`filterproxy.filters.stream_owner.IStreamOwner`). Subclass `StreamFilter`, which implements every hook as
"pass through", and override only what you need: hooks you do not override cost nothing,
in particular `encode_data`, which would otherwise run once per streamed chunk.

Example::

    class AuditFilter(StreamFilter):
        @classmethod
        def configure(cls, options, context):
            return options.get("header", "x-audit")

        def __init__(self, header_name):
            self.header_name = header_name

        def decode_headers(self, head, end_stream):
            if head.headers.get(self.header_name) is None:
                self.callbacks.send_local_reply(403, f"missing {self.header_name} header")
                return FilterStatus.STOP_ITERATION
            return FilterStatus.CONTINUE
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from zope.interface import Attribute, Interface, implementer

from filterproxy.filters.state import FilterState
from filterproxy.http.headers import Headers

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from twisted.internet.defer import Deferred

    from filterproxy.config import Config, RouteConfig
    from filterproxy.filters.resources import Resources
    from filterproxy.filters.stream_owner import IStreamOwner

__all__ = [
    "ContinueInsideHook",
    "DataResult",
    "FilterContext",
    "FilterStatus",
    "HeadersResult",
    "IFilterCallbacks",
    "IStreamFilter",
    "RequestHead",
    "RequestTooLarge",
    "ResponseHead",
    "StreamFilter",
    "StreamInfo",
]


class FilterStatus(enum.Enum):
    """What the filter chain does after a hook returns."""

    #: Pass the headers or data on to the next filter.
    CONTINUE = "continue"
    #: Stop here. For headers: hold them until the filter calls ``continue_decoding()`` /
    #: ``continue_encoding()`` (or until one of its data hooks returns CONTINUE). For data:
    #: the filter has taken the data; nothing is passed on.
    STOP_ITERATION = "stop_iteration"
    #: Data only: keep this data in the chain's buffer and stop. When the filter later
    #: returns CONTINUE (or calls continue), everything buffered is passed on at once.
    STOP_ITERATION_AND_BUFFER = "stop_iteration_and_buffer"


#: What a data hook returns: a `FilterStatus`, or what to pass on in place of this piece
#: and whatever the chain buffered for the filter — one piece (``b""``: nothing, though
#: the end of the stream still goes on), or a list of pieces passed on one by one. The
#: end of the stream goes with the last piece. A filter that returns STOP_ITERATION with
#: the end of the stream, without passing the end on itself (`inject_encoded_data`),
#: has swallowed it: the gateway ends the exchange with an error naming the filter.
#: Or a `Deferred` that fires with one of those, when the answer comes later: the chain
#: holds the stream at the filter until then (see `HeadersResult`).
DataResult: TypeAlias = "FilterStatus | bytes | list[bytes] | Deferred[Any]"

#: What a headers hook returns: a `FilterStatus`, or a `Deferred` that fires with one
#: when the hook's work ends later (a store, a remote check). Until it fires, the chain
#: holds the stream at the filter: what reaches the filter meanwhile waits, in order, and
#: reaches it afterwards; then the chain goes on as if the hook had returned the result.
#: A failure answers the client with an internal error (as an exception in a hook does).
#: A filter does not call ``continue_*`` for a hook that returned a Deferred.
HeadersResult: TypeAlias = "FilterStatus | Deferred[FilterStatus]"


class ContinueInsideHook(RuntimeError):
    """A filter called ``continue_decoding()`` / ``continue_encoding()`` inside its own
    hook, with nothing held, and the hook then returned STOP_ITERATION (or a Deferred):
    the call continued nothing, and the stream would have waited forever. A hook whose
    work ends later returns a `Deferred` that fires with CONTINUE instead."""

    def __init__(self, filter_name: str) -> None:
        self.filter_name = filter_name
        super().__init__(
            f"{filter_name} called continue_decoding() or continue_encoding() inside its own "
            "hook, then returned STOP_ITERATION from it: the call continued nothing, since "
            "nothing was held yet. Return CONTINUE from the hook, or a Deferred that fires "
            "with CONTINUE when the work is done"
        )


class RequestTooLarge(ValueError):
    """A request body a filter made (`IFilterCallbacks.set_request_json`) is larger than
    the chain's limit on a request (body-accumulate's ``max_request_bytes``): the
    upstream would get more than the gateway lets a client send."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"the request would go upstream as {size} bytes, over the gateway's limit of "
            f"{limit} bytes (max_request_bytes)"
        )


@dataclass
class RequestHead:
    """The request line and headers as the filters see them (mutable)."""

    method: str
    path: str
    headers: Headers
    #: "http" or "https": how the client reached the gateway.
    scheme: str = "http"
    #: The client's IP address, or "" for a UNIX socket.
    client_ip: str = ""


@dataclass
class ResponseHead:
    """The response status and headers as the filters see them (mutable)."""

    status: int
    headers: Headers
    reason: str = ""
    #: The gateway's own answer (a local reply or stream, an error it makes), not the
    #: upstream's: a filter that rewrites what a provider sends leaves it alone.
    local: bool = False


@dataclass(slots=True)
class StreamInfo:
    """What the gateway knows about one request; filters read and annotate it."""

    request_id: str = ""
    started: float = field(default_factory=time.monotonic)
    #: The path (and query) the client asked for, whatever filters rewrite it into.
    client_path: str = ""
    #: The route chosen by the route filter, if any.
    route: RouteConfig | None = None
    #: The cluster the router will use (normally the route's).
    cluster: str | None = None
    #: The model named in the body, after alias resolution.
    model: str | None = None
    #: The name of the gateway key the client presented (the keys filter), if any.
    key_name: str | None = None
    #: The team that key belongs to (the keys filter), if any.
    team_name: str | None = None
    #: The client's API (`filterproxy.http.apis`: chat, messages, responses), set by a
    #: filter that rewrites the request into another API (the translate filter), so that
    #: the gateway's own errors keep the client's shape. None: taken from the path.
    #: (Whether the request was translated is the `records.Translated` in `state`.)
    api: str | None = None
    #: The request body's JSON document (`IFilterCallbacks.request_json`), once parsed;
    #: read it, change it through `IFilterCallbacks.set_request_json`.
    body_json: dict[str, Any] | None = None
    #: The endpoint (URL) of the last upstream attempt.
    endpoint: str | None = None
    #: Upstream attempts made (retries and fail-overs included).
    attempts: int = 0
    #: Seconds from the request's arrival to the upstream's response head.
    time_to_first_byte: float | None = None
    #: Seconds from the request's arrival to the first piece of the response body (for a
    #: stream, the first token: the "TTFT").
    time_to_first_token: float | None = None
    #: Token counts from the provider's ``usage`` (set by the usage filter), if reported.
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: W3C trace context: the trace id and this hop's span id (32 and 16 hex digits).
    trace_id: str = ""
    span_id: str = ""
    #: The upstream's own ``x-request-id`` (kept on the response), if it sent one.
    upstream_request_id: str | None = None
    #: The status sent to the client.
    status: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    #: How the request ended: complete, local_reply, upstream_error, timeout,
    #: internal_error or client_gone. A response that fails after its head went is
    #: marked before its error passes the encoders: a filter that holds an unfinished
    #: event of the upstream's then drops it (the error is an event of its own).
    outcome: str = ""
    #: What went wrong, when something did (never contains secrets).
    error: str | None = None
    #: The request's `FilterState`, made when first asked for (see `state`).
    _state: FilterState | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def has_state(self) -> bool:
        """Whether a filter kept anything in `state` (asked without making it)."""
        state = self._state
        return state is not None and len(state) > 0

    @property
    def state(self) -> FilterState:
        """Typed state the filters share (`filterproxy.filters.state.FilterState`): one
        object per class, ``state.set(obj)`` and ``state.get(Class)``; the built-in
        features' records are `filterproxy.filters.records`."""
        state = self._state
        if state is None:
            state = self._state = FilterState()
        return state


class IFilterCallbacks(Interface):
    """What the chain offers a filter; available as ``self.callbacks`` in every hook."""

    stream_info = Attribute("The `StreamInfo` of this request.")
    clock = Attribute(
        "The gateway's clock (`twisted.internet.interfaces.IReactorTime`: ``callLater``, "
        "``seconds``), for a filter's timers; a `twisted.internet.task.Clock` in "
        "`filterproxy.testing`. Filters never import the global reactor."
    )

    def continue_decoding() -> None:
        """Resume request processing held by this filter (after STOP_ITERATION), from
        outside the hook that stopped it. Called inside that hook it would continue
        nothing: the hook raises `ContinueInsideHook` when it returns STOP_ITERATION. A
        hook that waits for something returns a Deferred instead (`HeadersResult`)."""

    def continue_encoding() -> None:
        """Resume response processing held by this filter."""

    def send_local_reply(
        status: int,
        message: str,
        code: str | None = None,
        error_type: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Answer the request here with a JSON error in the client's API shape (OpenAI's,
        or Anthropic's for a Messages client), with *headers* added; nothing goes upstream.

        The reply goes through the ``encode_*`` hooks of the filters before this one in
        the chain (so a filter translating to another API reshapes it). Also usable on
        the response path while the response head has not been sent: the reply then
        goes through the encoders after this one.
        """

    def send_local_response(status: int, body: bytes, content_type: str) -> None:
        """Answer the request here with *body* (not an error); nothing goes upstream.
        It passes the encoders as `send_local_reply` does."""

    def fail_response(
        status: int, message: str, code: str = "upstream_error", frame: bytes | None = None
    ) -> None:
        """The upstream's answer cannot be passed on (it broke a limit, or is not what it
        says it is): the upstream is stopped and the request fails (outcome
        ``upstream_error``, *message* in the access log). Before the response head went
        to the client, it gets a JSON error with *status* in its API's shape (through the
        encoders after this filter). After it, *frame* — this filter's error event in the
        client's API (``b""``: none, say for a compressed body no event can be put in;
        None: the gateway's ``event: error`` in the OpenAI or Anthropic shape, for an
        event stream) — goes through the encoders after this filter, then the response
        ends without its final framing, so no client takes it for complete. Call it from
        an ``encode_*`` hook, and return STOP_ITERATION."""

    def buffered_request_body() -> bytes:
        """The request body this filter has buffered so far (STOP_ITERATION_AND_BUFFER).

        At the last `decode_data` call, the whole body is ``buffered_request_body() + data``.
        """

    def request_json() -> dict[str, Any] | None:
        """The request body as a JSON object, parsed once for the whole chain: the route
        filter's document, or the body this filter sees, parsed the first time a filter
        asks (in `decode_data` at the end of the whole body, or in any hook after the
        route filter). None when the body is not a JSON object, or not yet read.
        Change it with `set_request_json`."""

    def set_request_json(document: dict[str, Any], *, changed: bool = True) -> None:
        """The request body is *document* from now on: it is serialised once (compact
        JSON) and is the body every later filter and the upstream see, with a matching
        ``Content-Length``. Call it in a hook that has the whole body (``decode_data``
        with the end of it, or a headers hook after the route filter). A filter that
        parsed the body itself and changed nothing passes ``changed=False``: the bytes
        go on as they are and later filters get the document without parsing again.

        Raises:
            ValueError: part of the body has already gone past this filter.
            RequestTooLarge: the document is larger than ``max_request_bytes``; uncaught,
                the client gets a 413 ``request_too_large``.
        """

    def inject_decoded_data(data: bytes, end_stream: bool) -> None:
        """Send *data* on toward the upstream as if this filter had passed it on (from
        outside its data hook: after an asynchronous step, say)."""

    def inject_encoded_data(data: bytes, end_stream: bool) -> None:
        """Send *data* on toward the client as if this filter had passed it on."""

    def pass_response_data() -> None:
        """This filter will not look at this request's response body: its `encode_data`
        is not called for it (its `encode_headers` still is). A filter that rewrites only
        some responses calls it for the others, so that they pass at no cost — which
        they then do entirely when no other filter looks at response data."""

    def own_stream() -> IStreamOwner:
        """The calls of a filter that owns its stream — outliving its client, flow
        control, a local stream (`filterproxy.filters.stream_owner.IStreamOwner`).
        Ordinary filters never need them. Callable from any hook; keep what it returns."""


class IStreamFilter(Interface):
    """A per-request filter. Implement it by subclassing `StreamFilter`."""

    callbacks = Attribute("The `IFilterCallbacks` for this request, set before any hook.")

    def decode_headers(head: RequestHead, end_stream: bool) -> HeadersResult:
        """The request head; *end_stream* is true when the request has no body."""

    def decode_data(data: bytes, end_stream: bool) -> DataResult:
        """A piece of the request body; the last call has *end_stream* true. Return a
        status, or the data to pass on instead (see `DataResult`)."""

    def encode_headers(head: ResponseHead, end_stream: bool) -> HeadersResult:
        """The response head; *end_stream* is true when the response has no body."""

    def encode_data(data: bytes, end_stream: bool) -> DataResult:
        """A piece of the response body, as the upstream (or the filter after this one)
        passed it on. Return a status, or the data to pass on instead (`DataResult`)."""

    def on_destroy() -> None:
        """The request is over (complete, failed or abandoned by the client)."""


@dataclass(frozen=True)
class FilterContext:
    """What a filter class may consult while it validates its options at start-up."""

    config: Config
    #: The key path of the filter's entry, e.g. ``filters[2]``, for error messages.
    path: str
    environ: Mapping[str, str]
    #: The process's shared things (`filterproxy.filters.resources.Resources`): look
    #: them up here; what a config changes in them is done in the class's
    #: ``activate(filter_config, resources)``, when the chain goes in force.
    resources: Resources


@implementer(IStreamFilter)
class StreamFilter:
    """Base class for filters: every hook passes through; override what you need.

    A filter class is named in the config by its import path (``mypkg.filters:MyFilter``).
    At start-up the gateway calls ``configure(options, context)`` once with the entry's
    ``options`` mapping; what it returns is given to the constructor of every per-request
    instance. Raise `ValueError` from ``configure`` with a message that says what is wrong:
    start-up stops and shows it with the filter's key path.
    """

    callbacks: IFilterCallbacks
    #: True when a subclass overrides encode_data (computed by the chain, cached per class).
    _encodes_data: ClassVar[bool | None] = None
    #: True for the filter that chooses the request's cluster (the route filter). The
    #: filters after it shape the request for that cluster: when the router fails over
    #: to a fallback cluster, they are made anew and see the request again, as it left
    #: this filter, with `StreamInfo.cluster` naming the fallback — so nothing shaped
    #: for one cluster (its credentials, path, API) reaches another.
    chooses_cluster: ClassVar[bool] = False
    #: What this filter is, for other filters' `requires` and `precedes` (the built-in
    #: filters: their ``type``, e.g. ``("route",)``).
    provides: ClassVar[tuple[str, ...]] = ()
    #: What must come before this filter in the chain, each with the reason (said in
    #: the error): the chain is refused without it, or with it after this filter.
    requires: ClassVar[Mapping[str, str]] = {}
    #: What, when it is in the chain, must come after this filter, each with the reason:
    #: the chain is refused with it before this filter.
    precedes: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def configure(cls, options: Mapping[str, Any], context: FilterContext) -> Any:
        """Validate *options* once at start-up; the result is passed to ``__init__``."""
        if options:
            raise ValueError(f"takes no options, got: {', '.join(sorted(options))}")
        return None

    @classmethod
    def buffer_limit(cls, config: Any) -> int | None:
        """What this filter, configured with *config*, lets the chain buffer of a
        request or a response (body-accumulate's ``max_request_bytes``), or None: it
        sets no limit (the chain's default, 10 MiB, stands)."""
        return None

    @classmethod
    def variant(cls, config: Any) -> type[StreamFilter]:
        """The class of the per-request instances for *config* (what ``configure``
        returned): this class, or a subclass that overrides only the hooks this
        configuration needs — a hook a configuration does not use then costs nothing."""
        return cls

    def __init__(self, config: Any = None) -> None:
        self.config = config

    def decode_headers(self, head: RequestHead, end_stream: bool) -> HeadersResult:
        return FilterStatus.CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        return FilterStatus.CONTINUE

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> HeadersResult:
        return FilterStatus.CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        return FilterStatus.CONTINUE

    def response_codings(self) -> frozenset[str] | None:
        """The content codings of the upstream's response this filter can read for this
        request (lower case, e.g. ``{"gzip", "identity"}``), or None: any — it does not
        read the body, or not for this request (the default).

        Asked once each time the request goes upstream, after every decode hook, of the
        filters that override it: the upstream is asked for the client's
        ``Accept-Encoding`` narrowed to what all of them can read
        (`filterproxy.http.encoding.narrowed`), so a filter never rewrites that header
        itself.
        """
        return None

    def on_destroy(self) -> None:
        pass
