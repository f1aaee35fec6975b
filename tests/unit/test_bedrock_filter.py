"""The bedrock filter in the real chain, no sockets (`FilterHarness`): the request as
InvokeModel and Converse take it; event-stream answers cut at every byte read as the
same Messages events, one for one, as they complete; exception frames, corrupt and
truncated streams told as errors (never a clean end); a frame past the limit refused
before it is read whole."""

from __future__ import annotations

import json
from typing import Any

import pytest

from filterproxy.extensions.bedrock.filter import BedrockFilter
from filterproxy.extensions.builtin import parse_config
from filterproxy.filters.records import UpstreamAuthorization
from filterproxy.testing import FilterHarness
from tests.bedrock_server import converse_stream, invoke_stream
from tests.support.eventstream import encode_frame, event_frame

pytest.importorskip("botocore")

CONFIG = """
clusters:
  bedrock: {provider: bedrock, region: us-west-2, api_key: test-key}
  other: {url: "http://other.test"}
routes:
  - cluster: bedrock
"""
CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
LLAMA = "meta.llama3-70b-instruct-v1:0"
STREAM = {"content-type": "application/vnd.amazon.eventstream"}
BODY = {"messages": [{"role": "user", "content": "one two three"}], "max_tokens": 32}


def harness(cluster: str = "bedrock", max_event_bytes: int | None = None) -> FilterHarness:
    text = CONFIG + (f"max_event_bytes: {max_event_bytes}\n" if max_event_bytes else "")
    h = FilterHarness(BedrockFilter, config=parse_config(text))
    h.stream_info.cluster = cluster
    return h


def request(h: FilterHarness, model: str = CLAUDE, stream: bool = True, **extra: Any) -> Any:
    body = {
        "model": model,
        "max_tokens": 32,
        "stream": stream,
        "messages": [{"role": "user", "content": "one two three"}],
        **extra,
    }
    headers = {
        "x-api-key": "client",
        "anthropic-version": "2023-06-01",
        "x-amz-date": "spoof",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
    }
    upstream = h.request(json.dumps(body).encode(), path="/v1/messages", headers=headers)
    return upstream, body


def messages_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in raw.split(b"\n\n"):
        if block.strip():
            name, data = block.split(b"\n", 1)
            events.append((name.removeprefix(b"event: ").decode(), json.loads(data[6:])))
    return events


def test_a_claude_request_goes_to_invoke_with_bedrocks_body() -> None:
    h = harness()
    upstream, _ = request(h, anthropic_beta=["context-1m-2025-08-07"])
    assert (
        upstream.head.path
        == "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke-with-response-stream"
    )
    sent = upstream.json()
    assert sent["anthropic_version"] == "bedrock-2023-05-31"
    assert "model" not in sent and "stream" not in sent
    assert sent["anthropic_beta"] == ["interleaved-thinking-2025-05-14", "context-1m-2025-08-07"]
    for name in ("x-api-key", "anthropic-version", "x-amz-date"):
        assert name not in upstream.head.headers
    authorization = h.stream_info.state.get(UpstreamAuthorization)
    assert authorization is not None and authorization.cluster == "bedrock"


def test_the_flags_left_out_are_named_in_the_answer() -> None:
    h = harness()
    request(h, stream=False)
    got = h.respond(200, {"content-type": "application/json"}, b'{"type": "message"}')
    assert got.headers.get("x-filterproxy-dropped-betas") == "claude-code-20250219"


def test_other_models_go_to_converse() -> None:
    h = harness()
    upstream, _ = request(h, model=LLAMA, stream=False)
    assert upstream.head.path == "/model/meta.llama3-70b-instruct-v1%3A0/converse"
    assert upstream.json()["inferenceConfig"] == {"maxTokens": 32}


def test_a_request_for_another_cluster_is_left_alone() -> None:
    h = harness(cluster="other")
    upstream, body = request(h)
    assert upstream.head.path == "/v1/messages" and upstream.json() == body
    assert h.stream_info.state.get(UpstreamAuthorization) is None


