"""Anthropic's Messages API over AWS Bedrock's Converse API, for the models on Bedrock
that are not Claude (no I/O).

A Messages request (what a client sends to ``/v1/messages``, or what the other
translations make of a Chat Completions or Responses request) becomes a Converse request
body (`converse_request`); Converse's whole answer becomes a Messages answer
(`messages_response`), and the decoded events of ConverseStream become Messages SSE bytes
(`MessagesFromConverseStream`). The wire names are those of Bedrock's service model
(camelCase); image and document bytes travel as base64 strings, as the client sent them.

Prompt caching survives the trip: each ``cache_control`` becomes a ``cachePoint`` right
after what it marks (with its ``ttl``), in the system prompt, the turns and the tools.
Thinking signatures and redacted thinking are carried byte for byte, both ways.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any, Final

from filterproxy.translate.common import (
    SHAPE_ERRORS,
    UnmappableAnswer,
    Untranslatable,
    anthropic_error,
    dumps,
    new_id,
    number_at,
    object_at,
    string_at,
)

__all__ = ["MessagesFromConverseStream", "converse_request", "messages_response"]

#: Request fields dropped without a word: the model goes in the URL, the path chooses
#: streaming, and neither the caller's id nor Anthropic's service tier changes the answer.
_HARMLESS: Final = frozenset({"model", "stream", "metadata", "service_tier"})
#: Request fields the translation carries (or drops, above).
_KNOWN: Final = _HARMLESS | {
    "messages",
    "system",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "tools",
    "tool_choice",
    "thinking",
    "output_config",
    "output_format",
    "cache_control",
}
#: What a tool definition may hold.
_TOOL_KEYS: Final = frozenset(
    {"type", "name", "description", "input_schema", "cache_control", "strict"}
)
_IMAGE_FORMATS: Final = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
_DOCUMENT_FORMATS: Final = {
    "application/pdf": "pdf",
    "text/plain": "txt",
    "text/csv": "csv",
    "text/html": "html",
    "text/markdown": "md",
    "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
}
_CACHE_TTLS: Final = frozenset({"5m", "1h"})
#: What a Converse document's name may not hold (it takes letters, digits, single
#: spaces, hyphens, parentheses and square brackets).
_NOT_IN_NAME: Final = re.compile(r"[^A-Za-z0-9\s\-()\[\]]+")
_NAME_LIMIT: Final = 200

_STOP_REASONS: Final = {
    "end_turn": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
    "guardrail_intervened": "refusal",
    "content_filtered": "refusal",
    "model_context_window_exceeded": "model_context_window_exceeded",
}


# -- the request -----------------------------------------------------------------------


def _cache_point(marker: Any, path: str) -> dict[str, Any]:
    """The ``cachePoint`` block for a ``cache_control`` *marker*.

    Raises:
        Untranslatable: a marker of another type, or a TTL Bedrock has not.
    """
    marker = object_at(marker, path)
    kind = marker.get("type", "ephemeral")
    if kind != "ephemeral":
        raise Untranslatable(f"{path}.type", f"cache_control type {kind!r} is not known")
    point: dict[str, Any] = {"type": "default"}
    ttl = marker.get("ttl")
    if ttl is not None:
        if ttl not in _CACHE_TTLS:
            raise Untranslatable(f"{path}.ttl", f"{ttl!r}: Bedrock caches for 5m or 1h")
        point["ttl"] = ttl
    return {"cachePoint": point}


def _system(system: Any) -> list[dict[str, Any]]:
    if isinstance(system, str):
        return [{"text": system}] if system else []
    if not isinstance(system, list):
        raise Untranslatable("system", "must be a string or a list of text blocks")
    blocks: list[dict[str, Any]] = []
    for i, block in enumerate(system):
        path = f"system[{i}]"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise Untranslatable(path, "the system prompt is text blocks only")
        text = string_at(block.get("text"), f"{path}.text")
        if text:  # (Converse refuses an empty system text)
            blocks.append({"text": text})
        if block.get("cache_control") is not None:
            blocks.append(_cache_point(block["cache_control"], f"{path}.cache_control"))
    return blocks


def _image(block: Mapping[str, Any], path: str) -> dict[str, Any]:
    source = object_at(block.get("source"), f"{path}.source")
    kind = source.get("type")
    if kind != "base64":
        raise Untranslatable(
            f"{path}.source.type",
            f"image source {kind!r} has no Bedrock Converse counterpart; send the image as base64",
        )
    media = source.get("media_type")
    image_format = _IMAGE_FORMATS.get(media) if isinstance(media, str) else None
    if image_format is None:
        raise Untranslatable(
            f"{path}.source.media_type", f"{media!r}: Bedrock takes png, jpeg, gif and webp images"
        )
    data = string_at(source.get("data"), f"{path}.source.data")
    return {"image": {"format": image_format, "source": {"bytes": data}}}


def _document_name(title: Any, path: str) -> str:
    """A Converse document's name: the client's title with what a name may not hold
    made spaces, or one made of the block's position (``document-2-0``)."""
    if isinstance(title, str):
        name = " ".join(_NOT_IN_NAME.sub(" ", title).split())[:_NAME_LIMIT].strip()
        if name:
            return name
    return "-".join(["document", *re.findall(r"\d+", path)])


