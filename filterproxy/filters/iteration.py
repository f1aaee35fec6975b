"""One direction of the filter chain: headers and data through a list of hooks.

The rules, shared by the request (decode) and the response (encode) direction: a
filter that returns STOP_ITERATION from a headers hook holds the headers until it
continues; data reaches only filters that have seen the headers; STOP_ITERATION_AND_BUFFER
keeps data in the chain until the filter continues, within a byte limit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from filterproxy.filters.api import FilterStatus, RequestHead, ResponseHead

__all__ = ["FilterIteration"]

_CONTINUE = FilterStatus.CONTINUE
_BUFFER = FilterStatus.STOP_ITERATION_AND_BUFFER

HeadT = TypeVar("HeadT", RequestHead, ResponseHead)


class FilterIteration(Generic[HeadT]):
    """One direction of the chain: headers and data through a list of hooks to a sink."""

    __slots__ = (
        "buffer_limit",
        "buffered_bytes",
        "buffered_end",
        "buffers",
        "data_hooks",
        "data_passthrough",
        "head",
        "head_end_stream",
        "header_hooks",
        "headers_held_at",
        "headers_passed",
        "on_buffer_overflow",
        "sink_data",
        "sink_headers",
        "stopped",
    )

    def __init__(
        self,
        # A data hook of None stands for a filter that passes all data on untouched.
        header_hooks: Sequence[Callable[[HeadT, bool], FilterStatus]],
        data_hooks: Sequence[Callable[[bytes, bool], FilterStatus] | None],
        sink_headers: Callable[[HeadT, bool], None],
        sink_data: Callable[[bytes, bool], None],
        buffer_limit: int,
        on_buffer_overflow: Callable[[], None],
        data_passthrough: bool,
    ) -> None:
        self.header_hooks: Sequence[Callable[[HeadT, bool], FilterStatus]] = header_hooks
        self.data_hooks = data_hooks
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

    def headers(self, head: HeadT, end_stream: bool) -> None:
        self.head = head
        self.head_end_stream = end_stream
        self._headers_from(0)

    def _headers_from(self, index: int) -> bool:
        assert self.head is not None
        hooks = self.header_hooks
        while index < len(hooks):
            status = hooks[index](self.head, self.head_end_stream)
            if self.stopped:
                return False
            if status is not _CONTINUE:
                self.headers_held_at = index
                return False
            index += 1
        self.headers_held_at = None
        self.headers_passed = True
        self.sink_headers(self.head, self.head_end_stream)
        return True

    def data(self, data: bytes, end_stream: bool) -> None:
        if self.data_passthrough and self.headers_passed:
            self.sink_data(data, end_stream)
        else:
            self._data_from(0, data, end_stream)

    def _data_from(self, index: int, data: bytes, end_stream: bool) -> None:
        hooks = self.data_hooks
        while index < len(hooks):
            hook = hooks[index]
            if hook is None:  # the filter does not look at data: it passes on
                status = _CONTINUE
            else:
                status = hook(data, end_stream)
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
        self.sink_data(data, end_stream)

    def _buffer(self, index: int, data: bytes, end_stream: bool) -> None:
        self.buffers.setdefault(index, []).append(data)
        self.buffered_end[index] = end_stream
        self.buffered_bytes += len(data)
        if self.buffered_bytes > self.buffer_limit:
            self.on_buffer_overflow()

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
