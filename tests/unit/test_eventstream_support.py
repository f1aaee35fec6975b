"""The event-stream frames of the Bedrock stand-in (tests/support/eventstream.py,
tests/bedrock_server.py) are what botocore decodes, whole and cut anywhere; the Claude
answers behind them (tests/support/claude_answers.py) add up."""

from __future__ import annotations

import base64
import functools
import json
import socket
from collections.abc import Iterator
from typing import Any

import botocore.session
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer, EventStreamMessage
from botocore.parsers import EventStreamJSONParser

from tests.bedrock_server import converse_json, converse_stream, invoke_stream
from tests.integration.bedrock_mock import BedrockMock, bedrock_mock
from tests.support import claude_answers
from tests.support.eventstream import (
    chunk_payload,
    encode_frame,
    event_frame,
    exception_frame,
    padded,
)

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
HEADERS: dict[str, str | bool | int | bytes] = {
    ":event-type": "chunk",
    "yes": True,
    "no": False,
    "count": -123456,
    "blob": b"\x00\xff\x10",
    "empty": "",
}


@functools.cache
def service_shape(name: str) -> Any:
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    return model.shape_for(name)


def decode(data: bytes, sizes: Iterator[int] | None = None) -> list[EventStreamMessage]:
    """The frames of *data*, fed to botocore's decoder in slices of *sizes* (whole when
    none)."""
    buffer = EventStreamBuffer()
    out: list[EventStreamMessage] = []
    position = 0
    while position < len(data):
        size = next(sizes) if sizes is not None else len(data)
        buffer.add_data(data[position : position + size])
        position += size
        out.extend(buffer)
    return out


def cycle(size: int) -> Iterator[int]:
    while True:
        yield size


def parsed(frames: list[bytes], shape: str) -> list[dict[str, Any]]:
    parser = EventStreamJSONParser()
    return [
        parser.parse(message.to_response_dict(), service_shape(shape))
        for message in decode(b"".join(frames))
    ]


def request_body(text: str = "hello there world", **extra: Any) -> dict[str, Any]:
    return {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


# --- encode_frame --------------------------------------------------------------------


def test_the_empty_frame_is_the_golden_vector() -> None:
    assert encode_frame({}, b"") == bytes.fromhex("00000010 00000000 05c248eb 7d98c8ff")


def test_every_header_type_round_trips() -> None:
    (message,) = decode(encode_frame(HEADERS, b'{"a":1}'))
    assert message.headers == HEADERS
    assert message.payload == b'{"a":1}'


@pytest.mark.parametrize("size", range(1, 8))
def test_frames_fed_in_small_slices_decode(size: int) -> None:
    frames = [encode_frame(HEADERS, b"x" * n) for n in (0, 1, 7, 300)]
    messages = decode(b"".join(frames), cycle(size))
    assert [m.payload for m in messages] == [b"", b"x", b"x" * 7, b"x" * 300]
    assert all(m.headers == HEADERS for m in messages)


def test_two_frames_split_at_every_byte_decode() -> None:
    data = encode_frame(HEADERS, b"first") + event_frame("chunk", b"second")
    for split in range(1, len(data)):
        buffer = EventStreamBuffer()
        buffer.add_data(data[:split])
        messages = list(buffer)
        buffer.add_data(data[split:])
        messages.extend(buffer)
        assert [m.payload for m in messages] == [b"first", b"second"], split


def test_chunk_payloads_carry_the_event_in_base64_and_padding() -> None:
    document = json.loads(chunk_payload({"type": "message_stop"}))
    assert set(document) == {"bytes", "p"}
    assert json.loads(base64.b64decode(document["bytes"])) == {"type": "message_stop"}
    assert document["p"].isalpha()
    assert json.loads(padded({"role": "assistant"}))["role"] == "assistant"


def test_exception_frames_name_their_type() -> None:
    (message,) = decode(exception_frame("throttlingException", "slow down", extra=1))
    assert message.headers[":message-type"] == "exception"
    assert message.headers[":exception-type"] == "throttlingException"
    assert json.loads(message.payload) == {"message": "slow down", "extra": 1}


# --- the stand-in's frames, parsed as botocore parses Bedrock's ------------------------


def test_invoke_frames_parse_as_chunks_of_the_messages_events() -> None:
    body = request_body()
    events = [
        json.loads(item["chunk"]["bytes"])
        for item in parsed(invoke_stream(body, MODEL), "ResponseStream")
    ]
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == "Echo: hello there world"
    metrics = events[-1]["amazon-bedrock-invocationMetrics"]
    assert metrics["inputTokenCount"] == 11
    assert metrics["outputTokenCount"] == events[-2]["usage"]["output_tokens"] == 4
    assert metrics["cacheReadInputTokenCount"] == 0


def test_invoke_frames_report_cache_use_when_the_request_marks_a_cache_point() -> None:
    system = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    items = parsed(invoke_stream(request_body(system=system), MODEL), "ResponseStream")
    start = json.loads(items[0]["chunk"]["bytes"])["message"]["usage"]
    assert (start["cache_read_input_tokens"], start["cache_creation_input_tokens"]) == (7, 3)
    metrics = json.loads(items[-1]["chunk"]["bytes"])["amazon-bedrock-invocationMetrics"]
    assert (metrics["cacheReadInputTokenCount"], metrics["cacheWriteInputTokenCount"]) == (7, 3)


def converse_request(**extra: Any) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": [{"text": "what weather"}]}],
        "toolConfig": {
            "tools": [
                {"toolSpec": {"name": "weather", "inputSchema": {"json": {"type": "object"}}}}
            ]
        },
        **extra,
    }


