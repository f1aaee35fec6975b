"""The translate filter's answer side, in the real filter chain without sockets
(`FilterHarness`): an answer that is not what it claims is a 502 in the client's shape,
an upstream event past ``max_event_bytes`` or one that is not JSON fails the stream with
the client API's error event (never a clean end), and a compressed answer the upstream
sent though it was asked not to is inflated within bounds."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import pytest

from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.translate.filter import TranslateFilter
from filterproxy.http.sse import SSEDecoder, SSEEvent
from filterproxy.testing import ClientResponse, FilterHarness

CONFIG = """
clusters:
  chat-only: {url: "http://chat.test", apis: [chat]}
  messages-only: {url: "http://messages.test", apis: [messages]}
routes: [{cluster: chat-only}]
max_event_bytes: 4096
"""
#: Per client API: its path, a request, and the cluster that makes it translated.
CLIENTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "messages": (
        "/v1/messages",
        {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
        "chat-only",
    ),
    "chat": (
        "/v1/chat/completions",
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        "messages-only",
    ),
    "responses": ("/v1/responses", {"model": "m", "input": "hi"}, "chat-only"),
}
CHAT_EVENT = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
MESSAGES_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1",'
    b'"type":"message","role":"assistant","model":"m","content":[],"usage":{"input_tokens":1,'
    b'"output_tokens":0}}}\n\nevent: content_block_start\ndata: {"type":"content_block_start",'
    b'"index":0,"content_block":{"type":"text","text":""}}\n\n'
)
#: A first event of the upstream's stream, per client API (the upstream speaks the other).
FIRST = {"messages": CHAT_EVENT, "chat": MESSAGES_START, "responses": CHAT_EVENT}


def translated(client: str, *, stream: bool = True) -> FilterHarness:
    path, body, cluster = CLIENTS[client]
    h = FilterHarness(TranslateFilter, config=parse_config(CONFIG))
    h.stream_info.cluster = cluster
    h.stream_info.model = "m"
    h.request(json.dumps({**body, "stream": stream}).encode(), path=path)
    return h


def error_message(client: str, response: ClientResponse) -> str:
    """The message of an error document in the client's shape (checked)."""
    document = response.json()
    if client == "messages":
        assert document["type"] == "error" and document["error"]["type"] == "api_error"
    return str(document["error"]["message"])


def error_events(client: str, events: list[SSEEvent]) -> list[dict[str, Any]]:
    kinds = {"messages": {"error"}, "chat": {"error"}, "responses": {"error", "response.failed"}}
    return [json.loads(e.data or "") for e in events if e.event in kinds[client]]


# -- answers that are not what they claim ---------------------------------------------


@pytest.mark.parametrize("client", list(CLIENTS))
def test_an_html_page_with_200_is_a_502_in_the_clients_shape(client: str) -> None:
    h = translated(client, stream=False)
    page = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    response = h.respond(200, {"content-type": "text/html"}, [page])
    assert response.status == 502 and response.ended
    message = error_message(client, response)
    assert "text/html" in message and "502 Bad Gateway" in message


@pytest.mark.parametrize("client", list(CLIENTS))
def test_a_stream_sent_as_text_plain_is_a_502(client: str) -> None:
    h = translated(client)
    body = FIRST[client] + b"data: [DONE]\n\n"
    response = h.respond(200, {"content-type": "text/plain"}, [body])
    assert response.status == 502 and "text/plain" in error_message(client, response)


def test_a_long_body_that_cannot_be_json_is_refused_before_its_end() -> None:
    h = translated("chat")
    h.respond(200, {"content-type": "text/plain"}, [MESSAGES_START] * 20, end=False)
    assert h.client.status == 502 and h.client.ended and h.upstream.cancelled
    assert "text/plain" in error_message("chat", h.client)


def test_an_error_document_with_200_is_a_502() -> None:
    h = translated("messages", stream=False)
    body = b'{"error": {"message": "quota exceeded", "type": "insufficient_quota"}}'
    response = h.respond(200, {"content-type": "application/json"}, [body])
    assert response.status == 502 and error_message("messages", response) == "quota exceeded"


@pytest.mark.parametrize("status", [200, 204])
@pytest.mark.parametrize("pieces", [[], [b""]], ids=["head-only", "empty-body"])
def test_a_2xx_with_no_body_is_a_502(status: int, pieces: list[bytes]) -> None:
    h = translated("messages", stream=False)
    response = h.respond(status, {"content-type": "application/json"}, pieces)
    assert response.status == 502
    message = error_message("messages", response)
    assert "no body" in message or "an empty body" in message


def test_an_error_status_with_no_body_keeps_its_status() -> None:
    h = translated("chat", stream=False)
    response = h.respond(429, {"retry-after": "3"})
    assert response.status == 429 and response.headers is not None
    assert response.headers.get("retry-after") == "3"


def test_an_html_error_page_keeps_its_error_status() -> None:
    h = translated("chat", stream=False)
    response = h.respond(503, {"content-type": "text/html"}, [b"<h1>down</h1>"])
    assert response.status == 503 and error_message("chat", response) == "<h1>down</h1>"


# -- streams that cannot be read on ----------------------------------------------------


