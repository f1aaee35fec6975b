"""What the tests' stand-ins for Claude's hosts (Bedrock, Vertex) answer, as Anthropic's
Messages API would: pure functions of the request body, deterministic, no I/O.

- A last message holding a ``tool_result`` block gets "Tool said: <its content>".
- Else a request with ``tools`` gets "Let me check." and a call of the first tool with
  ``{"city": "Paris"}`` (stop reason ``tool_use``).
- Else the answer is "Echo: <the last user text>".

Usage is fixed: 11 input tokens; 7 cache reads and 3 cache writes when the request holds a
``cache_control`` marker anywhere (system, messages, tools), else 0; the output tokens are
the answer's words (and 5 per tool call). This module imports nothing of the tests, so
every stand-in can use it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CACHE_READ_TOKENS",
    "CACHE_WRITE_TOKENS",
    "INPUT_TOKENS",
    "MESSAGE_ID",
    "TOOL_CALL_TOKENS",
    "TOOL_USE_ID",
    "answer",
    "content_text",
    "has_cache_marker",
    "holds_key",
    "input_fragments",
    "messages_events",
    "messages_json",
    "output_tokens",
    "usage",
    "words",
]

#: The input tokens every answer reports (cache reads and writes come on top).
INPUT_TOKENS = 11
#: Cache reads and writes reported when the request carries a cache marker.
CACHE_READ_TOKENS = 7
CACHE_WRITE_TOKENS = 3
#: The output tokens a tool call counts for.
TOOL_CALL_TOKENS = 5
#: The id of every answer and of the tool call.
MESSAGE_ID = "msg_01XFDUDYJgAACzvnptvVoYEL"
TOOL_USE_ID = "toolu_01"

_WORD = re.compile(r"\s*\S+|\s+$")


def words(text: str) -> list[str]:
    """*text* cut before each word, each piece keeping its leading white space: joined,
    the pieces give *text* back ("Echo: hi" → ["Echo:", " hi"]); "" gives []."""
    return _WORD.findall(text)


def content_text(content: Any) -> str:
    """The text of a message's or a tool result's content: a string as it is, the text
    blocks of a list joined by a space (other blocks are skipped)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            block["text"]
            for block in content
            if isinstance(block, Mapping) and isinstance(block.get("text"), str)
        )
    return ""


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def answer(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The content blocks and stop reason of the answer to the Messages request *body*."""
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else []
    last = messages[-1] if messages and isinstance(messages[-1], Mapping) else {}
    content = last.get("content")
    results = [
        block
        for block in (content if isinstance(content, list) else [])
        if isinstance(block, Mapping) and block.get("type") == "tool_result"
    ]
    if results:
        said = content_text(results[0].get("content"))
        return [{"type": "text", "text": f"Tool said: {said}"}], "end_turn"
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        first = tools[0] if isinstance(tools[0], Mapping) else {}
        call = {
            "type": "tool_use",
            "id": TOOL_USE_ID,
            "name": first.get("name", ""),
            "input": {"city": "Paris"},
        }
        return [{"type": "text", "text": "Let me check."}, call], "tool_use"
    return [{"type": "text", "text": f"Echo: {_last_user_text(messages)}"}], "end_turn"


def holds_key(value: Any, key: str) -> bool:
    """Whether *key* names a member of an object anywhere in the JSON *value*."""
    if isinstance(value, Mapping):
        return key in value or any(holds_key(v, key) for v in value.values())
    if isinstance(value, list):
        return any(holds_key(v, key) for v in value)
    return False


def has_cache_marker(body: Mapping[str, Any]) -> bool:
    """Whether a ``cache_control`` marker is anywhere in the system prompt, the messages
    or the tools of *body*."""
    return any(
        holds_key(body.get(part), "cache_control") for part in ("system", "messages", "tools")
    )


def output_tokens(blocks: list[dict[str, Any]]) -> int:
    """The output tokens of an answer of *blocks*: one per word, 5 per tool call."""
    return sum(
        len(words(block["text"])) if block["type"] == "text" else TOOL_CALL_TOKENS
        for block in blocks
    )


def usage(body: Mapping[str, Any], output_tokens: int) -> dict[str, int]:
    """The ``usage`` object of an answer to *body* with *output_tokens*."""
    cached = has_cache_marker(body)
    return {
        "input_tokens": INPUT_TOKENS,
        "cache_creation_input_tokens": CACHE_WRITE_TOKENS if cached else 0,
        "cache_read_input_tokens": CACHE_READ_TOKENS if cached else 0,
        "output_tokens": output_tokens,
    }


def messages_json(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The whole (non-streamed) Messages answer to *body*, naming *model*."""
    blocks, stop = answer(body)
    return {
        "id": MESSAGE_ID,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage(body, output_tokens(blocks)),
    }


def input_fragments(tool_input: Any) -> list[str]:
    """A tool call's input as the two JSON fragments its stream sends (compact JSON cut
    in the middle)."""
    text = json.dumps(tool_input, separators=(",", ":"))
    middle = len(text) // 2
    return [text[:middle], text[middle:]]


def _block_events(index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
    if block["type"] == "text":
        start: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": word} for word in words(block["text"])]
    else:
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        deltas = [
            {"type": "input_json_delta", "partial_json": fragment}
            for fragment in input_fragments(block["input"])
        ]
    return [
        {"type": "content_block_start", "index": index, "content_block": start},
        *({"type": "content_block_delta", "index": index, "delta": d} for d in deltas),
        {"type": "content_block_stop", "index": index},
    ]


def messages_events(body: Mapping[str, Any], model: str) -> list[dict[str, Any]]:
    """The events of the streamed Messages answer to *body*, as Anthropic's API sends
    them: ``message_start`` (its usage counts one output token), each block's start,
    deltas (a text one per word, a tool call's input in two fragments) and stop, then
    ``message_delta`` (stop reason, output tokens) and ``message_stop``."""
    whole = messages_json(body, model)
    blocks: list[dict[str, Any]] = whole["content"]
    start = {
        **whole,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**whole["usage"], "output_tokens": 1},
    }
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for index, block in enumerate(blocks):
        events.extend(_block_events(index, block))
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": whole["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": whole["usage"]["output_tokens"]},
        }
    )
    events.append({"type": "message_stop"})
    return events
