"""Providers' answers for tests, as they send them: a whole chat completion and a whole
Messages answer (JSON bytes), and a Messages event stream (SSE bytes), each with its
usage report."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["chat_completion", "messages_answer", "messages_stream"]


def chat_completion(text: str, *, prompt_tokens: int = 7, completion_tokens: int = 3) -> bytes:
    """A whole Chat Completions answer saying *text*."""
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-upstream",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    ).encode()


def messages_answer(text: str, *, input_tokens: int = 7, output_tokens: int = 3) -> bytes:
    """A whole Messages answer saying *text*."""
    return json.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-upstream",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }
    ).encode()


def _event(document: dict[str, Any]) -> bytes:
    return f"event: {document['type']}\ndata: {json.dumps(document)}\n\n".encode()


def messages_stream(parts: list[str], *, input_tokens: int = 7, output_tokens: int = 3) -> bytes:
    """A Messages event stream saying *parts* (one text delta each) in one text block."""
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-upstream",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        },
    }
    events = [
        _event(start),
        _event(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            }
        ),
        b'event: ping\ndata: {"type": "ping"}\n\n',
        *(
            _event(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": part},
                }
            )
            for part in parts
        ),
        _event({"type": "content_block_stop", "index": 0}),
        _event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            }
        ),
        _event({"type": "message_stop"}),
    ]
    return b"".join(events)
