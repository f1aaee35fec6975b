"""A Responses client (``POST /v1/responses``) in front of an upstream that speaks only
Chat Completions: the request becomes a chat completion request, the answer — a JSON
document or an event stream — becomes a Responses answer (no I/O).

The request must stand alone: a ``previous_response_id`` is resolved before this (the
``responses`` filter puts the stored conversation into ``input``). What the answer
repeats of the request — instructions, tools, temperature… — is `response_shell`,
made once per request.

`ResponsesFromChatStream` is the state machine for the stream: chat chunks in, the
Responses event sequence out — ``response.created``, ``response.in_progress``, each
output item added, its deltas and its ``done`` events, then ``response.completed`` (or
``response.incomplete`` when the output was cut short) carrying the whole response and
its usage — every event with the next ``sequence_number``. A failure of the upstream,
or a stream that stops short, ends it with an ``error`` event and ``response.failed``,
never a faked completion. Upstream for a Messages-only provider, the chat translation
(`filterproxy.translate.chat_over_messages`) runs in front of it (`Piped`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

from filterproxy.translate.common import (
    MAX_ANSWER_BYTES,
    FromChatStream,
    StreamTranslation,
    Untranslatable,
    dumps,
    first_message,
    new_id,
    openai_error_type,
    split_content,
    string_at,
)
from filterproxy.translate.responses_tools import (
    HOSTED_ITEMS,
    CustomInput,
    ToolSet,
    UpstreamTool,
    custom_arguments,
    custom_input,
    tool_set,
)
from filterproxy.translate.responses_tools import item_id as new_item_id

__all__ = [
    "Piped",
    "ResponsesFromChatStream",
    "ResponsesRequest",
    "chat_request_for_responses",
    "input_items",
    "response_shell",
    "response_usage",
    "responses_answer",
    "responses_request",
]

#: Request fields refused: the answer could not be what they ask for.
_REFUSED: Final = {
    "background": "background responses run inside OpenAI's API; send the request without it",
    "conversation": "conversations live inside OpenAI's API; use previous_response_id "
    "(the gateway keeps those) or send the whole input",
    "prompt": "prompt templates live inside OpenAI's API; send the prompt's text as input",
}
#: What a client says in ``finish_reason`` terms when the output was cut short.
_INCOMPLETE: Final = {"length": "max_output_tokens", "content_filter": "content_filter"}
_TEXT_PARTS: Final = frozenset({"input_text", "output_text", "text", "summary_text"})
#: How the ids of output items start, by type (as OpenAI's do).
_ITEM_PREFIX: Final = {
    "message": "msg_",
    "reasoning": "rs_",
    "function_call": "fc_",
    "custom_tool_call": "ctc_",
}


# -- the request ---------------------------------------------------------------------


def input_items(value: Any) -> list[Any]:
    """A request's ``input`` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return list(value) if isinstance(value, list) else []


def _parts(content: Any, path: str) -> str | list[dict[str, Any]]:
    """Chat content (a string when all text) of a message item's content."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Untranslatable(path, "must be a string or a list of content parts")
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        where = f"{path}[{i}]"
        kind = string_at(part.get("type"), f"{where}.type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS:
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal", ""))})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise Untranslatable(
                    where, "an image is sent as image_url (a URL or a data: URL), not a file_id"
                )
            image: dict[str, Any] = {"url": url}
            if isinstance(part.get("detail"), str) and part["detail"] != "auto":
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            file = {k: part[k] for k in ("file_data", "file_id", "filename") if k in part}
            if not file.get("file_data") and not file.get("file_id"):
                raise Untranslatable(where, "a file is sent as file_data (or file_id)")
            parts.append({"type": "file", "file": file})
        else:
            raise Untranslatable(
                f"{where}.type", f"content part {kind!r} has no Chat Completions counterpart"
            )
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _output_text(output: Any) -> str | list[dict[str, Any]]:
    """A function call's output: a string, or content parts."""
    if isinstance(output, str):
        return output
    return _parts(output, "output")