def _document(block: Mapping[str, Any], path: str) -> dict[str, Any]:
    source = object_at(block.get("source"), f"{path}.source")
    kind = source.get("type")
    if kind == "base64":
        media = source.get("media_type")
        document_format = _DOCUMENT_FORMATS.get(media) if isinstance(media, str) else None
        if document_format is None:
            raise Untranslatable(
                f"{path}.source.media_type",
                f"{media!r} has no Bedrock Converse document format",
            )
        data = string_at(source.get("data"), f"{path}.source.data")
    elif kind == "text":
        document_format = "txt"
        text = string_at(source.get("data"), f"{path}.source.data")
        data = base64.b64encode(text.encode()).decode("ascii")
    else:
        raise Untranslatable(
            f"{path}.source.type",
            f"document source {kind!r} has no Bedrock Converse counterpart; "
            "send the document as base64 or text",
        )
    citations = block.get("citations")
    if isinstance(citations, dict) and citations.get("enabled"):
        raise Untranslatable(
            f"{path}.citations",
            "the translation of Bedrock's answer carries no citations; leave them off",
        )
    document: dict[str, Any] = {
        "format": document_format,
        "name": _document_name(block.get("title"), path),
        "source": {"bytes": data},
    }
    context = string_at(block.get("context"), f"{path}.context")
    if context:
        document["context"] = context
    return {"document": document}


def _tool_result(block: Mapping[str, Any], path: str) -> tuple[dict[str, Any], Any, str]:
    """The ``toolResult`` block of a ``tool_result``, and the ``cache_control`` (and its
    path) of the last of its items that holds one: Converse takes no cache point inside
    a tool result, so it goes right after it."""
    result: dict[str, Any] = {
        "toolUseId": string_at(block.get("tool_use_id"), f"{path}.tool_use_id"),
    }
    items: list[dict[str, Any]] = []
    marker: Any = None
    where = path
    content = block.get("content")
    if isinstance(content, str):
        if content:
            items.append({"text": content})
    elif isinstance(content, list):
        for k, item in enumerate(content):
            at = f"{path}.content[{k}]"
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "text":
                items.append({"text": string_at(item.get("text"), f"{at}.text")})
            elif kind == "image":
                items.append(_image(item, at))
            elif kind == "document":
                items.append(_document(item, at))
            else:
                raise Untranslatable(
                    f"{at}.type",
                    f"tool result content {kind!r} has no Bedrock Converse counterpart",
                )
            if item.get("cache_control") is not None:
                marker, where = item["cache_control"], f"{at}.cache_control"
    elif content is not None:
        raise Untranslatable(f"{path}.content", "must be a string or a list of content blocks")
    result["content"] = items
    if block.get("is_error") is True:
        result["status"] = "error"
    if block.get("cache_control") is not None:
        marker, where = block["cache_control"], f"{path}.cache_control"
    return {"toolResult": result}, marker, where


