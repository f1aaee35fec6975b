"""An upstream that speaks Chat Completions (and, for pass-through tests, hands out a
fixed Responses answer), for the integration tests, run as its own process. It prints
``PORT <n>`` when listening.

``POST /v1/chat/completions`` answers (streaming or not) "You said: <last user text>
(<n> messages)" — so a test sees how much conversation arrived — or, given ``tools``
and a last message that is not a tool result, a call of the first tool with
``{"city": "Paris"}`` (model ``chat-text`` answers in text, tools or not); after a tool
result, "Tool said: <result>". Model ``chat-bad``
gets a 400 in OpenAI's error shape, ``chat-midfail`` an error chunk after the first
words. ``POST /v1/responses`` answers with fixed Responses bytes (an event stream when
asked). ``GET /control/last`` returns the last request's path, headers and JSON body,
``/control/count`` how many requests came, ``/control/sent`` the exact bytes of the
last answer.

Slow streams, for resuming: model ``chat-slow`` streams ``tok01`` … ``tok40`` (one
chunk each 30 ms), then the finish and usage chunks and ``[DONE]``; ``chat-pause``
streams ``tok01`` … ``tok06`` with a 2 s silence after the third (a ``: ping`` comment
block each 0.5 s meanwhile); ``chat-flood`` writes ``t00001`` … ``t30000`` at once (6 MB: more than the
kernel's send buffer takes for a client that does not read); ``chat-huge`` streams one
content delta of 5 MB. It
lists each slow stream as
``{"finished": bool, "cancelled": bool}`` (cancelled: its connection closed first)
for a ``GET`` of any path but ``/control/…``.
"""

from __future__ import annotations

import json
from typing import Any

from recording_server import SENT, record, serve  # type: ignore[import-not-found]
from twisted.web import server
from twisted.web.resource import Resource

USAGE = {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}

#: What a provider that speaks Responses itself answers (pass-through must keep it).
RESPONSES_JSON = (
    b'{"id":"resp_upstream1","object":"response","created_at":1,"status":"completed",'
    b'"model":"native","output":[{"type":"message","id":"msg_u1","status":"completed",'
    b'"role":"assistant","content":[{"type":"output_text","text":"native  answer",'
    b'"annotations":[]}]}],"parallel_tool_calls":true,"tool_choice":"auto","tools":[],'
    b'"usage":{"input_tokens":3,"output_tokens":2,"total_tokens":5}}'
)
RESPONSES_SSE = (
    b'event: response.created\ndata: {"type":"response.created","sequence_number":0,'
    b'"response":{"id":"resp_upstream1","object":"response","status":"in_progress","output":[]}}\n\n'
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    b'"sequence_number":1,"item_id":"msg_u1","output_index":0,"content_index":0,"delta":"native"}\n\n'
    b"event: response.completed\ndata: " + b'{"type":"response.completed","sequence_number":2,'
    b'"response":' + RESPONSES_JSON + b"}\n\n"
)


def reply(body: dict[str, Any]) -> tuple[str, tuple[str, str] | None]:
    """(text, tool call as (name, arguments) or None) for a chat request."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return f"Tool said: {last.get('content')}", None
    tools = body.get("tools")
    if tools and body.get("model") != "chat-text":  # chat-text answers in text only
        return "", (tools[0]["function"]["name"], json.dumps({"city": "Paris"}))
    said = next(
        (m.get("content") for m in reversed(messages) if m.get("role") == "user"), "nothing"
    )
    return f"You said: {said} ({len(messages)} messages)", None


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    document = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + json.dumps(document).encode() + b"\n\n"


STREAMS: list[dict[str, bool]] = []
#: The size of the one content delta of model ``chat-huge``.
HUGE_DELTA = 5 * 1024 * 1024
SLOW_TOKENS = [f" tok{n:02d}" for n in range(1, 41)]


def slow(request: server.Request, model: str) -> int:
    """A stream written over time (see the module's description)."""
    from twisted.internet import reactor

    state = {"finished": False, "cancelled": False}
    STREAMS.append(state)
    tokens = SLOW_TOKENS if model == "chat-slow" else SLOW_TOKENS[:6]
    plan: list[tuple[float, bytes]] = [(0.0, chunk({"role": "assistant", "content": ""}))]
    for i, token in enumerate(tokens):
        plan.append((0.03, chunk({"content": token})))
        if model == "chat-pause" and i == 2:
            plan += [(0.5, b": ping - upstream\n\n")] * 4
    usage = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [],
        "usage": USAGE,
    }
    plan += [
        (0.03, chunk({}, "stop")),
        (0.0, b"data: " + json.dumps(usage).encode() + b"\n\n"),
        (0.0, b"data: [DONE]\n\n"),
    ]

    def lost(_: object) -> None:
        if not state["finished"]:
            state["cancelled"] = True

    request.notifyFinish().addErrback(lost)

    def send(i: int) -> None:
        if state["cancelled"]:
            return
        if i == len(plan):
            state["finished"] = True
            request.finish()
            return
        request.write(plan[i][1])
        delay = plan[i + 1][0] if i + 1 < len(plan) else 0.0
        reactor.callLater(delay, send, i + 1)  # type: ignore[attr-defined]

    request.setHeader(b"content-type", b"text/event-stream")
    send(0)
    return server.NOT_DONE_YET


