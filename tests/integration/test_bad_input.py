"""Bad requests and a dead upstream get a clear JSON error, and the gateway keeps serving."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from .conftest import (
    Gateway,
    Upstream,
    post_chat,
    raw_exchange,
    read_until_closed,
    still_serving,
    wait_until,
)
from .strict_upstream import KEY, StrictUpstreams, strict_gateways

LIMIT = 1048576  # max_request_bytes in the test gateway's config


def error_of(response: httpx.Response) -> dict[str, object]:
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert set(document["error"]) == {"message", "type", "code"}
    return document["error"]  # type: ignore[no-any-return]


def test_declared_content_length_over_the_limit_is_refused_before_the_body_is_read(
    gateway: Gateway,
) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (LIMIT + 1)
        )
        sock.settimeout(10)
        reply = b""
        while not reply.endswith(b"}}") and (piece := sock.recv(65536)):
            reply += piece
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert b"connection: close" in head.lower()
    assert b"request_too_large" in body and b"max_request_bytes" in body
    still_serving(gateway)


def test_chunked_body_that_grows_past_the_limit_is_cut_off(gateway: Gateway) -> None:
    def body() -> object:
        for _ in range(LIMIT // 65536 + 2):
            yield b"x" * 65536

    response = httpx.post(f"{gateway.url}/v1/chat/completions", content=body(), timeout=15)
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"
    still_serving(gateway)


def test_invalid_json_is_400_naming_the_problem(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=b'{"model": "test-model",',
        headers={"content-type": "application/json"},
        timeout=15,
    )
    assert response.status_code == 400
    assert "not valid JSON" in str(error_of(response)["message"])
    still_serving(gateway)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1, 2]", "must be a JSON object"),
        (b'{"model": 42}', "'model' must be a string"),
        (b'{"model": "\xff"}', "not valid UTF-8"),
    ],
)
def test_json_that_is_not_a_request_is_400(gateway: Gateway, body: bytes, message: str) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=15,
    )
    assert response.status_code == 400
    assert message in str(error_of(response)["message"])


def test_unknown_model_is_404_in_the_openai_shape_the_sdk_understands(gateway: Gateway) -> None:
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="k", max_retries=0, timeout=15)
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.chat.completions.create(model="no-such-model", messages=[])
    assert "no-such-model" in str(raised.value)
    assert raised.value.code == "model_not_found"
    still_serving(gateway)


def test_upstream_that_refuses_connections_gives_502(gateway: Gateway) -> None:
    response = post_chat(gateway.url, "down-model")
    assert response.status_code == 502
    error = error_of(response)
    assert error["code"] == "upstream_connect_refused"
    assert "down" in str(error["message"])
    still_serving(gateway)


def test_malformed_http_is_400_and_the_connection_closes(gateway: Gateway) -> None:
    reply = raw_exchange(
        gateway.port, b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 400")
    assert b"malformed HTTP request" in reply
    still_serving(gateway)


def test_too_many_headers_is_431(gateway: Gateway) -> None:
    headers = b"".join(b"x-h%d: v\r\n" % i for i in range(150))
    reply = raw_exchange(
        gateway.port, b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n" + headers + b"\r\n"
    )
    assert reply.startswith(b"HTTP/1.1 431")
    assert b"too many request headers" in reply
    still_serving(gateway)


def test_pipelined_requests_are_answered_in_order(gateway: Gateway) -> None:
    def request(tag: str) -> bytes:
        body = b'{"model": "test-model", "messages": [], "tag": "%s"}' % tag.encode()
        return (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    last = request("c").replace(b"Host: gw\r\n", b"Host: gw\r\nConnection: close\r\n")
    reply = raw_exchange(gateway.port, request("a") + request("b") + last)
    assert reply.count(b"HTTP/1.1 200 OK") == 3
    assert reply.count(b"plain answer") == 3


def test_a_client_still_uploading_past_the_limit_reads_the_413_not_a_reset(
    gateway: Gateway,
) -> None:
    body = b"x" * (48 * LIMIT)
    errors: list[OSError] = []
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )

        def upload() -> None:
            try:
                sock.sendall(body)
            except OSError as e:
                errors.append(e)

        uploader = threading.Thread(target=upload)
        uploader.start()
        reply = read_until_closed(sock)
        uploader.join(10)
    assert reply.startswith(b"HTTP/1.1 413")
    # The gateway read and dropped the rest of the upload before closing, so the
    # client's send was not cut off by a reset.
    assert errors == []
    still_serving(gateway)


@pytest.mark.parametrize(
    "request_line",
    [b"POST /v1/chat/completions RTSP/1.0", b"SOURCE /v1/chat/completions ICE/1.0"],
)
def test_a_request_in_another_protocol_is_505_and_never_forwarded(
    gateway: Gateway, upstream: Upstream, request_line: bytes
) -> None:
    before = upstream.stats()["requests"]
    body = b'{"model": "test-model", "messages": []}'
    reply = raw_exchange(
        gateway.port,
        request_line + b"\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    assert reply.startswith(b"HTTP/1.1 505")
    assert b"not HTTP" in reply
    assert upstream.stats()["requests"] == before
    still_serving(gateway)


# -- bodies the gateway reads, and those it translates ------------------------------------
#
# Through gateways (with keys and without) in front of a provider that speaks only Chat
# Completions and one that speaks only Messages (`StrictUpstreams`, which reads bodies as
# strictly as the real ones and counts those it could not read).

CHAT_PATH, MESSAGES_PATH = "/v1/chat/completions", "/v1/messages"
RESPONSES_PATH, COUNT_PATH = "/v1/responses", "/v1/messages/count_tokens"
HUGE = b"1" * 5000  # past Python's 4,300-digit limit on converting an integer


@pytest.fixture(scope="module")
def _strict(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[StrictUpstreams, dict[bool, Gateway]]]:
    with strict_gateways(tmp_path_factory, "translating") as both:
        yield both


@pytest.fixture(scope="module")
def strict(_strict: tuple[StrictUpstreams, dict[bool, Gateway]]) -> StrictUpstreams:
    return _strict[0]


@pytest.fixture(scope="module")
def translating(_strict: tuple[StrictUpstreams, dict[bool, Gateway]]) -> dict[bool, Gateway]:
    """A gateway without keys (False) and one with them (True)."""
    return _strict[1]


def send(gateway: Gateway, path: str, body: bytes | None, keys: bool = False) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if keys:
        headers["authorization"] = f"Bearer {KEY}"
    return httpx.post(f"{gateway.url}{path}", content=body, headers=headers, timeout=15)


def refusal(response: httpx.Response, path: str) -> str:
    """The message of a 400 in the client API's shape (Anthropic's for Messages paths,
    OpenAI's for the others)."""
    assert response.status_code == 400, response.content
    document = response.json()
    if path.startswith(MESSAGES_PATH):
        assert document["type"] == "error"
        assert document["error"]["type"] == "invalid_request_error"
        assert set(document["error"]) == {"type", "message"}
    else:
        assert set(document["error"]) == {"message", "type", "code"}
        assert document["error"]["type"] == "invalid_request_error"
    return str(document["error"]["message"])


