"""A Messages client (``POST /v1/messages``) in front of an upstream that speaks only
Chat Completions: the request becomes a chat completion request, the answer — a JSON
document or an event stream — becomes a Messages answer (no I/O).

The stream is translated by `MessagesFromChatStream`, a state machine fed the upstream's
bytes as they arrive, split anywhere: one chat chunk may open and close several content
blocks, and the message ends exactly once (on the usage chunk, ``[DONE]`` or the end of
the stream, whichever comes first), or with an ``error`` event when the upstream fails
or stops short — never with a faked clean end.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

from filterproxy.translate.common import (
    FromChatStream,
    Untranslatable,
    anthropic_error,
    anthropic_usage,
    chat_tool,
    dumps,
    first_message,
    new_id,
    object_at,
    split_content,
    stop_from_finish,
    string_at,
    text_of,
)

__all__ = [
    "CACHE_CONTROL_PROVIDERS",
    "MessagesFromChatStream",
    "chat_request",
    "count_tokens_estimate",
    "messages_response",
]

#: Providers whose Chat Completions API takes Anthropic's ``cache_control`` on content
#: parts (OpenRouter passes it to the models that cache); others ignore it or refuse it.
CACHE_CONTROL_PROVIDERS: Final = frozenset({"openrouter"})
#: reasoning_effort for Anthropic's thinking budgets (budget_tokens ≤ the bound).
_EFFORT_BY_BUDGET: Final = ((2048, "low"), (8192, "medium"))
#: Request fields refused: the answer would not be what the client asked for.
_REFUSED: Final = {
    "mcp_servers": "MCP servers run inside Anthropic's API; the upstream speaks Chat Completions and cannot call them",
    "container": "code-execution containers exist only in Anthropic's API",
}


def _text_lines(content: Any, path: str) -> str:
    """The text of a string or of text blocks, one block a line.

    Raises:
        Untranslatable: a text block's text is not a string.
    """
    return text_of(content, "\n", path)


def _image_part(block: Mapping[str, Any], path: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise Untranslatable(f"{path}.source", "an image needs a source")
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = str(source.get("url", ""))
    else:
        raise Untranslatable(
            f"{path}.source.type",
            f"image source {source.get('type')!r} has no Chat Completions counterpart; "
            "send the image as base64 or a URL",
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: Mapping[str, Any], path: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64":
        media = source.get("media_type", "application/pdf")
        file: dict[str, Any] = {"file_data": f"data:{media};base64,{source.get('data', '')}"}
        if isinstance(block.get("title"), str):
            file["filename"] = block["title"]
        return {"type": "file", "file": file}
    if isinstance(source, dict) and source.get("type") == "text":
        return {"type": "text", "text": str(source.get("data", ""))}
    raise Untranslatable(
        f"{path}.source", "only base64 and text documents have a Chat Completions counterpart"
    )


def _kept(part: dict[str, Any], block: Any, keep: bool) -> dict[str, Any]:
    """*part* with *block*'s ``cache_control`` when the upstream takes it (*keep*)."""
    if keep and isinstance(block, dict) and isinstance(block.get("cache_control"), dict):
        part["cache_control"] = block["cache_control"]
    return part


def _tool_result(
    block: Mapping[str, Any], path: str, keep: bool
) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    """(the tool message's content, parts for the user message after it) of a
    ``tool_result``: its text; its images and documents go to the user message, as
    most Chat Completions servers take only text from a tool."""
    content = block.get("content") or ""
    texts: list[str] = []
    moved: list[dict[str, Any]] = []
    for j, item in enumerate(content if isinstance(content, list) else [content]):
        where = f"{path}.content[{j}]"
        kind = (
            "text"
            if isinstance(item, str)
            else item.get("type")
            if isinstance(item, dict)
            else None
        )
        if kind == "text":
            texts.append(item if isinstance(item, str) else str(item.get("text", "")))
        elif kind == "image":
            moved.append(_image_part(item, where))
        elif kind == "document":
            moved.append(_document_part(item, where))
        else:
            raise Untranslatable(
                f"{where}.type", f"tool result content {kind!r} has no Chat Completions counterpart"
            )
    text = "\n".join(texts)
    if block.get("is_error"):
        text = f"Error: {text}"
    if keep and isinstance(block.get("cache_control"), dict):
        return [_kept({"type": "text", "text": text}, block, keep)], moved
    return text, moved