def _chat_messages(items: list[Any], tools: ToolSet, hosted_tools: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    reasoning: list[str] = []
    for i, item in enumerate(items):
        path = f"input[{i}]"
        if not isinstance(item, dict):
            raise Untranslatable(path, "an input item is an object")
        kind = string_at(item.get("type", "message"), f"{path}.type")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise Untranslatable(f"{path}.role", f"role {role!r} is not a message role")
            content = _parts(item.get("content", ""), f"{path}.content")
            if role == "assistant":
                last = messages[-1] if messages else None
                text = content if isinstance(content, str) else ""
                if last is not None and last["role"] == "assistant" and "tool_calls" not in last:
                    last["content"] = (last["content"] or "") + text
                else:
                    messages.append({"role": "assistant", "content": text})
                if reasoning:
                    messages[-1]["reasoning_content"] = "".join(reasoning)
                    reasoning = []
            else:
                # "developer" is OpenAI's newer name for system: every server knows "system".
                messages.append(
                    {"role": "user" if role == "user" else "system", "content": content}
                )
        elif kind in ("function_call", "custom_tool_call"):
            namespace = item.get("namespace")
            name = tools.name_for(
                namespace if isinstance(namespace, str) else None, str(item.get("name", ""))
            )
            arguments = (
                str(item.get("arguments") or "{}")
                if kind == "function_call"
                else custom_arguments(str(item.get("input", "")))
            )
            call = {
                "id": str(item.get("call_id", "")),
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if last["content"] == "":
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            if reasoning:
                messages[-1]["reasoning_content"] = "".join(reasoning)
                reasoning = []
        elif kind in ("function_call_output", "custom_tool_call_output"):
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": str(item.get("call_id", "")),
                    "content": _output_text(item.get("output", "")),
                }
            )
        elif kind == "reasoning":
            # Kept for the assistant turn it belongs to (servers that think want it back).
            parts = [item.get("content"), item.get("summary")]
            for part in (p for one in parts if isinstance(one, list) for p in one):
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    reasoning.append(part["text"])
        elif kind == "item_reference":
            raise Untranslatable(
                path,
                f"item {item.get('id')!r} is not one the gateway keeps (the items of its "
                "stored responses, for the same credentials, while the response is kept); "
                "send the item itself",
            )
        elif kind in HOSTED_ITEMS and hosted_tools == "drop":
            tools.drop(HOSTED_ITEMS[kind])  # an earlier turn of a tool left out
        else:
            raise Untranslatable(
                f"{path}.type",
                f"input item {kind!r} belongs to a tool that runs only inside OpenAI's API; "
                "the upstream speaks Chat Completions",
            )
    return messages


def _chosen(choice: Mapping[str, Any], tools: ToolSet) -> str | None:
    """The upstream name of the function or custom tool *choice* names, or None."""
    name = choice.get("name")
    if not isinstance(name, str):
        return None
    namespace = choice.get("namespace")
    if isinstance(namespace, str):
        return tools.name_for(namespace, name)
    if (None, name) in tools.upstream:
        return tools.upstream[(None, name)]
    # A name alone may still be a namespace's tool, when no other tool has it.
    inside = [up for (ns, n), up in tools.upstream.items() if n == name]
    return inside[0] if len(inside) == 1 else name


def _tool_choice(choice: Any, request: dict[str, Any], tools: ToolSet, hosted_tools: str) -> None:
    if choice is None:
        return
    if choice in ("auto", "none", "required"):
        request["tool_choice"] = choice
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if isinstance(choice, dict) and kind in ("function", "custom"):
        request["tool_choice"] = {"type": "function", "function": {"name": _chosen(choice, tools)}}
    elif isinstance(choice, dict) and kind == "allowed_tools":
        allowed: set[str | None] = set()
        listed = choice.get("tools")
        for tool in listed if isinstance(listed, list) else []:
            what = tool.get("type") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or what is None:
                continue
            if what in ("function", "custom"):
                allowed.add(_chosen(tool, tools))
            elif what == "namespace":
                allowed.update(
                    up for (ns, _), up in tools.upstream.items() if ns == tool.get("name")
                )
            elif hosted_tools == "drop":
                tools.drop(str(what))
            else:
                raise Untranslatable(
                    "tool_choice", f"{what!r} names a tool that runs only inside OpenAI's API"
                )
        request["tools"] = [t for t in request.get("tools", []) if t["function"]["name"] in allowed]
        request["tool_choice"] = "required" if choice.get("mode") == "required" else "auto"
    elif hosted_tools == "drop" and isinstance(kind, str):
        tools.drop(kind)  # the model chooses among the tools that are left
    else:
        raise Untranslatable(
            "tool_choice", f"{kind or choice!r} names a tool that runs only inside OpenAI's API"
        )


