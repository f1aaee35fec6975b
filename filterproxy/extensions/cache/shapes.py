"""A cached answer in the other shape of its API: the JSON answer an event stream amounts
to, and the event stream that a JSON answer reads as (no I/O).

An answer is stored as the upstream sent it — an SSE stream or a JSON body — and a later
identical request may want the other shape (stored from a stream, asked without
``stream: true``, or the reverse). Within one API (Chat Completions, Messages,
Responses: `filterproxy.http.apis`) `answer_from_stream` assembles a stream into the
answer the provider would have sent without streaming, and `stream_from_answer` cuts an
answer into the events its SDKs read as the same answer. Neither guesses: a stream that
did not end as its API ends one, that carries an error, or that holds what the other
shape has no form for, is None: the caller asks the upstream instead.
`without_usage_chunk` lets a stored chat stream answer a request that differs from the
stored one only in not asking for ``stream_options.include_usage``.

Every event read is bounded by the caller's *max_bytes*, and so is what is made.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

from filterproxy.http.apis import CHAT, MESSAGES, RESPONSES
from filterproxy.http.sse import EventTooLarge, SSEDecoder, SSEEvent, encode_event
from filterproxy.translate.common import SHAPE_ERRORS, dumps, loads

__all__ = ["answer_from_stream", "stream_from_answer", "without_usage_chunk"]

#: What a chat stream's ``data: [DONE]`` reads as.
_DONE: Final = object()
#: The Responses events that end a stream with its whole response.
_FINAL: Final = frozenset({"response.completed", "response.incomplete"})
#: The Responses events worth reading when assembling an answer (the rest are skipped
#: unparsed when they are named: their content is in the last event).
_RESPONSES_READ: Final = _FINAL | {"response.failed", "error", "response.output_item.done"}


class _Unfit(Exception):
    """The body cannot be converted: incomplete, an error, not understood, too large."""


# -- reading a stream ------------------------------------------------------------------


def _decoded(body: bytes, max_bytes: int) -> list[SSEEvent]:
    """The events of a whole stream (a last event that lost its blank line counts)."""
    decoder = SSEDecoder(max_event_bytes=max(max_bytes, 1))
    try:
        events = decoder.feed(body)
        if decoder.pending.strip():
            events += decoder.feed(b"\n\n")
    except EventTooLarge as e:
        raise _Unfit(str(e)) from None
    return events


def _documents(
    body: bytes, max_bytes: int, names: frozenset[str] | None = None
) -> Iterator[tuple[str | None, Any]]:
    """(event name, parsed data) of the stream's events; comments are left out, and so
    are events named other than *names* (when given).

    Raises:
        _Unfit: an event past *max_bytes*, or data that is not JSON.
    """
    for event in _decoded(body, max_bytes):
        if event.data is None or (
            names is not None and event.event is not None and event.event not in names
        ):
            continue
        if event.data == "[DONE]":
            yield event.event, _DONE
            continue
        try:
            yield event.event, loads(event.data)
        except ValueError:
            raise _Unfit("an event is not JSON") from None


def _is_usage_chunk(data: Any) -> bool:
    return (
        isinstance(data, dict) and data.get("choices") == [] and isinstance(data.get("usage"), dict)
    )


def _chat_answer(events: Iterator[tuple[str | None, Any]]) -> dict[str, Any]:
    head: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    calls: dict[int, dict[int, dict[str, Any]]] = {}
    finish: dict[int, Any] = {}
    #: Each choice's text fields as their pieces, joined at the end (a stream of many
    #: deltas is not copied again with each one).
    texts: dict[int, dict[str, list[str]]] = {}
    usage: Any = None
    for name, data in events:
        if data is _DONE:
            break
        if not isinstance(data, dict) or name == "error" or "error" in data:
            raise _Unfit("an error, or a chunk that is not an object")
        for key in ("id", "created", "model", "service_tier", "system_fingerprint"):
            if data.get(key) is not None:
                head.setdefault(key, data[key])
        if isinstance(data.get("usage"), dict):
            usage = data["usage"]
        for choice in data.get("choices") or ():
            index = choice.get("index", 0)
            message = choices.setdefault(index, {})
            for key, value in (choice.get("delta") or {}).items():
                if key == "tool_calls":
                    _merge_calls(calls.setdefault(index, {}), value)
                elif key == "role":
                    message.setdefault("role", value or "assistant")
                elif isinstance(value, str):
                    message.setdefault(key, "")
                    texts.setdefault(index, {}).setdefault(key, []).append(value)
                elif value is None:
                    message.setdefault(key, None)
                elif key == "annotations" and isinstance(value, list):
                    message.setdefault(key, []).extend(value)
                else:
                    raise _Unfit(f"a delta's {key} has no place in an answer")
            if choice.get("finish_reason"):
                finish[index] = choice["finish_reason"]
    else:
        raise _Unfit("the stream has no [DONE]")
    if not choices or set(finish) != set(choices):
        raise _Unfit("a choice has no finish reason")
    answer: dict[str, Any] = {
        "id": head.get("id"),
        "object": "chat.completion",
        "created": head.get("created"),
        "model": head.get("model"),
        "choices": [],
    }
    for index in sorted(choices):
        message = {"role": "assistant", "content": None, **choices[index]}
        for key, pieces in texts.get(index, {}).items():
            message[key] = "".join(pieces)
        if calls.get(index):
            message["tool_calls"] = [_joined(calls[index][k]) for k in sorted(calls[index])]
        answer["choices"].append(
            {"index": index, "message": message, "logprobs": None, "finish_reason": finish[index]}
        )
    if usage is not None:
        answer["usage"] = usage
    for key in ("service_tier", "system_fingerprint"):
        if key in head:
            answer[key] = head[key]
    return answer


def _merge_calls(calls: dict[int, dict[str, Any]], deltas: Any) -> None:
    """Tool-call deltas into *calls* by index (their position when there is none): the
    id, type and name first given, the arguments joined."""
    for position, delta in enumerate(deltas or ()):
        if delta.get("type") not in (None, "function"):
            raise _Unfit(f"a tool call of type {delta['type']!r}")
        function = delta.get("function") or {}
        call = calls.setdefault(
            delta.get("index", position),
            {"id": None, "type": "function", "function": {"name": None, "arguments": []}},
        )
        if delta.get("id") and not call["id"]:
            call["id"] = delta["id"]
        if function.get("name") and not call["function"]["name"]:
            call["function"]["name"] = function["name"]
        if isinstance(function.get("arguments"), str):
            call["function"]["arguments"].append(function["arguments"])


def _joined(call: dict[str, Any]) -> dict[str, Any]:
    """A merged tool call with its argument pieces joined."""
    function = call["function"]
    return {**call, "function": {**function, "arguments": "".join(function["arguments"])}}


def _messages_answer(events: Iterator[tuple[str | None, Any]]) -> dict[str, Any]:
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    #: Each block's text, thinking and input JSON as their pieces, joined at the end.
    partial: dict[int, dict[str, list[str]]] = {}
    for name, data in events:
        kind = data.get("type") if isinstance(data, dict) else None
        if kind is None or kind == "error" or name == "error":
            raise _Unfit("an error, or an event that is not a Messages event")
        if kind == "message_start":
            message = dict(data["message"])
        elif kind == "ping" or message is None:
            if kind != "ping":
                raise _Unfit(f"{kind} before message_start")
        elif kind == "content_block_start":
            blocks[data["index"]] = dict(data["content_block"])
        elif kind == "content_block_delta":
            index = data["index"]
            _apply_delta(blocks[index], data["delta"], partial.setdefault(index, {}))
        elif kind == "message_delta":
            message.update(data.get("delta") or {})
            usage = data.get("usage")
            if isinstance(usage, dict):  # cumulative counts, laid over message_start's
                counted = {k: v for k, v in usage.items() if v is not None}
                message["usage"] = {**(message.get("usage") or {}), **counted}
        elif kind == "message_stop":
            break
    else:
        raise _Unfit("the stream has no message_stop")
    if message is None:
        raise _Unfit("the stream has no message_start")
    for index, fields in partial.items():
        block = blocks[index]
        for key, pieces in fields.items():
            text = "".join(pieces)
            if key == "partial_json":
                block["input"] = loads(text) if text.strip() else {}
            else:
                block[key] = (block.get(key) or "") + text
    message["content"] = [blocks[i] for i in sorted(blocks)]
    return message


def _apply_delta(
    block: dict[str, Any], delta: dict[str, Any], partial: dict[str, list[str]]
) -> None:
    kind = delta["type"]
    if kind == "text_delta":
        partial.setdefault("text", []).append(delta["text"])
    elif kind == "input_json_delta":
        partial.setdefault("partial_json", []).append(delta["partial_json"])
    elif kind == "thinking_delta":
        partial.setdefault("thinking", []).append(delta["thinking"])
    elif kind == "signature_delta":
        block["signature"] = delta["signature"]
    elif kind == "citations_delta":
        block["citations"] = [*(block.get("citations") or ()), delta["citation"]]
    else:
        raise _Unfit(f"a delta of type {kind!r}")


def _responses_answer(events: Iterator[tuple[str | None, Any]]) -> dict[str, Any]:
    done: dict[int, Any] = {}
    for name, data in events:
        kind = data.get("type") if isinstance(data, dict) else None
        if kind in ("error", "response.failed") or name == "error":
            raise _Unfit("the response failed")
        if kind == "response.output_item.done":
            done[data["output_index"]] = data["item"]
        elif kind in _FINAL:
            response = data["response"]
            if not isinstance(response, dict):
                raise _Unfit("the last event has no response")
            if not response.get("output") and done:
                # A server whose last event leaves the output out: the items it sent.
                response["output"] = [done[i] for i in sorted(done)]
            return response
    raise _Unfit("the stream has no response.completed")


_ANSWERS: Final[dict[str, tuple[Callable[..., dict[str, Any]], frozenset[str] | None]]] = {
    CHAT: (_chat_answer, None),
    MESSAGES: (_messages_answer, None),
    RESPONSES: (_responses_answer, _RESPONSES_READ),
}


def answer_from_stream(api: str, body: bytes, *, max_bytes: int) -> bytes | None:
    """The JSON answer (compact JSON bytes) that a complete SSE stream *body* of *api*
    amounts to, as the provider itself would have answered the same request without
    streaming.

    A chat answer merges each choice's deltas (content, refusal and reasoning joined;
    tool calls by index, their arguments joined; logprobs left out); a Messages answer is
    message_start's message with the blocks built from their deltas and message_delta's
    fields and usage laid over it; a Responses answer is the response of its last event.

    Returns:
        None when the stream is incomplete (no terminal event: chat's finish reason and
        ``data: [DONE]``, Messages' ``message_stop``, Responses' ``response.completed``
        or ``response.incomplete``), carries an error, is not understood, or an event or
        the answer would pass *max_bytes*.

    Raises:
        ValueError: *api* is not one of `filterproxy.http.apis`'s.
    """
    if api not in _ANSWERS:
        raise ValueError(f"unknown API {api!r}")
    assemble, names = _ANSWERS[api]
    try:
        answer = dumps(assemble(_documents(body, max_bytes, names)))
    except (_Unfit, ValueError, *SHAPE_ERRORS):
        return None
    return answer if len(answer) <= max_bytes else None


# -- writing a stream ------------------------------------------------------------------


class _Writer:
    """The events of a stream being made, at most *limit* bytes of them."""

    __slots__ = ("limit", "parts", "sequence", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        #: The next Responses event's sequence_number (None: not numbered).
        self.sequence: int | None = None

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise _Unfit("the stream would pass max_bytes")
        self.parts.append(data)

    def event(self, document: dict[str, Any], name: str | None = None) -> None:
        self.add(encode_event(dumps(document).decode(), event=name))

    def typed(self, kind: str, **fields: Any) -> None:
        """An event named by its type (Messages, Responses: numbered when `sequence` is
        set, as Responses events are)."""
        document = {"type": kind, **fields}
        if self.sequence is not None:
            document["sequence_number"] = self.sequence
            self.sequence += 1
        self.event(document, kind)


def _chat_stream(answer: dict[str, Any], include_usage: bool, out: _Writer) -> None:
    head = {k: answer.get(k) for k in ("id", "object", "created", "model")}
    head["object"] = "chat.completion.chunk"
    head.update((k, answer[k]) for k in ("service_tier", "system_fingerprint") if k in answer)

    def chunk(index: int, delta: dict[str, Any], finish: Any = None) -> None:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        out.event({**head, "choices": [choice]})

    for choice in answer["choices"]:
        index, message = choice["index"], choice["message"]
        first: dict[str, Any] = {"role": message.get("role") or "assistant", "content": None}
        texts: list[str] = []  # content, refusal, reasoning: strings streamed as deltas
        for key, value in message.items():
            if key in ("role", "tool_calls"):
                continue
            if isinstance(value, str):
                texts.append(key)
            elif value is None or key == "annotations":
                first[key] = value
            else:
                raise _Unfit(f"a message's {key} has no form in a stream")
        texts.sort(key=("content", "refusal").__contains__)  # the reasoning first
        first.update((k, "" if k == "content" else None) for k in texts if k in first)
        chunk(index, first)
        for key in texts:
            if message[key]:
                chunk(index, {key: message[key]})
        for k, call in enumerate(message.get("tool_calls") or ()):
            function = call["function"]
            arguments = function.get("arguments") or ""
            if not isinstance(arguments, str):
                raise _Unfit("tool call arguments that are not a string")
            opened = {"index": k, "id": call.get("id"), "type": call.get("type") or "function"}
            opened["function"] = {"name": function.get("name"), "arguments": ""}
            chunk(index, {"tool_calls": [opened]})
            if arguments:
                chunk(index, {"tool_calls": [{"index": k, "function": {"arguments": arguments}}]})
        chunk(index, {}, choice.get("finish_reason") or "stop")
    if include_usage and isinstance(answer.get("usage"), dict):
        out.event({**head, "choices": [], "usage": answer["usage"]})
    out.add(encode_event("[DONE]"))


def _messages_stream(answer: dict[str, Any], include_usage: bool, out: _Writer) -> None:
    if answer.get("type") != "message" or not isinstance(answer.get("content"), list):
        raise _Unfit("not a Messages answer")
    usage = answer.get("usage")
    start = {**answer, "content": [], "stop_reason": None, "stop_sequence": None}
    if isinstance(usage, dict) and "output_tokens" in usage:
        start["usage"] = {**usage, "output_tokens": 0}  # counted in message_delta
    out.typed("message_start", message=start)
    for index, block in enumerate(answer["content"]):
        kind = block["type"]
        deltas: list[dict[str, Any]] = []
        opened = dict(block)
        if kind == "text":
            opened["text"] = ""
            citations = block.get("citations")
            if isinstance(citations, list) and citations:
                opened["citations"] = []
                deltas += ({"type": "citations_delta", "citation": c} for c in citations)
            if block["text"]:
                deltas.append({"type": "text_delta", "text": block["text"]})
        elif kind in ("tool_use", "server_tool_use", "mcp_tool_use"):
            opened["input"] = {}
            if block.get("input"):
                deltas.append(
                    {"type": "input_json_delta", "partial_json": dumps(block["input"]).decode()}
                )
        elif kind == "thinking":
            opened.update(thinking="", signature="")
            if block.get("thinking"):
                deltas.append({"type": "thinking_delta", "thinking": block["thinking"]})
            if block.get("signature"):
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
        out.typed("content_block_start", index=index, content_block=opened)
        for delta in deltas:
            out.typed("content_block_delta", index=index, delta=delta)
        out.typed("content_block_stop", index=index)
    delta = {"stop_reason": answer.get("stop_reason"), "stop_sequence": answer.get("stop_sequence")}
    if isinstance(usage, dict) and "output_tokens" in usage:
        out.typed("message_delta", delta=delta, usage={"output_tokens": usage["output_tokens"]})
    else:
        out.typed("message_delta", delta=delta)
    out.typed("message_stop")


def _responses_stream(answer: dict[str, Any], include_usage: bool, out: _Writer) -> None:
    status = answer.get("status")
    if answer.get("object") != "response" or status not in ("completed", "incomplete"):
        raise _Unfit("not a finished Responses answer")
    out.sequence = 0
    shell = {**answer, "status": "in_progress", "output": [], "usage": None}
    shell.update((k, None) for k in ("incomplete_details", "completed_at") if k in answer)
    out.typed("response.created", response=shell)
    out.typed("response.in_progress", response=shell)
    for index, item in enumerate(answer["output"]):
        kind = item["type"]
        added = {**item, "status": "in_progress"} if "status" in item else dict(item)
        if kind == "message":
            added["content"] = []
        elif kind == "function_call":
            added["arguments"] = ""
        elif kind == "reasoning":
            added["summary"] = []
            added.pop("content", None)
        out.typed("response.output_item.added", output_index=index, item=added)
        where = {"item_id": item.get("id"), "output_index": index}
        if kind == "message":
            for j, part in enumerate(item["content"]):
                _part_events(part, {**where, "content_index": j}, out)
        elif kind == "function_call":
            arguments = item["arguments"]
            if arguments:
                out.typed("response.function_call_arguments.delta", **where, delta=arguments)
            out.typed(
                "response.function_call_arguments.done",
                **where,
                name=item.get("name"),
                arguments=arguments,
            )
        out.typed("response.output_item.done", output_index=index, item=item)
    out.typed(f"response.{status}", response=answer)


def _part_events(part: dict[str, Any], where: dict[str, Any], out: _Writer) -> None:
    """A message item's content part: added, its text, done."""
    kind = part["type"]
    if kind == "output_text":
        opened = {**part, "text": "", "annotations": []}
        if "logprobs" in part:
            opened["logprobs"] = []
        out.typed("response.content_part.added", **where, part=opened)
        if part["text"]:
            out.typed("response.output_text.delta", **where, delta=part["text"], logprobs=[])
        out.typed("response.output_text.done", **where, text=part["text"], logprobs=[])
    elif kind == "refusal":
        out.typed("response.content_part.added", **where, part={"type": "refusal", "refusal": ""})
        if part["refusal"]:
            out.typed("response.refusal.delta", **where, delta=part["refusal"])
        out.typed("response.refusal.done", **where, refusal=part["refusal"])
    else:
        raise _Unfit(f"a content part of type {kind!r}")
    out.typed("response.content_part.done", **where, part=part)


