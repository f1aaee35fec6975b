"""Chat Completions and Messages streams for tests: builders of chat chunks and SSE
bytes, a stream with what breaks translators, every split of a stream, and each API's
rules for a stream (`check_chat_stream`, `check_messages_stream`)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from filterproxy.http.sse import SSEDecoder
from filterproxy.translate import (
    ChatFromMessagesStream,
    MessagesFromChatStream,
)
from tests.thirdparty import (
    ANTHROPIC_SDIST,
    archive_members,
)

Stream = MessagesFromChatStream | ChatFromMessagesStream


def chat_chunk(
    delta: dict[str, Any] | None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    chunk: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m"}
    chunk["choices"] = (
        [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    )
    chunk.update(extra)
    return chunk


def sse(chunks: list[dict[str, Any]], *, done: bool = True, newline: str = "\n") -> bytes:
    text = "".join(f"data: {json.dumps(c, ensure_ascii=False)}{newline}{newline}" for c in chunks)
    return (text + (f"data: [DONE]{newline}{newline}" if done else "")).encode()


#: A chat stream with what breaks translators: multi-byte characters, reasoning, text,
#: two tool calls (the second opened with its arguments in the same chunk), a finish
#: reason, then usage with cached tokens.
CHAT_STREAM = sse(
    [
        chat_chunk({"role": "assistant", "content": ""}),
        chat_chunk({"reasoning_content": "思考中…"}),
        chat_chunk({"content": "Héllo 👋 世界"}),
        chat_chunk({"content": "!"}),
        chat_chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": ""},
                    }
                ]
            }
        ),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"q": "東'}}]}),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '京"}'}}]}),
        chat_chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "other", "arguments": '{"n": 2}'},
                    }
                ]
            }
        ),
        chat_chunk({}, "tool_calls"),
        chat_chunk(
            None,
            usage={
                "prompt_tokens": 30,
                "completion_tokens": 9,
                "prompt_tokens_details": {"cached_tokens": 10},
            },
        ),
    ]
)


def events_of(raw: bytes, *, recording: bool = False) -> list[tuple[str | None, Any]]:
    """(event name, parsed data) of every event of an event stream (of a *recording*,
    whose file may have lost the last blank line)."""
    decoder = SSEDecoder()
    if recording and not raw.endswith(b"\n\n"):
        raw += b"\n\n"
    found = []
    for event in decoder.feed(raw):
        if event.data is None:
            found.append((None, None))
        elif event.data == "[DONE]":
            found.append((event.event, "[DONE]"))
        else:
            found.append((event.event, json.loads(event.data)))
    assert decoder.close() == b"", "the stream ends inside an event"
    return found


def normalized(raw: bytes) -> list[tuple[str | None, Any]]:
    """The events with what is fresh per stream (generated ids, timestamps) blanked."""
    out = []
    for name, data in events_of(raw):
        if isinstance(data, dict):
            data = json.loads(json.dumps(data))
            if data.get("type") == "message_start":
                data["message"]["id"] = "*"
            for key in ("id", "created"):
                if key in data and data.get("object") == "chat.completion.chunk":
                    data[key] = "*"
        out.append((name, data))
    return out


def splits(data: bytes) -> list[list[bytes]]:
    """Every two-piece split, one-byte pieces, and a few random cuttings."""
    cuts: list[list[bytes]] = [[data[:i], data[i:]] for i in range(len(data) + 1)]
    cuts.append([data[i : i + 1] for i in range(len(data))])
    rng = random.Random(7)
    for _ in range(20):
        points = sorted(rng.sample(range(1, len(data)), min(12, len(data) - 1)))
        cuts.append([data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)])
    return cuts


def check_messages_stream(events: list[tuple[str | None, Any]]) -> dict[str, Any]:
    """Anthropic's rules for a Messages stream; returns what the stream says."""
    events = [e for e in events if e[0] not in (None, "ping")]
    assert all(name == data["type"] for name, data in events)
    names = [n for n, _ in events]
    if names[-1] == "error":  # an error may come at any point, and ends the stream
        assert "message_stop" not in names and names.count("error") == 1
        return {"error": events[-1][1]["error"]}
    assert names[0] == "message_start" and names.count("message_start") == 1
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("message_delta") == 1 and names.count("message_stop") == 1
    blocks: list[dict[str, Any]] = []
    open_index = None
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert open_index is None and data["index"] == len(blocks)
            open_index = data["index"]
            blocks.append({**data["content_block"], "deltas": []})
        elif name == "content_block_delta":
            assert data["index"] == open_index
            block = blocks[open_index]
            kind = data["delta"]["type"]
            expected = {
                "text": "text_delta",
                "thinking": "thinking_delta",
                "tool_use": "input_json_delta",
            }
            assert kind == expected[block["type"]]
            block["deltas"].append(data["delta"])
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
    assert open_index is None
    for block in blocks:
        if block["type"] == "tool_use":
            partial = "".join(d["partial_json"] for d in block["deltas"])
            assert isinstance(json.loads(partial or "{}"), dict)
    return {"blocks": blocks, "delta": events[-2][1]}