class ResponsesRequest:
    """A Responses request translated: the chat completion request, what its tools
    stand for on the way back (`ToolSet.by_upstream`, for `responses_answer` and
    `ResponsesFromChatStream`) and the hosted tool types left out (`ToolSet.dropped`)."""

    __slots__ = ("chat", "tools")

    def __init__(self, chat: dict[str, Any], tools: ToolSet) -> None:
        self.chat = chat
        self.tools = tools


def chat_request_for_responses(
    document: Mapping[str, Any],
    *,
    max_tokens_field: str = "max_tokens",
    hosted_tools: str = "drop",
) -> dict[str, Any]:
    """The chat completion request for a Responses request *document* (see
    `responses_request`).

    Raises:
        Untranslatable: a field or item that would change the answer has no counterpart.
    """
    return responses_request(
        document, max_tokens_field=max_tokens_field, hosted_tools=hosted_tools
    ).chat


def responses_request(
    document: Mapping[str, Any],
    *,
    max_tokens_field: str = "max_tokens",
    hosted_tools: str = "drop",
) -> ResponsesRequest:
    """The chat completion request for a Responses request *document*.

    *max_tokens_field* is what the upstream calls the output limit (``max_tokens`` for
    most OpenAI-compatible servers, ``max_completion_tokens`` for OpenAI itself).
    *hosted_tools* is the policy for tools that run only inside OpenAI's API (and their
    items and ``tool_choice``): ``drop`` leaves them out, ``refuse`` raises.

    Raises:
        Untranslatable: a field or item that would change the answer has no counterpart.
    """
    for key, why in _REFUSED.items():
        if document.get(key):
            raise Untranslatable(key, why)
    if document.get("previous_response_id"):
        raise Untranslatable(
            "previous_response_id", "the conversation must be resolved before translating"
        )
    if document.get("top_logprobs"):
        raise Untranslatable("top_logprobs", "log probabilities are not translated")
    tools = tool_set(document.get("tools"), hosted_tools)
    messages: list[dict[str, Any]] = []
    instructions = document.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    elif isinstance(instructions, list):
        messages.extend(_chat_messages(instructions, tools, hosted_tools))
    if "input" not in document:
        raise Untranslatable("input", "missing: a string or a list of input items")
    messages.extend(_chat_messages(input_items(document["input"]), tools, hosted_tools))
    request: dict[str, Any] = {"model": document.get("model"), "messages": messages}
    if isinstance(document.get("max_output_tokens"), int):
        request[max_tokens_field] = document["max_output_tokens"]
    for key in ("temperature", "top_p", "parallel_tool_calls"):
        if document.get(key) is not None:
            request[key] = document[key]
    user = document.get("safety_identifier") or document.get("user")
    if isinstance(user, str):
        request["user"] = user
    if document.get("stream") is True:
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}  # the completed event's usage
    if tools.chat:
        request["tools"] = tools.chat
    _tool_choice(document.get("tool_choice"), request, tools, hosted_tools)
    if not request.get("tools"):
        # No tool left (all hosted, and dropped): chat servers refuse a choice among none.
        for key in ("tools", "tool_choice", "parallel_tool_calls"):
            request.pop(key, None)
    text = document.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = {"name": fmt.get("name") or "response", "schema": fmt.get("schema") or {}}
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                schema[key] = fmt[key]
        request["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        request["response_format"] = {"type": "json_object"}
    reasoning = document.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    if isinstance(effort, str) and effort != "none":
        request["reasoning_effort"] = effort
    return ResponsesRequest(request, tools)


# -- the answer ----------------------------------------------------------------------


def response_shell(
    document: Mapping[str, Any], model: str | None, previous_response_id: str | None = None
) -> dict[str, Any]:
    """The response object without its output: a new id, and what it repeats of the
    request *document* (as OpenAI's API does; the SDKs read these fields)."""
    reasoning = document.get("reasoning")
    text = document.get("text")
    return {
        "id": new_id("resp_"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": document.get("instructions"),
        "max_output_tokens": document.get("max_output_tokens"),
        "metadata": document.get("metadata") or {},
        "model": model or document.get("model"),
        "output": [],
        "parallel_tool_calls": document.get("parallel_tool_calls") is not False,
        "previous_response_id": previous_response_id,
        "reasoning": {
            "effort": reasoning.get("effort") if isinstance(reasoning, dict) else None,
            "summary": reasoning.get("summary") if isinstance(reasoning, dict) else None,
        },
        "store": document.get("store") is not False,
        "temperature": document.get("temperature", 1.0),
        "text": text if isinstance(text, dict) else {"format": {"type": "text"}},
        "tool_choice": document.get("tool_choice") or "auto",
        "tools": document.get("tools") or [],
        "top_p": document.get("top_p", 1.0),
        "truncation": document.get("truncation") or "disabled",
        "usage": None,
        "user": document.get("user"),
    }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def response_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """The Responses usage object for a chat completion's usage."""
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    written = _int(usage.get("cache_creation_input_tokens")) or _int(
        usage.get("cache_creation_tokens")
    )
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _int(prompt_details.get("cached_tokens"))
            if isinstance(prompt_details, dict)
            else 0,
            "cache_write_tokens": written,
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": _int(completion_details.get("reasoning_tokens"))
            if isinstance(completion_details, dict)
            else 0
        },
        "total_tokens": prompt + completion,
    }


