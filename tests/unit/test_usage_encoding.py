"""The usage filter reads token counts from compressed answers too: it asks only for the
codings it can read (gzip, deflate), inflates on the side within bounds, and passes the
bytes as they came — except a stream it removes the usage chunk from, which goes on
compressed again. What breaks a bound fails the answer: the error event in a stream it
rewrites, cut off where it only reads."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from typing import Any

from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.usage.filter import UsageFilter
from filterproxy.http.sse import SSEDecoder
from filterproxy.testing import FilterHarness

JSON_ANSWER = json.dumps(
    {
        "choices": [{"message": {"content": "hi"}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
    }
).encode()


def test_codings_the_scanner_cannot_read_are_not_asked_for() -> None:
    h = FilterHarness(UsageFilter)
    sent = h.request(b"{}", headers={"accept-encoding": "br, gzip;q=0.9, zstd, deflate"})
    assert sent.head is not None
    assert sent.head.headers.get("accept-encoding") == "gzip;q=0.9, deflate"
    only_br = FilterHarness(UsageFilter).request(b"{}", headers={"accept-encoding": "br"})
    assert only_br.head is not None and only_br.head.headers.get("accept-encoding") == "identity"


def test_a_gzip_answer_passes_as_it_came_and_its_usage_is_read() -> None:
    h = FilterHarness(UsageFilter)
    h.request(b"{}", headers={"accept-encoding": "gzip"})
    body = gzip.compress(JSON_ANSWER)
    response = h.respond(200, {"content-encoding": "gzip"}, [body[:10], body[10:]])
    assert response.body == body
    assert (h.stream_info.prompt_tokens, h.stream_info.completion_tokens) == (7, 3)


def test_a_deflate_answer_is_read_too() -> None:
    h = FilterHarness(UsageFilter)
    h.request(b"{}", headers={"accept-encoding": "deflate"})
    body = zlib.compress(JSON_ANSWER)
    assert h.respond(200, {"content-encoding": "deflate"}, [body]).body == body
    assert h.stream_info.completion_tokens == 3


def test_a_compressed_stream_the_usage_chunk_is_removed_from_goes_on_compressed_again() -> None:
    h = FilterHarness(UsageFilter, {"include_usage": True})
    sent = h.request(b'{"model": "m", "stream": true}', headers={"accept-encoding": "gzip"})
    assert sent.json()["stream_options"] == {"include_usage": True}
    events = (
        b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":1}}\n\n'
        b"data: [DONE]\n\n"
    )
    body = gzip.compress(events)
    response = h.respond(
        200,
        {"content-type": "text/event-stream", "content-encoding": "gzip", "content-length": "99"},
        [body[:20], body[20:]],
    )
    assert response.headers is not None and response.headers.get("content-encoding") == "gzip"
    assert "content-length" not in response.headers
    assert gzip.decompress(response.body) == events.replace(
        b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":1}}\n\n', b""
    )
    assert h.stream_info.prompt_tokens == 4


# -- bounds ----------------------------------------------------------------------------


def zeros_gzip(size: int, wbits: int = 31) -> bytes:
    """A gzip (or zlib) body of *size* zero bytes: about a thousandth of that."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = b"0" * (1 << 20)
    return b"".join([*(compressor.compress(block) for _ in range(size >> 20)), compressor.flush()])


def pieces(body: bytes, size: int = 16 * 1024) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def peak_while(run: Any) -> int:
    """The most memory Python allocated while *run* ran (tracemalloc), in bytes."""
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_gzip_bomb_it_only_reads_is_inflated_in_bounded_steps_and_cut_off() -> None:
    """64 MiB of zeros in 64 KB of gzip: the scanner inflates a bounded part of it, and
    the answer — passed as it came — is cut off there (nothing can be put into it)."""
    h = FilterHarness(UsageFilter)
    h.request(b"{}", headers={"accept-encoding": "gzip"})
    bomb = zeros_gzip(64 << 20)
    head = {"content-type": "application/json", "content-encoding": "gzip"}
    peak = peak_while(lambda: h.respond(200, head, pieces(bomb)))
    assert peak < 8 << 20, peak  # was the whole 64 MiB, more than once
    assert h.client.aborted and not h.client.ended
    assert bomb.startswith(h.client.body) and len(h.client.body) < len(bomb)
    assert h.upstream.cancelled
    assert h.stream_info.outcome == "upstream_error"
    assert "inflates to more than 200 times its size" in (h.stream_info.error or "")