def check_chat_stream(events: list[tuple[str | None, Any]], include_usage: bool) -> dict[str, Any]:
    """OpenAI's rules for a chat completion stream; returns what the stream says."""
    chunks = [d for n, d in events if d is not None]
    if isinstance(chunks[-1], dict) and "error" in chunks[-1]:
        assert "[DONE]" not in chunks
        return {"error": chunks[-1]["error"]}
    assert chunks[-1] == "[DONE]" and chunks.count("[DONE]") == 1
    chunks = chunks[:-1]
    assert len({c["id"] for c in chunks}) == 1 and len({c["model"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [
        c["choices"][0]["finish_reason"]
        for c in chunks
        if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    assert len(finishes) == 1
    usage_chunks = [c for c in chunks if c["choices"] == []]
    if include_usage:
        assert usage_chunks == [chunks[-1]] and chunks[-1]["usage"]["total_tokens"] >= 0
    else:
        assert usage_chunks == []
    text = ""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            text += choice["delta"].get("content") or ""
            for call in choice["delta"].get("tool_calls") or []:
                if call["index"] not in calls:
                    assert call["id"] and call["type"] == "function" and call["function"]["name"]
                    calls[call["index"]] = {"name": call["function"]["name"], "arguments": ""}
                calls[call["index"]]["arguments"] += call["function"].get("arguments") or ""
    assert sorted(calls) == list(range(len(calls)))
    return {"text": text, "calls": calls, "finish": finishes[0], "usage": usage_chunks}


def anthropic_recordings() -> dict[str, bytes]:
    found = archive_members(*ANTHROPIC_SDIST, "tests/lib/streaming/fixtures/", "_response.txt")
    if not found:
        pytest.fail("the pinned anthropic SDK release has no stream recordings")
    return found


def what_messages_say(raw: bytes) -> tuple[str, dict[int, str], Any]:
    """Text, tool arguments by tool order, and stop reason of a Messages stream."""
    text = ""
    tools: dict[int, str] = {}
    tool_of: dict[int, int] = {}
    stop = None
    for _name, data in events_of(raw, recording=True):
        if not isinstance(data, dict):
            continue
        if data.get("type") == "content_block_start" and data["content_block"]["type"] in (
            "tool_use",
            "server_tool_use",
        ):
            tool_of[data["index"]] = len(tools)
            tools[len(tools)] = (
                json.dumps(data["content_block"]["input"])
                if data["content_block"].get("input")
                else ""
            )
        elif data.get("type") == "content_block_delta":
            delta = data["delta"]
            if delta["type"] == "text_delta":
                text += delta["text"]
            elif delta["type"] == "input_json_delta":
                tools[tool_of[data["index"]]] += delta["partial_json"]
        elif data.get("type") == "message_delta":
            stop = data["delta"].get("stop_reason")
    return text, tools, stop
