"""resume: event streams that survive a dropped client (routes with ``resume``).

An event stream answered on a resumable route gets a stream id (the ``x-stream-id``
response header) and numbered events (an ``id: <stream id>.<n>`` line ends each event;
the ``data:`` bytes are not touched; `filterproxy.resume.EventFramer`). Its events are
kept (`filterproxy.resume.ResumeBuffer`) while it runs and for ``resume.keep`` after.

- When its client goes away before the end, the upstream keeps generating into the
  buffer for ``resume.grace``; then it is stopped, as for any other request.
- A client resumes with ``GET /v1/streams/{id}`` and the last event it saw — the
  ``Last-Event-ID`` header (what a browser's EventSource sends), or ``?starting_after=N``
  (OpenAI's convention) — or by sending the same ``POST`` again with ``Last-Event-ID``
  (what fetch-based SSE clients do), which never starts a second generation. It gets
  every event after that one, exactly once — runs of text deltas folded into fewer
  events (`filterproxy.resume.merge_deltas`) — then the live tail. A count
  (``starting_after``) names the chunk it stopped at whatever was folded before it
  (`filterproxy.resume.Folds`): the chunks are what an SDK lets its user count.
- A new reader takes over from the one before: the old connection (maybe a half-open
  socket after a network change) is closed.
- ``DELETE /v1/streams/{id}`` stops it at once, for a client that means to stop.
- A stream that finished is resumable for ``resume.keep``; an unknown or evicted one,
  or a position no longer held, gets 410 with a JSON error. A stream belongs to the
  gateway key or the credentials that started it: anyone else is told it does not exist.

Memory is bounded: each stream's buffer by ``resume.buffer``, all of a process's by
``resume_buffers``; a stream past either stops being resumable (its client is told in
an SSE comment) and goes on as a plain stream.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import parse_qs

import orjson
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger

from filterproxy.config import Node, ResumeConfig
from filterproxy.filters.api import (
    DataResult,
    FilterContext,
    FilterStatus,
    RequestHead,
    ResponseHead,
    StreamFilter,
)
from filterproxy.filters.owner import credential_of, owner_digest
from filterproxy.http.apis import client_api
from filterproxy.http.errors import error_body
from filterproxy.http.sse import DEFAULT_MAX_EVENT_BYTES, EventTooLarge
from filterproxy.resume import (
    BUDGET,
    EventFramer,
    Folds,
    ResumeBuffer,
    merge_deltas,
    parse_event_id,
)

__all__ = ["Reader", "ResumableStream", "ResumeFilter", "StreamRegistry", "registry", "replay"]

log = Logger(namespace="filterproxy.resume")
_STREAM_PATH: Final = re.compile(r"^(?:/v1)?/streams/([A-Za-z0-9_-]{8,80})/?$")
_NO_LONGER: Final = b": this stream is no longer resumable: its buffer is full\n"
#: The annotation (`StreamInfo.annotations`) of a request that started a resumable
#: stream (``{"id", "role": "origin"}``, with ``"expired": true`` when nobody came
#: back in time) or resumed one (``{"id", "role": "resume", "route", "outcome", …}``):
#: the access log's ``stream`` field, and the resume metrics.
STREAM_ANNOTATION: Final = "stream"


class Reader(Protocol):
    """Who a resumed stream's live tail goes to."""

    def push(self, data: bytes) -> None: ...

    def finish(self, complete: bool) -> None: ...

    def taken_over(self) -> None: ...


def replay(stream: ResumableStream, after: int, counted: bool = False) -> list[bytes] | None:
    """What a reader that saw event *after* is sent first — the events it missed, text
    deltas folded — or None when they are not all held any more (410).

    With *counted*, *after* is the number of chunks the reader was given (what
    ``starting_after`` says: an SDK yields chunks, not ids), which folding made fewer
    than the events they stood for: it is taken to the event the *after*-th chunk ended
    with (`Folds`), and this replay's folds are kept for the reader's next count. A
    ``Last-Event-ID`` names its event itself.
    """
    if not counted:
        events = stream.buffer.since(after)
        return None if events is None else merge_deltas(events)
    folds = stream.folds
    events = stream.buffer.since(folds.event_of(after) if folds is not None else after)
    if events is None:
        return None
    if folds is None:
        folds = stream.folds = Folds()
    folds.resumed_at(after)
    return merge_deltas(events, folds)


