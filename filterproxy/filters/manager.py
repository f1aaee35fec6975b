"""The filter manager: runs one request through the chain and the router.

Decoders run in config order and end at the router; encoders run in reverse and end at
the client. Both directions follow the same rules (`_Iteration`): a filter that returns
STOP_ITERATION from a headers hook holds the headers until it continues; data reaches
only filters that have seen the headers; STOP_ITERATION_AND_BUFFER keeps data in the
chain until the filter continues, within a byte limit.

The response direction has a fast path: when no filter overrides ``encode_data``, each
upstream chunk goes straight to the client with no per-chunk work here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

from twisted.logger import Logger
from zope.interface import implementer

from filterproxy.filters.api import (
    FilterStatus,
    IFilterCallbacks,
    IStreamFilter,
    RequestHead,
    ResponseHead,
    StreamFilter,
    StreamInfo,
)
from filterproxy.http.errors import error_body
from filterproxy.http.headers import Headers, forward_response_headers

if TYPE_CHECKING:
    from filterproxy.downstream.stream import IDownstream
    from filterproxy.upstream.router import Router

__all__ = ["FilterManager"]

log = Logger()

_CONTINUE = FilterStatus.CONTINUE
_BUFFER = FilterStatus.STOP_ITERATION_AND_BUFFER

HeadT = TypeVar("HeadT", RequestHead, ResponseHead)


class _Iteration(Generic[HeadT]):
    """One direction of the chain: headers and data through a list of hooks to a sink."""

    def __init__(
        self,
        header_hooks: Sequence[Callable[[HeadT, bool], FilterStatus]],
        data_hooks: Sequence[Callable[[bytes, bool], FilterStatus]],
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
            status = hooks[index](data, end_stream)
            if self.stopped:
                return
            if status is _CONTINUE:
                held = self.buffers.pop(index, None)
                if held:
                    self.buffered_end.pop(index, None)
                    held.append(data)
                    data = b"".join(held)
                    self.buffered_bytes -= len(data)
                if self.headers_held_at == index:
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


@implementer(IFilterCallbacks)
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

    def send_local_reply(
        self, status: int, message: str, code: str | None = None, error_type: str | None = None
    ) -> None:
        self._manager.send_local_reply(status, message, code=code, error_type=error_type)

    def buffered_request_body(self) -> bytes:
        return b"".join(self._manager.decoder.buffers.get(self._decode_index, ()))

    def replace_request_body(self, body: bytes) -> None:
        self._manager.replaced_body = body

    def inject_encoded_data(self, data: bytes, end_stream: bool) -> None:
        encoder = self._manager.encoder
        if encoder is None or self._encode_index is None:
            return
        encoder._data_from(self._encode_index + 1, data, end_stream)


def _overrides(cls: type, name: str) -> bool:
    return getattr(cls, name, None) is not getattr(StreamFilter, name)


class FilterManager:
    """Drives one request: decoders → router → upstream → encoders → client."""

    def __init__(
        self,
        downstream: IDownstream,
        filters: Sequence[IStreamFilter],
        router_factory: Callable[[FilterManager], Router],
        buffer_limit: int,
    ) -> None:
        self.downstream = downstream
        self.filters = filters
        self.stream_info = StreamInfo()
        self.replaced_body: bytes | None = None
        self.response_started = False
        self.done = False
        self.router = router_factory(self)

        encoders = [
            (i, f)
            for i, f in enumerate(filters)
            if _overrides(type(f), "encode_headers") or _overrides(type(f), "encode_data")
        ]
        encoders.reverse()
        encode_index = {i: pos for pos, (i, _) in enumerate(encoders)}
        for i, f in enumerate(filters):
            f.callbacks = _Callbacks(self, i, encode_index.get(i))

        self.decoder: _Iteration[RequestHead] = _Iteration(
            [f.decode_headers for f in filters],
            [f.decode_data for f in filters],
            self.router.on_request_headers,
            self.router.on_request_data,
            buffer_limit,
            self._request_too_large,
            data_passthrough=not any(_overrides(type(f), "decode_data") for f in filters),
        )
        self.encoder: _Iteration[ResponseHead] | None = None
        if encoders:
            self.encoder = _Iteration(
                [f.encode_headers for _, f in encoders],
                [f.encode_data for _, f in encoders],
                self._send_head,
                self._send_data,
                buffer_limit,
                self._response_too_large,
                data_passthrough=not any(_overrides(type(f), "encode_data") for _, f in encoders),
            )
        self.buffer_limit = buffer_limit

    # -- request path ------------------------------------------------------------------

    def decode_headers(self, head: RequestHead, end_stream: bool) -> None:
        """The client's request head arrived."""
        self.stream_info.request_id = head.headers.get("x-request-id") or uuid.uuid4().hex
        try:
            self.decoder.headers(head, end_stream)
        except Exception:
            self._internal_error()

    def decode_data(self, data: bytes, end_stream: bool) -> None:
        """A piece of the client's request body arrived."""
        if self.done:
            return
        try:
            self.decoder.data(data, end_stream)
        except Exception:
            self._internal_error()

    def _internal_error(self) -> None:
        log.failure(
            "request {request_id} failed in the gateway", request_id=self.stream_info.request_id
        )
        self.fail_response(500, "the gateway failed to handle this request", "internal_error")

    def _request_too_large(self) -> None:
        self.send_local_reply(
            413,
            f"request body is larger than the gateway's limit of {self.buffer_limit} bytes; "
            "send a smaller body or raise max_request_bytes",
            code="request_too_large",
        )

    # -- response path -----------------------------------------------------------------

    def encode_headers(self, status: int, headers: Headers, end_stream: bool) -> None:
        """The upstream's response head (headers as received; hygiene applied here)."""
        head = ResponseHead(status, forward_response_headers(headers))
        try:
            if self.encoder is None:
                self._send_head(head, end_stream)
            else:
                self.encoder.headers(head, end_stream)
        except Exception:
            self._internal_error()

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        """A piece of the upstream's response body, passed on as it is."""
        try:
            if self.encoder is None:
                self._send_data(data, end_stream)
            else:
                self.encoder.data(data, end_stream)
        except Exception:
            self._internal_error()

    def _send_head(self, head: ResponseHead, end_stream: bool) -> None:
        self.response_started = True
        self.downstream.send_head(head.status, head.headers, end_stream)
        if end_stream:
            self._finish()

    def _send_data(self, data: bytes, end_stream: bool) -> None:
        self.downstream.send_data(data, end_stream)
        if end_stream:
            self._finish()

    def _response_too_large(self) -> None:
        log.error("a response filter buffered more than {limit} bytes", limit=self.buffer_limit)
        self.fail_response(
            502, "the response was larger than a filter may buffer", "upstream_error"
        )

    # -- endings -----------------------------------------------------------------------

    def send_local_reply(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        error_type: str | None = None,
        extra_headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Answer with an OpenAI-shaped JSON error; stop both directions and the upstream."""
        if self.done:
            return
        self.decoder.stopped = True
        if self.encoder is not None:
            self.encoder.stopped = True
        self.router.cancel()
        if self.response_started:
            self.downstream.abort()
            self._finish()
            return
        body = error_body(status, message, code=code, type=error_type)
        headers = Headers(
            [("content-type", "application/json"), ("content-length", str(len(body)))]
        )
        for name, value in extra_headers:
            headers.add(name, value)
        headers.add("x-request-id", self.stream_info.request_id)
        self.response_started = True
        self.downstream.send_head(status, headers, False)
        self.downstream.send_data(body, True)
        self._finish()

    def fail_response(self, status: int, message: str, code: str) -> None:
        """The upstream exchange failed: a JSON error if nothing was sent yet, else the
        client sees the stream end abnormally (never a clean end)."""
        if self.done:
            return
        if not self.response_started:
            self.send_local_reply(status, message, code=code)
            return
        log.warn(
            "upstream failed mid-response for request {request_id}: {message}",
            request_id=self.stream_info.request_id,
            message=message,
        )
        self.router.cancel()
        self.downstream.abort()
        self._finish()

    def client_gone(self) -> None:
        """The client hung up: stop the upstream at once."""
        if self.done:
            return
        self.router.cancel()
        self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.decoder.stopped = True
        if self.encoder is not None:
            self.encoder.stopped = True
        for f in self.filters:
            try:
                f.on_destroy()
            except Exception:
                log.failure("filter {filter!r} failed in on_destroy", filter=f)
