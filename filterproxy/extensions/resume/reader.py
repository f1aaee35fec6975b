"""The reading side of resumable streams: ``GET``/``DELETE /v1/streams/{id}`` and a
re-sent ``POST`` with ``Last-Event-ID``, answered from this worker's stream or another
worker's (over the relay), and the `StreamReader` that passes a stream on to the
request that reads it.

Both paths act on one `ReadDecision` (`decide_read`): made here for a stream of this
worker's, carried over the relay for another's.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

import orjson
from twisted.logger import Logger

from filterproxy.extensions.resume.framing import parse_event_id
from filterproxy.extensions.resume.relay import Discard, Pipe, RelayClient, RelayedRead
from filterproxy.extensions.resume.streams import (
    ReadDecision,
    ReadOutcome,
    ResumableStream,
    StreamRegistry,
    decide_read,
)
from filterproxy.filters.records import CompressStream, EventFolds, StreamRecord

if TYPE_CHECKING:
    from collections.abc import Mapping

    from filterproxy.config import RouteConfig
    from filterproxy.filters.api import IFilterCallbacks, RequestHead

__all__ = ["StreamReader", "StreamRequest", "stream_request"]

log = Logger(namespace="filterproxy.resume")
#: A stream id: up to 50 characters of its own, and a balancer's key of up to 64 after a
#: dash (`streams.affinity_key`).
_STREAM_PATH: Final = re.compile(r"^(?:/v1)?/streams/([A-Za-z0-9_-]{8,128})/?$")


class StreamRequest:
    """A request to a stream's own path: which stream, and from where."""

    __slots__ = ("after", "by_id", "stream_id")

    def __init__(self, stream_id: str, after: int | None, by_id: bool) -> None:
        self.stream_id = stream_id
        #: An event's id (Last-Event-ID), or a count of chunks (starting_after; no
        #: position at all is a count of none).
        self.after = after
        self.by_id = by_id


def stream_request(head: RequestHead) -> StreamRequest | None:
    """What ``/v1/streams/{id}`` request *head* asks for; None for any other path."""
    path, _, query = head.path.partition("?")
    match = _STREAM_PATH.match(path) if "/streams/" in path else None
    if match is None:
        return None
    params = parse_qs(query)
    after = parse_event_id(head.headers.get("last-event-id"))
    by_id = after is not None
    if after is None and "starting_after" in params:
        after = parse_event_id(params["starting_after"][0])
    if after is None and "last_event_id" in params:
        after = parse_event_id(params["last_event_id"][0])
        by_id = after is not None
    return StreamRequest(match.group(1), after, by_id)


def resent_position(head: RequestHead) -> tuple[str, int] | None:
    """A re-sent ``POST``'s ``Last-Event-ID``: (stream id, event number), or None."""
    last = head.headers.get("last-event-id")
    if last is not None and "." in last:
        stream_id, _, number = last.strip().rpartition(".")
        if number.isdigit() and stream_id.startswith("fps_"):
            return stream_id, int(number)
    return None


def _gone(stream_id: str) -> str:
    return (
        f"stream {stream_id!r} cannot be resumed: it finished longer ago than its route's "
        "resume.keep, no client came back within resume.grace, it passed its buffer's "
        "cap, or it never existed; send the request again"
    )