def _accepts_gzip(value: str | None) -> bool:
    """Whether an ``Accept-Encoding`` value takes gzip (not with ``q=0``)."""
    for part in (value or "").lower().split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() in ("gzip", "x-gzip", "*"):
            q = params.strip().removeprefix("q=").strip()
            return q not in ("0", "0.0", "0.00", "0.000")
    return False


#: What the origin holds for a slow client before it pauses the upstream.
_HOLD_LIMIT: Final = 1024 * 1024


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class ResumableStream:
    """One resumable event stream: its events, its reader, its timers."""

    __slots__ = (
        "body_hash",
        "buffer",
        "config",
        "content_type",
        "done",
        "folds",
        "framer",
        "id",
        "origin",
        "origin_attached",
        "owner",
        "reader",
        "registry",
        "route",
        "timer",
    )

    def __init__(
        self,
        registry: StreamRegistry,
        stream_id: str,
        owner: str,
        body_hash: bytes,
        config: ResumeConfig,
        route: str,
        content_type: str,
    ) -> None:
        self.registry = registry
        self.id = stream_id
        self.owner = owner
        self.body_hash = body_hash
        self.config = config
        self.route = route
        self.content_type = content_type
        self.framer = EventFramer(stream_id.encode() + b".")
        self.buffer = ResumeBuffer(config.buffer, self.framer.prefix)
        #: Where the chunks a client counts fell behind the events' numbers (made at
        #: the first fold: most streams never fold).
        self.folds: Folds | None = None
        #: The origin request's filter while it runs.
        self.origin: ResumeFilter | None = None
        #: The origin's client is connected (it is the reader then).
        self.origin_attached = True
        #: A resumed reader (another request's filter, or another worker's relay), if any.
        self.reader: Reader | None = None
        #: The upstream's response has ended (completely, or not).
        self.done = False
        self.timer: Any = None

    @property
    def resumable(self) -> bool:
        return not self.buffer.overflowed

    def fold(self, events: list[bytes]) -> list[bytes]:
        """*events* folded for the origin's client (which may resume by counting)."""
        folds = self.folds
        if folds is None:
            folds = self.folds = Folds()
        return merge_deltas(events, folds)

    def keep(self, events: list[bytes]) -> None:
        """The events the origin just passed on (the framer's)."""
        buffer = self.buffer
        if buffer.overflowed:
            return
        size = sum(len(e) for e in events)
        if buffer.size + size > buffer.cap or not BUDGET.take(size):
            self.give_up()
            return
        for event in events:
            buffer.append(event)

    def give_up(self) -> None:
        """Past a cap: free the events; the stream goes on, not resumable any more."""
        BUDGET.give(self.buffer.size)
        self.buffer.drop()
        log.info(
            "stream {id} is no longer resumable: its buffer passed a cap (resume.buffer "
            "or resume_buffers)",
            id=self.id,
        )
        if self.reader is not None:
            self.reader.push(_NO_LONGER)

    # -- the origin's side -----------------------------------------------------------

    def client_gone(self) -> None:
        """The origin's client left (or was taken over): the grace period starts,
        unless a reader is already there."""
        self.origin_attached = False
        if self.reader is None:
            self._start_grace()

    def _start_grace(self) -> None:
        if self.done or not self.resumable:
            if not self.resumable and not self.done and self.origin is not None:
                self.origin.callbacks.abandon()  # nobody can ever read the rest
            return
        self._cancel_timer()
        self.timer = _reactor().callLater(self.config.grace, self._grace_expired)

    def _grace_expired(self) -> None:
        self.timer = None
        origin = self.origin
        if origin is not None and not self.done:
            log.info(
                "stream {id}: no client came back within {grace:g}s (resume.grace); "
                "the upstream is stopped",
                id=self.id,
                grace=self.config.grace,
            )
            origin.expired = True
            origin.callbacks.abandon()
        self.registry.evict(self.id)

    def ended(self, complete: bool) -> None:
        """The origin request is over."""
        self.origin = None
        if self.done:
            return
        self.done = True
        reader = self.reader
        if reader is not None:
            reader.finish(complete)
        self._cancel_timer()
        if self.id in self.registry.streams:
            self.timer = _reactor().callLater(self.config.keep, self.registry.evict, self.id)

    def _cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    # -- readers ---------------------------------------------------------------------

    def attach(self, reader: Reader) -> None:
        """*reader* takes over: the reader before it, or the origin's own client, is
        closed."""
        old, self.reader = self.reader, reader
        self._cancel_timer()
        if old is not None and old is not reader:
            old.taken_over()
        origin = self.origin
        if self.origin_attached and origin is not None:
            self.origin_attached = False
            origin.detached = True
            origin.callbacks.drop_client()

    def detach(self, reader: Reader) -> None:
        """*reader*'s client left."""
        if self.reader is not reader:
            return
        self.reader = None
        if not self.done:
            self._start_grace()

    def cancel(self) -> None:
        """Stop it now (``DELETE``)."""
        origin, reader = self.origin, self.reader
        self.reader = None
        if reader is not None:
            reader.taken_over()
        if origin is not None:
            origin.callbacks.abandon()
        self.registry.evict(self.id)