def _block(block: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    """The Converse content block for a Messages one (None for an empty text, which
    Converse refuses); a ``tool_result`` is `_tool_result`'s."""
    kind = block.get("type")
    if kind == "text":
        text = string_at(block.get("text"), f"{path}.text")
        return {"text": text} if text else None
    if kind == "image":
        return _image(block, path)
    if kind == "document":
        return _document(block, path)
    if kind == "tool_use":
        return {
            "toolUse": {
                "toolUseId": string_at(block.get("id"), f"{path}.id"),
                "name": string_at(block.get("name"), f"{path}.name"),
                "input": object_at(block.get("input"), f"{path}.input"),
            }
        }
    if kind == "thinking":
        reasoning = {"text": string_at(block.get("thinking"), f"{path}.thinking")}
        signature = string_at(block.get("signature"), f"{path}.signature")
        if signature:
            reasoning["signature"] = signature
        return {"reasoningContent": {"reasoningText": reasoning}}
    if kind == "redacted_thinking":
        data = string_at(block.get("data"), f"{path}.data")
        return {"reasoningContent": {"redactedContent": data}}
    raise Untranslatable(
        f"{path}.type", f"content block {kind!r} has no Bedrock Converse counterpart"
    )


def _content(content: Any, path: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise Untranslatable(path, "must be a string or a list of content blocks")
    blocks: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        where = f"{path}[{j}]"
        if not isinstance(block, dict):
            raise Untranslatable(where, "a content block is an object")
        marker = block.get("cache_control")
        at = f"{where}.cache_control"
        if block.get("type") == "tool_result":
            converted, marker, at = _tool_result(block, where)
            blocks.append(converted)
        elif (found := _block(block, where)) is not None:
            blocks.append(found)
        if marker is not None:
            blocks.append(_cache_point(marker, at))
    return blocks


def _messages(turns: Any) -> list[dict[str, Any]]:
    """Converse's turns, consecutive turns of one role merged (Converse wants them to
    alternate)."""
    if not isinstance(turns, list):
        raise Untranslatable("messages", "must be a list of turns")
    messages: list[dict[str, Any]] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise Untranslatable(f"messages[{i}]", "a turn is an object with role and content")
        role = turn.get("role")
        if role not in ("user", "assistant"):
            raise Untranslatable(
                f"messages[{i}].role", f"{role!r}: a turn is the user's or the assistant's"
            )
        blocks = _content(turn.get("content"), f"messages[{i}].content")
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    return messages


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise Untranslatable("tools", "must be a list of tools")
    converted: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        path = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise Untranslatable(path, "a tool is an object")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise Untranslatable(
                f"{path}.type",
                f"server tool {kind!r} runs only inside Anthropic's API; Bedrock's Converse "
                "API takes client tools (a name and an input_schema)",
            )
        for key, value in tool.items():
            if key not in _TOOL_KEYS and value is not None:
                raise Untranslatable(f"{path}.{key}", "has no Bedrock Converse counterpart")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise Untranslatable(f"{path}.input_schema", "a tool needs an input_schema object")
        spec: dict[str, Any] = {
            "name": string_at(tool.get("name"), f"{path}.name"),
            "inputSchema": {"json": schema},
        }
        description = string_at(tool.get("description"), f"{path}.description")
        if description:
            spec["description"] = description
        if isinstance(tool.get("strict"), bool):
            spec["strict"] = tool["strict"]
        converted.append({"toolSpec": spec})
        if tool.get("cache_control") is not None:
            converted.append(_cache_point(tool["cache_control"], f"{path}.cache_control"))
    return converted


def _tool_choice(choice: Any) -> tuple[str | None, dict[str, Any] | None]:
    """(the ``tool_choice`` type, Converse's ``toolChoice`` for it: None for none)."""
    if choice is None:
        return None, None
    choice = object_at(choice, "tool_choice")
    kind = choice.get("type")
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        raise Untranslatable(
            "tool_choice.disable_parallel_tool_use",
            "Bedrock's Converse API cannot hold the model to one tool call per turn",
        )
    if kind == "auto":
        return kind, {"auto": {}}
    if kind == "any":
        return kind, {"any": {}}
    if kind == "tool":
        return kind, {"tool": {"name": string_at(choice.get("name"), "tool_choice.name")}}
    if kind == "none":
        return kind, None
    raise Untranslatable("tool_choice.type", f"{kind!r} is not a tool choice")


def _calls_tools(messages: list[dict[str, Any]]) -> bool:
    return any(
        "toolUse" in block or "toolResult" in block
        for message in messages
        for block in message["content"]
    )


def _output_config(document: Mapping[str, Any]) -> dict[str, Any]:
    """Converse's ``outputConfig`` for ``output_config`` (``effort``, ``format``) or the
    older ``output_format``."""
    config = object_at(document.get("output_config"), "output_config")
    for key, value in config.items():
        if key not in ("effort", "format") and value is not None:
            raise Untranslatable(f"output_config.{key}", "has no Bedrock Converse counterpart")
    converted: dict[str, Any] = {}
    effort = config.get("effort")
    if effort is not None:
        converted["effort"] = string_at(effort, "output_config.effort")
    fmt, path = config.get("format"), "output_config.format"
    if fmt is None:
        fmt, path = document.get("output_format"), "output_format"
    if fmt is not None:
        fmt = object_at(fmt, path)
        if fmt.get("type") != "json_schema":
            raise Untranslatable(f"{path}.type", f"{fmt.get('type')!r}: Bedrock takes json_schema")
        schema = object_at(fmt.get("schema"), f"{path}.schema")
        converted["textFormat"] = {
            "type": "json_schema",
            "structure": {"jsonSchema": {"schema": dumps(schema).decode()}},
        }
    return converted


def converse_request(document: Mapping[str, Any]) -> dict[str, Any]:
    """The Converse request body for a Messages request *document* (no ``modelId``: it
    goes in the URL; no ``stream``: the path chooses).

    The system prompt, turns and tools keep their ``cache_control`` as a ``cachePoint``
    right after what each marks — in a tool result's items, after the tool result, as
    Converse holds none inside one; a top-level ``cache_control`` marks the last turn's
    end. Consecutive turns of one role are merged. A ``tool_result``'s ``is_error``
    becomes ``status: error`` (Bedrock documents the field for Nova and Claude only).
    ``max_tokens``, ``temperature``, ``top_p`` and ``stop_sequences`` go to
    ``inferenceConfig``; ``top_k`` and an enabled ``thinking`` (as given) to
    ``additionalModelRequestFields`` (a disabled one, the default, is left out: models
    without thinking refuse fields they do not know); ``output_config`` to
    ``outputConfig``; ``metadata.user_id`` and ``service_tier`` are dropped.

    ``tool_choice`` none: Converse has no such choice. With no tool call or result in
    the conversation the tools are left out, which is what none means; with one, Bedrock
    refuses a request without ``toolConfig``, so the tools stay and the choice is left
    to the model (``auto``) — the one place the translation gives the model more leeway
    than the client asked for.

    Raises:
        Untranslatable: a field that would change the answer has no counterpart (an
            unknown top-level field, a server tool, an image by URL, citations,
            ``disable_parallel_tool_use``…), or is of the wrong type.
    """
    for key, value in document.items():
        if key not in _KNOWN and value is not None and value != [] and value != {}:
            raise Untranslatable(key, "has no Bedrock Converse counterpart")
    messages = _messages(document.get("messages"))
    if document.get("cache_control") is not None and messages:
        messages[-1]["content"].append(_cache_point(document["cache_control"], "cache_control"))
    request: dict[str, Any] = {"messages": messages}
    if document.get("system") is not None and (system := _system(document["system"])):
        request["system"] = system
    inference: dict[str, Any] = {}
    if document.get("max_tokens") is not None:
        limit = document["max_tokens"]
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise Untranslatable("max_tokens", "must be an integer")
        inference["maxTokens"] = limit
    for key, name in (("temperature", "temperature"), ("top_p", "topP")):
        if document.get(key) is not None:
            inference[name] = number_at(document[key], key)
    stops = document.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list):
            raise Untranslatable("stop_sequences", "must be a list of strings")
        if stops:
            inference["stopSequences"] = [
                string_at(s, f"stop_sequences[{i}]") for i, s in enumerate(stops)
            ]
    if inference:
        request["inferenceConfig"] = inference
    extra: dict[str, Any] = {}
    if document.get("top_k") is not None:
        top_k = document["top_k"]
        if not isinstance(top_k, int) or isinstance(top_k, bool):
            raise Untranslatable("top_k", "must be an integer")
        extra["top_k"] = top_k
    thinking = object_at(document.get("thinking"), "thinking")
    if thinking and thinking.get("type") != "disabled":
        extra["thinking"] = dict(thinking)
    if extra:
        request["additionalModelRequestFields"] = extra
    kind, choice = _tool_choice(document.get("tool_choice"))
    tools = _tools(document["tools"]) if document.get("tools") is not None else []
    if tools and (kind != "none" or _calls_tools(messages)):
        request["toolConfig"] = {"tools": tools}
        if choice is not None:
            request["toolConfig"]["toolChoice"] = choice
    output = _output_config(document)
    if output:
        request["outputConfig"] = output
    return request


# -- the answer ------------------------------------------------------------------------


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _usage(usage: Any) -> dict[str, int]:
    """Anthropic's usage for Converse's (both leave cache reads and writes out of the
    input tokens)."""
    if not isinstance(usage, Mapping):
        raise TypeError(f"usage is {type(usage).__name__}, not an object")
    return {
        "input_tokens": _count(usage.get("inputTokens")),
        "cache_creation_input_tokens": _count(usage.get("cacheWriteInputTokens")),
        "cache_read_input_tokens": _count(usage.get("cacheReadInputTokens")),
        "output_tokens": _count(usage.get("outputTokens")),
    }


def _stop(reason: Any, fields: Any) -> tuple[str, str | None]:
    """(``stop_reason``, ``stop_sequence``) for Converse's ``stopReason`` and its
    ``additionalModelResponseFields`` (where some models name the stop sequence).

    Raises:
        UnmappableAnswer: the model's output was malformed, or a reason not known.
    """
    mapped = _STOP_REASONS.get(reason) if isinstance(reason, str) else None
    if mapped is None:
        if isinstance(reason, str) and reason.startswith("malformed_"):
            raise UnmappableAnswer(
                f"the upstream's model produced malformed output (stopReason {reason})"
            )
        raise UnmappableAnswer(f"the upstream stopped for a reason not known: {reason!r}")
    sequence = fields.get("stop_sequence") if isinstance(fields, Mapping) else None
    if mapped != "stop_sequence" or not isinstance(sequence, str):
        sequence = None
    return mapped, sequence


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} is {type(value).__name__}, not a string")
    return value


