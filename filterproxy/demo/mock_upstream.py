"""A small OpenAI-compatible upstream for demos: no API key, no network.

It answers ``POST /v1/chat/completions`` (streaming and not) by echoing the last user
message word by word, and ``GET /v1/models``. Given ``tools``, it calls the first one
(its first parameter gets the user's words) — unless the conversation ends with the
tool's result, which it then reports — so a tool round trip can be tried too. Run it on
its own::

    filterproxy-mock-upstream --listen tcp:9100:interface=127.0.0.1 --interval 0.05

or let the gateway start it, with ``mock_upstream: tcp:9100:interface=127.0.0.1`` in the
config (the demo config does).
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

__all__ = ["MockUpstream", "MockUpstreamService", "main"]

MODELS = ("demo",)

log = Logger(namespace="filterproxy.mock_upstream")


def _completion_words(messages: object) -> list[str]:
    said = ""
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                said = content if isinstance(content, str) else json.dumps(content)
                break
    text = "Hello from the filterproxy demo upstream! You said: " + (said or "nothing")
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _tool_call(body: dict[str, Any]) -> tuple[str, str] | None:
    """(name, JSON arguments) of the call to make, or None to answer in text."""
    tools = body.get("tools")
    messages = body.get("messages")
    if not isinstance(tools, list) or not tools or not isinstance(messages, list):
        return None
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
        return None
    function = tools[0].get("function") if isinstance(tools[0], dict) else None
    if not isinstance(function, dict):
        return None
    properties = (function.get("parameters") or {}).get("properties") or {}
    said = "".join(_completion_words(messages)).rsplit(": ", 1)[-1]
    arguments = {next(iter(properties)): said} if properties else {}
    return str(function.get("name", "tool")), json.dumps(arguments)


def _tool_result_words(messages: object) -> list[str] | None:
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        last = messages[-1]
        if last.get("role") == "tool":
            text = "The tool answered: " + str(last.get("content"))
            words = text.split(" ")
            return [w if i == 0 else " " + w for i, w in enumerate(words)]
    return None


class _ChatCompletions(Resource):
    isLeaf = True

    def __init__(self, reactor: Any, interval: float) -> None:
        super().__init__()
        self.reactor = reactor
        self.interval = interval

    def render_POST(self, request: server.Request) -> bytes | int:
        try:
            body = json.loads(request.content.read() or b"{}")  # type: ignore[union-attr]
        except ValueError:
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(
                {"error": {"message": "invalid JSON", "type": "invalid_request_error"}}
            ).encode()
        model = body.get("model", "demo")
        words = _tool_result_words(body.get("messages")) or _completion_words(body.get("messages"))
        call = _tool_call(body)
        call_id = "call_" + uuid.uuid4().hex[:12]
        ident = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
        usage = {
            "prompt_tokens": 8,
            "completion_tokens": len(words),
            "total_tokens": 8 + len(words),
        }
        if not body.get("stream"):
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(words)}
                            if call is None
                            else {
                                "role": "assistant",
                                "content": None,
                                "tool_calls": [
                                    {
                                        "id": call_id,
                                        "type": "function",
                                        "function": {"name": call[0], "arguments": call[1]},
                                    }
                                ],
                            },
                            "finish_reason": "stop" if call is None else "tool_calls",
                        }
                    ],
                    "usage": usage,
                }
            ).encode()
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")

        def chunk(
            delta: dict[str, Any], finish: str | None, extra: dict[str, Any] | None = None
        ) -> bytes:
            doc: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if extra:
                doc.update(extra)
            return b"data: " + json.dumps(doc).encode() + b"\n\n"

        events = [chunk({"role": "assistant", "content": ""}, None)]
        if call is None:
            events += [chunk({"content": w}, None) for w in words]
            events.append(chunk({}, "stop"))
        else:
            name, arguments = call
            half = len(arguments) // 2
            opening = {"index": 0, "id": call_id, "type": "function"}
            events.append(
                chunk(
                    {"tool_calls": [{**opening, "function": {"name": name, "arguments": ""}}]},
                    None,
                )
            )
            for part in (arguments[:half], arguments[half:]):
                events.append(
                    chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}, None)
                )
            events.append(chunk({}, "tool_calls"))
        if include_usage:
            events.append(
                b"data: "
                + json.dumps(
                    {
                        "id": ident,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                ).encode()
                + b"\n\n"
            )
        events.append(b"data: [DONE]\n\n")
        finished = request.notifyFinish()
        gone: list[bool] = []
        finished.addErrback(lambda _: gone.append(True))

        def send(index: int) -> None:
            if gone:
                return
            request.write(events[index])
            if index + 1 == len(events):
                request.finish()
            else:
                self.reactor.callLater(self.interval, send, index + 1)

        send(0)
        return server.NOT_DONE_YET


class _Models(Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(
            {
                "object": "list",
                "data": [{"id": m, "object": "model", "owned_by": "filterproxy"} for m in MODELS],
            }
        ).encode()


class MockUpstream:
    """The mock upstream listening on one endpoint."""

    def __init__(self, port: Any) -> None:
        self.port = port

    @classmethod
    def build_site(cls, reactor: Any, interval: float) -> server.Site:
        root = Resource()
        v1 = Resource()
        root.putChild(b"v1", v1)
        chat = Resource()
        v1.putChild(b"chat", chat)
        chat.putChild(b"completions", _ChatCompletions(reactor, interval))
        v1.putChild(b"models", _Models())
        site = server.Site(root)
        site.displayTracebacks = False
        return site

    @classmethod
    def listen(
        cls, reactor: Any, description: str, interval: float = 0.05
    ) -> defer.Deferred[MockUpstream]:
        from filterproxy.runtime.listeners import with_default_backlog

        endpoint = serverFromString(reactor, with_default_backlog(description))
        d = endpoint.listen(cls.build_site(reactor, interval))
        return d.addCallback(cls)  # type: ignore[no-any-return]

    def stop(self) -> Any:
        return self.port.stopListening()


class MockUpstreamService(Service):
    """Serves the mock upstream on an endpoint while the service runs."""

    def __init__(self, description: str, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.description = description
        self.reactor = reactor
        self.mock: MockUpstream | None = None

    def startService(self) -> None:
        super().startService()

        def keep(mock: MockUpstream) -> None:
            self.mock = mock

        def failed(failure: Any) -> None:
            log.failure("cannot serve the mock upstream on {d}", failure, d=self.description)
            self.reactor.callLater(0, self.reactor.stop)

        MockUpstream.listen(self.reactor, self.description).addCallbacks(keep, failed)

    def stopService(self) -> Any:
        super().stopService()
        return self.mock.stop() if self.mock is not None else None


def main(argv: list[str] | None = None) -> None:
    """Run the mock upstream in the foreground."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="tcp:9100:interface=127.0.0.1", help="Twisted endpoint")
    parser.add_argument(
        "--interval", type=float, default=0.05, help="seconds between streamed chunks"
    )
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    MockUpstream.listen(reactor, args.listen, args.interval)
    print(f"mock upstream listening on {args.listen}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
