"""One direction of the filter chain: headers and data through the filters' hooks.

The rules, shared by the request (decode) and the response (encode) direction:

- A filter that returns STOP_ITERATION from a headers hook holds the headers until it
  continues; data reaches only filters that have seen the headers.
- A data hook's result says what goes on: CONTINUE (the piece, after whatever the
  filter had the chain buffer), STOP_ITERATION (nothing), STOP_ITERATION_AND_BUFFER (the
  chain keeps the piece until the filter continues, within a byte limit), or
  replacement bytes — one piece, or a list of pieces — in place of the piece and what
  was buffered. The end of the stream travels with the last piece passed on.
- A filter that returns STOP_ITERATION with the end of the stream, and has not passed the
  end on itself, has swallowed it: the chain reports that (`on_end_swallowed`) instead
  of leaving the other side waiting for an end that never comes.
- A response may start over from a given filter: a local reply made by a filter goes
  through the encoders after it only (`restart_headers`). Each restart, and the end of
  the request, starts a new *generation*: a pass through the chain still on the stack
  from before stops as soon as the filter it called returns.
- A hook may return a `Deferred` that fires with what it would have returned: the
  stream is held at that filter until it fires (what reaches the filter meanwhile
  waits, in order, and reaches it afterwards), then goes on as if the hook had returned
  the result. A failure is reported to the manager (`ResponseSink.hook_failed`); a
  Deferred that fires after a restart or the end of the request changes nothing.
- A filter that calls ``continue_*`` inside its own hook, with nothing held, and then
  returns STOP_ITERATION from it (or a Deferred) would wait forever: the call raises
  `ContinueInsideHook` when the hook returns.

A direction is in one of the states of `IterationState` (its ``state``); the manager
ends it with `stop`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from filterproxy.filters.api import (
    ContinueInsideHook,
    FilterStatus,
    RequestHead,
    ResponseHead,
    StreamInfo,
)

if TYPE_CHECKING:
    from filterproxy.filters.api import DataResult, HeadersResult, IStreamFilter

__all__ = [
    "DecodeIteration",
    "EncodeIteration",
    "FilterIteration",
    "IterationState",
    "ResponseSink",
]

_CONTINUE = FilterStatus.CONTINUE
_STOP = FilterStatus.STOP_ITERATION
_BUFFER = FilterStatus.STOP_ITERATION_AND_BUFFER


class IterationState(enum.Enum):
    """Where one direction of the chain is."""

    #: The head is on its way through the filters: not arrived yet, held by a filter
    #: (``headers_held_at``), or awaited (``awaiting_at``).
    HEADERS = "headers"
    #: The head reached the sink: data that every filter lets through goes straight on.
    BODY = "body"
    #: Nothing more goes anywhere (the request is answered, failed or over).
    STOPPED = "stopped"


#: What `FilterIteration.awaited_result` holds while the Deferred has not fired.
_PENDING: Final = object()

_HEADERS: Final = IterationState.HEADERS
_BODY: Final = IterationState.BODY
_STOPPED: Final = IterationState.STOPPED

HeadT = TypeVar("HeadT", RequestHead, ResponseHead)


def _ignore(head_or_data: object, end_stream: bool) -> None:
    pass


def _nothing() -> None:
    pass


def _ignore_index(index: int) -> None:
    pass


class FilterIteration(Generic[HeadT]):
    """One direction of the chain: headers and data through the filters to a sink.

    The filters' hooks are called on the filters themselves (`DecodeIteration`,
    `EncodeIteration`), not through bound methods made for each request.
    """

    __slots__ = (
        "awaited_result",
        "awaiting_at",
        "awaiting_takes",
        "buffer_limit",
        "buffered_bytes",
        "buffered_end",
        "buffers",
        "calling",
        "continued_inside",
        "data_passthrough",
        "end_reached",
        "filters",
        "generation",
        "head",
        "head_end_stream",
        "headers_held_at",
        "manager",
        "new_body",
        "on_buffer_overflow",
        "on_end_swallowed",
        "passed_data",
        "queued",
        "seen_data",
        "sink_data",
        "sink_headers",
        "state",
        "stream_info",
        "takes_data",
        "tracks_body",
        "whole_body",
    )

    def __init__(
        self,
        filters: list[IStreamFilter],
        # Per filter (in this direction's order): whether its data hook is called; a
        # filter that does not look at data passes it on untouched.
        takes_data: tuple[bool, ...],
        sink_headers: Callable[[HeadT, bool], None],
        sink_data: Callable[[bytes, bool], None],
        buffer_limit: int,
        on_buffer_overflow: Callable[[], None],
        data_passthrough: bool,
        on_end_swallowed: Callable[[int], None] = _ignore_index,
        stream_info: StreamInfo | None = None,
        manager: ResponseSink | None = None,
    ) -> None:
        self.filters = filters
        self.takes_data = takes_data
        self.sink_headers: Callable[[HeadT, bool], None] = sink_headers
        self.sink_data = sink_data
        self.buffer_limit = buffer_limit
        self.on_buffer_overflow = on_buffer_overflow
        #: Called with the position of a filter that swallowed the end of the stream.
        self.on_end_swallowed = on_end_swallowed
        #: No hook does anything with data: skip the loop once headers have passed.
        self.data_passthrough = data_passthrough
        self.head: HeadT | None = None
        self.head_end_stream = False
        #: Where this direction is (changed by its own methods, and `stop`).
        self.state = _HEADERS
        #: Index of the filter holding the headers, or None.
        self.headers_held_at: int | None = None
        #: Data kept for filters that returned STOP_ITERATION_AND_BUFFER, by filter index.
        self.buffers: dict[int, list[bytes]] = {}
        self.buffered_end: dict[int, bool] = {}
        self.buffered_bytes = 0
        #: The furthest position the end of the stream has reached (-1: not yet).
        self.end_reached = -1
        #: Bumped by a restart, by `stop` and by `release`: a pass begun before stops.
        self.generation = 0
        #: The request's manager: told of a hook's Deferred that failed (and, for the
        #: response direction, the sink).
        self.manager: ResponseSink | None = manager
        #: Position of the filter whose hook's Deferred the stream waits for (-1: none);
        #: what reaches it meanwhile, in order; the result, once it fired, until the
        #: piece it was given is passed on with it; whether the filter's data hook is
        #: called otherwise (meanwhile it is marked as called, so that data waits there
        #: even at a filter that does not look at data).
        self.awaiting_at = -1
        self.queued: list[tuple[bytes, bool]] | None = None
        self.awaited_result: Any = _PENDING
        self.awaiting_takes = False
        #: Position of the filter whose hook is running (-1: none), and of a filter
        #: that called continue inside its own hook with nothing held (-1: none).
        self.calling = -1
        self.continued_inside = -1
        # The request direction keeps the body's JSON document coherent with its bytes
        # for the manager (`FilterManager.request_json`): it is given *stream_info*.
        self.tracks_body = stream_info is not None
        #: Where the document is kept (``body_json``: None when not parsed yet, or stale).
        self.stream_info = stream_info
        #: The serialised document a filter set, to replace the body that leaves it.
        self.new_body: bytes | None = None
        #: Bit masks by filter index: filters that have been given body data (to tell a
        #: whole body from a piece), and filters that body data has left.
        self.seen_data = 0
        self.passed_data = 0
        #: The whole body as the filter being called sees it (None: not whole, or not
        #: in a data hook at the end of the body).
        self.whole_body: bytes | None = None

    def _call_headers(self, index: int, head: HeadT, end_stream: bool) -> HeadersResult:
        raise NotImplementedError

    def _to_sink_headers(self, head: HeadT, end_stream: bool) -> None:
        self.sink_headers(head, end_stream)

    def _to_sink_data(self, data: bytes, end_stream: bool) -> None:
        self.sink_data(data, end_stream)

    def _call_data(self, index: int, data: bytes, end_stream: bool) -> DataResult:
        raise NotImplementedError

    def _passed_on(self, index: int, data: bytes, end_stream: bool) -> bytes:
        """*data* leaves filter *index*: what the next filter gets (in the request
        direction, a body document a filter set replaces the whole body)."""
        if self.tracks_body:
            self.passed_data |= 1 << index
            if end_stream and self.new_body is not None:
                data, self.new_body = self.new_body, None
        return data

    @property
    def stopped(self) -> bool:
        """Whether nothing more goes anywhere (`stop`, or the request is over)."""
        return self.state is _STOPPED

    @property
    def headers_passed(self) -> bool:
        """Whether the head has reached the sink."""
        return self.state is _BODY

    def stop(self) -> None:
        """Nothing more goes anywhere in this direction, and a pass through it still on
        the stack stops as soon as the filter it called returns."""
        self.state = _STOPPED
        self.generation += 1

    def headers(self, head: HeadT, end_stream: bool) -> None:
        self.head = head
        self.head_end_stream = end_stream
        self._headers_from(0)

    def restart_headers(self, index: int, head: HeadT, end_stream: bool) -> None:
        """Start this direction over from filter *index* with *head*: what was held or
        buffered is dropped, and a pass still under way stops (a local reply)."""
        self.generation += 1
        self.buffers = {}
        self.buffered_end = {}
        self.buffered_bytes = 0
        if self.state is not _STOPPED:
            self.state = _HEADERS
        if self.awaiting_at >= 0:
            self._end_await()
        self.queued = None
        self.calling = -1
        self.continued_inside = -1
        self.headers_held_at = None
        self.end_reached = -1
        self.head = head
        self.head_end_stream = end_stream
        self._headers_from(index)

    def _headers_from(self, index: int) -> bool:
        head = self.head
        assert head is not None
        generation = self.generation
        count = len(self.filters)
        while index < count:
            outer = self.calling
            self.calling = index
            status: Any = self._call_headers(index, head, self.head_end_stream)
            self.calling = outer
            if self.continued_inside >= 0:
                self._continued_inside(index, status)
            if self.generation != generation:
                return False
            if status is not _CONTINUE:
                self.headers_held_at = index
                # (STOP first: an isinstance check of Deferred, an ABC, is not cheap.)
                if status is not _STOP and isinstance(status, Deferred):
                    self._await(index, status, None, False)
                return False
            index += 1
        self.headers_held_at = None
        if self.state is _HEADERS:
            self.state = _BODY
        self._to_sink_headers(head, self.head_end_stream)
        return True

    def data(self, data: bytes, end_stream: bool) -> None:
        if self.data_passthrough and self.state is _BODY:
            self._to_sink_data(data, end_stream)
        else:
            self._data_from(0, data, end_stream)

    def _data_from(self, index: int, data: bytes, end_stream: bool) -> None:
        takes_data = self.takes_data
        count = len(takes_data)
        generation = self.generation
        while index < count:
            if end_stream and index > self.end_reached:
                self.end_reached = index
            if not takes_data[index]:  # the filter does not look at data: it passes on
                result: Any = _CONTINUE
            elif index == self.awaiting_at:  # a hook's Deferred holds the stream here
                if self.awaited_result is _PENDING:
                    self._queue(data, end_stream)
                    return
                result = self._awaited_result()
            else:
                outer = self.calling
                self.calling = index
                result = self._call_data(index, data, end_stream)
                self.calling = outer
                if self.continued_inside >= 0:
                    self._continued_inside(index, result)
                if self.generation != generation:
                    return
            if result is _CONTINUE:
                if self.buffers:
                    held = self.buffers.pop(index, None)
                    if held:
                        self.buffered_end.pop(index, None)
                        piece = data
                        held.append(piece)
                        data = b"".join(held)
                        # Only what was buffered leaves the count, not this piece.
                        self.buffered_bytes -= len(data) - len(piece)
            elif result is _BUFFER:
                self._buffer(index, data, end_stream)
                return
            elif result is _STOP:
                if end_stream and self.end_reached <= index:
                    self.on_end_swallowed(index)
                return
            else:  # replacement: bytes, or a list of pieces; or a Deferred of a result
                if not isinstance(result, bytes):
                    if not isinstance(result, list) and isinstance(result, Deferred):
                        self._await(index, result, data, end_stream)
                        return
                    self._drop_buffer(index)
                    self._pieces_from(index, list(result), end_stream)
                    return
                self._drop_buffer(index)
                if not result and not end_stream:
                    self._release_headers(index)
                    return
                data = result
            if self.headers_held_at is not None and self.headers_held_at == index:
                self._headers_from(index + 1)
                if self.generation != generation:
                    return
                # A filter after this one may have said in its headers hook that it does
                # not look at this response's data (`skip_data`).
                takes_data = self.takes_data
            if self.tracks_body:  # the request direction only: no call per response chunk
                data = self._passed_on(index, data, end_stream)
            index += 1
        self._to_sink_data(data, end_stream)

    def _pieces_from(self, index: int, pieces: list[bytes], end_stream: bool) -> None:
        """A filter's replacement in several pieces: each goes on in turn."""
        generation = self.generation
        self._release_headers(index)
        if self.generation != generation:
            return
        if not pieces:
            if end_stream:
                self._data_from(index + 1, self._passed_on(index, b"", True), True)
            return
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            ends = end_stream and i == last
            self._data_from(index + 1, self._passed_on(index, piece, ends), ends)
            if self.generation != generation:
                return

    def _release_headers(self, index: int) -> None:
        if self.headers_held_at is not None and self.headers_held_at == index:
            self._headers_from(index + 1)

    def _drop_buffer(self, index: int) -> None:
        if self.buffers:
            held = self.buffers.pop(index, None)
            if held:
                self.buffered_end.pop(index, None)
                self.buffered_bytes -= sum(len(piece) for piece in held)

    def _buffer(self, index: int, data: bytes, end_stream: bool) -> None:
        self.buffers.setdefault(index, []).append(data)
        self.buffered_end[index] = end_stream
        self.buffered_bytes += len(data)
        if self.buffered_bytes > self.buffer_limit:
            self.on_buffer_overflow()

    def skip_data(self, index: int) -> None:
        """Filter *index* does not look at this request's data: its data hook is not
        called (and when no other filter's is, data goes straight to the sink)."""
        if index == self.awaiting_at:  # forced on while the stream waits there
            self.awaiting_takes = False
            return
        takes: tuple[bool, ...] = self.takes_data
        if takes[index]:
            self.takes_data = (*takes[:index], False, *takes[index + 1 :])
            self.data_passthrough = not any(self.takes_data)

    def data_from(self, index: int, data: bytes, end_stream: bool) -> None:
        """*data* enters this direction at filter *index* (a local reply's body)."""
        self._data_from(index, data, end_stream)

    def inject(self, index: int, data: bytes, end_stream: bool) -> None:
        """Filter *index* sends *data* on, as if it had passed it (from outside its data
        hook, or in addition to what the hook returns)."""
        if self.state is not _STOPPED:
            self._data_from(index + 1, self._passed_on(index, data, end_stream), end_stream)

    def release(self) -> None:
        """The request is over: stop, and drop the filters and sinks (they refer back to
        the request's other objects; see `FilterManager.release`)."""
        self.generation += 1
        self.state = _STOPPED
        self.filters = []
        self.takes_data = ()
        self.sink_headers = _ignore
        self.sink_data = _ignore
        self.on_buffer_overflow = _nothing
        self.on_end_swallowed = _ignore_index
        self.buffers = {}
        self.buffered_end = {}
        self.queued = None
        self.awaited_result = _PENDING
        self.manager = None
        self.head = None
        self.whole_body = None
        self.stream_info = None

    def resume(self, index: int) -> None:
        """Filter *index* continues: release what it held. While a Deferred its hook
        returned is pending, the Deferred's result decides instead."""
        if self.state is _STOPPED or index == self.awaiting_at:
            return
        generation = self.generation
        released = False
        if self.headers_held_at == index:
            released = True
            self._headers_from(index + 1)
            if self.generation != generation:
                return
        held = self.buffers.pop(index, None)
        if held is not None:
            end_stream = self.buffered_end.pop(index)
            data = b"".join(held)
            self.buffered_bytes -= len(data)
            self._data_from(index + 1, self._passed_on(index, data, end_stream), end_stream)
        elif not released and index == self.calling:
            self.continued_inside = index  # reported when its hook returns

    def _continued_inside(self, index: int, result: object) -> None:
        """Filter *index*'s hook returned *result* after calling continue with nothing
        held: harmless with CONTINUE or data, a stream that would wait forever else."""
        self.continued_inside = -1
        if (
            result is _STOP
            or result is _BUFFER
            or (
                not isinstance(result, FilterStatus | bytes | list) and isinstance(result, Deferred)
            )
        ):
            raise ContinueInsideHook(type(self.filters[index]).__name__)

    # -- hooks that return a Deferred -------------------------------------------------------

    def _await(self, index: int, d: Deferred[Any], data: bytes | None, end_stream: bool) -> None:
        """Filter *index*'s hook returned *d*: the stream waits there until it fires.
        *data* is the piece its data hook was given (None: its headers hook)."""
        self.awaiting_at = index
        self.awaited_result = _PENDING
        takes: tuple[bool, ...] = self.takes_data
        self.awaiting_takes = takes[index]
        if not takes[index]:
            forced: tuple[bool, ...] = (*takes[:index], True, *takes[index + 1 :])
            self.takes_data = forced
        self.data_passthrough = False
        d.addCallbacks(
            self._fired,
            self._failed,
            callbackArgs=(index, self.generation, data, end_stream),
            errbackArgs=(index, self.generation),
        )

    def _queue(self, data: bytes, end_stream: bool) -> None:
        """What reaches a filter while its hook's Deferred is pending waits for it; it
        counts against the chain's buffer limit, as a filter's own buffer does."""
        queued = self.queued
        if queued is None:
            queued = self.queued = []
        queued.append((data, end_stream))
        self.buffered_bytes += len(data)
        if self.buffered_bytes > self.buffer_limit:
            self.on_buffer_overflow()

    def _end_await(self) -> None:
        index: int = self.awaiting_at
        self.awaiting_at = -1
        self.awaited_result = _PENDING
        takes: tuple[bool, ...] = self.takes_data
        if index < len(takes) and takes[index] != self.awaiting_takes:
            restored: tuple[bool, ...] = (*takes[:index], self.awaiting_takes, *takes[index + 1 :])
            self.takes_data = takes = restored
        # As the chain's shape (and `skip_data`) have it: no filter looks at data.
        self.data_passthrough = not any(takes)

    def _awaited_result(self) -> Any:
        """The result of the Deferred the stream waited for at ``awaiting_at``, which is
        passed on with the piece its filter was given: the wait is over."""
        result = self.awaited_result
        self._end_await()
        return result

    def _fired(
        self, result: Any, index: int, generation: int, data: bytes | None, end_stream: bool
    ) -> None:
        if self.generation != generation or self.state is _STOPPED:
            return  # a restart or the end of the request came first: nothing to do
        if not (
            isinstance(result, FilterStatus)
            if data is None
            else isinstance(result, (FilterStatus, bytes, list))
        ):
            what = "FilterStatus" if data is None else "FilterStatus, bytes or list of bytes"
            self._failed(
                Failure(
                    TypeError(
                        f"{type(self.filters[index]).__name__}'s hook returned a Deferred that "
                        f"fired with {result!r}; it must fire with a {what}"
                    )
                ),
                index,
                generation,
            )
            return
        queued = self.queued or []
        self.queued = None
        if data is None:  # the headers hook: held there unless the result is CONTINUE
            self._end_await()
            if result is _CONTINUE:
                self._headers_from(index + 1)
        else:
            self.awaited_result = result
            self._data_from(index, data, end_stream)
        # What reached the filter meanwhile reaches it now, in order (and waits again
        # behind a new Deferred, if the filter returns one).
        while queued and self.generation == generation and self.awaiting_at < 0:
            piece, end = queued.pop(0)
            self.buffered_bytes -= len(piece)
            self._data_from(index, piece, end)
        if queued and self.generation == generation:
            self.queued = queued + (self.queued or [])

    def _failed(self, failure: Failure, index: int, generation: int) -> None:
        if self.generation != generation or self.state is _STOPPED:
            return  # late: the request is over or answered, the failure changes nothing
        self._end_await()
        self.buffered_bytes -= sum(len(piece) for piece, _ in self.queued or ())
        self.queued = None
        if self.manager is not None:
            self.manager.hook_failed(self, index, failure)


