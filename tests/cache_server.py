"""An upstream that speaks Chat Completions slowly, for the response cache's tests; run
as its own process (it prints ``PORT <n>`` when listening).

``POST /v1/chat/completions`` answers "Echo: <last user text>" as 12 words, a JSON body
or — with ``stream: true`` — one chunk per word every 40 ms (so that identical requests
sent together are all in flight at once), then the finish chunk, the usage chunk when
``stream_options.include_usage`` asks for it, and ``[DONE]``. Model ``break`` streams five
words, then resets the connection (a provider failing mid-answer); model ``fail``
answers 500. ``GET /control/count`` is how many requests came, ``/control/last`` the
last one's path, headers and JSON body (`recording_server`).
"""

from __future__ import annotations

import json
import time
from typing import Any

from recording_server import record, serve  # type: ignore[import-not-found]
from twisted.internet import reactor
from twisted.web import server
from twisted.web.resource import Resource

USAGE = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
WORDS = 12


def words(body: dict[str, Any]) -> list[str]:
    said = next(
        (m.get("content") for m in reversed(body.get("messages") or []) if m.get("role") == "user"),
        "",
    )
    if isinstance(said, list):
        said = " ".join(part.get("text", "") for part in said if isinstance(part, dict))
    return [f"Echo: {said}"] + [f" w{n:02d}" for n in range(1, WORDS)]


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    document = {
        "id": "chatcmpl-cache",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    return b"data: " + json.dumps(document).encode() + b"\n\n"


class Api(Resource):
    isLeaf = True

    def render_POST(self, request: server.Request) -> Any:
        body = record(request)
        model = body.get("model")
        if model == "fail":
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"application/json")
            return b'{"error": {"message": "the model failed", "type": "server_error"}}'
        said = words(body)
        if not body.get("stream"):
            request.setHeader(b"content-type", b"application/json")
            answer = {
                "id": "chatcmpl-cache",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(said)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": USAGE,
            }
            return json.dumps(answer).encode()
        options = body.get("stream_options") or {}
        plan = [chunk({"role": "assistant", "content": ""})]
        plan += [chunk({"content": word}) for word in said]
        plan.append(chunk({}, "stop"))
        if options.get("include_usage"):
            plan.append(
                b"data: "
                + json.dumps(
                    {
                        "id": "chatcmpl-cache",
                        "object": "chat.completion.chunk",
                        "created": 1,
                        "model": "m",
                        "choices": [],
                        "usage": USAGE,
                    }
                ).encode()
                + b"\n\n"
            )
        plan.append(b"data: [DONE]\n\n")
        if model == "break":
            plan = plan[:6]
        gone = [False]
        request.notifyFinish().addErrback(lambda _: gone.__setitem__(0, True))

        def send(i: int) -> None:
            if gone[0]:
                return
            if i == len(plan):
                if model == "break":
                    request.transport.abortConnection()  # type: ignore[union-attr]
                else:
                    request.finish()
                return
            request.write(plan[i])
            reactor.callLater(0.04, send, i + 1)  # type: ignore[attr-defined]

        request.setHeader(b"content-type", b"text/event-stream")
        send(0)
        return server.NOT_DONE_YET


if __name__ == "__main__":
    serve(Api)