def test_a_bomb_in_a_stream_it_rewrites_ends_in_the_error_event() -> None:
    h = FilterHarness(UsageFilter, {"include_usage": True})
    h.request(b'{"model": "m", "stream": true}', headers={"accept-encoding": "gzip"})
    event = b'data: {"choices":[{"delta":{"content":"aaaa"}}]}\n\n'
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = event * ((1 << 20) // len(event))
    bomb = b"".join([*(compressor.compress(block) for _ in range(64)), compressor.flush()])
    head = {"content-type": "text/event-stream", "content-encoding": "gzip"}
    peak = peak_while(lambda: h.respond(200, head, pieces(bomb)))
    assert peak < 8 << 20, peak
    # What the client got is gzip again — never the inflated bytes — and short.
    assert len(h.client.body) < len(bomb)
    text = zlib.decompressobj(31).decompress(h.client.body)
    assert text.endswith(b"\n\n") and b"event: error\ndata: " in text
    (error,) = [e for e in SSEDecoder().feed(text) if e.event == "error"]
    assert "inflates to more than 200 times" in json.loads(error.data or "")["error"]["message"]
    assert h.client.aborted and h.upstream.cancelled


def test_a_corrupt_gzip_answer_is_cut_off_not_a_500() -> None:
    h = FilterHarness(UsageFilter)
    h.request(b"{}")
    body = gzip.compress(JSON_ANSWER)
    h.respond(200, {"content-encoding": "gzip"}, [body[:10], b"not gzip at all", body[10:]])
    assert h.client.status == 200 and h.client.aborted
    assert "not valid gzip" in (h.stream_info.error or "")


def test_a_coding_it_cannot_read_passes_as_it_came() -> None:
    h = FilterHarness(UsageFilter, {"include_usage": True})
    h.request(b'{"model": "m", "stream": true}')
    body = b"\x0b\x80data: br bytes, not events"
    head = {"content-type": "text/event-stream", "content-encoding": "br"}
    assert h.respond(200, head, [body]).body == body and h.client.ended


def test_an_event_past_max_event_bytes_ends_the_stream_with_the_error_event() -> None:
    config = parse_config(
        "clusters: {upstream: {url: 'http://upstream.test'}}\nmax_event_bytes: 4096"
    )
    h = FilterHarness(UsageFilter, {"include_usage": True}, config=config)
    h.request(b'{"model": "m", "stream": true}')
    first = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
    h.respond(
        200, {"content-type": "text/event-stream"}, [first, b"data: " + b"x" * 3000], end=False
    )
    assert h.client.body == first and not h.client.aborted
    h.more([b"y" * 3000], end=False)
    events = SSEDecoder().feed(h.client.body)
    assert events[-1].event == "error"
    assert "max_event_bytes" in json.loads(events[-1].data or "")["error"]["message"]
    assert h.client.aborted and not h.client.ended and h.upstream.cancelled
    assert h.stream_info.outcome == "upstream_error"


def test_a_messages_client_gets_the_error_event_in_its_shape() -> None:
    config = parse_config(
        "clusters: {upstream: {url: 'http://upstream.test'}}\nmax_event_bytes: 1024"
    )
    h = FilterHarness(UsageFilter, {"include_usage": True}, config=config)
    h.request(b'{"model": "m", "stream": true}', path="/v1/chat/completions")
    h.stream_info.api = "messages"  # as the translate filter marks a translated request
    h.respond(200, {"content-type": "text/event-stream"}, [b"data: " + b"x" * 2000], end=False)
    (event,) = SSEDecoder().feed(h.client.body)
    document = json.loads(event.data or "")
    assert event.event == "error" and document["type"] == "error"
    assert "max_event_bytes" in document["error"]["message"]