class DecodeIteration(FilterIteration[RequestHead]):
    """The request direction: ``decode_headers`` / ``decode_data``, in config order.

    Given the request's `StreamInfo`, it also keeps the request body's JSON document
    coherent with its bytes for the manager (`FilterManager.request_json`): a document a
    filter sets replaces the body that leaves it, and replacement bytes from a data hook
    make the document stale.

    When the chain has a filter that chooses the cluster and the request's route may
    fail over to another cluster, it also keeps the request as it leaves that filter
    (`kept_head`, `kept_body`), so that the filters after it can shape it anew for the
    fallback (`rerun`).
    """

    __slots__ = ("fallback_from", "kept_body", "kept_end", "kept_head")

    def __init__(
        self,
        filters: list[IStreamFilter],
        takes_data: tuple[bool, ...],
        sink_headers: Callable[[RequestHead, bool], None],
        sink_data: Callable[[bytes, bool], None],
        buffer_limit: int,
        on_buffer_overflow: Callable[[], None],
        data_passthrough: bool,
        on_end_swallowed: Callable[[int], None] = _ignore_index,
        stream_info: StreamInfo | None = None,
        fallback_from: int = -1,
        manager: ResponseSink | None = None,
    ) -> None:
        super().__init__(
            filters,
            takes_data,
            sink_headers,
            sink_data,
            buffer_limit,
            on_buffer_overflow,
            data_passthrough,
            on_end_swallowed,
            stream_info,
            manager,
        )
        #: The first filter after the one that chooses the cluster (-1: none).
        self.fallback_from = fallback_from
        #: A copy of the request head as it left that filter, when the route has a
        #: fallback cluster; the body that left it, in pieces; whether the head ended
        #: the request.
        self.kept_head: RequestHead | None = None
        self.kept_body: list[bytes] = []
        self.kept_end = False

    def _headers_from(self, index: int) -> bool:
        if index == self.fallback_from and self.kept_head is None:
            self._keep_head()
        return super()._headers_from(index)

    def _keep_head(self) -> None:
        info = self.stream_info
        head = self.head
        route = info.route if info is not None else None
        if route is None or head is None:
            return
        first = route.plan[0].cluster if route.plan else None
        if all(step.cluster == first for step in route.plan):
            return  # no other cluster to fail over to: nothing to keep
        self.kept_head = RequestHead(
            head.method, head.path, head.headers.copy(), head.scheme, head.client_ip
        )
        self.kept_end = self.head_end_stream

    def data(self, data: bytes, end_stream: bool) -> None:
        if self.data_passthrough and self.state is _BODY and self.kept_head is not None:
            self.kept_body.append(data)  # no filter looks at the body: it leaves as it came
        super().data(data, end_stream)

    def _passed_on(self, index: int, data: bytes, end_stream: bool) -> bytes:
        data = super()._passed_on(index, data, end_stream)
        if index + 1 == self.fallback_from and self.kept_head is not None and data:
            self.kept_body.append(data)
        return data

    def rerun(self) -> bool:
        """Run the request again through the filters from `fallback_from`, as it left
        the filter before them (the caller has made those filters anew). False when
        nothing was kept (no fallback cluster, or the chain has no such filter)."""
        kept = self.kept_head
        at = self.fallback_from
        if kept is None or at < 0 or self.state is _STOPPED:
            return False
        head = RequestHead(kept.method, kept.path, kept.headers.copy(), kept.scheme, kept.client_ip)
        below = (1 << at) - 1
        self.seen_data &= below
        self.passed_data &= below
        self.new_body = None
        if self.stream_info is not None:
            self.stream_info.body_json = None  # parsed again from the kept body
        generation = self.generation + 1
        self.restart_headers(at, head, self.kept_end)
        if not self.kept_end and self.generation == generation:
            body = self.kept_body
            self._data_from(at, body[0] if len(body) == 1 else b"".join(body), True)
        return True

    def _call_headers(self, index: int, head: RequestHead, end_stream: bool) -> HeadersResult:
        return self.filters[index].decode_headers(head, end_stream)

    def _call_data(self, index: int, data: bytes, end_stream: bool) -> DataResult:
        bit = 1 << index
        self.whole_body = data if end_stream and not self.seen_data & bit else None
        self.seen_data |= bit
        result = self.filters[index].decode_data(data, end_stream)
        self.whole_body = None
        if not isinstance(result, FilterStatus) and self.stream_info is not None:
            # The filter rewrote the bytes: the document is parsed again when asked for.
            self.stream_info.body_json = None
        return result

    def _to_sink_data(self, data: bytes, end_stream: bool) -> None:
        # A chain whose filters take no body data passes it straight here (`data`), past
        # `_passed_on`: a document set in a headers hook still replaces the body.
        if self.new_body is not None and end_stream:
            data, self.new_body = self.new_body, None
        self.sink_data(data, end_stream)

    def body_whole_at(self, index: int) -> bool:
        """Whether no body data has gone past filter *index* yet: a body it replaces
        then replaces all of it."""
        return not self.passed_data & (1 << index)


