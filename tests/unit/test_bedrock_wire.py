"""Bedrock's side of a request and its answer (pure): InvokeModel's body and path, the
betas it takes, a stream chunk as a Messages SSE event, errors in Anthropic's shape."""

from __future__ import annotations

import base64
import json

import pytest

from filterproxy.extensions.bedrock.wire import (
    anthropic_error_body,
    anthropic_error_event,
    betas_of,
    error_type,
    invoke_body,
    invoke_event,
    model_path,
    uses_invoke,
)
from filterproxy.translate.common import Untranslatable


def test_the_invoke_body_is_the_messages_body_with_bedrocks_differences() -> None:
    request = {
        "model": "anthropic.claude-3-haiku-20240307-v1:0",
        "stream": True,
        "max_tokens": 50,
        "system": [{"type": "text", "text": "Be brief", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "hi"}],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "tools": [{"name": "t", "input_schema": {"type": "object"}}],
        "service_tier": "auto",
    }
    body = invoke_body(request, ["interleaved-thinking-2025-05-14"])
    assert body == {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 50,
        "system": request["system"],
        "messages": request["messages"],
        "thinking": request["thinking"],
        "tools": request["tools"],
        "anthropic_beta": ["interleaved-thinking-2025-05-14"],
    }
    assert "model" in request  # the document itself is left as it was


def test_a_field_invoke_does_not_take_is_named() -> None:
    with pytest.raises(Untranslatable, match="mcp_servers"):
        invoke_body({"model": "m", "max_tokens": 1, "messages": [], "mcp_servers": []}, [])


def test_only_the_betas_bedrock_knows_are_kept() -> None:
    kept, dropped = betas_of(
        ["claude-code-20250219,interleaved-thinking-2025-05-14", " prompt-caching-2024-07-31"]
    )
    assert kept == ["interleaved-thinking-2025-05-14"]
    assert dropped == ["claude-code-20250219", "prompt-caching-2024-07-31"]


def test_model_ids_are_percent_encoded_in_the_path() -> None:
    assert (
        model_path("us.anthropic.claude-sonnet-4-5-20250929-v1:0", "invoke")
        == "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke"
    )
    arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc"
    assert model_path(arn, "converse").startswith(
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fabc/"
    )


@pytest.mark.parametrize(
    ("model", "setting", "invoke"),
    [
        ("anthropic.claude-3-haiku-20240307-v1:0", "auto", True),
        ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "auto", True),
        ("meta.llama3-70b-instruct-v1:0", "auto", False),
        ("amazon.nova-pro-v1:0", "auto", False),
        ("arn:aws:bedrock:us-east-1:1:application-inference-profile/x", "invoke", True),
        ("anthropic.claude-3-haiku-20240307-v1:0", "converse", False),
    ],
)
def test_which_api_a_model_is_called_with(model: str, setting: str, invoke: bool) -> None:
    assert uses_invoke(model, setting) is invoke


def _chunk(event: dict[str, object]) -> bytes:
    raw = json.dumps(event).encode()
    return json.dumps({"bytes": base64.b64encode(raw).decode(), "p": "abcdefg"}).encode()


@pytest.mark.parametrize("spaced", [False, True])
def test_a_chunk_is_one_messages_sse_event(spaced: bool) -> None:
    event = {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": "Hi"},
    }
    raw = (json.dumps(event) if spaced else json.dumps(event, separators=(",", ":"))).encode()
    payload = json.dumps({"bytes": base64.b64encode(raw).decode(), "p": "xyz"}).encode()
    kind, sse = invoke_event(payload)
    assert kind == "content_block_delta"
    assert sse == b"event: content_block_delta\ndata: " + raw + b"\n\n"


@pytest.mark.parametrize(
    "payload",
    [b'{"p": "x"}', b"[]", b'{"bytes": "!!!"}', _chunk({"no_type": 1}), b"not json"],
)
def test_a_chunk_that_is_not_one_event_is_refused(payload: bytes) -> None:
    with pytest.raises(ValueError):
        invoke_event(payload)


def test_errors_read_as_anthropics() -> None:
    assert (
        error_type("ThrottlingException:http://internal.amazon.com/coral/x/") == "rate_limit_error"
    )
    assert error_type("throttlingException") == "rate_limit_error"
    assert error_type(None, 403) == "permission_error"
    body = json.loads(
        anthropic_error_body(429, "ThrottlingException:http://x/", b'{"message":"slow down"}')
    )
    assert body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Bedrock: ThrottlingException: slow down"},
    }
    message, event = anthropic_error_event(
        "modelStreamErrorException", b'{"message":"boom","originalStatusCode":500}'
    )
    assert message == "Bedrock: modelStreamErrorException: boom"
    assert event.startswith(b"event: error\ndata: ")
    assert json.loads(event.split(b"data: ", 1)[1])["error"]["type"] == "api_error"