def without_ids(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The events, the message's id (made per answer) left out."""
    events = messages_events(raw)
    for _, event in events:
        event.get("message", {}).pop("id", None)
    return events


def _expected(frames: list[bytes]) -> bytes:
    h = harness()
    request(h)
    return h.respond(200, STREAM, frames).body


def test_an_invoke_stream_cut_at_every_byte_reads_the_same() -> None:
    body = {"messages": [{"role": "user", "content": "one two three"}], "max_tokens": 32}
    frames = invoke_stream(body, CLAUDE)
    whole = b"".join(frames)
    expected = _expected(frames)
    events = messages_events(expected)
    assert events[0][0] == "message_start"
    assert events[-1][0] == "message_stop"
    text = "".join(e["delta"]["text"] for n, e in events if n == "content_block_delta")
    assert text == "Echo: one two three"
    for cut in range(1, len(whole)):
        h = harness()
        request(h)
        got = h.respond(200, STREAM, [whole[:cut], whole[cut:]])
        assert got.body == expected, cut
        assert got.ended and h.stream_info.outcome != "upstream_error"
    # One byte at a time: each event goes out as soon as its frame is whole.
    h = harness()
    request(h)
    h.respond(200, STREAM, [], end=False)
    ends = [sum(len(f) for f in frames[: n + 1]) for n in range(len(frames))]
    for i in range(len(whole)):
        h.more([whole[i : i + 1]], end=i == len(whole) - 1)
        # Each event goes out with its frame's last byte: never held, never early.
        assert h.client.body.count(b"\n\n") == sum(1 for end in ends if end <= i + 1), i
    assert h.client.body == expected


def test_a_converse_stream_cut_at_every_byte_reads_the_same() -> None:
    body = {"messages": [{"role": "user", "content": [{"text": "alpha beta"}]}]}
    frames = converse_stream(body, LLAMA)
    whole = b"".join(frames)
    h = harness()
    request(h, model=LLAMA)
    expected = h.respond(200, STREAM, frames).body
    events = messages_events(expected)
    assert events[-1][0] == "message_stop"
    assert "".join(e["delta"].get("text", "") for n, e in events if n == "content_block_delta") == (
        "Echo: alpha beta"
    )
    for cut in range(1, len(whole)):
        h = harness()
        request(h, model=LLAMA)
        got = h.respond(200, STREAM, [whole[:cut], whole[cut:]]).body
        assert without_ids(got) == without_ids(expected), cut


@pytest.mark.parametrize(
    ("model", "said"),
    [
        ("anthropic.claude-throttle-v1:0", "throttlingException"),
        ("anthropic.claude-streamerror-v1:0", "modelStreamErrorException"),
        ("anthropic.claude-truncate-v1:0", "ended before its last event"),
        ("anthropic.claude-badcrc-v1:0", "message CRC"),
    ],
)
def test_a_failing_stream_ends_with_an_error_event_and_no_clean_end(model: str, said: str) -> None:
    body = {"messages": [{"role": "user", "content": "one two three four"}], "max_tokens": 32}
    h = harness()
    request(h, model=model)
    got = h.respond(200, STREAM, invoke_stream(body, model))
    events = messages_events(got.body)
    assert events[-1][0] == "error"
    assert said in events[-1][1]["error"]["message"]
    assert h.stream_info.outcome == "upstream_error"
    assert said in (h.stream_info.error or "")


def test_a_stream_the_upstream_breaks_off_says_so_not_that_frames_are_corrupt() -> None:
    """The gateway's own error event (the upstream reset mid-stream) passes the filter
    as it is: it is not read as event-stream frames."""
    frames = invoke_stream(BODY, CLAUDE)
    h = harness()
    request(h)
    h.respond(200, STREAM, frames[:3], end=False)
    got = h.fail(502, "upstream closed the connection mid-response", "upstream_reset")
    events = messages_events(got.body)
    assert [name for name, _ in events][-2:] == ["content_block_delta", "error"]
    assert "upstream closed the connection" in events[-1][1]["error"]["message"]
    assert h.stream_info.error == "upstream closed the connection mid-response"


def test_a_frame_past_the_limit_is_refused_before_it_is_whole() -> None:
    h = harness(max_event_bytes=4096)
    request(h)
    big = event_frame("chunk", b'{"bytes":"' + b"A" * 10_000 + b'"}')
    h.respond(200, STREAM, [big[:6000]], end=False)
    assert h.stream_info.outcome == "upstream_error"
    assert "more than max_event_bytes allows" in (h.stream_info.error or "")


def test_an_error_answer_becomes_anthropics_error_document() -> None:
    h = harness()
    request(h, stream=False)
    got = h.respond(
        429,
        {"content-type": "application/json", "x-amzn-errortype": "ThrottlingException:http://x/"},
        b'{"message":"Too many requests"}',
    )
    assert got.status == 429
    assert got.json() == {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "Bedrock: ThrottlingException: Too many requests",
        },
    }


def test_a_converse_answer_becomes_a_messages_answer() -> None:
    h = harness()
    request(h, model=LLAMA, stream=False)
    answer = {
        "output": {"message": {"role": "assistant", "content": [{"text": "Hi"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 5, "outputTokens": 1, "totalTokens": 6, "cacheReadInputTokens": 2},
        "metrics": {"latencyMs": 10},
    }
    got = h.respond(200, {"content-type": "application/json"}, json.dumps(answer).encode())
    document = got.json()
    assert document["content"] == [{"type": "text", "text": "Hi"}]
    assert document["usage"]["cache_read_input_tokens"] == 2
    assert document["model"] == LLAMA


def test_events_other_than_chunks_are_skipped_and_unknown_headers_ignored() -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 32}
    frames = invoke_stream(body, CLAUDE)
    odd = encode_frame({":message-type": "event", ":event-type": "metadata", "x": 1}, b"{}")
    h = harness()
    request(h)
    got = h.respond(200, STREAM, [frames[0], odd, *frames[1:]])
    assert got.body == _expected(frames)


def test_a_slow_client_pauses_the_bedrock_stream() -> None:
    """Backpressure as for every stream: the filter holds nothing of its own; a client
    that falls behind pauses the upstream's reading, and it resumes when it catches up."""
    body = {"messages": [{"role": "user", "content": "one two three"}], "max_tokens": 32}
    frames = invoke_stream(body, CLAUDE)
    h = harness()
    request(h)
    h.respond(200, STREAM, frames[:2], end=False)
    h.client_slow()
    assert h.producer.paused
    h.more(frames[2:4], end=False)
    # What came while the client was slow went on (the chain holds it, bounded): the
    # filter keeps nothing of its own back.
    assert h.client.body.count(b"\n\n") == 4
    h.client_ready()
    assert not h.producer.paused and h.producer.calls[-2:] == ["pause", "resume"]
    h.more(frames[4:])
    assert h.client.ended and messages_events(h.client.body)[-1][0] == "message_stop"
