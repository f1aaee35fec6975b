"""The usage filter reads token counts from compressed answers too: it asks only for the
codings it can read (gzip, deflate), inflates on the side, and passes the bytes as they
came — except a stream it removes the usage chunk from, which goes on inflated."""

from __future__ import annotations

import gzip
import json
import zlib

from filterproxy.filters.usage import UsageFilter
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


def test_a_compressed_stream_the_usage_chunk_is_removed_from_goes_on_inflated() -> None:
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
        {"content-type": "text/event-stream", "content-encoding": "gzip"},
        [body[:20], body[20:]],
    )
    assert response.headers is not None and "content-encoding" not in response.headers
    assert response.body == events.replace(
        b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":1}}\n\n', b""
    )
    assert h.stream_info.prompt_tokens == 4