@pytest.mark.parametrize("keys", [False, True])
@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (CHAT_PATH, b'{"model": "chat-a", "messages": [], "seed": ' + HUGE + b"}", "seed"),
        (CHAT_PATH, b'{"model": "claude-a", "messages": [], "n": ' + HUGE + b"}", "n"),
        (MESSAGES_PATH, b'{"model": "claude-a", "max_tokens": ' + HUGE + b"}", "max_tokens"),
        (MESSAGES_PATH, b'{"model": "chat-a", "max_tokens": ' + HUGE + b"}", "max_tokens"),
        (RESPONSES_PATH, b'{"model": "chat-a", "input": [' + HUGE + b"]}", "input[0]"),
        (COUNT_PATH, b'{"model": "chat-a", "x": {"y": -' + HUGE + b"}}", "x.y"),
        ("/v1/embeddings", b'{"model": "chat-a", "dimensions": ' + HUGE + b"}", "dimensions"),
    ],
)
def test_an_integer_past_pythons_digit_limit_is_a_400_naming_it(
    translating: dict[bool, Gateway],
    strict: StrictUpstreams,
    keys: bool,
    path: str,
    body: bytes,
    field: str,
) -> None:
    before = strict.requests
    message = refusal(send(translating[keys], path, body, keys), path)
    assert message.startswith(f"{field}: the integer 111111111111") or message.startswith(
        f"{field}: the integer -111111111111"
    )
    assert "5000 digits" in message and "64 bits" in message
    assert strict.requests == before


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        # Each to a provider of the other API (translated), and one passed through.
        (
            MESSAGES_PATH,
            '{"model": "chat-a", "max_tokens": 9, "messages": '
            '[{"role": "user", "content": "\\ud800"}]}',
            "messages[0].content",
        ),
        (
            CHAT_PATH,
            '{"model": "claude-a", "messages": '
            '[{"role": "user", "content": [{"type": "text", "text": "a\\udc00b"}]}]}',
            "messages[0].content[0].text",
        ),
        (RESPONSES_PATH, '{"model": "claude-a", "input": "\\udbff"}', "input"),
        (CHAT_PATH, '{"model": "chat-a", "messages": [], "user": "\\ud83d"}', "user"),
    ],
)
def test_an_unpaired_surrogate_is_a_400_naming_where(
    translating: dict[bool, Gateway], strict: StrictUpstreams, path: str, body: str, field: str
) -> None:
    before = strict.requests
    message = refusal(send(translating[False], path, body.encode()), path)
    assert message.startswith(f"{field}: holds an unpaired UTF-16 surrogate")
    assert strict.requests == before


