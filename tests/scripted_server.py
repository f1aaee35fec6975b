"""An upstream that speaks one API — Chat Completions (``chat``) or Messages (``messages``),
the first argument — and answers as a test scripts it, for agents (Codex CLI, Claude Code,
the Vercel AI SDK) that call tools and send the results back. Run as its own process; it
prints ``PORT <n>`` when listening.

``POST /control/script`` sets the script: ``{"calls": [{"name", "arguments", "text"?}, …],
"text": "…", "chain": bool}``. A request whose conversation holds *k* tool results gets
the call ``calls[k]`` (the tool ``name`` as the upstream knows it, ``arguments`` a JSON
text, and the call's ``text`` said before it, if any) while there is one, then the
``text``. Without ``chain``, a request whose last message is a tool result gets the text
(one call per user turn, as a chat with a person goes); with it, the calls follow one
another (an agent's task). The answer follows the conversation's state, not the order
of requests, so a client's retries or side requests do not shift it. A request without
tools gets the text. Streams (``stream: true``) come in small pieces: the text word by
word, a call's arguments cut in ten.

``GET /control/requests`` lists every request (path and JSON body) in order; a request to
the other API's path gets a 404 in that API's error shape, as a provider that does not
speak it would answer.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import reactor
from twisted.web import server
from twisted.web.resource import Resource

API = sys.argv[1] if len(sys.argv) > 1 else "chat"
PATHS = {"chat": b"/v1/chat/completions", "messages": b"/v1/messages"}
SCRIPT: dict[str, Any] = {"calls": [], "text": "Hello from the scripted upstream"}
REQUESTS: list[dict[str, Any]] = []
USAGE_CHAT = {"prompt_tokens": 20, "completion_tokens": 8, "total_tokens": 28}
USAGE_MESSAGES = {"input_tokens": 20, "output_tokens": 8}


def tool_results(message: dict[str, Any]) -> int:
    """How many tool results a message holds."""
    if API == "chat":
        return 1 if message.get("role") == "tool" else 0
    content = message.get("content")
    if not isinstance(content, list):
        return 0
    return sum(1 for b in content if isinstance(b, dict) and b.get("type") == "tool_result")


def next_answer(body: dict[str, Any]) -> tuple[str, dict[str, str] | None]:
    """(text, call) for a request: the scripted call for its state, or the text."""
    calls = SCRIPT.get("calls") or []
    messages = body.get("messages") or [{}]
    done = sum(tool_results(m) for m in messages)
    after_tool = tool_results(messages[-1]) > 0
    if body.get("tools") and done < len(calls) and (SCRIPT.get("chain") or not after_tool):
        call = calls[done]
        said = str(call.get("text") or "")
        return said, {
            "id": f"call_{done + 1}",
            "name": call["name"],
            "arguments": call["arguments"],
        }
    return str(SCRIPT.get("text") or ""), None


def pieces(text: str, count: int = 10) -> list[str]:
    size = max(1, -(-len(text) // count))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def chat_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    document = {
        "id": "chatcmpl-script",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "scripted",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(document).encode() + b"\n\n"


def chat_answer(body: dict[str, Any], text: str, call: dict[str, str] | None) -> bytes:
    if not body.get("stream"):
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if call is not None:
            message["tool_calls"] = [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ]
        return json.dumps(
            {
                "id": "chatcmpl-script",
                "object": "chat.completion",
                "created": 1,
                "model": "scripted",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": "tool_calls" if call else "stop",
                    }
                ],
                "usage": USAGE_CHAT,
            }
        ).encode()
    out = [chat_chunk({"role": "assistant", "content": ""})]
    for i, word in enumerate(text.split(" ") if text else []):
        out.append(chat_chunk({"content": word if i == 0 else " " + word}))
    if call is not None:
        head = {"index": 0, "id": call["id"], "type": "function"}
        out.append(chat_chunk({"tool_calls": [{**head, "function": {"name": call["name"]}}]}))
        for piece in pieces(call["arguments"]):
            out.append(chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
    out.append(chat_chunk({}, "tool_calls" if call else "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"id": "chatcmpl-script", "object": "chat.completion.chunk", "choices": []}
        out.append(b"data: " + json.dumps({**usage, "usage": USAGE_CHAT}).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def event(name: str, document: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(document)}\n\n".encode()


def messages_answer(body: dict[str, Any], text: str, call: dict[str, str] | None) -> bytes:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    if call is not None:
        blocks.append(
            {
                "type": "tool_use",
                "id": "toolu_" + call["id"],
                "name": call["name"],
                "input": json.loads(call["arguments"]),
            }
        )
    stop = "tool_use" if call else "end_turn"
    message = {
        "id": "msg_script",
        "type": "message",
        "role": "assistant",
        "model": "scripted",
        "stop_sequence": None,
    }
    if not body.get("stream"):
        return json.dumps(
            {**message, "content": blocks, "stop_reason": stop, "usage": USAGE_MESSAGES}
        ).encode()
    out = [
        event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    **message,
                    "content": [],
                    "stop_reason": None,
                    "usage": {**USAGE_MESSAGES, "output_tokens": 1},
                },
            },
        )
    ]
    for index, block in enumerate(blocks):
        start = {**block, "text": ""} if block["type"] == "text" else {**block, "input": {}}
        out.append(
            event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
        )
        if block["type"] == "text":
            deltas = [
                {"type": "text_delta", "text": w if i == 0 else " " + w}
                for i, w in enumerate(block["text"].split(" "))
            ]
        else:
            deltas = [
                {"type": "input_json_delta", "partial_json": p}
                for p in pieces(json.dumps(block["input"]))
            ]
        for delta in deltas:
            out.append(
                event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            )
        out.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
    out.append(
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": 8},
            },
        )
    )
    out.append(event("message_stop", {"type": "message_stop"}))
    return b"".join(out)


class Api(Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(REQUESTS).encode()

    def render_POST(self, request: server.Request) -> bytes:
        body = json.loads(request.content.read())  # type: ignore[union-attr]
        request.setHeader(b"content-type", b"application/json")
        if request.path == b"/control/script":
            SCRIPT.clear()
            SCRIPT.update(body)
            REQUESTS.clear()
            return b"{}"
        REQUESTS.append({"path": request.path.decode(), "body": body})
        if request.path != PATHS[API]:
            request.setResponseCode(404)
            if API == "messages":
                return (
                    b'{"type":"error","error":{"type":"not_found_error","message":"no such path"}}'
                )
            return b'{"error":{"message":"no such path","type":"invalid_request_error"}}'
        text, call = next_answer(body)
        if body.get("stream"):
            request.setHeader(b"content-type", b"text/event-stream")
        if API == "chat":
            return chat_answer(body, text, call)
        return messages_answer(body, text, call)


if __name__ == "__main__":
    port = reactor.listenTCP(0, server.Site(Api()), interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"PORT {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]