def _user_parts(
    blocks: list[Any], path: str, keep: bool = False
) -> tuple[list[dict[str, Any]], list[Any]]:
    """(tool messages, content parts) of a user turn's blocks (with their breakpoints
    when the upstream takes them: *keep*)."""
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        where = f"{path}[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text = string_at(block.get("text"), f"{where}.text")
            parts.append(_kept({"type": "text", "text": text}, block, keep))
        elif kind == "image":
            parts.append(_image_part(block, where))
        elif kind == "document":
            parts.append(_document_part(block, where))
        elif kind == "tool_result":
            result, moved = _tool_result(block, where, keep)
            tools.append(
                {
                    "role": "tool",
                    "tool_call_id": str(block.get("tool_use_id", "")),
                    "content": result,
                }
            )
            parts.extend(moved)
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            raise Untranslatable(
                f"{where}.type", f"content block {kind!r} has no Chat Completions counterpart"
            )
    return tools, parts


def _joined(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Content parts as a plain string when they are all text (what every OpenAI-
    compatible server takes), else the list (and when a part holds a breakpoint)."""
    if all(p["type"] == "text" and "cache_control" not in p for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _assistant_message(blocks: Any, path: str) -> dict[str, Any]:
    if isinstance(blocks, str):
        return {"role": "assistant", "content": blocks}
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(blocks if isinstance(blocks, list) else []):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(string_at(block.get("text"), f"{path}[{i}].text"))
        elif kind == "thinking":
            thinking.append(string_at(block.get("thinking"), f"{path}[{i}].thinking"))
        elif kind in ("tool_use", "server_tool_use"):
            calls.append(
                {
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name", "")),
                        "arguments": json.dumps(block.get("input") or {}),
                    },
                }
            )
        elif kind == "redacted_thinking":
            continue
        else:
            raise Untranslatable(
                f"{path}[{i}].type",
                f"assistant content block {kind!r} has no Chat Completions counterpart",
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    return message


def _tools(tools: Any) -> list[dict[str, Any]]:
    result = []
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        if not isinstance(tool, dict):
            raise Untranslatable(f"tools[{i}]", "a tool is an object")
        kind = tool.get("type")
        if kind not in (None, "custom") or "input_schema" not in tool:
            raise Untranslatable(
                f"tools[{i}]",
                f"server tool {kind or tool.get('name')!r} runs only inside Anthropic's API; "
                "the upstream speaks Chat Completions (define it as a client tool with an input_schema)",
            )
        result.append(
            chat_tool(tool.get("name"), tool.get("input_schema"), tool.get("description"))
        )
    return result


def _tool_choice(choice: Any, request: dict[str, Any]) -> None:
    if not isinstance(choice, dict):
        return
    kind = choice.get("type")
    if kind == "auto":
        request["tool_choice"] = "auto"
    elif kind == "any":
        request["tool_choice"] = "required"
    elif kind == "none":
        request["tool_choice"] = "none"
    elif kind == "tool":
        request["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    if choice.get("disable_parallel_tool_use") and kind != "none":
        request["parallel_tool_calls"] = False


def _reasoning_effort(thinking: Any, output_config: Any) -> str | None:
    if not isinstance(thinking, dict):
        return None
    kind = thinking.get("type")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if isinstance(budget, int):
            for bound, effort in _EFFORT_BY_BUDGET:
                if budget <= bound:
                    return effort
        return "high"
    if kind == "adaptive":
        wanted = output_config.get("effort") if isinstance(output_config, dict) else None
        if not isinstance(wanted, str):
            return "medium"
        return {"max": "high", "xhigh": "high"}.get(wanted, wanted)
    return None


def chat_request(
    document: Mapping[str, Any],
    *,
    max_tokens_field: str = "max_tokens",
    cache_control: bool = False,
) -> dict[str, Any]:
    """The chat completion request for a Messages request *document*.

    *max_tokens_field* is what the upstream calls the output limit (``max_tokens`` for
    most OpenAI-compatible servers, ``max_completion_tokens`` for OpenAI itself). With
    *cache_control* (an upstream that takes Anthropic's breakpoints on content parts:
    OpenRouter), the client's ``cache_control`` on system and user text blocks and tool
    results is kept; other upstreams get none (most ignore it, some refuse the request).

    Raises:
        Untranslatable: a field that would change the answer has no counterpart.
    """
    for key, why in _REFUSED.items():
        if document.get(key):
            raise Untranslatable(key, why)
    messages: list[dict[str, Any]] = []
    system = document.get("system")
    if (
        cache_control
        and isinstance(system, list)
        and any(isinstance(b, dict) and "cache_control" in b for b in system)
    ):
        parts = []
        for i, block in enumerate(system):
            text = string_at(object_at(block, f"system[{i}]").get("text"), f"system[{i}].text")
            parts.append(_kept({"type": "text", "text": text}, block, True))
        messages.append({"role": "system", "content": parts})
    elif text := _text_lines(system, "system"):
        messages.append({"role": "system", "content": text})
    turns = document.get("messages")
    if not isinstance(turns, list):
        raise Untranslatable("messages", "must be a list of turns")
    for i, turn in enumerate(turns):
        path = f"messages[{i}].content"
        if not isinstance(turn, dict):
            raise Untranslatable(f"messages[{i}]", "a turn is an object with role and content")
        role, content = turn.get("role"), turn.get("content")
        if role == "assistant":
            messages.append(_assistant_message(content, path))
        elif role == "system":
            messages.append({"role": "system", "content": _text_lines(content, path)})
        elif isinstance(content, str):
            messages.append({"role": "user", "content": content})
        elif isinstance(content, list):
            tools, parts = _user_parts(content, path, cache_control)
            messages.extend(tools)  # results first, right after the assistant's calls
            if parts:
                messages.append({"role": "user", "content": _joined(parts)})
        else:
            raise Untranslatable(path, "must be a string or a list of content blocks")
    request: dict[str, Any] = {"model": document.get("model"), "messages": messages}
    if isinstance(document.get("max_tokens"), int):
        request[max_tokens_field] = document["max_tokens"]
    for key in ("temperature", "top_p"):
        if document.get(key) is not None:
            request[key] = document[key]
    stops = document.get("stop_sequences")
    if isinstance(stops, list) and stops:
        request["stop"] = stops
    if document.get("stream") is True:
        request["stream"] = True
        # Always: the usage comes in the stream's last chunk (Anthropic always reports it).
        request["stream_options"] = {"include_usage": True}
    if document.get("tools"):
        request["tools"] = _tools(document["tools"])
    _tool_choice(document.get("tool_choice"), request)
    metadata = document.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        request["user"] = metadata["user_id"]
    effort = _reasoning_effort(document.get("thinking"), document.get("output_config"))
    if effort is not None:
        request["reasoning_effort"] = effort
    output = document.get("output_config")
    fmt = output.get("format") if isinstance(output, dict) else document.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        request["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": fmt.get("schema") or {}},
        }
    return request


def count_tokens_estimate(document: Mapping[str, Any]) -> int:
    """An estimate of a Messages request's input tokens (``/v1/messages/count_tokens``
    where the upstream has no such endpoint): a quarter of the characters of its system
    prompt, turns and tools, as JSON — about right for English and code; no tokenizer."""
    counted = {k: document.get(k) for k in ("system", "messages", "tools") if document.get(k)}
    return max(1, math.ceil(len(json.dumps(counted)) / 4))


def _content_blocks(message: Mapping[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    blocks: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    thought, text = split_content(message.get("content"))
    if not isinstance(reasoning, str) or not reasoning:
        reasoning = thought  # Mistral's thinking parts
    if reasoning:
        blocks.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if text:
        blocks.append({"type": "text", "text": text})
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        blocks.append({"type": "text", "text": refusal})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") or {}
        arguments = function.get("arguments") or "{}"
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            parsed = {"arguments": arguments}
        blocks.append(
            {
                "type": "tool_use",
                "id": str(call.get("id") or new_id("toolu_")),
                "name": str(function.get("name", "")),
                "input": parsed if isinstance(parsed, dict) else {"value": parsed},
            }
        )
    return blocks, bool(calls)


def messages_response(document: Mapping[str, Any], model: str | None) -> dict[str, Any]:
    """The Messages answer for a chat completion *document* (its first choice).

    Raises:
        UnmappableAnswer: a content part that is neither text nor thinking.
    """
    choice, message = first_message(document)
    blocks, called = _content_blocks(message)
    stop = stop_from_finish(choice.get("finish_reason"), called)
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        stop = "refusal"
    chat_id = document.get("id")
    return {
        "id": chat_id
        if isinstance(chat_id, str) and chat_id.startswith("msg_")
        else new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": document.get("model") or model,
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": anthropic_usage(document.get("usage") or {}),
    }


# -- the stream ------------------------------------------------------------------------

_TEXT: Final = 1
_THINKING: Final = 2
_TOOL: Final = 3
_PING: Final = b'event: ping\ndata: {"type":"ping"}\n\n'


def _event(name: str, document: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dumps(document) + b"\n\n"


def _text_delta(index: int, kind: str, key: str, text: str) -> bytes:
    # The per-chunk path: the fixed parts as bytes, only the text encoded.
    return b"".join(
        (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":',
            str(index).encode(),
            b',"delta":{"type":"',
            kind.encode(),
            b'","',
            key.encode(),
            b'":',
            dumps(text),
            b"}}\n\n",
        )
    )


class MessagesFromChatStream(FromChatStream):
    """Chat Completions chunks in, Messages events out (see the module's description).

    `feed` takes each piece of the upstream's body and returns the events it completes;
    `end` is called when the upstream's body has ended (an error of the gateway's own comes as
    an event in either API's error shape, and is passed on in Anthropic's).
    """

    __slots__ = (
        "block",
        "block_kind",
        "model",
        "next_index",
        "saw_tool",
        "tool_ids",
        "tools",
    )

    def __init__(self, model: str | None) -> None:
        super().__init__()
        self.model = model
        #: The open block's index and kind (0: none open).
        self.block = -1
        self.block_kind = 0
        self.next_index = 0
        #: OpenAI tool-call index → Anthropic block index, and call id → block index.
        self.tools: dict[int, int] = {}
        self.tool_ids: dict[Any, int] = {}
        self.saw_tool = False

    def _comment(self, out: list[bytes]) -> None:
        out.append(_PING)  # a comment (keep-alive): Anthropic's own keep-alive

    # -- internals ---------------------------------------------------------------------

    def _start(self, chunk: Mapping[str, Any], out: list[bytes]) -> None:
        chunk_id = chunk.get("id")
        message_id = (
            chunk_id
            if isinstance(chunk_id, str) and chunk_id.startswith("msg_")
            else new_id("msg_")
        )
        model = chunk.get("model") or self.model
        out.append(
            _event(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": message_id,
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {
                            "input_tokens": 0,
                            "cache_creation_input_tokens": 0,
                            "cache_read_input_tokens": 0,
                            "output_tokens": 0,
                        },
                    },
                },
            )
        )

    def _open(self, kind: int, block: dict[str, Any], out: list[bytes]) -> int:
        self._close_block(out)
        index = self.next_index
        self.next_index += 1
        self.block = index
        self.block_kind = kind
        out.append(
            _event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        )
        return index

    def _close_block(self, out: list[bytes]) -> None:
        if self.block_kind:
            out.append(
                b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
                % self.block
            )
            self.block_kind = 0

    def _reasoning(self, text: str, out: list[bytes]) -> None:
        if self.block_kind != _THINKING:
            self._open(_THINKING, {"type": "thinking", "thinking": "", "signature": ""}, out)
        out.append(_text_delta(self.block, "thinking_delta", "thinking", text))

    def _content(self, text: str, out: list[bytes]) -> None:
        if self.block_kind != _TEXT:
            self._open(_TEXT, {"type": "text", "text": ""}, out)
        out.append(_text_delta(self.block, "text_delta", "text", text))

    def _tool_call(
        self, index: int, call_id: Any, function: dict[str, Any], out: list[bytes]
    ) -> None:
        # A call's id names it over its index: Gemini repeats the id on every chunk
        # of a call, with an index that changes between them.
        known = self.tool_ids.get(call_id) if call_id else self.tools.get(index)
        if known is None:
            self.saw_tool = True
            block_id = str(call_id) if call_id else new_id("toolu_")
            name = function.get("name")
            known = self._open(
                _TOOL,
                {"type": "tool_use", "id": block_id, "name": name or "", "input": {}},
                out,
            )
            if call_id:
                self.tool_ids[call_id] = known
        self.tools[index] = known
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            if known != self.block or self.block_kind != _TOOL:
                # Anthropic's blocks cannot interleave: an earlier call's arguments after
                # a later block opened have nowhere to go. (No provider is known to do it.)
                return
            out.append(_text_delta(known, "input_json_delta", "partial_json", arguments))

    def _close(self, out: list[bytes]) -> None:
        if self.closed:
            return
        if not self.started:
            self.started = True
            self._start({}, out)
        self._close_block(out)
        self.closed = True
        usage = anthropic_usage(self.usage or {})
        out.append(
            _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": stop_from_finish(self.finish_reason, self.saw_tool),
                        "stop_sequence": None,
                    },
                    "usage": usage,
                },
            )
        )
        out.append(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')

    def _error(
        self,
        out: list[bytes],
        status: int,
        message: str,
        kind: str | None = None,
        code: str | None = None,
    ) -> None:
        self.closed = True
        out.append(_event("error", anthropic_error(status, message, kind)))