@pytest.mark.parametrize("keys", [False, True])
@pytest.mark.parametrize("path", [RESPONSES_PATH, COUNT_PATH, MESSAGES_PATH])
def test_a_translated_request_without_a_body_is_a_400_and_never_sent(
    translating: dict[bool, Gateway], strict: StrictUpstreams, keys: bool, path: str
) -> None:
    # Without a body there is no model: the catch-all route (a chat provider) takes it.
    before = strict.requests
    headers = {"authorization": f"Bearer {KEY}"} if keys else {}
    response = httpx.post(translating[keys].url + path, headers=headers, timeout=15)
    message = refusal(response, path)
    assert message == f"the request has no body; POST {path} takes a JSON object"
    assert strict.requests == before


def test_count_tokens_without_a_body_is_answered_by_the_gateway_in_anthropics_shape(
    translating: dict[bool, Gateway], strict: StrictUpstreams
) -> None:
    before = strict.requests
    response = httpx.post(f"{translating[False].url}{COUNT_PATH}", timeout=15)
    assert "has no body" in refusal(response, COUNT_PATH)
    assert strict.requests == before
    # With a body, the gateway still answers it itself (an estimate).
    claude = anthropic.Anthropic(base_url=translating[False].url, api_key="k", max_retries=0)
    counted = claude.messages.count_tokens(
        model="chat-a", messages=[{"role": "user", "content": "hello"}]
    )
    assert counted.input_tokens >= 1
    assert strict.requests == before


@pytest.mark.parametrize(
    ("function", "field"),
    [
        (42, "messages[0].tool_calls[0].function: must be an object, not a number"),
        (
            {"name": ["x"], "arguments": "{}"},
            "messages[0].tool_calls[0].function.name: must be a string",
        ),
        ({"name": "f", "arguments": '{"a": NaN}'}, "messages[0].tool_calls[0].function.arguments"),
    ],
)
def test_a_tool_call_of_the_wrong_shape_to_a_messages_provider_is_a_400_naming_it(
    translating: dict[bool, Gateway], strict: StrictUpstreams, function: Any, field: str
) -> None:
    sdk = openai.OpenAI(base_url=f"{translating[False].url}/v1", api_key="k", max_retries=0)
    before = strict.requests
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(
            model="claude-a",
            messages=[
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c1", "type": "function", "function": function}],
                },  # type: ignore[list-item]
                {"role": "tool", "tool_call_id": "c1", "content": "done"},
            ],
        )
    assert field in raised.value.message
    assert strict.requests == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            b'{"model": "chat-a", "input": "hi", "metadata": '
            + b'{"a": ' * 300
            + b"1"
            + b"}" * 300
            + b"}",
            "nested too deeply",
        ),
        (
            b'{"model": "chat-a", "input": "hi", "max_output_tokens": 18446744073709551616}',
            "max_output_tokens: the integer 18446744073709551616 (20 digits) does not fit in 64 bits",
        ),
    ],
)
def test_a_responses_request_the_store_could_not_keep_is_a_400(
    translating: dict[bool, Gateway], body: bytes, field: str
) -> None:
    assert field in refusal(send(translating[False], RESPONSES_PATH, body), RESPONSES_PATH)