class ResponseSink:
    """Where the response direction ends: the request's `FilterManager`, which derives
    from this compiled class so that the per-chunk call reaches it directly."""

    def send_response_head(self, head: ResponseHead, end_stream: bool) -> None:
        raise NotImplementedError

    def send_response_data(self, data: bytes, end_stream: bool) -> None:
        raise NotImplementedError

    def hook_failed(self, iteration: FilterIteration[Any], position: int, failure: Failure) -> None:
        """The Deferred a hook returned failed: *position* is the filter's place in
        *iteration* (the request's or the response's direction)."""
        raise NotImplementedError


class EncodeIteration(FilterIteration[ResponseHead]):
    """The response direction: ``encode_headers`` / ``encode_data``, in reverse order,
    to the request's `FilterManager`, which sends to the client. (Called as methods of
    the manager, not through callables: once per chunk, a direct call when compiled.)"""

    __slots__ = ()

    def __init__(
        self,
        filters: list[IStreamFilter],
        takes_data: tuple[bool, ...],
        manager: ResponseSink,
        buffer_limit: int,
        on_buffer_overflow: Callable[[], None],
        data_passthrough: bool,
        on_end_swallowed: Callable[[int], None] = _ignore_index,
    ) -> None:
        super().__init__(
            filters,
            takes_data,
            _ignore,
            _ignore,
            buffer_limit,
            on_buffer_overflow,
            data_passthrough,
            on_end_swallowed,
            None,
            manager,
        )

    def _to_sink_headers(self, head: ResponseHead, end_stream: bool) -> None:
        if self.manager is not None:
            self.manager.send_response_head(head, end_stream)

    def _to_sink_data(self, data: bytes, end_stream: bool) -> None:
        if self.manager is not None:
            self.manager.send_response_data(data, end_stream)

    def _call_headers(self, index: int, head: ResponseHead, end_stream: bool) -> HeadersResult:
        return self.filters[index].encode_headers(head, end_stream)

    def _call_data(self, index: int, data: bytes, end_stream: bool) -> DataResult:
        return self.filters[index].encode_data(data, end_stream)
