"""A Chat Completions client (``POST /v1/chat/completions``) in front of an upstream that
speaks only Anthropic's Messages: the request becomes a Messages request, the answer — a
JSON document or an event stream — becomes a chat completion (no I/O).

`ChatFromMessagesStream` is the state machine for the stream: Messages events in, chat
chunks out, every chunk with the same ``id``, ``created`` and ``model``; tool calls are
numbered from 0 in the order they start (not by Anthropic's block index); the finish
reason comes once, the usage chunk only when the client asked for it, ``[DONE]`` last.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Final

from filterproxy.http.body import BadBody, strict_loads
from filterproxy.http.sse import SSEEvent
from filterproxy.translate.common import (
    StreamTranslation,
    UnmappableAnswer,
    Untranslatable,
    chat_usage,
    dumps,
    error_fields,
    finish_from_stop,
    new_id,
    number_at,
    object_at,
    openai_error,
    string_at,
    text_of,
)

__all__ = [
    "MAX_CACHE_BREAKPOINTS",
    "ChatFromMessagesStream",
    "add_cache_breakpoints",
    "cache_breakpoints",
    "chat_response",
    "messages_request",
]

#: Anthropic's thinking budget for each reasoning_effort.
_BUDGETS: Final = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096, "xhigh": 8192}
#: How many ``cache_control`` breakpoints Anthropic takes in one request (more is a 400).
MAX_CACHE_BREAKPOINTS: Final = 4
_EPHEMERAL: Final = {"type": "ephemeral"}


def _cached(target: dict[str, Any], source: Any) -> dict[str, Any]:
    """*target* with the ``cache_control`` of *source* (a content part, message or tool),
    if it has one: a prompt-caching breakpoint the client set is kept."""
    if isinstance(source, dict):
        marker = source.get("cache_control")
        if isinstance(marker, dict):
            target["cache_control"] = marker
    return target


def _data_url(url: str, path: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media = header[5:].split(";", 1)[0] or "image/png"
        if ";base64" not in header:
            raise Untranslatable(path, "a data: URL must be base64-encoded")
        return {"type": "base64", "media_type": media, "data": data}
    return {"type": "url", "url": url}


def _user_blocks(content: Any, path: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if content is not None and not isinstance(content, list):
        raise Untranslatable(path, "must be a string or a list of content parts")
    blocks: list[dict[str, Any]] = []
    for i, part in enumerate(content if isinstance(content, list) else []):
        where = f"{path}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if text := string_at(part.get("text"), f"{where}.text"):
                blocks.append(_cached({"type": "text", "text": text}, part))
        elif kind == "image_url":
            image = part.get("image_url")
            if isinstance(image, dict):
                url = string_at(image.get("url"), f"{where}.image_url.url")
            else:
                url = string_at(image, f"{where}.image_url")
            source = _data_url(url, where)
            blocks.append(_cached({"type": "image", "source": source}, part))
        elif kind == "file":
            file = object_at(part.get("file"), f"{where}.file")
            data = file.get("file_data")
            if not isinstance(data, str) or not data.startswith("data:"):
                raise Untranslatable(
                    f"{where}.file", "only inline files (file_data as a data: URL) can be sent"
                )
            source = _data_url(data, where)
            blocks.append(_cached({"type": "document", "source": source}, part))
        else:
            raise Untranslatable(
                f"{where}.type", f"content part {kind!r} has no Messages API counterpart"
            )
    return blocks


def _assistant_blocks(message: Mapping[str, Any], path: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    content = message.get("content")
    text = text_of(content, path=f"{path}.content")
    if text:  # never an empty text block: Anthropic refuses it
        block: dict[str, Any] = {"type": "text", "text": text}
        for part in content if isinstance(content, list) else []:
            _cached(block, part)
        blocks.append(block)
    calls = message.get("tool_calls")
    for j, call in enumerate(calls if isinstance(calls, list) else []):
        where = f"{path}.tool_calls[{j}]"
        if not isinstance(call, dict):
            raise Untranslatable(where, "a tool call is an object with a function")
        function = object_at(call.get("function"), f"{where}.function")
        arguments = function.get("arguments") or "{}"
        try:
            parsed = strict_loads(arguments) if isinstance(arguments, str) else arguments
        except BadBody as e:
            raise Untranslatable(f"{where}.function.arguments", f"not a JSON object: {e}") from None
        if not isinstance(parsed, dict):
            raise Untranslatable(
                f"{where}.function.arguments",
                "must be a JSON object (the Messages API stores tool input as an object)",
            )
        blocks.append(
            {
                "type": "tool_use",
                "id": str(call.get("id", "")),
                "name": string_at(function.get("name"), f"{where}.function.name"),
                "input": parsed,
            }
        )
    return blocks


def _result_content(content: Any, path: str) -> str | list[dict[str, Any]]:
    """A tool message's content as a tool result's: its text, or blocks when it holds
    images or breakpoints (a tool result takes both)."""
    if not isinstance(content, list):
        return string_at(content, path)
    blocks = _user_blocks(content, path)
    if all(b["type"] == "text" and "cache_control" not in b for b in blocks):
        return "".join(b["text"] for b in blocks)
    return blocks


def _system_blocks(message: Mapping[str, Any], path: str) -> list[dict[str, Any]]:
    """A system message's text blocks, each with the breakpoint its part (or, for the
    last, the message) carries."""
    content = message.get("content")
    if isinstance(content, str):
        blocks = [{"type": "text", "text": content}] if content else []
    else:
        blocks = [
            _cached({"type": "text", "text": p["text"]}, p)
            for p in (content if isinstance(content, list) else [])
            if isinstance(p, dict) and p.get("type") == "text" and p.get("text")
        ]
        if any(not isinstance(b["text"], str) for b in blocks):
            text_of(content, path=path)  # names the part whose text is not a string
    if blocks:
        _cached(blocks[-1], message)
    return blocks


def _messages(turns: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(Anthropic turns, system text blocks) of an OpenAI ``messages`` list."""
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for i, message in enumerate(turns):
        path = f"messages[{i}]"
        if not isinstance(message, dict):
            raise Untranslatable(path, "a message is an object with a role")
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_system_blocks(message, f"{path}.content"))
            continue
        if role == "tool":
            content = message.get("content")
            result = _cached(
                {
                    "type": "tool_result",
                    "tool_use_id": str(message.get("tool_call_id", "")),
                    "content": _result_content(content, f"{path}.content"),
                },
                message,
            )
            # Every result of one assistant turn goes in one user turn, before its text.
            if out and out[-1]["role"] == "user" and out[-1].get("_results"):
                out[-1]["content"].append(result)
            else:
                out.append({"role": "user", "content": [result], "_results": True})
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), f"{path}.content")
            if blocks:
                _cached(blocks[-1], message)
            if out and out[-1]["role"] == "user" and out[-1].get("_results"):
                out[-1]["content"].extend(blocks)
                out[-1].pop("_results")
            elif blocks:
                out.append({"role": "user", "content": blocks})
            continue
        if role == "assistant":
            blocks = _assistant_blocks(message, path)
            if blocks:
                _cached(blocks[-1], message)
                out.append({"role": "assistant", "content": blocks})
            continue
        if role == "function":
            raise Untranslatable(
                f"{path}.role", "the legacy 'function' role is not supported; use tools"
            )
        raise Untranslatable(f"{path}.role", f"unknown role {role!r}")
    for turn in out:
        turn.pop("_results", None)
    return out, system