def test_converse_frames_parse_as_the_stream_members() -> None:
    items = parsed(converse_stream(converse_request(), "meta.llama3"), "ConverseStreamOutput")
    assert [next(iter(item)) for item in items] == [
        "messageStart",
        *["contentBlockDelta"] * 3,
        "contentBlockStop",
        "contentBlockStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert items[5]["contentBlockStart"]["start"]["toolUse"]["name"] == "weather"
    fragments = [i["contentBlockDelta"]["delta"]["toolUse"]["input"] for i in items[6:8]]
    assert json.loads("".join(fragments)) == {"city": "Paris"}
    assert items[-2]["messageStop"]["stopReason"] == "tool_use"
    usage = items[-1]["metadata"]["usage"]
    assert usage == {"inputTokens": 11, "outputTokens": 8, "totalTokens": 19}
    assert all("p" not in next(iter(item.values())) for item in items)


def test_converse_answers_match_their_streams() -> None:
    request = converse_request(system=[{"text": "hi"}, {"cachePoint": {"type": "default"}}])
    whole = converse_json(request)
    assert whole["output"]["message"]["content"] == [
        {"text": "Let me check."},
        {"toolUse": {"toolUseId": "toolu_01", "name": "weather", "input": {"city": "Paris"}}},
    ]
    assert whole["usage"] == {
        "inputTokens": 11,
        "outputTokens": 8,
        "cacheReadInputTokens": 7,
        "cacheWriteInputTokens": 3,
        "totalTokens": 29,
    }
    items = parsed(converse_stream(request, "m"), "ConverseStreamOutput")
    assert items[-1]["metadata"]["usage"] == whole["usage"]


@pytest.mark.parametrize(
    ("model", "code"),
    [
        ("anthropic.throttle", "throttlingException"),
        ("anthropic.streamerror", "modelStreamErrorException"),
    ],
)
def test_failing_models_end_in_an_exception_after_two_deltas(model: str, code: str) -> None:
    for frames, shape in (
        (invoke_stream(request_body(), model), "ResponseStream"),
        (converse_stream(converse_request(), model), "ConverseStreamOutput"),
    ):
        items = parsed(frames, shape)
        assert items[-1]["Error"]["Code"] == code
        assert len(items) == (5 if shape == "ResponseStream" else 4)
    (error,) = decode(invoke_stream(request_body(), "anthropic.streamerror")[-1])
    assert json.loads(error.payload)["originalStatusCode"] == 500


def test_a_truncated_stream_stops_after_two_deltas_without_its_end() -> None:
    items = parsed(invoke_stream(request_body(), "anthropic.truncate"), "ResponseStream")
    types = [json.loads(i["chunk"]["bytes"])["type"] for i in items]
    assert types == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
    ]
    converse = parsed(converse_stream(converse_request(), "x.truncate"), "ConverseStreamOutput")
    assert [next(iter(i)) for i in converse] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
    ]


