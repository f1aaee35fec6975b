"""The filter contract for rewriting streams: data hooks hand back what goes on, on both
sides; what the gateway writes itself passes the encoders; a swallowed end of stream is
reported, never a hang; the chain's buffer counts what it holds."""

from __future__ import annotations

from typing import Any

import pytest

from filterproxy.filters.api import (
    DataResult,
    FilterStatus,
    RequestHead,
    ResponseHead,
    StreamFilter,
)
from filterproxy.http.headers import Headers

from .fakes import Recorder, build_manager, request_head

CONTINUE = FilterStatus.CONTINUE
STOP = FilterStatus.STOP_ITERATION
BUFFER = FilterStatus.STOP_ITERATION_AND_BUFFER
SSE = Headers([("content-type", "text/event-stream")])


build = build_manager


class Upper(StreamFilter):
    """Upper-cases data on both sides by returning the replacement."""

    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        return data.upper()

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        return data.upper()


class Splitter(StreamFilter):
    """Passes each response piece on as one piece per byte."""

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        return [bytes([b]) for b in data]


class Dropper(StreamFilter):
    """Passes on nothing of the response but its end."""

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        return b""


def test_replacement_bytes_go_on_in_place_of_the_data_on_both_sides() -> None:
    log: list[str] = []
    manager, downstream, router = build([Recorder("a", log), Upper(), Recorder("b", log)])
    manager.decode_headers(request_head(), False)
    manager.decode_data(b"abc", True)
    assert router.events[-1] == ("data", b"ABC", True)
    assert "b.decode_data(b'ABC',True)" in log  # a later filter sees the replacement
    manager.encode_headers(200, SSE, False)
    manager.encode_data(b"xyz", False)
    manager.encode_data(b"", True)
    assert "a.encode_data(b'XYZ',False)" in log
    assert downstream.body() == b"XYZ"
    assert manager.done


def test_a_list_of_pieces_goes_on_piece_by_piece_with_the_end_on_the_last() -> None:
    log: list[str] = []
    manager, downstream, _ = build([Recorder("a", log), Splitter()])
    manager.decode_headers(request_head(), True)
    manager.encode_headers(200, SSE, False)
    manager.encode_data(b"hi", True)
    assert [e for e in log if "encode_data" in e] == [
        "a.encode_data(b'h',False)",
        "a.encode_data(b'i',True)",
    ]
    assert downstream.events[-1] == ("data", b"i", True)


def test_an_empty_replacement_passes_nothing_but_the_end() -> None:
    manager, downstream, _ = build([Dropper()])
    manager.decode_headers(request_head(), True)
    manager.encode_headers(200, SSE, False)
    manager.encode_data(b"secret", False)
    assert [e for e in downstream.events if e[0] == "data"] == []
    manager.encode_data(b"more", True)
    assert downstream.events[-1] == ("data", b"", True)
    assert manager.done


class BufferThenReplace(StreamFilter):
    """Buffers the response until its end, then passes on a summary of it."""

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        if not end_stream:
            return BUFFER
        return b"%d bytes" % (len(self.callbacks_buffered()) + len(data))

    def callbacks_buffered(self) -> bytes:
        manager = self.callbacks._manager  # type: ignore[attr-defined]
        assert manager.encoder is not None
        return b"".join(manager.encoder.buffers.get(0, ()))


def test_a_replacement_replaces_what_the_chain_buffered_for_the_filter_too() -> None:
    manager, downstream, _ = build([BufferThenReplace()])
    manager.decode_headers(request_head(), True)
    manager.encode_headers(200, SSE, False)
    manager.encode_data(b"12345", False)
    manager.encode_data(b"678", True)
    assert downstream.body() == b"8 bytes"
    assert manager.encoder is None or manager.encoder.buffered_bytes == 0


class BufferUntil(StreamFilter):
    """Buffers the request body until a piece equal to the marker, then continues."""

    def __init__(self, marker: bytes) -> None:
        super().__init__()
        self.marker = marker

    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        return CONTINUE if data == self.marker or end_stream else BUFFER


def test_the_buffer_counts_exactly_what_it_holds_so_its_limit_holds() -> None:
    # The first filter buffers 6 bytes and continues with a 6-byte piece; the second then
    # buffers 12. Counting the continuing piece as released (it never was buffered)
    # would leave the count at -6 and let the 12 bytes through a limit of 10.
    manager, downstream, router = build([BufferUntil(b"GO-GO!"), BufferUntil(b"x")], limit=10)
    manager.decode_headers(request_head(), False)
    manager.decode_data(b"abcdef", False)
    assert manager.decoder.buffered_bytes == 6
    manager.decode_data(b"GO-GO!", False)
    assert manager.decoder.buffered_bytes == 12
    assert downstream.events and downstream.events[0][1] == 413
    assert router.events == [("headers", "/v1/chat/completions", False)]


class ReplyFilter(StreamFilter):
    """Answers every request itself."""

    def decode_headers(self, head: RequestHead, end_stream: bool) -> FilterStatus:
        self.callbacks.send_local_reply(403, "not you", code="forbidden")
        return STOP


class Reshape(StreamFilter):
    """Rewrites every response the way a translating filter would: its own error shape."""

    seen: list[tuple[int, bytes]]

    def __init__(self) -> None:
        super().__init__()
        self.seen = []
        self.status = 0

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> FilterStatus:
        self.status = head.status
        head.headers.set("x-reshaped", "yes")
        head.headers.remove("content-length")
        return CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        self.seen.append((self.status, data))
        return b"[" + data + b"]" if data else data