def _answer_block(block: Any) -> dict[str, Any]:
    if not isinstance(block, Mapping):
        raise TypeError(f"a content block is {type(block).__name__}, not an object")
    if "text" in block:
        return {"type": "text", "text": _text(block["text"], "text")}
    if "toolUse" in block:
        call = block["toolUse"]
        if call.get("type") == "server_tool_use":
            raise UnmappableAnswer("the upstream answered with a server tool's call")
        tool_input = call["input"]
        if not isinstance(tool_input, dict):
            raise TypeError(f"a tool call's input is {type(tool_input).__name__}, not an object")
        return {
            "type": "tool_use",
            "id": _text(call["toolUseId"], "toolUseId"),
            "name": _text(call["name"], "name"),
            "input": tool_input,
        }
    if "reasoningContent" in block:
        reasoning = block["reasoningContent"]
        if "reasoningText" in reasoning:
            found = reasoning["reasoningText"]
            signature = found.get("signature")
            return {
                "type": "thinking",
                "thinking": _text(found["text"], "reasoningText.text"),
                "signature": _text(signature, "signature") if signature is not None else "",
            }
        return {
            "type": "redacted_thinking",
            "data": _text(reasoning["redactedContent"], "redactedContent"),
        }
    if "citationsContent" in block:
        parts = block["citationsContent"].get("content") or []
        return {
            "type": "text",
            "text": "".join(_text(p.get("text", ""), "citationsContent text") for p in parts),
        }
    raise UnmappableAnswer(
        f"the upstream answered with a content block of kind {sorted(block)}, which the "
        "translation cannot carry (it carries text, reasoning and tool calls)"
    )


