"""One direction of the filter chain: headers and data through the filters' hooks.

The rules, shared by the request (decode) and the response (encode) direction: a
filter that returns STOP_ITERATION from a headers hook holds the headers until it
continues; data reaches only filters that have seen the headers; STOP_ITERATION_AND_BUFFER
keeps data in the chain until the filter continues, within a byte limit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from filterproxy.filters.api import FilterStatus, RequestHead, ResponseHead

if TYPE_CHECKING:
    from filterproxy.filters.api import IStreamFilter
    from filterproxy.filters.manager import FilterManager

__all__ = ["DecodeIteration", "EncodeIteration", "FilterIteration"]

_CONTINUE = FilterStatus.CONTINUE
_BUFFER = FilterStatus.STOP_ITERATION_AND_BUFFER

HeadT = TypeVar("HeadT", RequestHead, ResponseHead)


def _ignore(head_or_data: object, end_stream: bool) -> None:
    pass


def _nothing() -> None:
    pass


class FilterIteration(Generic[HeadT]):
    """One direction of the chain: headers and data through the filters to a sink.

    The filters' hooks are called on the filters themselves (`DecodeIteration`,
    `EncodeIteration`), not through bound methods made for each request.
    """

    __slots__ = (
        "buffer_limit",
        "buffered_bytes",
        "buffered_end",
        "buffers",
        "data_passthrough",
        "filters",
        "head",
        "head_end_stream",
        "headers_held_at",
        "headers_passed",
        "on_buffer_overflow",
        "sink_data",
        "sink_headers",
        "stopped",
        "takes_data",
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
    ) -> None:
        self.filters = filters
        self.takes_data = takes_data
        self.sink_headers: Callable[[HeadT, bool], None] = sink_headers
        self.sink_data = sink_data
        self.buffer_limit = buffer_limit
        self.on_buffer_overflow = on_buffer_overflow
        #: No hook does anything with data: skip the loop once headers have passed.
        self.data_passthrough = data_passthrough
        self.head: HeadT | None = None
        self.head_end_stream = False
        #: Index of the filter holding the headers, or None.
        self.headers_held_at: int | None = None
        self.headers_passed = False
        #: Data kept for filters that returned STOP_ITERATION_AND_BUFFER, by filter index.
        self.buffers: dict[int, list[bytes]] = {}
        self.buffered_end: dict[int, bool] = {}
        self.buffered_bytes = 0
        self.stopped = False

    def _call_headers(self, index: int, head: HeadT, end_stream: bool) -> FilterStatus:
        raise NotImplementedError

    def _to_sink_headers(self, head: HeadT, end_stream: bool) -> None:
        self.sink_headers(head, end_stream)

    def _to_sink_data(self, data: bytes, end_stream: bool) -> None:
        self.sink_data(data, end_stream)

    def _call_data(self, index: int, data: bytes, end_stream: bool) -> FilterStatus:
        raise NotImplementedError

    def headers(self, head: HeadT, end_stream: bool) -> None:
        self.head = head
        self.head_end_stream = end_stream
        self._headers_from(0)

    def _headers_from(self, index: int) -> bool:
        assert self.head is not None
        count = len(self.filters)
        while index < count:
            status = self._call_headers(index, self.head, self.head_end_stream)
            if self.stopped:
                return False
            if status is not _CONTINUE:
                self.headers_held_at = index
                return False
            index += 1
        self.headers_held_at = None
        self.headers_passed = True
        self._to_sink_headers(self.head, self.head_end_stream)
        return True

    def data(self, data: bytes, end_stream: bool) -> None:
        if self.data_passthrough and self.headers_passed:
            self._to_sink_data(data, end_stream)
        else:
            self._data_from(0, data, end_stream)

    def _data_from(self, index: int, data: bytes, end_stream: bool) -> None:
        takes_data = self.takes_data
        count = len(takes_data)
        while index < count:
            if not takes_data[index]:  # the filter does not look at data: it passes on
                status = _CONTINUE
            else:
                status = self._call_data(index, data, end_stream)
                if self.stopped:
                    return
            if status is _CONTINUE:
                held = self.buffers.pop(index, None) if self.buffers else None
                if held:
                    self.buffered_end.pop(index, None)
                    held.append(data)
                    data = b"".join(held)
                    self.buffered_bytes -= len(data)
                if self.headers_held_at is not None and self.headers_held_at == index:
                    self._headers_from(index + 1)
                    if self.stopped:
                        return
                index += 1
                continue
            if status is _BUFFER:
                self._buffer(index, data, end_stream)
            return
        self._to_sink_data(data, end_stream)

    def _buffer(self, index: int, data: bytes, end_stream: bool) -> None:
        self.buffers.setdefault(index, []).append(data)
        self.buffered_end[index] = end_stream
        self.buffered_bytes += len(data)
        if self.buffered_bytes > self.buffer_limit:
            self.on_buffer_overflow()

    def release(self) -> None:
        """The request is over: stop, and drop the filters and sinks (they refer back to
        the request's other objects; see `FilterManager.release`)."""
        self.stopped = True
        self.filters = []
        self.takes_data = ()
        self.sink_headers = _ignore
        self.sink_data = _ignore
        self.on_buffer_overflow = _nothing
        self.buffers = {}
        self.buffered_end = {}
        self.head = None

    def resume(self, index: int) -> None:
        """Filter *index* continues: release what it held."""
        if self.stopped:
            return
        if self.headers_held_at == index:
            self._headers_from(index + 1)
            if self.stopped:
                return
        held = self.buffers.pop(index, None)
        if held is not None:
            end_stream = self.buffered_end.pop(index)
            data = b"".join(held)
            self.buffered_bytes -= len(data)
            self._data_from(index + 1, data, end_stream)


class DecodeIteration(FilterIteration[RequestHead]):
    """The request direction: ``decode_headers`` / ``decode_data``, in config order."""

    __slots__ = ()

    def _call_headers(self, index: int, head: RequestHead, end_stream: bool) -> FilterStatus:
        return self.filters[index].decode_headers(head, end_stream)

    def _call_data(self, index: int, data: bytes, end_stream: bool) -> FilterStatus:
        return self.filters[index].decode_data(data, end_stream)


class EncodeIteration(FilterIteration[ResponseHead]):
    """The response direction: ``encode_headers`` / ``encode_data``, in reverse order,
    to the request's `FilterManager`, which sends to the client. (Called as methods of
    the manager, not through callables: once per chunk, a direct call when compiled.)"""

    __slots__ = ("manager",)

    def __init__(
        self,
        filters: list[IStreamFilter],
        takes_data: tuple[bool, ...],
        manager: FilterManager,
        buffer_limit: int,
        on_buffer_overflow: Callable[[], None],
        data_passthrough: bool,
    ) -> None:
        super().__init__(
            filters,
            takes_data,
            _ignore,
            _ignore,
            buffer_limit,
            on_buffer_overflow,
            data_passthrough,
        )
        self.manager: FilterManager | None = manager

    def _to_sink_headers(self, head: ResponseHead, end_stream: bool) -> None:
        if self.manager is not None:
            self.manager.send_response_head(head, end_stream)

    def _to_sink_data(self, data: bytes, end_stream: bool) -> None:
        if self.manager is not None:
            self.manager.send_response_data(data, end_stream)

    def release(self) -> None:
        super().release()
        self.manager = None

    def _call_headers(self, index: int, head: ResponseHead, end_stream: bool) -> FilterStatus:
        return self.filters[index].encode_headers(head, end_stream)

    def _call_data(self, index: int, data: bytes, end_stream: bool) -> FilterStatus:
        return self.filters[index].encode_data(data, end_stream)