class StreamRegistry:
    """The process's resumable streams, by id.

    A worker of several (``--workers``) puts the port of its relay listener
    (`filterproxy.relay`) in its streams' ids, signed with the supervisor's secret, so
    that a resume that reaches another worker is passed to this one.
    """

    def __init__(self) -> None:
        self.streams: dict[str, ResumableStream] = {}
        #: This worker's relay port, and the secret its ids are signed with (workers).
        self.relay_port = 0
        self.secret = b""

    def serve_relay(self, port: int, secret: bytes) -> None:
        self.relay_port = port
        self.secret = secret

    def _mac(self, text: str) -> str:
        return hmac.new(self.secret, text.encode(), hashlib.sha256).hexdigest()[:16]

    def new_id(self) -> str:
        nonce = secrets.token_hex(12)
        if not self.relay_port:
            return "fps_" + nonce
        place = f"{self.relay_port:x}_{nonce}"
        return f"fps_{place}_{self._mac(place)}"

    def elsewhere(self, stream_id: str) -> int | None:
        """The relay port of the worker whose stream *stream_id* is, when it is another
        worker's (and the id is signed by this gateway's supervisor); else None."""
        if not self.relay_port:
            return None
        parts = stream_id.split("_")
        if len(parts) != 4 or parts[0] != "fps":
            return None
        place = f"{parts[1]}_{parts[2]}"
        if not hmac.compare_digest(parts[3], self._mac(place)):
            return None
        try:
            port = int(parts[1], 16)
        except ValueError:
            return None
        return port if port != self.relay_port and 0 < port < 65536 else None

    def sign(self, *parts: str) -> str:
        """A signature of *parts* (a relayed request's), with the supervisor's secret."""
        return self._mac("|".join(parts))

    def add(self, stream: ResumableStream) -> None:
        self.streams[stream.id] = stream

    def get(self, stream_id: str) -> ResumableStream | None:
        return self.streams.get(stream_id)

    def evict(self, stream_id: str) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        stream._cancel_timer()
        if not stream.buffer.overflowed:
            BUDGET.give(stream.buffer.size)
            stream.buffer.drop()


#: The process's streams (one registry, whatever the reloads).
registry = StreamRegistry()