def _message_item(item_id: str, text: str, status: str, refusal: bool = False) -> dict[str, Any]:
    part: dict[str, Any] = (
        {"type": "refusal", "refusal": text}
        if refusal
        else {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    )
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [part] if status != "in_progress" else [],
    }


def _reasoning_item(item_id: str, text: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {"id": item_id, "type": "reasoning", "summary": []}
    if text is not None:
        item["content"] = [{"type": "reasoning_text", "text": text}]
    return item


def _call_item(
    item_id: str,
    call_id: str,
    name: str,
    arguments: str,
    status: str,
    tool: UpstreamTool | None = None,
) -> dict[str, Any]:
    """The output item of a call of the upstream function *name*: a ``function_call``
    (with its ``namespace`` when *tool* has one), or the ``custom_tool_call`` of a
    custom *tool* (its input taken from the *arguments*)."""
    if tool is not None and tool.custom:
        item: dict[str, Any] = {
            "id": item_id,
            "type": "custom_tool_call",
            "call_id": call_id,
            "name": tool.name,
            "input": custom_input(arguments) if arguments else "",
        }
    else:
        item = {
            "id": item_id,
            "type": "function_call",
            "status": status,
            "call_id": call_id,
            "name": tool.name if tool is not None else name,
            "arguments": arguments,
        }
    if tool is not None and tool.namespace is not None:
        item["namespace"] = tool.namespace
    return item


def _finished(response: dict[str, Any], finish_reason: Any) -> None:
    """Status and details of a response whose output ended with *finish_reason*."""
    reason = _INCOMPLETE.get(finish_reason) if isinstance(finish_reason, str) else None
    response["status"] = "incomplete" if reason else "completed"
    response["incomplete_details"] = {"reason": reason} if reason else None
    response["completed_at"] = int(time.time()) if not reason else None


def responses_answer(
    document: Mapping[str, Any],
    shell: Mapping[str, Any],
    tools: Mapping[str, UpstreamTool] | None = None,
) -> dict[str, Any]:
    """The Responses answer for a chat completion *document* (its first choice), on
    *shell* (`response_shell`); *tools* says what the upstream's function names stand
    for (`ToolSet.by_upstream`).

    Raises:
        UnmappableAnswer: a content part that is neither text nor reasoning.
    """
    choice, message = first_message(document)
    output: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    thought, text = split_content(message.get("content"))
    if not isinstance(reasoning, str) or not reasoning:
        reasoning = thought  # Mistral's thinking parts
    if reasoning:
        output.append(_reasoning_item(new_id("rs_"), reasoning))
    if text:
        output.append(_message_item(new_id("msg_"), text, "completed"))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        output.append(_message_item(new_id("msg_"), refusal, "completed", refusal=True))
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        name = str(function.get("name", ""))
        tool = tools.get(name) if tools else None
        output.append(
            _call_item(
                "",
                str(call.get("id") or new_id("call_")),
                name,
                arguments if isinstance(arguments, str) else dumps(arguments or {}).decode(),
                "completed",
                tool,
            )
        )
    response_id = str(shell.get("id", ""))
    for item in output:
        # Ids that lead back to this response (an item_reference to one is expanded).
        item["id"] = new_item_id(_ITEM_PREFIX.get(item["type"], "item_"), response_id)
    response = dict(shell)
    response["output"] = output
    _finished(response, choice.get("finish_reason"))
    response["usage"] = response_usage(document.get("usage") or {})
    return response


# -- the stream ------------------------------------------------------------------------

#: What one call counts toward `MAX_ANSWER_BYTES` besides its arguments (its item).
_CALL_SHARE: Final = 512
_MESSAGE: Final = 1
_REASONING: Final = 2


class _Call:
    """A function call item being streamed (or a custom tool call: a *tool* that is
    custom, whose input is decoded from the arguments as they come)."""

    __slots__ = (
        "arguments",
        "call_id",
        "custom",
        "item_id",
        "name",
        "output_index",
        "prefix",
        "sent",
        "tool",
    )

    def __init__(
        self,
        item_id: str,
        call_id: str,
        name: str,
        output_index: int,
        tool: UpstreamTool | None = None,
    ) -> None:
        self.item_id = item_id
        self.call_id = call_id
        self.name = name
        self.output_index = output_index
        self.tool = tool
        self.arguments: list[str] = []
        self.custom = CustomInput() if tool is not None and tool.custom else None
        #: The input text streamed so far (custom tool calls).
        self.sent: list[str] = []
        event = (
            b"response.function_call_arguments.delta"
            if self.custom is None
            else b"response.custom_tool_call_input.delta"
        )
        self.prefix = b'event: %s\ndata: {"type":"%s","item_id":"%s","output_index":%d,' % (
            event,
            event,
            item_id.encode(),
            output_index,
        ) + (b'"sequence_number":')


class ResponsesFromChatStream(FromChatStream):
    """Chat Completions chunks in, Responses events out (see the module's description).

    When the stream has completed (or stopped incomplete), `response` is the whole
    response object, as its last event carries it; until then, and after a failure,
    it is None.
    """

    __slots__ = (
        "all_calls",
        "calls",
        "calls_by_id",
        "held",
        "item",
        "item_id",
        "item_kind",
        "item_prefix",
        "item_text",
        "next_output",
        "output",
        "response",
        "sequence",
        "shell",
        "tools",
    )

    def __init__(
        self, shell: dict[str, Any], tools: Mapping[str, UpstreamTool] | None = None
    ) -> None:
        super().__init__()
        self.shell = shell
        #: What the upstream's function names stand for (`ToolSet.by_upstream`).
        self.tools = tools
        self.sequence = 0
        #: The finished output items, by output index.
        self.output: dict[int, dict[str, Any]] = {}
        self.next_output = 0
        #: The open message or reasoning item: kind (0: none), output index, id, text so far.
        self.item_kind = 0
        self.item = -1
        self.item_id = ""
        self.item_text: list[str] = []
        self.item_prefix = b""
        #: Function calls by the chat tool-call index, and all of them in order (open
        #: until the end: an index may be reused by a later call, Gemini's way).
        self.calls: dict[int, _Call] = {}
        self.all_calls: list[_Call] = []
        self.calls_by_id: dict[str, _Call] = {}
        #: What the output kept so far amounts to (its text, and a share per call): at
        #: most `MAX_ANSWER_BYTES`, past which the stream fails.
        self.held = 0
        self.response: dict[str, Any] | None = None

    # -- events ---------------------------------------------------------------------

    def _emit(self, name: str, document: dict[str, Any], out: list[bytes]) -> None:
        document["sequence_number"] = self.sequence
        self.sequence += 1
        out.append(b"event: " + name.encode() + b"\ndata: " + dumps(document) + b"\n\n")

    def _delta(self, prefix: bytes, text: str, out: list[bytes]) -> None:
        # The per-chunk path: the fixed part made once per item, only the text encoded.
        out.append(prefix + b'%d,"delta":' % self.sequence + dumps(text) + b"}\n\n")
        self.sequence += 1

    # -- internals ------------------------------------------------------------------

    def _start(self, chunk: Mapping[str, Any], out: list[bytes]) -> None:
        self._emit("response.created", {"type": "response.created", "response": self.shell}, out)
        self._emit(
            "response.in_progress", {"type": "response.in_progress", "response": self.shell}, out
        )

    def _open(self, kind: int, out: list[bytes]) -> None:
        self._close_item(out)
        index = self.next_output
        self.next_output += 1
        self.item_kind = kind
        self.item = index
        self.item_text = []
        if kind == _MESSAGE:
            item_id = self.item_id = new_item_id("msg_", self.shell["id"])
            self._emit(
                "response.output_item.added",
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": _message_item(item_id, "", "in_progress"),
                },
                out,
            )
            self._emit(
                "response.content_part.added",
                {
                    "type": "response.content_part.added",
                    "item_id": item_id,
                    "output_index": index,
                    "content_index": 0,
                    "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": ""},
                },
                out,
            )
            self.item_prefix = (
                b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                b'"item_id":"%s","output_index":%d,"content_index":0,"logprobs":[],'
                b'"sequence_number":' % (item_id.encode(), index)
            )
        else:
            item_id = self.item_id = new_item_id("rs_", self.shell["id"])
            self._emit(
                "response.output_item.added",
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": _reasoning_item(item_id, None),
                },
                out,
            )
            self.item_prefix = (
                b'event: response.reasoning_text.delta\ndata: {"type":'
                b'"response.reasoning_text.delta","item_id":"%s","output_index":%d,'
                b'"content_index":0,"sequence_number":' % (item_id.encode(), index)
            )

    def _close_item(self, out: list[bytes]) -> None:
        kind = self.item_kind
        if not kind:
            return
        self.item_kind = 0
        text = "".join(self.item_text)
        index, item_id = self.item, self.item_id
        if kind == _MESSAGE:
            part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
            common = {"item_id": item_id, "output_index": index, "content_index": 0}
            self._emit(
                "response.output_text.done",
                {"type": "response.output_text.done", **common, "text": text, "logprobs": []},
                out,
            )
            self._emit(
                "response.content_part.done",
                {"type": "response.content_part.done", **common, "part": part},
                out,
            )
            item = _message_item(item_id, text, "completed")
        else:
            self._emit(
                "response.reasoning_text.done",
                {
                    "type": "response.reasoning_text.done",
                    "item_id": item_id,
                    "output_index": index,
                    "content_index": 0,
                    "text": text,
                },
                out,
            )
            item = _reasoning_item(item_id, text)
        self.output[index] = item
        self._emit(
            "response.output_item.done",
            {"type": "response.output_item.done", "output_index": index, "item": item},
            out,
        )

    def _too_much(self, out: list[bytes]) -> None:
        """The output kept (`held`: for the ``done`` events and the last event's whole
        response) passed `MAX_ANSWER_BYTES`: the stream fails with its error event."""
        self.failure = (
            f"the upstream's answer is larger than {MAX_ANSWER_BYTES} bytes, the most the "
            "gateway keeps of a Responses answer (its last event carries all of it)"
        )
        self._error(out, 502, self.failure)

    def _reasoning(self, text: str, out: list[bytes]) -> None:
        self.held += len(text)
        if self.held > MAX_ANSWER_BYTES:
            self._too_much(out)
            return
        if self.item_kind != _REASONING:
            self._open(_REASONING, out)
        self.item_text.append(text)
        self._delta(self.item_prefix, text, out)

    def _content(self, text: str, out: list[bytes]) -> None:
        self.held += len(text)
        if self.held > MAX_ANSWER_BYTES:
            self._too_much(out)
            return
        if self.item_kind != _MESSAGE:
            self._open(_MESSAGE, out)
        self.item_text.append(text)
        self._delta(self.item_prefix, text, out)

    def _tool_call(
        self, index: int, call_id: Any, function: dict[str, Any], out: list[bytes]
    ) -> None:
        known = self.calls.get(index)
        if call_id and (known is None or call_id != known.call_id):
            # A call's id names it over its index: Gemini changes the index mid-call.
            known = self.calls_by_id.get(call_id) if isinstance(call_id, str) else None
            if known is not None:
                self.calls[index] = known
        if known is None:
            self.held += _CALL_SHARE
            if self.held > MAX_ANSWER_BYTES:
                self._too_much(out)
                return
            self._close_item(out)
            output_index = self.next_output
            self.next_output += 1
            name = str(function.get("name") or "")
            tool = self.tools.get(name) if self.tools else None
            known = self.calls[index] = _Call(
                new_item_id(
                    "ctc_" if tool is not None and tool.custom else "fc_", self.shell["id"]
                ),
                str(call_id) if call_id else new_id("call_"),
                name,
                output_index,
                tool,
            )
            self.all_calls.append(known)
            self.calls_by_id[known.call_id] = known
            self._emit(
                "response.output_item.added",
                {
                    "type": "response.output_item.added",
                    "output_index": output_index,
                    "item": _call_item(
                        known.item_id, known.call_id, known.name, "", "in_progress", tool
                    ),
                },
                out,
            )
        elif function.get("name") and not known.name:
            known.name = str(function["name"])
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            self.held += len(arguments)
            if self.held > MAX_ANSWER_BYTES:
                self._too_much(out)
                return
            known.arguments.append(arguments)
            custom = known.custom
            if custom is None:
                self._delta(known.prefix, arguments, out)
            else:
                text = custom.feed(arguments)
                if text:
                    known.sent.append(text)
                    self._delta(known.prefix, text, out)

    def _custom_done(self, call: _Call, out: list[bytes]) -> dict[str, Any]:
        """The last events of a custom tool call: what of its input was not streamed
        (all of it, for arguments of another shape than ``{"input": …}``), then done."""
        arguments = "".join(call.arguments)
        item = _call_item(call.item_id, call.call_id, call.name, arguments, "completed", call.tool)
        text = item["input"]
        streamed = "".join(call.sent)
        if len(text) > len(streamed) and text.startswith(streamed):
            self._delta(call.prefix, text[len(streamed) :], out)
        self._emit(
            "response.custom_tool_call_input.done",
            {
                "type": "response.custom_tool_call_input.done",
                "item_id": call.item_id,
                "output_index": call.output_index,
                "input": text,
            },
            out,
        )
        return item

    def _close(self, out: list[bytes]) -> None:
        if self.closed:
            return
        if not self.started:
            self.started = True
            self._start({}, out)
        self._close_item(out)
        for call in self.all_calls:
            if call.custom is not None:
                item = self._custom_done(call, out)
            else:
                arguments = "".join(call.arguments) or "{}"
                self._emit(
                    "response.function_call_arguments.done",
                    {
                        "type": "response.function_call_arguments.done",
                        "item_id": call.item_id,
                        "output_index": call.output_index,
                        "name": call.tool.name if call.tool is not None else call.name,
                        "arguments": arguments,
                    },
                    out,
                )
                item = _call_item(
                    call.item_id, call.call_id, call.name, arguments, "completed", call.tool
                )
            self.output[call.output_index] = item
            self._emit(
                "response.output_item.done",
                {
                    "type": "response.output_item.done",
                    "output_index": call.output_index,
                    "item": item,
                },
                out,
            )
        self.closed = True
        response = dict(self.shell)
        response["output"] = [self.output[i] for i in sorted(self.output)]
        _finished(response, self.finish_reason)
        response["usage"] = response_usage(self.usage or {})
        name = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        self._emit(name, {"type": name, "response": response}, out)
        self.response = response

    def _error(
        self,
        out: list[bytes],
        status: int,
        message: str,
        kind: str | None = None,
        code: str | None = None,
    ) -> None:
        if not self.started:
            self.started = True
            self._start({}, out)
        self.closed = True
        kind = kind if kind else openai_error_type(status)
        code = code or ("server_error" if status >= 500 else kind)
        # Both shapes at once: the SDKs raise on the nested ``error``; the event's own
        # fields are what OpenAI's API reference describes.
        self._emit(
            "error",
            {
                "type": "error",
                "code": code,
                "message": message,
                "param": None,
                "error": {"type": kind, "code": code, "message": message, "param": None},
            },
            out,
        )
        response = dict(self.shell)
        response["status"] = "failed"
        response["error"] = {"code": code, "message": message}
        response["output"] = [self.output[i] for i in sorted(self.output)]
        self._emit("response.failed", {"type": "response.failed", "response": response}, out)


class Piped:
    """Two stream translations one after the other: what the first makes of the
    upstream's bytes is fed to the second (a Responses client in front of a
    Messages-only upstream: Messages → chat → Responses)."""

    __slots__ = ("first", "second")

    def __init__(self, first: StreamTranslation, second: ResponsesFromChatStream) -> None:
        self.first = first
        self.second = second

    @property
    def closed(self) -> bool:
        return self.second.closed

    @property
    def response(self) -> dict[str, Any] | None:
        return self.second.response

    def feed(self, data: bytes) -> bytes:
        middle = self.first.feed(data)
        return self.second.feed(middle) if middle else b""

    def end(self) -> bytes:
        middle = self.first.end()
        out = self.second.feed(middle) if middle else b""
        return out + self.second.end()