class Api(Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(STREAMS).encode()

    def render_POST(self, request: server.Request) -> bytes | int:
        body = record(request)
        if request.path == b"/v1/responses":
            stream = body.get("stream") is True
            request.setHeader(
                b"content-type", b"text/event-stream" if stream else b"application/json"
            )
            SENT[0] = RESPONSES_SSE if stream else RESPONSES_JSON
            return SENT[0]
        if not request.path.endswith(b"/v1/chat/completions"):  # under any base path
            request.setResponseCode(404)
            return b'{"error":{"message":"no such path","type":"invalid_request_error"}}'
        model = body.get("model")
        if model in ("chat-slow", "chat-pause") and body.get("stream"):
            return slow(request, model)
        if model == "chat-flood":
            request.setHeader(b"content-type", b"text/event-stream")
            request.write(chunk({"role": "assistant", "content": ""}))
            for n in range(1, 30001):
                request.write(chunk({"content": f" t{n:05d}"}))
            request.write(chunk({}, "stop") + b"data: [DONE]\n\n")
            request.finish()
            return server.NOT_DONE_YET
        if model == "chat-huge":
            # One content delta of 5 MB: more than the socket buffers between the gateway
            # and a client that reads late take, so the gateway pauses this upstream.
            request.setHeader(b"content-type", b"text/event-stream")
            request.write(chunk({"role": "assistant", "content": ""}))
            request.write(chunk({"content": "x" * HUGE_DELTA}))
            request.write(chunk({}, "stop") + b"data: [DONE]\n\n")
            request.finish()
            return server.NOT_DONE_YET
        if model == "chat-bad":
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"application/json")
            return (
                b'{"error":{"message":"temperature is too high for chat-bad",'
                b'"type":"invalid_request_error","param":"temperature","code":null}}'
            )
        text, call = reply(body)
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if call:
                message["tool_calls"] = [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": call[0], "arguments": call[1]},
                    }
                ]
            request.setHeader(b"content-type", b"application/json")
            SENT[0] = json.dumps(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "finish_reason": "tool_calls" if call else "stop",
                        }
                    ],
                    "usage": USAGE,
                }
            ).encode()
            return SENT[0]
        out = [chunk({"role": "assistant", "content": ""})]
        words = text.split(" ") if text else []
        for i, word in enumerate(words):
            out.append(chunk({"content": word if i == 0 else " " + word}))
            if model == "chat-midfail":
                out.append(
                    b'data: {"error":{"message":"the model is overloaded","type":"server_error"}}\n\n'
                )
                break
        else:
            if call:
                opening = {"index": 0, "id": "call_1", "type": "function"}
                out.append(
                    chunk(
                        {
                            "tool_calls": [
                                {**opening, "function": {"name": call[0], "arguments": ""}}
                            ]
                        }
                    )
                )
                for part in (call[1][:6], call[1][6:]):
                    out.append(
                        chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
                    )
            out.append(chunk({}, "tool_calls" if call else "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                out.append(
                    b"data: "
                    + json.dumps(
                        {
                            "id": "chatcmpl-1",
                            "object": "chat.completion.chunk",
                            "choices": [],
                            "usage": USAGE,
                        }
                    ).encode()
                    + b"\n\n"
                )
            out.append(b"data: [DONE]\n\n")
        request.setHeader(b"content-type", b"text/event-stream")
        SENT[0] = b"".join(out)
        for piece in out:
            request.write(piece)
        request.finish()
        return server.NOT_DONE_YET


if __name__ == "__main__":
    serve(Api)
