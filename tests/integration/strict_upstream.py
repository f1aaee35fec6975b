"""Stand-ins for providers that read requests as strictly as the real ones, for the fuzz
test of the request parsers: one port speaks Chat Completions (and Responses, for a
cluster that passes Responses through), the other only Anthropic's Messages. Each reads
a body as JSON the way a provider does — ``NaN``, ``Infinity`` and unpaired surrogates
are not JSON — and answers a request it cannot read with a 400 in its API's shape,
counting it (`StrictUpstreams.unreadable`): the gateway must never send one. Anything
else gets a short answer, whole or streamed as asked, with its usage (model
``chat-huge-usage``: token counts past 64 bits, which JSON allows and a store may not).

They run as threads of the test process (stdlib ``http.server``), on real sockets."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from filterproxy.extensions.keys.config import hash_key

from .conftest import Gateway, start_gateway

#: The gateway key of `config` with keys, allowed every model the routes name.
KEY = "fpk-fuzz-limited-0123456789abcdef"

_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range")
    return value


def strict_json(data: bytes) -> Any:
    """*data* as JSON, as a provider reads it.

    Raises:
        ValueError: not UTF-8, not JSON (RFC 8259), or text that is not Unicode.
    """
    document = json.loads(
        data.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite
    )
    if _LONE_SURROGATE.search(json.dumps(document, ensure_ascii=False)):
        raise ValueError("an unpaired surrogate")
    return document


def _sse(events: list[tuple[str | None, Any]]) -> bytes:
    out = []
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        out.append((f"event: {name}\n" if name else "") + f"data: {text}\n\n")
    return "".join(out).encode()


def chat_answer(body: dict[str, Any]) -> tuple[str, bytes]:
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    if body.get("model") == "chat-huge-usage":  # counts past 64 bits (JSON allows them)
        usage = {"prompt_tokens": 2**64, "completion_tokens": 2, "total_tokens": 2**64 + 2}
    if body.get("stream") is not True:
        document = {
            "id": "chatcmpl-fuzz",
            "object": "chat.completion",
            "created": 1,
            "model": "fuzz",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "fuzz answer"},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
        return "application/json", json.dumps(document).encode()

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fuzz",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "fuzz",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    events: list[tuple[str | None, Any]] = [
        (None, chunk({"role": "assistant", "content": ""})),
        (None, chunk({"content": "fuzz answer"})),
        (None, chunk({}, "stop")),
    ]
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        events.append((None, {"id": "chatcmpl-fuzz", "choices": [], "usage": usage}))
    events.append((None, "[DONE]"))
    return "text/event-stream", _sse(events)


def messages_answer(body: dict[str, Any]) -> tuple[str, bytes]:
    usage = {"input_tokens": 5, "output_tokens": 2}
    message = {
        "id": "msg_fuzz",
        "type": "message",
        "role": "assistant",
        "model": "fuzz",
        "content": [{"type": "text", "text": "fuzz answer"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    if body.get("stream") is not True:
        return "application/json", json.dumps(message).encode()
    start = {**message, "content": [], "stop_reason": None}
    return "text/event-stream", _sse(
        [
            ("message_start", {"type": "message_start", "message": start}),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "fuzz answer"},
                },
            ),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 2},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
    )


def responses_answer(body: dict[str, Any]) -> tuple[str, bytes]:
    response = {
        "id": "resp_fuzz",
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "model": "fuzz",
        "output": [
            {
                "type": "message",
                "id": "msg_fuzz",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "fuzz answer", "annotations": []}],
            }
        ],
        "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7},
    }
    if body.get("stream") is not True:
        return "application/json", json.dumps(response).encode()
    done = {"type": "response.completed", "sequence_number": 0, "response": response}
    return "text/event-stream", _sse([("response.completed", done)])


class StrictUpstreams:
    """A Chat Completions port and a Messages port (see the module)."""

    def __init__(self) -> None:
        #: (port, path, why) of each request body a provider could not have read.
        self.unreadable: list[tuple[str, str, str]] = []
        self.requests = 0
        self.chat = self._serve("chat")
        self.messages = self._serve("messages")

    @property
    def chat_url(self) -> str:
        return f"http://127.0.0.1:{self.chat.server_address[1]}"

    @property
    def messages_url(self) -> str:
        return f"http://127.0.0.1:{self.messages.server_address[1]}"

    def close(self) -> None:
        for server in (self.chat, self.messages):
            server.shutdown()
            server.server_close()

    def _serve(self, api: str) -> ThreadingHTTPServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                owner.requests += 1
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                try:
                    body = strict_json(raw)
                except ValueError as e:
                    if raw:  # (an empty body is the client's own, passed through)
                        owner.unreadable.append((api, path, f"{e}: {raw[:200]!r}"))
                    self._error(400, f"the body is not JSON: {e}")
                    return
                if not isinstance(body, dict):
                    self._error(400, "the body must be a JSON object")
                    return
                if api == "chat" and path.endswith("/chat/completions"):
                    if not isinstance(body.get("messages"), list):
                        self._error(400, "messages must be a list")
                        return
                    self._send(200, *chat_answer(body))
                elif api == "chat" and path.endswith("/responses"):
                    self._send(200, *responses_answer(body))
                elif api == "messages" and path.endswith("/messages/count_tokens"):
                    self._send(200, "application/json", b'{"input_tokens": 5}')
                elif api == "messages" and path.endswith("/messages"):
                    if not isinstance(body.get("messages"), list) or not isinstance(
                        body.get("max_tokens"), int
                    ):
                        self._error(400, "messages must be a list, max_tokens an integer")
                        return
                    self._send(200, *messages_answer(body))
                else:
                    self._error(404, f"no such path: {path}")

            def _error(self, status: int, message: str) -> None:
                if api == "messages":
                    kind = "invalid_request_error" if status == 400 else "not_found_error"
                    document: Any = {"type": "error", "error": {"type": kind, "message": message}}
                else:
                    document = {"error": {"message": message, "type": "invalid_request_error"}}
                self._send(status, "application/json", json.dumps(document).encode())

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def config(upstreams: StrictUpstreams, keys: bool) -> str:
    """A gateway in front of *upstreams*: models ``chat-*`` to the Chat Completions port,
    ``native-*`` to the same port as a cluster that also speaks Responses, ``claude-*``
    to the Messages port (with ``auto_cache``), anything else to the chat port; with
    *keys*, `KEY` is needed, limited in requests and tokens per minute (generously)."""
    text = f"""
        clusters:
          chat-only: {{url: "{upstreams.chat_url}", apis: [chat]}}
          native: {{url: "{upstreams.chat_url}", apis: [chat, responses]}}
          claude: {{url: "{upstreams.messages_url}", apis: [messages]}}
        routes:
          - {{models: ["chat-*"], cluster: chat-only}}
          - {{models: ["native-*"], cluster: native}}
          - {{models: ["claude-*"], cluster: claude, auto_cache: true}}
          - {{cluster: chat-only}}
    """
    if keys:
        text += f"""
        keys:
          - name: fuzz
            hash: sha256:{hash_key(KEY)}
            models: ["chat-*", "claude-*", "native-*"]
            limits: {{requests_per_minute: 1000000, tokens_per_minute: 1000000000}}
        """
    return text


@contextmanager
def strict_gateways(
    tmp_path_factory: pytest.TempPathFactory, name: str
) -> Iterator[tuple[StrictUpstreams, dict[bool, Gateway]]]:
    """The strict providers, and a gateway in front of them without keys (False) and one
    with them (True), for the time of a module."""
    servers = StrictUpstreams()
    started: dict[bool, Gateway] = {}
    try:
        for keys in (False, True):
            directory = tmp_path_factory.mktemp(f"{name}-keys" if keys else name)
            started[keys] = start_gateway(config(servers, keys), directory)
        yield servers, started
    finally:
        for gateway in started.values():
            gateway.process.stop()
        servers.close()