_STREAMS: Final[dict[str, Callable[[dict[str, Any], bool, _Writer], None]]] = {
    CHAT: _chat_stream,
    MESSAGES: _messages_stream,
    RESPONSES: _responses_stream,
}


def stream_from_answer(
    api: str, body: bytes, *, include_usage: bool = True, max_bytes: int
) -> bytes | None:
    """An SSE stream of *api* that an SDK reads as the same answer as the JSON *body*.

    Chat: per choice a first chunk with the role, the reasoning, content and refusal
    deltas, each tool call opened (index, id, type, name) then its arguments, the chunk
    with the finish reason; then — only with *include_usage* and when the answer has
    usage — the usage-only chunk (``"choices": []``), then ``data: [DONE]``. Messages:
    message_start (its usage's input counts, no content), each block's start, deltas and
    stop, message_delta (stop reason and output_tokens), message_stop, each with its
    ``event:`` line. Responses: response.created, response.in_progress, each output
    item's added, content and done events, then response.completed (or
    response.incomplete) with the whole response, numbered by ``sequence_number``.

    Returns:
        None when *body* is not such an answer, or the stream would pass *max_bytes*.

    Raises:
        ValueError: *api* is not one of `filterproxy.http.apis`'s.
    """
    if api not in _STREAMS:
        raise ValueError(f"unknown API {api!r}")
    out = _Writer(max_bytes)
    try:
        answer = loads(body)
        if not isinstance(answer, dict):
            return None
        _STREAMS[api](answer, include_usage, out)
    except (_Unfit, ValueError, *SHAPE_ERRORS):
        return None
    return b"".join(out.parts)


def without_usage_chunk(body: bytes) -> bytes:
    """A chat SSE stream without its usage-only chunk (the one
    ``stream_options.include_usage`` adds: ``"choices": []`` with a usage object), every
    other event byte for byte — what was left of an unfinished last event too."""
    decoder = SSEDecoder(max_event_bytes=max(len(body), 1))
    kept = []
    for event in decoder.feed(body):
        if event.data is not None and '"usage"' in event.data:
            try:
                if _is_usage_chunk(loads(event.data)):
                    continue
            except ValueError:
                pass
        kept.append(event.raw)
    kept.append(decoder.close())
    return b"".join(kept)