class _Pipe(TwistedProtocol):
    """Another worker's answer, passed on to this request's client as it comes."""

    def __init__(self, reader: ResumeFilter) -> None:
        self.reader = reader

    def dataReceived(self, data: bytes) -> None:
        self.reader.push(data)

    def connectionLost(self, reason: Any = None) -> None:
        from twisted.web.client import ResponseDone

        self.reader.pipe = None
        self.reader.finish(reason is not None and reason.check(ResponseDone) is not None)


class _Discard(TwistedProtocol):
    def dataReceived(self, data: bytes) -> None:
        pass


@dataclass(frozen=True)
class ResumeFilterConfig:
    registry: StreamRegistry
    #: The largest upstream event a resumable stream holds (``max_event_bytes``).
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES


def _gone(stream_id: str) -> str:
    return (
        f"stream {stream_id!r} cannot be resumed: it finished longer ago than its route's "
        "resume.keep, no client came back within resume.grace, it passed its buffer's "
        "cap, or it never existed; send the request again"
    )


class ResumeFilter(StreamFilter):
    """Resumable event streams (see the module's description)."""

    config: ResumeFilterConfig

    @classmethod
    def configure(cls, options: Mapping[str, Any], context: FilterContext) -> ResumeFilterConfig:
        Node(dict(options), context.path, context.environ).mapping(set())
        BUDGET.cap = context.config.resume_buffers
        return ResumeFilterConfig(registry, context.config.max_event_bytes)

    def __init__(self, config: ResumeFilterConfig) -> None:
        super().__init__(config)
        #: The request's credential header and Accept-Encoding, as they came (the
        #: filters after this one change them); what they mean is worked out only for
        #: the requests that need it.
        self.credential: str | None = None
        self.accept_encoding: str | None = None
        self.body = b""
        #: The stream this request started (the origin), or reads (a reader).
        self.stream: ResumableStream | None = None
        self.reading = False
        #: The origin's client is gone (or was taken over).
        self.detached = False
        #: A re-sent POST's Last-Event-ID: (stream id, event number).
        self.resend: tuple[str, int] | None = None
        #: The body of another worker's answer, while it is passed on.
        self.pipe: _Pipe | None = None
        self.done = False
        #: The client's gzip stream, when the route offers it and the client takes it.
        self.gzip: Any = None  # zlib's compressor (its type is not importable)
        #: The origin's client cannot keep up: its events are held (folded when sent).
        self.slow = False
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.upstream_paused = False
        #: Nobody came back within the grace period (the origin was abandoned).
        self.expired = False

    # -- the request -------------------------------------------------------------------

    def decode_headers(self, head: RequestHead, end_stream: bool) -> FilterStatus:
        # Now: the filters after this one take the credentials out of the request, and
        # the route filter asks a resumable route's upstream for uncompressed answers.
        self.credential = credential_of(head)
        self.accept_encoding = head.headers.get("accept-encoding")
        path, _, query = head.path.partition("?")
        match = _STREAM_PATH.match(path) if "/streams/" in path else None
        if match is not None:
            return self._stream_request(head, match.group(1), query)
        if head.method == "POST":
            last = head.headers.get("last-event-id")
            if last is not None and "." in last:
                stream_id, _, number = last.strip().rpartition(".")
                if number.isdigit() and stream_id.startswith("fps_"):
                    self.resend = (stream_id, int(number))
        return FilterStatus.CONTINUE

    def _stream_request(self, head: RequestHead, stream_id: str, query: str) -> FilterStatus:
        self.callbacks.pass_response_data()
        registry = self.config.registry
        stream = registry.get(stream_id)
        if stream is not None and stream.owner != self.owner:
            stream = None  # nobody reads another's stream: it does not exist for them
        params = parse_qs(query)
        # An event's id (Last-Event-ID), or a count of chunks (starting_after; no
        # position at all is a count of none).
        after = parse_event_id(head.headers.get("last-event-id"))
        by_id = after is not None
        if after is None and "starting_after" in params:
            after = parse_event_id(params["starting_after"][0])
        if after is None and "last_event_id" in params:
            after = parse_event_id(params["last_event_id"][0])
            by_id = after is not None
        port = registry.elsewhere(stream_id) if stream is None else None
        if port is not None and head.method in ("GET", "DELETE"):
            self._relay(port, head.method, stream_id, after or 0, "", not by_id)
            return FilterStatus.STOP_ITERATION
        if head.method == "DELETE":
            if stream is None:
                self._not_found(stream_id)
                return FilterStatus.STOP_ITERATION
            stream.cancel()
            body = {"id": stream_id, "object": "stream.deleted", "deleted": True}
            self.callbacks.send_local_response(200, orjson.dumps(body), "application/json")
            return FilterStatus.STOP_ITERATION
        if head.method != "GET":
            self.callbacks.send_local_reply(
                405, "a stream is read with GET and stopped with DELETE", code="method_not_allowed"
            )
            return FilterStatus.STOP_ITERATION
        if stream is None:
            self._gone(stream_id)
            return FilterStatus.STOP_ITERATION
        self._read(stream, after or 0, not by_id)
        return FilterStatus.STOP_ITERATION

    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        if not end_stream:
            return FilterStatus.STOP_ITERATION_AND_BUFFER
        buffered = self.callbacks.buffered_request_body()
        self.body = buffered + data if buffered else data
        resend = self.resend
        if resend is None:
            return FilterStatus.CONTINUE
        stream_id, after = resend
        registry = self.config.registry
        stream = registry.get(stream_id)
        port = registry.elsewhere(stream_id) if stream is None else None
        if port is not None:
            self._relay(port, "GET", stream_id, after, hashlib.sha256(self.body).hexdigest(), False)
            return FilterStatus.STOP_ITERATION
        if stream is None or stream.owner != self.owner:
            self._gone(stream_id)
            return FilterStatus.STOP_ITERATION
        if stream.body_hash != hashlib.sha256(self.body).digest():
            self._mismatch(stream_id)
            return FilterStatus.STOP_ITERATION
        self._read(stream, after, False)
        return FilterStatus.STOP_ITERATION

    @property
    def owner(self) -> str:
        """Whom this request's streams belong to (`owner_digest`)."""
        return owner_digest(self.callbacks.stream_info.key_name, self.credential)

    def _mismatch(self, stream_id: str) -> None:
        self.callbacks.send_local_reply(
            409,
            f"Last-Event-ID names stream {stream_id!r}, which another request started; "
            "resume it with the same request, or leave Last-Event-ID out",
            code="stream_mismatch",
        )

    # -- another worker's stream ------------------------------------------------------

    def _relay(
        self, port: int, method: str, stream_id: str, after: int, body: str, counted: bool
    ) -> None:
        """Ask the worker that holds *stream_id* (over its relay, `filterproxy.relay`);
        *after* counts chunks when *counted* (`replay`)."""
        from urllib.parse import urlencode

        from twisted.web.client import Agent

        registry = self.config.registry
        by = "count" if counted else "id"
        query = urlencode(
            {
                "after": str(after),
                "by": by,
                "owner": self.owner,
                "body": body,
                "sig": registry.sign(method, stream_id, str(after), by, self.owner, body),
            }
        )
        url = f"http://127.0.0.1:{port}/relay/streams/{stream_id}?{query}"
        self.reading = True
        d = Agent(_reactor()).request(method.encode(), url.encode())
        d.addCallbacks(self._relayed, self._relay_failed, callbackArgs=(method, stream_id, after))

    def _relayed(self, response: Any, method: str, stream_id: str, after: int) -> None:
        if self.done:
            response.deliverBody(_Discard())
            return
        code = response.code
        if code == 200 and method == "GET":
            replayed = response.headers.getRawHeaders(b"x-replayed") or [b"0"]
            self._annotate(stream_id, "resumed", after=after, replayed=int(replayed[0]))
            kind = (response.headers.getRawHeaders(b"content-type") or [b"text/event-stream"])[0]
            gzip = response.headers.getRawHeaders(b"x-gzip") is not None
            self._start_reading(stream_id, kind.decode(), gzip)
            self.pipe = _Pipe(self)
            response.deliverBody(self.pipe)
            return
        response.deliverBody(_Discard())
        if code == 200:
            body = {"id": stream_id, "object": "stream.deleted", "deleted": True}
            self.callbacks.send_local_response(200, orjson.dumps(body), "application/json")
        elif code == 204:
            self.callbacks.send_local_response(204, b"", "text/event-stream")
        elif code == 404:
            self._not_found(stream_id)
        elif code == 409:
            self._mismatch(stream_id)
        elif code == 410:
            self._gone(stream_id)
        else:
            self._relay_failed(None)

    def _relay_failed(self, failure: Any) -> None:
        if self.done:
            return
        log.warn(
            "the worker holding a stream did not answer: {error}",
            error=failure.getErrorMessage() if failure is not None else "refused",
        )
        self.callbacks.send_local_reply(
            502,
            "the gateway process that holds this stream did not answer; try again",
            code="stream_unavailable",
        )

    def _not_found(self, stream_id: str) -> None:
        self.callbacks.send_local_reply(404, f"no stream {stream_id!r}", code="not_found")

    def _gone(self, stream_id: str) -> None:
        self._annotate(stream_id, "gone")
        self.callbacks.send_local_reply(410, _gone(stream_id), code="stream_gone")

    def _annotate(self, stream_id: str, outcome: str, **more: Any) -> None:
        stream = self.config.registry.get(stream_id)
        self.callbacks.stream_info.annotations[STREAM_ANNOTATION] = {
            "id": stream_id,
            "role": "resume",
            "outcome": outcome,
            "route": stream.route if stream is not None else "none",
            **more,
        }

    def _read(self, stream: ResumableStream, after: int, counted: bool) -> None:
        """Send the events after event *after* (after that many chunks when *counted*:
        `replay`), then the live tail."""
        events = replay(stream, after, counted)
        if events is None:
            self._gone(stream.id)
            return
        self._annotate(stream.id, "resumed", after=after, replayed=len(events))
        if stream.done and not events:
            self.callbacks.send_local_response(204, b"", "text/event-stream")
            return
        self.stream = stream
        self.reading = True
        self._start_reading(stream.id, stream.content_type, stream.config.gzip)
        missed = b"".join(events)
        if stream.done:
            self._send(missed, True)
            return
        stream.attach(self)
        if missed:
            self._send(missed, False)

    def _start_reading(self, stream_id: str, content_type: str, gzip: bool) -> None:
        headers = [
            ("content-type", content_type),
            ("cache-control", "no-cache"),
            ("x-stream-id", stream_id),
        ]
        if gzip and _accepts_gzip(self.accept_encoding):
            self.gzip = zlib.compressobj(6, zlib.DEFLATED, 31)
            headers += [("content-encoding", "gzip"), ("vary", "accept-encoding")]
        self.callbacks.send_local_stream(200, headers)

    def _send(self, data: bytes, end_stream: bool) -> None:
        if not self.done:
            self.callbacks.inject_encoded_data(self._compressed(data, end_stream), end_stream)

    def _compressed(self, data: bytes, end_stream: bool) -> bytes:
        """*data* as the client gets it: gzipped (flushed, so that it can read every
        event at once) when it asked for that on a route that offers it."""
        gzip = self.gzip
        if gzip is None:
            return data
        out: bytes = gzip.compress(data) if data else b""
        tail: bytes = gzip.flush(zlib.Z_FINISH if end_stream else zlib.Z_SYNC_FLUSH)
        return out + tail

    # -- a reader's side ---------------------------------------------------------------

    def push(self, data: bytes) -> None:
        self._send(data, False)

    def finish(self, complete: bool) -> None:
        """The stream this request reads has ended."""
        if self.done:
            return
        if complete:
            self._send(b"", True)
        else:
            self.callbacks.abandon()  # it failed: never a clean end

    def taken_over(self) -> None:
        """Another reader took over: this connection is closed."""
        if not self.done:
            self.callbacks.drop_client()

    # -- the origin's side -------------------------------------------------------------

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> FilterStatus:
        info = self.callbacks.stream_info
        route = info.route
        if (
            self.reading
            or end_stream
            or route is None
            or route.resume is None
            or head.status != 200
            or not (head.headers.get("content-type") or "").startswith("text/event-stream")
            or head.headers.get("content-encoding") not in (None, "identity")
        ):
            self.callbacks.pass_response_data()
            return FilterStatus.CONTINUE
        registry = self.config.registry
        stream = ResumableStream(
            registry,
            registry.new_id(),
            self.owner,
            hashlib.sha256(self.body).digest(),
            route.resume,
            route.name,
            head.headers.get("content-type") or "text/event-stream",
        )
        stream.origin = self
        stream.framer.max_event = self.config.max_event_bytes
        registry.add(stream)
        self.stream = stream
        self.body = b""
        head.headers.set("x-stream-id", stream.id)
        head.headers.remove("content-length")
        if (
            route.resume.gzip
            and _accepts_gzip(self.accept_encoding)
            and head.headers.get("content-encoding") is None
        ):
            self.gzip = zlib.compressobj(6, zlib.DEFLATED, 31)
            head.headers.set("content-encoding", "gzip")
            head.headers.add("vary", "accept-encoding")
        self.callbacks.keep_going_without_client(self._client_gone)
        self.callbacks.take_flow_control(self._client_slow, self._client_ready)
        return FilterStatus.CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        stream = self.stream
        if stream is None or self.reading:
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
        if self.detached:
            return b""
        if self.slow:
            # The client cannot keep up: hold its events (the comments can go), to be
            # sent folded when it can take them — or now, at the end.
            if events is not None:
                self.held.extend(events)
                self.held_bytes += len(out)
                if self.held_bytes > _HOLD_LIMIT and not self.upstream_paused:
                    self.upstream_paused = True
                    self.callbacks.pause_upstream()
            if not end_stream:
                return b""
            out, self.held, self.held_bytes = b"".join(stream.fold(self.held)), [], 0
        return self._compressed(out, end_stream) if self.gzip is not None else out

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
        frame = b""
        if not self.detached:
            held, self.held, self.held_bytes = self.held, [], 0
            frame = b"".join([*held, out, error])
            if self.gzip is not None:
                frame = self._compressed(frame, True)
        self.callbacks.fail_response(502, message, frame=frame)
        return FilterStatus.STOP_ITERATION

    def _client_slow(self) -> None:
        self.slow = True

    def _client_ready(self) -> None:
        self.slow = False
        stream = self.stream
        # (Not once its connection is over: a new reader may be counting chunks.)
        if self.held and not self.done and not self.detached and stream is not None:
            held, self.held, self.held_bytes = self.held, [], 0
            self.callbacks.inject_encoded_data(
                self._compressed(b"".join(stream.fold(held)), False), False
            )
        if self.upstream_paused and not self.done:
            self.upstream_paused = False
            self.callbacks.resume_upstream()

    def _client_gone(self) -> None:
        self.detached = True
        self.held, self.held_bytes = [], 0  # it will never be sent
        stream = self.stream
        if stream is not None:
            stream.client_gone()

    def on_destroy(self) -> None:
        self.done = True
        pipe = self.pipe
        if pipe is not None and pipe.transport is not None:
            transport: Any = pipe.transport
            transport.stopProducing()  # the other worker sees its reader go
        stream = self.stream
        if stream is None:
            return
        self.stream = None
        if self.reading:
            stream.detach(self)
            return
        info = self.callbacks.stream_info
        # For the access log and the metrics (made now: nothing kept per open stream).
        annotation: dict[str, Any] = {
            "id": stream.id,
            "role": "origin",
            "events": stream.framer.seq,
            "held": stream.buffer.size,
        }
        if self.expired:
            annotation["expired"] = True
        if not stream.resumable:
            annotation["resumable"] = False
        info.annotations[STREAM_ANNOTATION] = annotation
        stream.ended(info.outcome == "complete")
