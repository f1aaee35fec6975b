"""An HTTP/2 cleartext (h2c, prior knowledge) test upstream: an ASGI app under Hypercorn.

    python tests/h2c_server.py      # prints "PORT <n>"

POST /v1/chat/completions streams `chunks` SSE events (body field `test.chunks`,
default 5); with `test.hold`, it waits for GET /release first; with `test.size`, it
answers one SSE comment of that many bytes instead, written at once. GET /stats says how many
requests came over HTTP/2, on which client ports, and how many were open at most.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

RELEASE = asyncio.Event()
STATS: dict[str, Any] = {
    "requests": 0,
    "http2_requests": 0,
    "cancelled": 0,
    "open": 0,
    "max_open": 0,
    "client_ports": [],
}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/release":
        RELEASE.set()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"released"})
        return
    if scope["path"] == "/stats":
        body = json.dumps(STATS).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            break
    STATS["requests"] += 1
    if scope.get("http_version") == "2":
        STATS["http2_requests"] += 1
    port = (scope.get("client") or ("", 0))[1]
    if port not in STATS["client_ports"]:
        STATS["client_ports"].append(port)
    STATS["open"] += 1
    STATS["max_open"] = max(STATS["max_open"], STATS["open"])
    options = json.loads(raw or b"{}").get("test") or {}
    chunks = int(options.get("chunks", 5))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    try:
        if options.get("hold"):
            await RELEASE.wait()
        size = int(options.get("size", 0))
        if size:
            await send({"type": "http.response.body", "body": b":" + b"x" * (size - 2) + b"\n"})
            return
        for i in range(chunks):
            event = {"choices": [{"index": 0, "delta": {"content": f"tok{i} "}}]}
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + json.dumps(event).encode() + b"\n\n",
                    "more_body": True,
                }
            )
            await asyncio.sleep(0.005)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
    except Exception:
        STATS["cancelled"] += 1
        raise
    finally:
        STATS["open"] -= 1


def main() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    print(f"PORT {port}", flush=True)
    asyncio.run(serve(app, config))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
