"""The usage filter in the real chain (`FilterHarness`): the token counts of a whole
answer and of a stream (OpenAI's and Anthropic's), however the upstream cuts its
pieces; with ``include_usage``, a streaming completion asks for usage and the extra
usage-only chunk is taken out for a client that did not ask for it, kept for one that
did; a gzip answer read on the side; and, last in the chain as the default config puts
it, after the translate filter."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.route.filter import RouteFilter
from filterproxy.extensions.translate.filter import TranslateFilter
from filterproxy.extensions.usage.filter import UsageFilter
from filterproxy.testing import FilterHarness
from tests.support.answers import chat_completion, messages_answer, messages_stream
from tests.support.chat_messages import chat_chunk, check_chat_stream, events_of, sse

JSON = {"content-type": "application/json"}
SSE = {"content-type": "text/event-stream"}
STREAMING = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
#: A chat stream as the client sees it, and the usage-only chunk include_usage adds.
TEXT = sse(
    [chat_chunk({"role": "assistant", "content": ""}), chat_chunk({"content": "hi"})], done=False
)
FINISH = sse([chat_chunk({}, "stop")], done=False)
USAGE_CHUNK = sse(
    [chat_chunk(None, usage={"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17})],
    done=False,
)
DONE = b"data: [DONE]\n\n"


def counts(h: FilterHarness) -> tuple[int | None, int | None]:
    return h.stream_info.prompt_tokens, h.stream_info.completion_tokens


def every_cut(data: bytes) -> list[list[bytes]]:
    """*data* in two pieces, cut at every byte."""
    return [[data[:i], data[i:]] for i in range(1, len(data))]


# -- counting ------------------------------------------------------------------------------


def test_a_whole_answers_usage_is_read_wherever_it_is_cut() -> None:
    answer = chat_completion("hello", prompt_tokens=31)
    for pieces in every_cut(answer):
        h = FilterHarness(UsageFilter)
        h.request(b'{"model": "m"}')
        response = h.respond(200, JSON, pieces)
        assert response.body == answer, pieces  # passed on unchanged
        assert counts(h) == (31, 3), pieces


def test_a_messages_answers_usage_is_read_with_its_cached_input() -> None:
    h = FilterHarness(UsageFilter)
    h.request(b'{"model": "m"}', path="/v1/messages")
    document = json.loads(messages_answer("hi", input_tokens=4, output_tokens=9))
    document["usage"].update(cache_read_input_tokens=100, cache_creation_input_tokens=20)
    body = json.dumps(document).encode()
    assert h.respond(200, JSON, body).body == body
    assert counts(h) == (124, 9)  # as OpenAI counts prompt_tokens: cached included


def test_a_messages_streams_usage_is_read_from_its_start_and_its_last_delta() -> None:
    h = FilterHarness(UsageFilter)
    h.request(json.dumps(STREAMING).encode(), path="/v1/messages")
    stream = messages_stream(["a", "b"], input_tokens=8, output_tokens=21)
    h.respond(200, SSE, [stream[:300]], end=False)
    assert counts(h) == (8, 1)  # message_start's
    assert h.more([stream[300:]]).body == stream
    assert counts(h) == (8, 21)


def test_an_answer_without_usage_counts_nothing() -> None:
    h = FilterHarness(UsageFilter)
    h.request(b'{"model": "m"}')
    h.respond(200, JSON, b'{"choices": [], "note": "usage is elsewhere", "usage": null}')
    assert counts(h) == (None, None)


def test_a_gzip_stream_is_read_on_the_side_and_passes_as_it_came() -> None:
    h = FilterHarness(UsageFilter)
    h.request(json.dumps(STREAMING).encode(), headers={"accept-encoding": "gzip"})
    body = gzip.compress(TEXT + FINISH + USAGE_CHUNK + DONE)
    response = h.respond(200, {**SSE, "content-encoding": "gzip"}, every_cut(body)[len(body) // 3])
    assert response.body == body
    assert response.headers is not None and response.headers.get("content-encoding") == "gzip"
    assert counts(h) == (12, 5)


# -- include_usage ------------------------------------------------------------------------


def injecting() -> FilterHarness:
    return FilterHarness(UsageFilter, {"include_usage": True})


def test_a_stream_that_did_not_ask_is_asked_for_usage_and_does_not_get_the_chunk() -> None:
    h = injecting()
    sent = h.request(json.dumps(STREAMING).encode())
    assert sent.json() == {**STREAMING, "stream_options": {"include_usage": True}}
    stream = TEXT + FINISH + USAGE_CHUNK + DONE
    response = h.respond(200, {**SSE, "content-length": str(len(stream))}, [stream])
    assert response.body == TEXT + FINISH + DONE
    assert response.headers is not None and "content-length" not in response.headers
    assert counts(h) == (12, 5)
    check_chat_stream(events_of(response.body), include_usage=False)


def test_the_usage_chunk_is_taken_out_wherever_the_pieces_are_cut() -> None:
    for pieces in every_cut(FINISH + USAGE_CHUNK + DONE):
        h = injecting()
        h.request(json.dumps(STREAMING).encode())
        response = h.respond(200, SSE, [TEXT, *pieces])
        assert response.body == TEXT + FINISH + DONE and response.ended, pieces
        assert counts(h) == (12, 5), pieces


def test_a_client_that_asked_for_usage_gets_the_chunk() -> None:
    h = injecting()
    body = json.dumps({**STREAMING, "stream_options": {"include_usage": True}}).encode()
    assert h.request(body).body == body  # not rewritten
    stream = TEXT + FINISH + USAGE_CHUNK + DONE
    assert h.respond(200, SSE, [stream]).body == stream
    assert counts(h) == (12, 5)


def test_a_stream_option_of_the_clients_own_is_kept_beside_include_usage() -> None:
    h = injecting()
    sent = h.request(
        json.dumps({**STREAMING, "stream_options": {"include_obfuscation": False}}).encode()
    )
    assert sent.json()["stream_options"] == {"include_obfuscation": False, "include_usage": True}


@pytest.mark.parametrize(
    ("path", "document"),
    [
        ("/v1/chat/completions", {"model": "m", "messages": []}),  # not a stream
        ("/v1/messages", {**STREAMING, "max_tokens": 5}),  # Anthropic reports usage anyway
        ("/v1/embeddings", {"model": "m", "input": "x", "stream": True}),
    ],
)
def test_only_streaming_completions_are_asked_for_usage(path: str, document: Any) -> None:
    h = injecting()
    body = json.dumps(document).encode()
    assert h.request(body, path=path).body == body


def test_a_compressed_stream_the_chunk_is_taken_from_stays_compressed() -> None:
    h = injecting()
    h.request(json.dumps(STREAMING).encode(), headers={"accept-encoding": "gzip"})
    body = gzip.compress(TEXT + FINISH + USAGE_CHUNK + DONE)
    response = h.respond(200, {**SSE, "content-encoding": "gzip"}, [body[:25], body[25:]])
    assert gzip.decompress(response.body) == TEXT + FINISH + DONE
    assert counts(h) == (12, 5)


# -- after the translate filter (the default chain's order) ------------------------------

CONFIG = """
clusters:
  chat-only: {url: "http://chat.test", apis: [chat]}
  claude: {url: "http://messages.test", apis: [messages]}