def test_an_answer_the_conversation_store_cannot_keep_still_reaches_the_client(
    translating: dict[bool, Gateway],
) -> None:
    # The provider counts past 64 bits (JSON allows it); the store's encoder refuses the
    # record. The client gets its answer all the same, and the log says why it was not kept.
    gateway = translating[False]
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="k", max_retries=0)
    response = sdk.responses.create(model="chat-huge-usage", input="hello")
    assert response.output_text == "fuzz answer"
    assert response.usage is not None and response.usage.input_tokens == 2**64
    wait_until(lambda: f"could not keep response {response.id}" in gateway.process.output(), 10)
    with pytest.raises(openai.NotFoundError, match="not found"):  # it was not kept
        sdk.responses.create(model="chat-a", input="again", previous_response_id=response.id)
    # A stream too: the answer completes.
    with sdk.responses.stream(model="chat-huge-usage", input="hello") as stream:
        final = stream.get_final_response()
    assert final.output_text == "fuzz answer"


@pytest.mark.parametrize(
    ("path", "model", "value", "field"),
    [
        (CHAT_PATH, "claude-a", float("nan"), "temperature: NaN is not JSON"),
        (CHAT_PATH, "claude-a", float("inf"), "temperature: Infinity is not JSON"),
        (MESSAGES_PATH, "chat-a", float("-inf"), "temperature: -Infinity is not JSON"),
        (MESSAGES_PATH, "claude-a", float("nan"), "temperature: NaN is not JSON"),
        (RESPONSES_PATH, "claude-a", float("nan"), "temperature: NaN is not JSON"),
    ],
)
def test_nan_and_infinity_are_a_400_naming_the_field_never_sent_upstream(
    translating: dict[bool, Gateway],
    strict: StrictUpstreams,
    path: str,
    model: str,
    value: float,
    field: str,
) -> None:
    # What Python's json module writes by default (and the SDKs refuse to): not JSON.
    document: dict[str, Any] = {"model": model, "temperature": value, "max_tokens": 9}
    if path == RESPONSES_PATH:
        document["input"] = "hi"
    else:
        document["messages"] = [{"role": "user", "content": "hi"}]
    before = strict.requests
    message = refusal(send(translating[False], path, json.dumps(document).encode()), path)
    assert message.startswith(field)
    assert strict.requests == before and strict.unreadable == []


def test_a_number_past_a_64_bit_float_is_a_400_naming_the_field(
    translating: dict[bool, Gateway], strict: StrictUpstreams
) -> None:
    before = strict.requests
    for path, model in ((MESSAGES_PATH, "chat-a"), (CHAT_PATH, "claude-a")):
        body = b'{"model": "%s", "max_tokens": 9, "temperature": -1e999, "messages": []}' % (
            model.encode()
        )
        message = refusal(send(translating[False], path, body), path)
        assert message == "temperature: the number -1e999 is too large for a 64-bit float"
    assert strict.requests == before and strict.unreadable == []


def test_a_limited_keys_rate_limit_headers_are_on_what_was_counted_and_as_documented(
    translating: dict[bool, Gateway],
) -> None:
    gateway = translating[True]
    headers = {"authorization": f"Bearer {KEY}"}
    counted = httpx.post(
        f"{gateway.url}{CHAT_PATH}",
        headers=headers,
        json={"model": "chat-a", "messages": [{"role": "user", "content": "hi"}]},
        timeout=15,
    )
    assert counted.status_code == 200
    assert counted.headers["x-ratelimit-limit-requests"] == "1000000"
    refused = httpx.post(
        f"{gateway.url}{CHAT_PATH}",
        headers=headers,
        json={"model": "gpt-4o", "messages": []},
        timeout=15,
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed"
    assert not [h for h in refused.headers if h.startswith("x-ratelimit-")]
    # What docs/keys.md promises is what a client gets.
    docs = (Path(__file__).parents[2] / "docs" / "keys.md").read_text(encoding="utf-8")
    promise = " ".join(docs.split("Every response to a request that a key's")[1].split())
    assert "403 `model_not_allowed`" in promise.split("carry none")[0]


@pytest.mark.parametrize("index", ["9" * 5000, "\u0663"])
def test_a_reference_to_an_input_item_with_an_odd_index_is_a_400(
    translating: dict[bool, Gateway], strict: StrictUpstreams, index: str
) -> None:
    # The shape of the ids the gateway gives stored input items, with an index past
    # Python's digit limit, or in another script's digits.
    before = strict.requests
    item = {"type": "item_reference", "id": f"item_{'0' * 24}_{index}"}
    body = json.dumps({"model": "chat-a", "input": [item]}).encode()
    message = refusal(send(translating[False], RESPONSES_PATH, body), RESPONSES_PATH)
    assert message.startswith("input[0]: item 'item_000") and "send the item itself" in message
    assert strict.requests == before
