"""The usage filter keeps the provider's token counts apart by kind (`TokenUsage`), in
each shape of usage a provider answers with, however the answer is cut."""

from __future__ import annotations

import json
from typing import Any

from filterproxy.extensions.usage.filter import UsageFilter, token_usage, usage_fields
from filterproxy.filters.records import TokenUsage
from filterproxy.testing import FilterHarness
from tests.support.answers import messages_stream

JSON = {"content-type": "application/json"}
SSE = {"content-type": "text/event-stream"}


def usage_of(body: bytes, pieces: int = 1, content_type: dict[str, str] = JSON) -> list[Any]:
    """The `TokenUsage` the filter keeps for *body* cut at every byte into two pieces
    (one result per cut), the body passing unchanged."""
    found = []
    for i in range(1, len(body)):
        h = FilterHarness(UsageFilter)
        h.request(b'{"model": "m"}')
        response = h.respond(200, content_type, [body[:i], body[i:]])
        assert response.body == body
        found.append(h.stream_info.state.get(TokenUsage))
    return found


def test_openai_chat_usage_with_cached_and_reasoning_tokens() -> None:
    body = json.dumps(
        {
            "id": "c",
            "object": "chat.completion",
            "choices": [],
            "usage": {
                "prompt_tokens": 2006,
                "completion_tokens": 300,
                "total_tokens": 2306,
                "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 192},
            },
        }
    ).encode()
    expected = TokenUsage(input=2006, cached_input=1920, output=300, reasoning=192)
    assert set(usage_of(body)) == {expected}


def test_openai_responses_usage_counts_cached_input_inside_input() -> None:
    body = json.dumps(
        {
            "id": "resp_1",
            "object": "response",
            "output": [],
            "usage": {
                "input_tokens": 5000,
                "input_tokens_details": {"cached_tokens": 4096},
                "output_tokens": 900,
                "output_tokens_details": {"reasoning_tokens": 640},
                "total_tokens": 5900,
            },
        }
    ).encode()
    expected = TokenUsage(input=5000, cached_input=4096, output=900, reasoning=640)
    assert set(usage_of(body)) == {expected}


def test_anthropic_usage_adds_cache_reads_and_writes_to_input() -> None:
    body = json.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "content": [],
            "usage": {
                "input_tokens": 10,
                "cache_read_input_tokens": 3000,
                "cache_creation_input_tokens": 1200,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": 200,
                    "ephemeral_1h_input_tokens": 1000,
                },
                "output_tokens": 77,
            },
        }
    ).encode()
    expected = TokenUsage(
        input=4210, cached_input=3000, cache_write=1200, cache_write_1h=1000, output=77
    )
    assert set(usage_of(body)) == {expected}


def test_an_anthropic_streams_start_and_last_delta_are_merged() -> None:
    stream = messages_stream(["a", "b"], input_tokens=8, output_tokens=21).replace(
        b'"input_tokens": 8,',
        b'"input_tokens": 8, "cache_read_input_tokens": 500, "cache_creation_input_tokens": 0,',
    )
    assert b"cache_read_input_tokens" in stream
    results = usage_of(stream, content_type=SSE)
    # The delta's output does not lose the start's input and cache counts.
    assert set(results) == {TokenUsage(input=508, cached_input=500, output=21)}


def test_the_record_follows_each_report_of_a_stream() -> None:
    h = FilterHarness(UsageFilter)
    h.request(b'{"model": "m", "stream": true}', path="/v1/messages")
    stream = messages_stream(["a"], input_tokens=8, output_tokens=21)
    cut = stream.index(b"content_block_start")
    h.respond(200, SSE, [stream[:cut]], end=False)
    assert h.stream_info.state.get(TokenUsage) == TokenUsage(input=8, output=1)
    h.more([stream[cut:]])
    assert h.stream_info.state.get(TokenUsage) == TokenUsage(input=8, output=21)


def test_no_usage_no_record() -> None:
    h = FilterHarness(UsageFilter)
    h.request(b'{"model": "m"}')
    h.respond(200, JSON, b'{"choices": [], "usage": null}')
    assert h.stream_info.state.get(TokenUsage) is None
    assert token_usage(usage_fields({"total_tokens": 3})) is None


def test_bad_counts_are_left_out() -> None:
    fields = usage_fields(
        {
            "prompt_tokens": 5,
            "completion_tokens": -1,
            "prompt_tokens_details": {"cached_tokens": True},
        }
    )
    assert fields == {"prompt_tokens": 5}
    assert token_usage(fields) == TokenUsage(input=5)