def _tools(tools: Any) -> list[dict[str, Any]]:
    result = []
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else tool
            raise Untranslatable(
                f"tools[{i}].type", f"tool type {kind!r} has no Messages API counterpart"
            )
        function = object_at(tool.get("function"), f"tools[{i}].function")
        entry: dict[str, Any] = {
            "name": string_at(function.get("name"), f"tools[{i}].function.name"),
            "input_schema": object_at(function.get("parameters"), f"tools[{i}].function.parameters")
            or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            entry["description"] = function["description"]
        # LiteLLM and Anthropic-compatible clients put the breakpoint on the tool.
        result.append(_cached(_cached(entry, function), tool))
    return result


def _tool_choice(document: Mapping[str, Any]) -> dict[str, Any] | None:
    choice = document.get("tool_choice")
    result: dict[str, Any] | None
    if choice == "auto":
        result = {"type": "auto"}
    elif choice == "required":
        result = {"type": "any"}
    elif choice == "none":
        result = {"type": "none"}
    elif isinstance(choice, dict):
        function = object_at(choice.get("function"), "tool_choice.function")
        result = {"type": "tool", "name": function.get("name")}
    else:
        result = None
    if document.get("parallel_tool_calls") is False and (result or {}).get("type") != "none":
        result = {**(result or {"type": "auto"}), "disable_parallel_tool_use": True}
    return result


def messages_request(
    document: Mapping[str, Any], *, default_max_tokens: int = 4096
) -> dict[str, Any]:
    """The Messages request for a chat completion request *document*. Anthropic needs
    ``max_tokens``: *default_max_tokens* when the client gave none.

    Raises:
        Untranslatable: a field that would change the answer has no counterpart.
    """
    n = document.get("n")
    if n is not None and n != 1:
        raise Untranslatable(
            "n", "the Messages API returns one answer; send n: 1 (or leave it out)"
        )
    if document.get("logprobs"):
        raise Untranslatable("logprobs", "the Messages API does not return log probabilities")
    modalities = document.get("modalities")
    if isinstance(modalities, list) and any(m != "text" for m in modalities):
        raise Untranslatable("modalities", "the Messages API answers in text only")
    if document.get("audio"):
        raise Untranslatable("audio", "the Messages API answers in text only")
    if document.get("functions"):
        raise Untranslatable("functions", "legacy functions are not supported; use tools")
    turns = document.get("messages")
    if not isinstance(turns, list):
        raise Untranslatable("messages", "must be a list of messages")
    messages, system = _messages(turns)
    request: dict[str, Any] = {"model": document.get("model"), "messages": messages}
    if any("cache_control" in block for block in system):
        request["system"] = system  # blocks, to keep the client's breakpoints
    elif system:
        request["system"] = "\n".join(block["text"] for block in system)
    limit = document.get("max_completion_tokens") or document.get("max_tokens")
    request["max_tokens"] = limit if isinstance(limit, int) and limit > 0 else default_max_tokens
    if document.get("temperature") is not None:
        # Anthropic's range is 0..1 (OpenAI's 0..2); newer models refuse top_p with it.
        request["temperature"] = min(number_at(document["temperature"], "temperature"), 1.0)
    elif document.get("top_p") is not None:
        request["top_p"] = document["top_p"]
    stop = document.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    stops = [s for s in stops if isinstance(s, str) and s.strip()]
    if stops:
        request["stop_sequences"] = stops
    if document.get("stream") is True:
        request["stream"] = True
    if document.get("tools"):
        request["tools"] = _tools(document["tools"])
    choice = _tool_choice(document)
    if choice is not None and (request.get("tools") or choice["type"] == "none"):
        request["tool_choice"] = choice
    user = document.get("user") or document.get("safety_identifier")
    if isinstance(user, str) and user and "@" not in user:
        request["metadata"] = {"user_id": user}
    effort = document.get("reasoning_effort")
    if isinstance(effort, str) and effort in _BUDGETS:
        budget = _BUDGETS[effort]
        request["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if request["max_tokens"] <= budget:
            request["max_tokens"] = budget + default_max_tokens
        request.pop("temperature", None)  # not allowed with thinking
        request.pop("top_p", None)
    fmt = document.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema":
            schema = object_at(fmt.get("json_schema"), "response_format.json_schema")
            schema = schema.get("schema") or {}
            request["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        elif fmt.get("type") == "json_object":
            raise Untranslatable(
                "response_format",
                "json_object has no Messages API counterpart; use json_schema with a schema",
            )
    return request


def _marked(blocks: Any) -> int:
    return (
        sum(1 for b in blocks if isinstance(b, dict) and "cache_control" in b)
        if isinstance(blocks, list)
        else 0
    )


def cache_breakpoints(request: Mapping[str, Any]) -> int:
    """How many ``cache_control`` breakpoints a Messages request sets (tools, system
    blocks, content blocks, and the blocks inside tool results)."""
    count = _marked(request.get("tools")) + _marked(request.get("system"))
    turns = request.get("messages")
    for turn in turns if isinstance(turns, list) else []:
        content = turn.get("content") if isinstance(turn, dict) else None
        if isinstance(content, list):
            count += _marked(content)
            for block in content:
                if isinstance(block, dict) and block.get("type") == "tool_result":
                    count += _marked(block.get("content"))
    return count


def add_cache_breakpoints(request: dict[str, Any]) -> int:
    """Prompt-caching breakpoints for a Messages request *request* (changed in place),
    in the order of the prompt's prefix: the last tool, the system prompt, the last user
    turn — each unless it has one already, and never past Anthropic's limit of four in
    all, the client's own counted. Returns how many were added.

    A breakpoint caches everything before it: an agent's next turn then reads the tools,
    system prompt and the conversation so far from the cache (a tenth of the input
    price) instead of paying for them again.
    """
    room = MAX_CACHE_BREAKPOINTS - cache_breakpoints(request)
    added = 0
    if room > added and _mark_last(request.get("tools")):
        added += 1
    system = request.get("system")
    if room > added and isinstance(system, str) and system:
        request["system"] = system = [{"type": "text", "text": system}]
    if room > added and _mark_last(system):
        added += 1
    turns = request.get("messages")
    for turn in reversed(turns if isinstance(turns, list) else []):
        if isinstance(turn, dict) and turn.get("role") == "user":
            content = turn.get("content")
            if room > added and isinstance(content, str) and content:
                turn["content"] = content = [{"type": "text", "text": content}]
            if room > added and _mark_last(content):
                added += 1
            break
    return added


def _mark_last(blocks: Any) -> bool:
    """Set a breakpoint on the last of *blocks* (tools or content blocks) unless it has
    one or cannot take one (thinking); True when set."""
    if not isinstance(blocks, list) or not blocks or not isinstance(blocks[-1], dict):
        return False
    last = blocks[-1]
    if "cache_control" in last or last.get("type") in ("thinking", "redacted_thinking"):
        return False
    last["cache_control"] = dict(_EPHEMERAL)
    return True


def chat_response(document: Mapping[str, Any], model: str | None) -> dict[str, Any]:
    """The chat completion for a Messages answer *document*.

    Raises:
        UnmappableAnswer: it has no list of content blocks (not an answer to translate).
    """
    content = document.get("content")
    if not isinstance(content, list):
        raise UnmappableAnswer(
            f"the upstream's answer has no list of content blocks: {str(content)[:200]!r}"
        )
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "thinking":
            thinking.append(block.get("thinking", ""))
        elif kind in ("tool_use", "server_tool_use"):
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": json.dumps(block.get("input") or {}),
                    },
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    message_id = str(document.get("id") or new_id(""))
    return {
        "id": "chatcmpl-" + message_id.removeprefix("msg_"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": document.get("model") or model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_from_stop(document.get("stop_reason")),
                "logprobs": None,
            }
        ],
        "usage": chat_usage(document.get("usage") or {}),
    }


# -- the stream ------------------------------------------------------------------------

_DONE: Final = b"data: [DONE]\n\n"
_TAIL: Final = b',"logprobs":null,"finish_reason":null}]}\n\n'
_PING: Final = b": ping\n\n"


class ChatFromMessagesStream(StreamTranslation):
    """Messages events in, Chat Completions chunks out (see the module's description)."""

    __slots__ = (
        "created",
        "finished",
        "id",
        "include_usage",
        "model",
        "prefix",
        "started",
        "tool_of_block",
        "tools",
        "usage",
    )

    def __init__(self, model: str | None, include_usage: bool) -> None:
        super().__init__()
        self.model = model
        self.include_usage = include_usage
        self.id = new_id("chatcmpl-")
        self.created = int(time.time())
        self.started = False
        self.finished = False
        self.tools = 0
        #: Anthropic block index → OpenAI tool-call index.
        self.tool_of_block: dict[int, int] = {}
        self.usage: dict[str, Any] = {}
        self.prefix = b""

    def _event(self, event: SSEEvent, out: list[bytes]) -> None:
        if event.data is None:
            out.append(_PING)
            return
        document = self._json(event.data, out)
        if document is None:
            return
        kind = document.get("type") or event.event
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is not None:
            handler(self, document, out)
        elif "error" in document:
            self._on_error(document, out)

    def _ended(self, out: list[bytes]) -> None:
        # The message never stopped.
        self._error(out, 502, "the upstream's stream ended before the answer was complete")

    # -- internals ---------------------------------------------------------------------

    def _chunk(self, delta: bytes, finish: str | None = None) -> bytes:
        """A chunk whose delta is the JSON *delta*."""
        if not self.prefix:
            self.prefix = (
                b'data: {"id":'
                + dumps(self.id)
                + b',"object":"chat.completion.chunk","created":'
                + str(self.created).encode()
                + b',"model":'
                + dumps(self.model)
                + b',"choices":[{"index":0,"delta":'
            )
        if finish is None:
            return self.prefix + delta + _TAIL
        tail = b',"logprobs":null,"finish_reason":' + dumps(finish) + b"}]}\n\n"
        return self.prefix + delta + tail

    def _on_start(self, document: dict[str, Any], out: list[bytes]) -> None:
        message = document.get("message") or {}
        if isinstance(message.get("model"), str):
            self.model = message["model"]
        if isinstance(message.get("id"), str):
            self.id = "chatcmpl-" + message["id"].removeprefix("msg_")
        if isinstance(message.get("usage"), dict):
            self.usage.update({k: v for k, v in message["usage"].items() if v is not None})
        if not self.started:
            self.started = True
            out.append(self._chunk(b'{"role":"assistant","content":""}'))

    def _on_block_start(self, document: dict[str, Any], out: list[bytes]) -> None:
        block = document.get("content_block") or {}
        kind = block.get("type")
        index = document.get("index")
        if kind in ("tool_use", "server_tool_use") and isinstance(index, int):
            k = self.tools
            self.tools += 1
            self.tool_of_block[index] = k
            arguments = json.dumps(block["input"]) if block.get("input") else ""
            call = {
                "index": k,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": arguments},
            }
            out.append(self._chunk(dumps({"tool_calls": [call]})))
        elif kind == "text" and block.get("text"):
            out.append(self._chunk(dumps({"content": block["text"]})))
        elif kind == "thinking" and block.get("thinking"):
            out.append(self._chunk(dumps({"reasoning_content": block["thinking"]})))

    def _on_delta(self, document: dict[str, Any], out: list[bytes]) -> None:
        delta = document.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            if text:
                out.append(self._chunk(b'{"content":' + dumps(text) + b"}"))
        elif kind == "input_json_delta":
            fragment = delta.get("partial_json")
            k = self.tool_of_block.get(document.get("index", -1))
            if fragment and k is not None:
                out.append(
                    self._chunk(
                        b'{"tool_calls":[{"index":'
                        + str(k).encode()
                        + b',"function":{"arguments":'
                        + dumps(fragment)
                        + b"}}]}"
                    )
                )
        elif kind == "thinking_delta":
            text = delta.get("thinking")
            if text:
                out.append(self._chunk(b'{"reasoning_content":' + dumps(text) + b"}"))

    def _on_message_delta(self, document: dict[str, Any], out: list[bytes]) -> None:
        usage = document.get("usage")
        if isinstance(usage, dict):  # cumulative: the latest value of each count wins
            self.usage.update({k: v for k, v in usage.items() if v is not None})
        reason = (document.get("delta") or {}).get("stop_reason")
        if not self.finished:
            self.finished = True
            out.append(self._chunk(b"{}", finish_from_stop(reason)))

    def _on_stop(self, document: dict[str, Any], out: list[bytes]) -> None:
        if not self.finished:
            self.finished = True
            out.append(self._chunk(b"{}", "stop"))
        if self.include_usage:
            out.append(
                b"data: "
                + dumps(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": chat_usage(self.usage),
                    }
                )
                + b"\n\n"
            )
        out.append(_DONE)
        self.closed = True

    def _on_ping(self, document: dict[str, Any], out: list[bytes]) -> None:
        out.append(_PING)

    def _on_ignored(self, document: dict[str, Any], out: list[bytes]) -> None:
        pass

    def _on_error(self, document: dict[str, Any], out: list[bytes]) -> None:
        fields = error_fields(document)
        message, kind, code = fields if fields else (json.dumps(document), None, None)
        status = 529 if kind == "overloaded_error" else 500
        self._error(out, status, message, kind, code)

    def _error(
        self,
        out: list[bytes],
        status: int,
        message: str,
        kind: str | None = None,
        code: str | None = None,
    ) -> None:
        # The OpenAI SDK raises APIError on any event whose data has an "error" key.
        self.closed = True
        body = dumps(openai_error(status, message, kind, code))
        out.append(b"event: error\ndata: " + body + b"\n\n")


_HANDLERS: Final = {
    "message_start": ChatFromMessagesStream._on_start,
    "content_block_start": ChatFromMessagesStream._on_block_start,
    "content_block_delta": ChatFromMessagesStream._on_delta,
    "content_block_stop": ChatFromMessagesStream._on_ignored,
    "message_delta": ChatFromMessagesStream._on_message_delta,
    "message_stop": ChatFromMessagesStream._on_stop,
    "ping": ChatFromMessagesStream._on_ping,
    "error": ChatFromMessagesStream._on_error,
}