def test_a_local_reply_passes_the_encoders_before_the_filter_that_made_it() -> None:
    before, after = Reshape(), Reshape()
    manager, downstream, router = build([before, ReplyFilter(), after])
    manager.decode_headers(request_head(), True)
    status, headers = downstream.events[0][1], downstream.events[0][2]
    assert (status, headers.get("x-reshaped")) == (403, "yes")
    assert downstream.body().startswith(b'[{"error": {"message": "not you"')
    assert before.seen and not after.seen  # the filter after it never ran
    assert router.cancelled and manager.stream_info.outcome == "local_reply"


def test_the_gateways_own_errors_pass_every_encoder() -> None:
    first, second = Reshape(), Reshape()
    manager, downstream, _ = build([first, second])
    manager.decode_headers(request_head(), True)
    manager.fail_response(502, "upstream cluster 'up' refused", "upstream_connect_failure")
    assert downstream.events[0][1] == 502
    assert downstream.body().startswith(b"[[{")  # both reshaped it
    assert manager.stream_info.outcome == "upstream_error"


def test_a_mid_stream_error_frame_and_a_heartbeat_pass_the_encoders() -> None:
    reshape = Reshape()
    manager, downstream, _ = build([reshape])
    manager.decode_headers(request_head(), True)
    manager.encode_headers(200, SSE, False)
    manager.encode_data(b"data: 1\n\n", False)
    manager.send_heartbeat()
    manager.fail_response(504, "upstream went quiet", "upstream_idle_timeout", "timeout")
    data = [d for status, d in reshape.seen]
    assert data[1] == b": keep-alive\n"
    assert b"event: error\ndata: {" in data[2]
    assert downstream.body().endswith(b"]")  # the frame the client got is the reshaped one
    assert downstream.events[-1] == ("abort",)


class ReplyOnResponse(StreamFilter):
    """Refuses an upstream response it does not like, from its encode hook."""

    def encode_headers(self, head: ResponseHead, end_stream: bool) -> FilterStatus:
        if head.status == 500:
            self.callbacks.send_local_reply(502, "the upstream failed", code="bad_upstream")
            return STOP
        return CONTINUE


def test_a_reply_from_the_response_side_passes_only_the_encoders_after_it() -> None:
    inner, outer = Reshape(), Reshape()  # outer is nearer the client
    manager, downstream, _ = build([outer, ReplyOnResponse(), inner])
    manager.decode_headers(request_head(), True)
    manager.encode_headers(500, Headers([("content-type", "application/json")]), False)
    manager.encode_data(b"{}", True)
    assert downstream.events[0][1] == 502
    assert [s for s, _ in outer.seen] == [502]
    assert [s for s, _ in inner.seen] == []  # it had the upstream's head, not the reply
    assert downstream.body().startswith(b'[{"error"')


class Swallower(StreamFilter):
    """Takes everything, the end of the stream included, and never passes it on."""

    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        return STOP

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        return STOP


def test_a_response_filter_that_swallows_the_end_is_reported_not_a_hang(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager, downstream, _ = build([Swallower()])
    manager.labels = ("swallower (filters[0])",)
    manager.decode_headers(request_head(), True)
    manager.encode_headers(200, SSE, False)
    manager.encode_data(b"data: 1\n\n", False)
    manager.encode_data(b"data: [DONE]\n\n", True)
    assert manager.done and manager.stream_info.outcome == "internal_error"
    assert b"swallower (filters[0]) kept the end of the response" in downstream.body()
    assert downstream.events[-1] == ("abort",)


class RequestSwallower(StreamFilter):
    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        return STOP


def test_a_request_filter_that_swallows_the_end_is_answered_500() -> None:
    manager, downstream, router = build([RequestSwallower()])
    manager.decode_headers(request_head(), False)
    manager.decode_data(b"{}", True)
    assert downstream.events[0][1] == 500
    assert b"kept the end of the request body" in downstream.body()
    assert router.cancelled


class InjectsTheEnd(StreamFilter):
    """Returns STOP_ITERATION but passes everything on itself (the older way)."""

    def encode_data(self, data: bytes, end_stream: bool) -> DataResult:
        self.callbacks.inject_encoded_data(data[::-1], end_stream)
        return STOP


def test_a_filter_that_passes_the_end_on_itself_has_not_swallowed_it() -> None:
    manager, downstream, _ = build([InjectsTheEnd()])
    manager.decode_headers(request_head(), True)
    manager.encode_headers(200, SSE, False)
    manager.encode_data(b"abc", True)
    assert downstream.body() == b"cba" and manager.stream_info.outcome == "complete"


class Holder(StreamFilter):
    """Holds the request body, then passes it on later from outside its hook."""

    held: Any = None

    def decode_data(self, data: bytes, end_stream: bool) -> DataResult:
        Holder.held = (self, data, end_stream)
        return STOP if not end_stream else BUFFER


def test_inject_decoded_data_sends_body_on_from_outside_a_hook() -> None:
    manager, _, router = build([Holder()])
    manager.decode_headers(request_head(), False)
    manager.decode_data(b"part", False)
    f, data, _ = Holder.held
    f.callbacks.inject_decoded_data(b"late " + data, False)
    assert router.events[-1] == ("data", b"late part", False)
