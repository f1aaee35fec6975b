"""An upstream that speaks only Anthropic's Messages API, for the integration tests, run
as its own process. It prints ``PORT <n>`` when listening.

``POST /v1/messages`` answers (streaming or not) with the words "Hello from Messages",
or — given ``tools`` and a last turn that is not a tool result — a call of the first
tool with ``{"city": "Paris"}``; after a tool result, "Tool said: <result>". The model
chooses a failure: ``claude-bad`` gets a 400 in Anthropic's error shape, ``claude-midfail``
an ``error`` event after the first words. ``GET /control/last`` returns the last
request's path, headers and JSON body; ``GET /control/sent`` the exact bytes of the last
answer. Any other path gets a 404.
"""

from __future__ import annotations

import json
from typing import Any

from recording_server import SENT, record, serve  # type: ignore[import-not-found]
from twisted.web import server
from twisted.web.resource import Resource


def event(name: str, document: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(document)}\n\n".encode()


def answer(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """(content blocks, stop reason) for a request."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    content = last.get("content")
    results = (
        [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
        if isinstance(content, list)
        else []
    )
    if results:
        return [{"type": "text", "text": f"Tool said: {results[0].get('content')}"}], "end_turn"
    if body.get("tools"):
        call = {
            "type": "tool_use",
            "id": "toolu_01",
            "name": body["tools"][0]["name"],
            "input": {"city": "Paris"},
        }
        return [{"type": "text", "text": "Let me check."}, call], "tool_use"
    return [{"type": "text", "text": "Hello from Messages"}], "end_turn"


class Messages(Resource):
    isLeaf = True

    def render_POST(self, request: server.Request) -> bytes | int:
        body = record(request)
        if request.path != b"/v1/messages":
            request.setResponseCode(404)
            return b'{"type":"error","error":{"type":"not_found_error","message":"no such path"}}'
        model = body.get("model")
        if model == "claude-bad":
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(
                {
                    "type": "error",
                    "error": {
                        "type": "invalid_request_error",
                        "message": "max_tokens: too large for claude-bad",
                    },
                }
            ).encode()
        blocks, stop = answer(body)
        usage = {
            "input_tokens": 12,
            "cache_read_input_tokens": 3,
            "cache_creation_input_tokens": 0,
            "output_tokens": 7,
        }
        if not body.get("stream"):
            document = {
                "id": "msg_01abc",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": blocks,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": usage,
            }
            request.setHeader(b"content-type", b"application/json")
            SENT[0] = json.dumps(document).encode()
            return SENT[0]
        out = [
            event(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_01abc",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {**usage, "output_tokens": 1},
                    },
                },
            ),
            b'event: ping\ndata: {"type": "ping"}\n\n',
        ]
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                out.append(
                    event(
                        "content_block_start",
                        {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {"type": "text", "text": ""},
                        },
                    )
                )
                words = block["text"].split(" ")
                for i, word in enumerate(words):
                    text = word if i == 0 else " " + word
                    out.append(
                        event(
                            "content_block_delta",
                            {
                                "type": "content_block_delta",
                                "index": index,
                                "delta": {"type": "text_delta", "text": text},
                            },
                        )
                    )
                    if model == "claude-midfail":
                        out.append(
                            event(
                                "error",
                                {
                                    "type": "error",
                                    "error": {"type": "overloaded_error", "message": "Overloaded"},
                                },
                            )
                        )
                        break
                if model == "claude-midfail":
                    break
            else:
                out.append(
                    event(
                        "content_block_start",
                        {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": {**block, "input": {}},
                        },
                    )
                )
                arguments = json.dumps(block["input"])
                for part in (arguments[:5], arguments[5:]):
                    out.append(
                        event(
                            "content_block_delta",
                            {
                                "type": "content_block_delta",
                                "index": index,
                                "delta": {"type": "input_json_delta", "partial_json": part},
                            },
                        )
                    )
            out.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
        else:
            out.append(
                event(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": stop, "stop_sequence": None},
                        "usage": {"output_tokens": 7},
                    },
                )
            )
            out.append(event("message_stop", {"type": "message_stop"}))
        request.setHeader(b"content-type", b"text/event-stream")
        SENT[0] = b"".join(out)
        for piece in out:
            request.write(piece)
        request.finish()
        return server.NOT_DONE_YET


if __name__ == "__main__":
    serve(Messages)
