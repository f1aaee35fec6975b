"""The resume filter, and its encode side: the request whose event stream becomes
resumable (the *origin*). Its states are `OriginState`; the stream it feeds
(`streams.ResumableStream`) reaches it only through the `streams.Origin` calls."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from filterproxy.config import Node, RouteConfig
from filterproxy.extensions.resume.config import ResumeSettings, resume_of
from filterproxy.extensions.resume.metrics import ResumeMetrics
from filterproxy.extensions.resume.reader import StreamReader, resent_position, stream_request
from filterproxy.extensions.resume.relay import RelayClient, RelayServer
from filterproxy.extensions.resume.streams import ResumableStream, StreamRegistry, affinity_key
from filterproxy.filters.api import (
    DataResult,
    FilterContext,
    FilterStatus,
    RequestHead,
    ResponseHead,
    StreamFilter,
)
from filterproxy.filters.metrics import MetricFamilies
from filterproxy.filters.owner import credential_of, owner_digest
from filterproxy.filters.records import CompressStream, EventFolds, StreamRecord
from filterproxy.filters.stream_owner import IStreamOwner
from filterproxy.http.apis import client_api
from filterproxy.http.encoding import IDENTITY
from filterproxy.http.errors import error_body
from filterproxy.http.sse import DEFAULT_MAX_EVENT_BYTES, EventTooLarge

if TYPE_CHECKING:
    from filterproxy.filters.resources import Resources

__all__ = ["OriginState", "ResumeFilter", "ResumeFilterConfig"]


class OriginState(enum.Enum):
    """Where a request stands as a stream's origin."""

    #: Not a resumable stream (yet, or at all): the response passes untouched.
    PASSING = "passing"
    #: This request reads a stream (`reader.StreamReader`): not an origin.
    READING = "reading"
    #: Its client takes the events (a client that falls behind is the delivery
    #: filter's: it holds them, and tells the stream what it folds).
    LIVE = "live"
    #: Its client left, or a reader took over: the upstream goes on without it.
    DETACHED = "detached"
    #: Nobody came back within the grace period: the upstream was stopped.
    EXPIRED = "expired"
    #: The request is over.
    DONE = "done"


@dataclass(frozen=True)
class ResumeFilterConfig:
    #: The process's streams (and their budget).
    registry: StreamRegistry
    #: How this worker asks another for a stream it holds.
    relay: RelayClient
    #: The largest upstream event a resumable stream holds (``max_event_bytes``).
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    #: What all the process's streams may hold (``resume_buffers``): applied when the
    #: chain goes in force (`ResumeFilter.activate`).
    buffers: int = 256 * 1024 * 1024
    #: Whether some route of the config resumes (the relay between workers is then
    #: started when the chain goes in force).
    resuming: bool = False
    #: Where the filter counts (the process's; a config made without a process counts
    #: into families nobody scrapes).
    metrics: ResumeMetrics = field(default_factory=lambda: ResumeMetrics(MetricFamilies()))
    #: The request header whose value ends the ids of the streams it starts
    #: (``resume_affinity_header``), or None.
    affinity_header: str | None = None
    #: The config's routes by name (a read is its stream's route's request).
    routes: Mapping[str, RouteConfig] = field(default_factory=dict)