routes: [{models: ["claude-*"], cluster: claude}, {models: ["gpt-*"], cluster: chat-only}]
"""


def chain() -> FilterHarness:
    return FilterHarness(
        [RouteFilter, TranslateFilter, (UsageFilter, {"include_usage": True})],
        config=parse_config(CONFIG),
    )


def test_a_translated_chat_stream_counts_the_upstreams_usage_and_shows_none() -> None:
    h = chain()
    sent = h.request(json.dumps({**STREAMING, "model": "claude-haiku"}).encode())
    assert sent.head is not None and sent.head.path == "/v1/messages"
    assert "stream_options" not in sent.json()
    response = h.respond(200, SSE, [messages_stream(["hi"], input_tokens=6, output_tokens=2)])
    assert check_chat_stream(events_of(response.body), include_usage=False)["text"] == "hi"
    assert counts(h) == (6, 2)


def test_a_translated_messages_stream_keeps_its_usage() -> None:
    h = chain()
    document = {**STREAMING, "model": "gpt-mini", "max_tokens": 10}
    sent = h.request(json.dumps(document).encode(), path="/v1/messages")
    assert sent.json()["stream_options"] == {"include_usage": True}  # the translation's own
    stream = TEXT + FINISH + USAGE_CHUNK + DONE
    response = h.respond(200, SSE, [stream])
    [delta] = [data for name, data in events_of(response.body) if name == "message_delta"]
    assert (delta["usage"]["input_tokens"], delta["usage"]["output_tokens"]) == (12, 5)
    assert counts(h) == (12, 5)