class StreamReader:
    """One request that reads (or stops) a resumable stream: it answers with the
    read's decision, and is the stream's `Reader` while it follows its live tail."""

    def __init__(
        self,
        callbacks: IFilterCallbacks,
        registry: StreamRegistry,
        relay: RelayClient,
        owner: str,
        routes: Mapping[str, RouteConfig] | None = None,
    ) -> None:
        self.callbacks = callbacks
        #: The config's routes by name: a read is the request of its stream's route
        #: (the filters that answer it, the delivery filter's settings, the access log).
        self.routes = routes or {}
        self.registry = registry
        self.relay = relay
        self.owner = owner
        #: The stream this request follows (of this worker's).
        self.stream: ResumableStream | None = None
        #: The body of another worker's answer, while it is passed on.
        self.pipe: Pipe | None = None
        #: The request is over.
        self.done = False

    # -- the decision ------------------------------------------------------------------

    def read(
        self, method: str, stream_id: str, after: int, counted: bool, body_hash: bytes | None
    ) -> None:
        """Answer a ``GET`` (a re-sent request's, with its *body_hash*) or a ``DELETE``
        of *stream_id*: from this worker's stream, or by asking the one that holds it."""
        registry = self.registry
        stream = registry.get(stream_id)
        if stream is not None and stream.owner != self.owner:
            stream = None
        port = registry.elsewhere(stream_id) if stream is None else None
        if port is not None:
            body = body_hash.hex() if body_hash is not None else ""
            self._relay(port, method, stream_id, after, body, counted)
            return
        decision = decide_read(
            stream,
            method=method,
            owner=self.owner,
            after=after,
            counted=counted,
            body_hash=body_hash,
        )
        self._answer(decision, stream_id, stream, None)

    def _answer(
        self,
        decision: ReadDecision,
        stream_id: str,
        stream: ResumableStream | None,
        relayed: RelayedRead | None,
    ) -> None:
        """Act on *decision* (this worker's, about *stream*; or another worker's, with
        its *relayed* answer)."""
        outcome = decision.outcome
        callbacks = self.callbacks
        if outcome is ReadOutcome.CANCEL:
            if stream is not None:
                stream.cancel()
            body = {"id": stream_id, "object": "stream.deleted", "deleted": True}
            callbacks.send_local_response(200, orjson.dumps(body), "application/json")
        elif outcome is ReadOutcome.NOT_FOUND:
            callbacks.send_local_reply(404, f"no stream {stream_id!r}", code="not_found")
        elif outcome is ReadOutcome.GONE:
            self._annotate(stream_id, "gone")
            callbacks.send_local_reply(410, _gone(stream_id), code="stream_gone")
        elif outcome is ReadOutcome.MISMATCH:
            callbacks.send_local_reply(
                409,
                f"Last-Event-ID names stream {stream_id!r}, which another request started; "
                "resume it with the same request, or leave Last-Event-ID out",
                code="stream_mismatch",
            )
        elif relayed is not None:
            if outcome is ReadOutcome.ENDED:
                callbacks.send_local_response(204, b"", "text/event-stream")
                return
            self._annotate(stream_id, "resumed", after=decision.after, replayed=relayed.replayed)
            self._start(stream_id, relayed.content_type, relayed.gzip)
            self.pipe = Pipe(self.push, self._piped)
            relayed.response.deliverBody(self.pipe)
        elif stream is not None:
            events = stream.caught_up(decision)
            self._annotate(stream_id, "resumed", after=decision.after, replayed=len(events))
            if outcome is ReadOutcome.ENDED:
                callbacks.send_local_response(204, b"", "text/event-stream")
                return
            self.stream = stream
            info = callbacks.stream_info
            if info.route is None:
                info.route = self.routes.get(stream.route)
            self._start(stream.id, stream.content_type, stream.config.gzip)
            missed = b"".join(events)
            if stream.done:
                self._send(missed, True)
                return
            stream.attach(self)
            if missed:
                self._send(missed, False)

    @property
    def reading(self) -> bool:
        """This request passes a stream on (rather than answering once)."""
        return self.stream is not None or self.pipe is not None

    def _annotate(
        self, stream_id: str, outcome: str, after: int | None = None, replayed: int | None = None
    ) -> None:
        """The request's `StreamRecord` (the access log's ``stream``; the origin filter
        counts it when the request ends)."""
        stream = self.registry.get(stream_id)
        route = stream.route if stream is not None else "none"
        record = StreamRecord(stream_id, "resume", outcome, route, after, replayed)
        self.callbacks.stream_info.state.set(record)

    # -- another worker's stream ------------------------------------------------------

    def _relay(
        self, port: int, method: str, stream_id: str, after: int, body: str, counted: bool
    ) -> None:
        """Ask the worker that holds *stream_id* (over its relay); *after* counts
        chunks when *counted*."""
        d = self.relay.read(port, method, stream_id, after, self.owner, body, counted)
        d.addCallbacks(self._relayed, self._relay_failed, callbackArgs=(stream_id, after, counted))

    def _relayed(self, relayed: RelayedRead, stream_id: str, after: int, counted: bool) -> None:
        if self.done:
            relayed.response.deliverBody(Discard())
            return
        outcome = relayed.outcome
        if outcome is None:
            relayed.response.deliverBody(Discard())
            self._relay_failed(None)
            return
        if outcome is not ReadOutcome.REPLAY:
            relayed.response.deliverBody(Discard())
        self._answer(ReadDecision(outcome, after, counted), stream_id, None, relayed)

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

    def _piped(self, complete: bool) -> None:
        self.pipe = None
        self.finish(complete)

    # -- sending -------------------------------------------------------------------------

    def _start(self, stream_id: str, content_type: str, gzip: bool) -> None:
        headers = [
            ("content-type", content_type),
            ("cache-control", "no-cache"),
            ("x-stream-id", stream_id),
        ]
        state = self.callbacks.stream_info.state
        if gzip:  # the route offers its streams compressed (the delivery filter does it)
            state.set(CompressStream())
        stream = self.stream
        if stream is not None:
            state.set(EventFolds(stream.folded))
        self.callbacks.own_stream().send_local_stream(200, headers)

    def _send(self, data: bytes, end_stream: bool) -> None:
        if not self.done:
            self.callbacks.inject_encoded_data(data, end_stream)

    # -- Reader ----------------------------------------------------------------------------

    def push(self, data: bytes) -> None:
        self._send(data, False)

    def finish(self, complete: bool) -> None:
        """The stream this request reads has ended."""
        if self.done:
            return
        if complete:
            self._send(b"", True)
        else:
            self.callbacks.own_stream().abandon()  # it failed: never a clean end

    def taken_over(self) -> None:
        """Another reader took over: this connection is closed."""
        if not self.done:
            self.callbacks.own_stream().drop_client()

    def close(self) -> None:
        """The request is over: stop following the stream."""
        self.done = True
        pipe = self.pipe
        if pipe is not None and pipe.transport is not None:
            transport: Any = pipe.transport
            transport.stopProducing()  # the other worker sees its reader go
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.detach(self)