class ResumeFilter(StreamFilter):
    """Resumable event streams (see `filterproxy.extensions.resume`)."""

    config: ResumeFilterConfig
    provides = ("resume",)
    precedes: ClassVar[Mapping[str, str]] = {
        "translate": "it numbers the events the client gets, so the filters that rewrite "
        "the answer come after it",
        "usage": "it numbers the events the client gets, so the filters that rewrite "
        "the answer come after it",
    }

    @classmethod
    def configure(cls, options: Mapping[str, Any], context: FilterContext) -> ResumeFilterConfig:
        Node(dict(options), context.path, context.environ).mapping(set())
        resources = context.resources
        settings = context.config.section(ResumeSettings) or ResumeSettings()
        return ResumeFilterConfig(
            resources.get(StreamRegistry, StreamRegistry.from_resources),
            resources.get(RelayClient, RelayClient.from_resources),
            context.config.max_event_bytes,
            settings.resume_buffers,
            any(resume_of(route) is not None for route in context.config.routes),
            ResumeMetrics.of(resources),
            settings.resume_affinity_header,
            {route.name: route for route in context.config.routes},
        )

    @classmethod
    def activate(cls, config: ResumeFilterConfig, resources: Resources) -> None:
        """The config goes in force: its cap on what the streams hold together."""
        config.registry.budget.cap = config.buffers
        secret = resources.worker_secret
        if secret and config.resuming:
            # With workers, a resume may reach another worker than the one holding the
            # stream: this one answers the others' reads (started once per process).
            resources.get(RelayServer, lambda r: RelayServer.started(r, config.registry, secret))

    def __init__(self, config: ResumeFilterConfig) -> None:
        super().__init__(config)
        self.state = OriginState.PASSING
        #: The request's credential header, as it came (the filters after this one
        #: take it out); what it means is worked out only for the requests that need it.
        self.credential: str | None = None
        self.body = b""
        #: A re-sent POST's Last-Event-ID: (stream id, event number).
        self.resend: tuple[str, int] | None = None
        #: The key a balancer in front hashed this request on, for its stream's id.
        self.affinity: str | None = None
        #: The stream this request started.
        self.stream: ResumableStream | None = None
        #: This request's reading of a stream, when it reads one.
        self.reader: StreamReader | None = None
        #: The stream-owner calls, once this request owns its stream.
        self.own: IStreamOwner | None = None

    # -- the request -------------------------------------------------------------------

    def decode_headers(self, head: RequestHead, end_stream: bool) -> FilterStatus:
        # Now: the filters after this one take the credentials out of the request, and
        # the route filter asks a resumable route's upstream for uncompressed answers.
        self.credential = credential_of(head)
        request = stream_request(head)
        if request is not None:
            self.callbacks.pass_response_data()
            if head.method not in ("GET", "DELETE"):
                self.callbacks.send_local_reply(
                    405,
                    "a stream is read with GET and stopped with DELETE",
                    code="method_not_allowed",
                )
                return FilterStatus.STOP_ITERATION
            after = request.after or 0
            self._reader().read(head.method, request.stream_id, after, not request.by_id, None)
            return FilterStatus.STOP_ITERATION
        if head.method == "POST":
            self.resend = resent_position(head)
        header = self.config.affinity_header
        if header is not None:
            self.affinity = affinity_key(head.headers.get(header))
        return FilterStatus.CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        if not end_stream:
            return FilterStatus.STOP_ITERATION_AND_BUFFER
        buffered = self.callbacks.buffered_request_body()
        self.body = buffered + data if buffered else data
        resend = self.resend
        if resend is None:
            return FilterStatus.CONTINUE
        stream_id, after = resend
        digest = hashlib.sha256(self.body).digest()
        self._reader().read("GET", stream_id, after, False, digest)
        return FilterStatus.STOP_ITERATION

    def _reader(self) -> StreamReader:
        """This request reads a stream (or stops one)."""
        self.state = OriginState.READING
        config = self.config
        reader = self.reader = StreamReader(
            self.callbacks, config.registry, config.relay, self.owner, config.routes
        )
        return reader

    @property
    def owner(self) -> str:
        """Whom this request's streams belong to (`owner_digest`)."""
        return owner_digest(self.callbacks.stream_info.key_name, self.credential)

    # -- the origin's side -------------------------------------------------------------

    def response_codings(self) -> frozenset[str] | None:
        # A resumable stream's events are numbered and kept here: they must come as text.
        route = self.callbacks.stream_info.route
        return IDENTITY if route is not None and resume_of(route) is not None else None

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> FilterStatus:
        info = self.callbacks.stream_info
        route = info.route
        if (
            self.state is OriginState.READING
            or end_stream
            or route is None
            or (resume := resume_of(route)) is None
            or head.status != 200
            or not (head.headers.get("content-type") or "").startswith("text/event-stream")
            or head.headers.get("content-encoding") not in (None, "identity")
        ):
            self.callbacks.pass_response_data()
            return FilterStatus.CONTINUE
        registry = self.config.registry
        stream = ResumableStream(
            registry,
            registry.new_id(self.affinity),
            self.owner,
            hashlib.sha256(self.body).digest(),
            resume,
            route.name,
            head.headers.get("content-type") or "text/event-stream",
        )
        stream.origin = self
        stream.framer.max_event = self.config.max_event_bytes
        registry.add(stream)
        self.stream = stream
        self.state = OriginState.LIVE
        self.body = b""
        head.headers.set("x-stream-id", stream.id)
        head.headers.remove("content-length")
        state = info.state
        # The delivery filter, which compresses a stream and folds it for a client that
        # falls behind, tells the stream what its client was sent in fewer chunks.
        state.set(EventFolds(stream.folded))
        if resume.gzip:
            state.set(CompressStream())
        own = self.own = self.callbacks.own_stream()
        own.keep_going_without_client(self._client_gone)
        return FilterStatus.CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        stream = self.stream
        if stream is None or self.state is OriginState.READING:
            return FilterStatus.CONTINUE
        framer = stream.framer
        if framer.pending and self.callbacks.stream_info.outcome:
            framer.drop()  # the upstream broke off mid-event: the gateway's error follows
        out = framer.feed(data) if data else b""
        if end_stream and framer.pending:
            out += framer.feed(b"\n\n")  # a last event that lost its blank line
        events = framer.take() if framer.events else None
        if events is not None:
            stream.keep(events)
        if framer.too_large:
            return self._refuse(stream, out)
        if stream.reader is not None and out:
            stream.reader.push(out)
        if self.state is OriginState.LIVE:
            return out
        return b""  # its client is gone

    def _own(self) -> IStreamOwner:
        own = self.own
        if own is None:
            own = self.own = self.callbacks.own_stream()
        return own

    @property
    def client_attached(self) -> bool:
        """The origin's own client still takes its events."""
        return self.state is OriginState.LIVE

    def _refuse(self, stream: ResumableStream, out: bytes) -> DataResult:
        """The upstream sent an event past ``max_event_bytes``: the stream fails. Its
        client and its reader get what came before it, then the client API's error
        event; the answer ends as a failure (and is not resumed as complete)."""
        message = str(EventTooLarge(stream.framer.max_event, []))
        info = self.callbacks.stream_info
        api = info.api or client_api(info.client_path)
        body = error_body(502, message, code="upstream_error", api=api)
        error = b"event: error\ndata: " + body + b"\n\n"
        if stream.reader is not None:
            stream.reader.push(out + error)
        frame = out + error if self.client_attached else b""
        self.callbacks.fail_response(502, message, frame=frame)
        return FilterStatus.STOP_ITERATION

    def _client_gone(self) -> None:
        if self.client_attached:
            self.state = OriginState.DETACHED
        stream = self.stream
        if stream is not None:
            stream.client_gone()

    # -- streams.Origin ------------------------------------------------------------------

    def abandon(self) -> None:
        """Stop the upstream now."""
        self._own().abandon()

    def expire(self) -> None:
        """Nobody came back in time: the upstream is stopped (the access log says so)."""
        self.state = OriginState.EXPIRED
        self._own().abandon()

    def taken_over(self) -> None:
        """A reader took over: the origin's client is closed, the upstream goes on."""
        if self.client_attached:
            self.state = OriginState.DETACHED
        self._own().drop_client()

    # -- the end -------------------------------------------------------------------------

    def on_destroy(self) -> None:
        expired = self.state is OriginState.EXPIRED
        reading = self.state is OriginState.READING
        self.state = OriginState.DONE
        reader = self.reader
        if reader is not None:
            reader.close()
        stream = self.stream
        if reading:
            # Counted once the request is over (a resume the reader answered).
            record = self.callbacks.stream_info.state.get(StreamRecord)
            if record is not None and record.role == "resume":
                route, outcome = str(record.route), str(record.outcome)
                self.config.metrics.resumes.inc((route, outcome))
            return
        if stream is None:
            return
        self.stream = None
        info = self.callbacks.stream_info
        # For the access log (made now: nothing kept per open stream).
        info.state.set(
            StreamRecord(
                stream.id,
                "origin",
                events=stream.framer.seq,
                held=stream.buffer.size,
                expired=expired,
                resumable=stream.resumable,
            )
        )
        if expired:
            route = info.route.name if info.route is not None else "none"
            self.config.metrics.grace_expiries.inc((route,))
        stream.ended(info.outcome == "complete")