def test_a_bad_crc_fails_on_the_second_frame() -> None:
    frames = invoke_stream(request_body(), "anthropic.badcrc")
    buffer = EventStreamBuffer()
    buffer.add_data(b"".join(frames))
    assert next(buffer).payload
    with pytest.raises(ChecksumMismatch):
        next(buffer)


# --- claude_answers ------------------------------------------------------------------


def test_words_keep_their_leading_space_and_join_back() -> None:
    assert claude_answers.words("Echo: hi  there\n") == ["Echo:", " hi", "  there", "\n"]
    assert claude_answers.words("") == []


def test_a_tool_result_is_echoed() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "w", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": [{"type": "text", "text": "sunny"}],
                    }
                ],
            },
        ],
        "tools": [{"name": "w"}],
    }
    assert claude_answers.answer(body) == (
        [{"type": "text", "text": "Tool said: sunny"}],
        "end_turn",
    )
    assert claude_answers.has_cache_marker(body) is False
    body["tools"] = [{"name": "w", "cache_control": {"type": "ephemeral"}}]
    assert claude_answers.has_cache_marker(body) is True


# --- over HTTP -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def mock() -> Iterator[BedrockMock]:
    credentials = [{"access_key_id": "AKIASTREAM", "secret_access_key": "stream-secret"}]
    env = {
        "BEDROCK_MOCK_CREDENTIALS": json.dumps(credentials),
        "BEDROCK_MOCK_API_KEY": "stream-key",
        "BEDROCK_MOCK_DELAY": "0",
    }
    with bedrock_mock(env) as running:
        yield running


def signed_post(mock: BedrockMock, path: str, body: dict[str, Any]) -> httpx.Response:
    data = json.dumps(body).encode()
    request = AWSRequest(
        method="POST",
        url=f"{mock.url}{path}",
        data=data,
        headers={"Content-Type": "application/json"},
    )
    SigV4Auth(Credentials("AKIASTREAM", "stream-secret"), "bedrock", "us-east-1").add_auth(request)
    return httpx.post(f"{mock.url}{path}", content=data, headers=dict(request.headers))


def test_a_signed_stream_over_http_decodes_with_botocore(mock: BedrockMock) -> None:
    path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke-with-response-stream"
    response = signed_post(mock, path, request_body())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/vnd.amazon.eventstream"
    assert response.headers["x-amzn-bedrock-content-type"] == "application/json"
    assert response.headers["transfer-encoding"] == "chunked"
    parser = EventStreamJSONParser()
    events = [
        json.loads(
            parser.parse(m.to_response_dict(), service_shape("ResponseStream"))["chunk"]["bytes"]
        )
        for m in decode(response.content, cycle(3))
    ]
    assert events[0]["message"]["model"] == MODEL
    assert events[-1]["type"] == "message_stop"
    (seen,) = [r for r in mock.requests() if r["path"] == path]
    assert seen["auth"] == "sigv4:AKIASTREAM"
    assert seen["body"] == request_body()


def test_a_converse_stream_over_http_ends_with_metadata(mock: BedrockMock) -> None:
    response = signed_post(
        mock, "/model/meta.llama3-8b-instruct-v1%3A0/converse-stream", converse_request()
    )
    assert response.status_code == 200, response.text
    messages = decode(response.content)
    assert [m.headers[":event-type"] for m in messages][-2:] == ["messageStop", "metadata"]


def test_each_frame_goes_out_in_two_chunks(mock: BedrockMock) -> None:
    body = json.dumps(request_body("one two")).encode()
    with socket.create_connection(("127.0.0.1", mock.port)) as connection:
        connection.sendall(
            b"POST /model/anthropic.m/invoke-with-response-stream HTTP/1.1\r\n"
            + f"Host: 127.0.0.1:{mock.port}\r\n".encode()
            + b"Authorization: Bearer stream-key\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        raw = b""
        while chunk := connection.recv(65536):
            raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0]
    sizes = []
    payload = b""
    while True:
        line, _, rest = rest.partition(b"\r\n")
        size = int(line, 16)
        if size == 0:
            break
        sizes.append(size)
        payload += rest[:size]
        rest = rest[size + 2 :]
    messages = decode(payload)
    assert len(sizes) == 2 * len(messages) == 2 * 8