def messages_response(answer: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The Messages answer for a Converse response *answer* from *model*.

    ``citationsContent`` becomes its text (the citations are not carried); the stop
    sequence is named when the model gave it in ``additionalModelResponseFields``.

    Raises:
        UnmappableAnswer: a stop for malformed output (``malformed_model_output``,
            ``malformed_tool_use``) or an unknown one; a block of another kind than
            text, tool call, reasoning or cited text.
        KeyError, TypeError, AttributeError: the answer's shape is not Converse's (the
            caller's ``SHAPE_ERRORS``).
    """
    content = answer["output"]["message"]["content"]
    if not isinstance(content, list):
        raise TypeError(f"the message's content is {type(content).__name__}, not a list")
    stop_reason, stop_sequence = _stop(
        answer.get("stopReason"), answer.get("additionalModelResponseFields")
    )
    return {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [_answer_block(block) for block in content],
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": _usage(answer["usage"]),
    }


# -- the stream ------------------------------------------------------------------------

_TEXT: Final = 1
_THINKING: Final = 2
_REDACTED: Final = 3
_TOOL: Final = 4
_STOP: Final = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
#: The error type Anthropic gives each of ConverseStream's exceptions.
_EXCEPTIONS: Final = {
    "internalServerException": "api_error",
    "modelStreamErrorException": "api_error",
    "modelTimeoutException": "api_error",
    "validationException": "invalid_request_error",
    "throttlingException": "rate_limit_error",
    "serviceUnavailableException": "overloaded_error",
}


class _Malformed(ValueError):
    """An event that does not fit where it came in the stream."""


def _sse(name: str, document: Mapping[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dumps(document) + b"\n\n"


def _delta(index: int, kind: bytes, key: bytes, value: str) -> bytes:
    # The per-chunk path: the fixed parts as bytes, only the value encoded.
    return b"".join(
        (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":',
            str(index).encode(),
            b',"delta":{"type":"',
            kind,
            b'","',
            key,
            b'":',
            dumps(value),
            b"}}\n\n",
        )
    )


def _block_index(payload: Mapping[str, Any]) -> int:
    index = payload["contentBlockIndex"]
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise TypeError(f"contentBlockIndex {index!r} is not a block's index")
    return index


class MessagesFromConverseStream:
    """ConverseStream's decoded events in, Anthropic's Messages SSE bytes out.

    `event` takes each event (its ``:event-type`` and its JSON payload) and returns what
    it becomes, maybe nothing; `end` is called when the upstream's stream has ended. A
    text or reasoning block opens with its first delta (Converse starts only tool calls);
    a redacted reasoning delta is a block of its own. The message ends once: on the
    ``metadata`` event after ``messageStop`` (the only carrier of usage), or with an
    ``error`` event — an exception from the upstream, an event that is malformed or out
    of place, a stream that ends early — never with a faked clean end.

    Attributes:
        failure: why the stream could not be read on or ended early, once it could not
            (the error event is in the output); None while it reads well.
        closed: True after ``message_stop`` or an error; later events give nothing.
    """

    __slots__ = (
        "block",
        "closed",
        "failure",
        "kind",
        "model",
        "next_index",
        "source",
        "source_done",
        "started",
        "stop_reason",
        "stop_sequence",
    )

    def __init__(self, model: str) -> None:
        self.model = model
        self.closed = False
        self.failure: str | None = None
        self.started = False
        #: Anthropic's ``stop_reason`` once ``messageStop`` came.
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        #: The open block's index and kind (kind 0: none is open), and the next index.
        self.block = -1
        self.kind = 0
        self.next_index = 0
        #: Converse's index of the latest block, and whether it has stopped.
        self.source = -1
        self.source_done = False

    def event(self, event_type: str, payload: Mapping[str, Any]) -> bytes:
        """The Messages SSE bytes for one ConverseStream event (b"" once closed)."""
        if self.closed:
            return b""
        out: list[bytes] = []
        try:
            if event_type == "contentBlockDelta":
                self._content_delta(payload, out)
            elif event_type == "contentBlockStart":
                self._content_start(payload, out)
            elif event_type == "contentBlockStop":
                self._content_stop(payload, out)
            elif event_type == "messageStart":
                if self.started:
                    raise _Malformed("a second messageStart")
                self._start(out)
            elif event_type == "messageStop":
                self._message_stop(payload, out)
            elif event_type == "metadata":
                self._metadata(payload, out)
            elif event_type in _EXCEPTIONS:
                message = payload.get("message") if isinstance(payload, Mapping) else None
                shown = message if isinstance(message, str) else dumps(payload).decode()
                out.append(self.fail(f"{event_type}: {shown}", _EXCEPTIONS[event_type]))
            else:
                raise _Malformed(f"an event of a type not known ({event_type!r})")
        except (_Malformed, UnmappableAnswer) as wrong:
            out.append(self.fail(f"the upstream's stream is not a Converse answer: {wrong}"))
        except SHAPE_ERRORS as unreadable:
            # (a name of its own: mypyc types a caught name by its first handler)
            out.append(
                self.fail(
                    f"the upstream sent a {event_type} event of a shape the gateway cannot "
                    f"read ({type(unreadable).__name__}: {unreadable})"
                )
            )
        return b"".join(out)

    def end(self) -> bytes:
        """The upstream's stream ended: b"" when the message is complete, else the
        error event (and `failure` says why)."""
        if self.closed:
            return b""
        return self.fail("the upstream's stream ended before its end (no metadata event)")

    def fail(self, message: str, kind: str = "api_error") -> bytes:
        """Anthropic's ``error`` event for *message* (of Anthropic's error type *kind*),
        which closes the stream; `failure` is *message*."""
        if self.closed:
            return b""
        self.failure = message
        self.closed = True
        return _sse("error", anthropic_error(502, message, kind))

    # -- internals ---------------------------------------------------------------------

    def _start(self, out: list[bytes]) -> None:
        self.started = True
        out.append(
            _sse(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": new_id("msg_"),
                        "type": "message",
                        "role": "assistant",
                        "model": self.model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": 0, "output_tokens": 0},
                    },
                },
            )
        )

    def _open(self, source: int, kind: int, block: dict[str, Any], out: list[bytes]) -> None:
        """Open a block of *kind* for Converse's block *source* (closing the open one)."""
        if source < self.source or (source == self.source and self.source_done):
            raise _Malformed(f"content for block {source} after it ended")
        if self.stop_reason is not None:
            raise _Malformed("content after messageStop")
        if not self.started:
            self._start(out)
        self._close_block(out)
        self.source = source
        self.source_done = False
        self.block = self.next_index
        self.next_index += 1
        self.kind = kind
        out.append(
            _sse(
                "content_block_start",
                {"type": "content_block_start", "index": self.block, "content_block": block},
            )
        )

    def _close_block(self, out: list[bytes]) -> None:
        if self.kind:
            out.append(
                b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
                % self.block
            )
            self.kind = 0

    def _content_start(self, payload: Mapping[str, Any], out: list[bytes]) -> None:
        source = _block_index(payload)
        start = payload["start"]
        call = start.get("toolUse")
        if call is None:
            raise _Malformed(
                f"block {source} starts as {sorted(start)}, which the translation cannot "
                "carry (it carries text, reasoning and tool calls)"
            )
        if call.get("type") == "server_tool_use":
            raise _Malformed(f"block {source} is a server tool's call")
        if source <= self.source:
            raise _Malformed(f"block {source} starts after block {self.source}")
        block = {
            "type": "tool_use",
            "id": _text(call["toolUseId"], "toolUseId"),
            "name": _text(call["name"], "name"),
            "input": {},
        }
        self._open(source, _TOOL, block, out)

    def _content_delta(self, payload: Mapping[str, Any], out: list[bytes]) -> None:
        source = _block_index(payload)
        delta = payload["delta"]
        current = source == self.source and not self.source_done
        text = delta.get("text")
        if text is not None:
            if not (current and self.kind == _TEXT):
                self._open(source, _TEXT, {"type": "text", "text": ""}, out)
            out.append(_delta(self.block, b"text_delta", b"text", _text(text, "text")))
            return
        call = delta.get("toolUse")
        if call is not None:
            if not (current and self.kind == _TOOL):
                raise _Malformed(f"a tool call's input for block {source}, which is no tool call")
            fragment = _text(call["input"], "toolUse.input")
            if fragment:
                out.append(_delta(self.block, b"input_json_delta", b"partial_json", fragment))
            return
        reasoning = delta.get("reasoningContent")
        if reasoning is not None:
            self._reasoning(source, current, reasoning, out)
            return
        if "citation" in delta:
            return  # where the text already sent came from: not carried
        raise _Malformed(
            f"a delta of a kind the translation cannot carry ({sorted(delta)}) in block {source}"
        )

    def _reasoning(
        self, source: int, current: bool, reasoning: Mapping[str, Any], out: list[bytes]
    ) -> None:
        if "redactedContent" in reasoning:
            data = _text(reasoning["redactedContent"], "redactedContent")
            self._open(source, _REDACTED, {"type": "redacted_thinking", "data": data}, out)
            return
        if not (current and self.kind == _THINKING):
            self._open(
                source, _THINKING, {"type": "thinking", "thinking": "", "signature": ""}, out
            )
        if "text" in reasoning:
            text = _text(reasoning["text"], "reasoningContent.text")
            out.append(_delta(self.block, b"thinking_delta", b"thinking", text))
        elif "signature" in reasoning:
            signature = _text(reasoning["signature"], "reasoningContent.signature")
            out.append(_delta(self.block, b"signature_delta", b"signature", signature))
        else:
            raise _Malformed(f"a reasoning delta of a kind not known ({sorted(reasoning)})")

    def _content_stop(self, payload: Mapping[str, Any], out: list[bytes]) -> None:
        source = _block_index(payload)
        if source < self.source or (source == self.source and self.source_done):
            raise _Malformed(f"block {source} stops after it ended")
        # (a block that stops with no content — an empty text — had no start either)
        self._close_block(out)
        self.source = source
        self.source_done = True

    def _message_stop(self, payload: Mapping[str, Any], out: list[bytes]) -> None:
        if self.stop_reason is not None:
            raise _Malformed("a second messageStop")
        reason, sequence = _stop(
            payload["stopReason"], payload.get("additionalModelResponseFields")
        )
        if not self.started:
            self._start(out)
        self._close_block(out)  # (some models leave their last block unstopped)
        self.source_done = True
        self.stop_reason = reason
        self.stop_sequence = sequence

    def _metadata(self, payload: Mapping[str, Any], out: list[bytes]) -> None:
        if self.stop_reason is None:
            raise _Malformed("metadata before messageStop")
        usage = _usage(payload["usage"])
        self.closed = True
        out.append(
            _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
                    "usage": usage,
                },
            )
        )
        out.append(_STOP)