@pytest.mark.parametrize("client", list(CLIENTS))
def test_an_event_past_max_event_bytes_is_the_error_event_then_a_cut(client: str) -> None:
    h = translated(client)
    head = {"content-type": "text/event-stream"}
    h.respond(200, head, [FIRST[client], b"data: " + b"x" * 3000], end=False)
    assert not h.client.aborted
    h.more([b"x" * 3000], end=False)  # past 4096 bytes, no line end yet
    errors = error_events(client, SSEDecoder().feed(h.client.body))
    assert errors and "max_event_bytes" in json.dumps(errors)
    assert h.client.aborted and not h.client.ended  # never a clean end
    assert h.upstream.cancelled  # not read further
    assert h.stream_info.outcome == "upstream_error"
    assert "max_event_bytes" in (h.stream_info.error or "")


@pytest.mark.parametrize("client", list(CLIENTS))
def test_an_event_that_is_not_json_fails_the_stream(client: str) -> None:
    h = translated(client)
    h.respond(
        200, {"content-type": "text/event-stream"}, [FIRST[client], b"data: <html>\n\n"], end=False
    )
    errors = error_events(client, SSEDecoder().feed(h.client.body))
    assert errors and "not JSON" in json.dumps(errors)
    assert h.client.aborted and h.upstream.cancelled


#: A whole answer of the upstream's API whose fields are not of their types, per client,
#: and what the client's error says of it.
WRONG_SHAPE = {
    "messages": (
        b'{"id": "c", "choices": {"first": {"message": {"content": "hi"}}}}',
        "no choice with a message",
    ),
    "chat": (
        b'{"id": "m", "type": "message", "content": "hi", "stop_reason": ["end"]}',
        "no list of content blocks",
    ),
    "responses": (
        b'{"id": "c", "choices": [{"message": {"tool_calls": [{"function": 42}]}}]}',
        "shape the gateway cannot read",
    ),
}
#: The same of an event stream: one event whose field has another type.
WRONG_SHAPE_EVENT = {
    "messages": b'data: {"id": "c", "choices": {"first": {"delta": {}}}}\n\n',
    "chat": b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0,'
    b' "delta": "hi"}\n\n',
    "responses": b'data: {"id": "c", "choices": {"first": {"delta": {}}}}\n\n',
}


@pytest.mark.parametrize("client", CLIENTS)
def test_an_answer_whose_fields_have_other_types_is_a_502_not_a_500(client: str) -> None:
    h = translated(client, stream=False)
    body, says = WRONG_SHAPE[client]
    h.respond(200, {"content-type": "application/json"}, [body])
    assert h.client.status == 502
    assert says in error_message(client, h.client)


@pytest.mark.parametrize("client", CLIENTS)
def test_an_event_whose_fields_have_other_types_fails_the_stream(client: str) -> None:
    h = translated(client)
    h.respond(
        200,
        {"content-type": "text/event-stream"},
        [FIRST[client], WRONG_SHAPE_EVENT[client]],
        end=False,
    )
    errors = error_events(client, SSEDecoder().feed(h.client.body))
    assert errors and "shape the gateway cannot read" in json.dumps(errors)
    assert h.client.aborted and h.upstream.cancelled


def test_a_whole_answer_past_the_translation_limit_is_still_refused() -> None:
    h = translated("messages", stream=False)
    h.respond(200, {"content-type": "application/json"}, [b"{" + b" " * (1 << 20)] * 33, end=False)
    assert h.client.status == 502 and "too large" in error_message("messages", h.client)


# -- compressed answers -----------------------------------------------------------------


def test_a_gzip_answer_sent_anyway_is_inflated_and_translated() -> None:
    h = translated("messages", stream=False)
    answer = {
        "id": "c",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    }
    body = gzip.compress(json.dumps(answer).encode())
    response = h.respond(
        200, {"content-type": "application/json", "content-encoding": "gzip"}, [body[:7], body[7:]]
    )
    assert response.status == 200 and response.headers is not None
    assert "content-encoding" not in response.headers
    assert response.json()["content"][0]["text"] == "hi"


def bomb(block: bytes, count: int) -> list[bytes]:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    body = b"".join([*(compressor.compress(block) for _ in range(count)), compressor.flush()])
    return [body[i : i + 16384] for i in range(0, len(body), 16384)]


def test_a_gzip_bomb_answer_is_a_502_before_the_head() -> None:
    h = translated("responses", stream=False)
    head = {"content-type": "application/json", "content-encoding": "gzip"}
    h.respond(200, head, bomb(b"{" + b" " * ((1 << 20) - 1), 64))
    assert h.client.status == 502 and h.upstream.cancelled
    assert "inflates to more than 200 times" in error_message("responses", h.client)


def test_a_gzip_bomb_stream_is_the_error_event_then_a_cut() -> None:
    h = translated("messages")
    head = {"content-type": "text/event-stream", "content-encoding": "gzip"}
    h.respond(200, head, bomb(CHAT_EVENT * ((1 << 20) // len(CHAT_EVENT)), 64))
    events = SSEDecoder().feed(h.client.body)
    errors = error_events("messages", events)
    assert errors and "inflates to more than 200 times" in json.dumps(errors)
    assert h.client.aborted and h.upstream.cancelled
    assert len(h.client.body) < 4 << 20  # a bounded part of the 64 MiB, translated


def test_a_coding_it_cannot_read_is_a_502() -> None:
    h = translated("chat", stream=False)
    response = h.respond(
        200, {"content-type": "application/json", "content-encoding": "br"}, [b"\x0b\x80"]
    )
    assert response.status == 502 and "br" in error_message("chat", response)
