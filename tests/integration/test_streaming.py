"""Streaming through the gateway with the clients users use: the OpenAI SDK, httpx, curl."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import openai

from .conftest import Gateway, Upstream, curl_post, post_chat

MESSAGES = [{"role": "user", "content": "hello"}]


def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key="sk-client-key", max_retries=0, timeout=15
    )


def test_openai_sync_stream_arrives_before_upstream_finishes(
    gateway: Gateway, upstream: Upstream
) -> None:
    # The upstream sends one chunk, then holds the rest until this client has seen it:
    # a gateway that buffered anything would never deliver the first chunk.
    hold = uuid.uuid4().hex
    stream = client(gateway).chat.completions.create(
        model="test-model",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        extra_body={"test": {"chunks": 5, "hold": hold}},
    )
    chunks = iter(stream)
    first = next(chunks)
    assert first.choices[0].delta.content == "tok0 "
    upstream.release(hold)
    rest = [c.choices[0].delta.content for c in chunks if c.choices]
    assert "".join(filter(None, rest)) == "tok1 tok2 tok3 tok4 "


def test_openai_sync_non_streaming(gateway: Gateway) -> None:
    completion = client(gateway).chat.completions.create(model="test-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "plain answer"
    assert completion.usage is not None and completion.usage.total_tokens == 5


def test_openai_async_stream_and_non_stream(gateway: Gateway, upstream: Upstream) -> None:
    async def run() -> tuple[str, str]:
        aclient = openai.AsyncOpenAI(
            base_url=f"{gateway.url}/v1", api_key="k", max_retries=0, timeout=15
        )
        hold = uuid.uuid4().hex
        stream = await aclient.chat.completions.create(
            model="test-model",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            extra_body={"test": {"chunks": 3, "hold": hold}},
        )
        parts = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
                if len(parts) == 1:
                    await asyncio.to_thread(upstream.release, hold)
        plain = await aclient.chat.completions.create(model="test-model", messages=MESSAGES)  # type: ignore[arg-type]
        await aclient.close()
        return "".join(parts), plain.choices[0].message.content or ""

    streamed, plain = asyncio.run(run())
    assert streamed == "tok0 tok1 tok2 "
    assert plain == "plain answer"


def test_client_receives_exactly_the_bytes_the_upstream_sent(
    gateway: Gateway, upstream: Upstream
) -> None:
    key = uuid.uuid4().hex
    body = {
        "model": "test-model",
        "stream": True,
        "messages": MESSAGES,
        "test": {"chunks": 40, "key": key},
    }
    received = bytearray()
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=15
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["cache-control"] == "no-cache"
        for piece in response.iter_raw():
            received.extend(piece)
    assert bytes(received) == upstream.sent(key)
    assert received.endswith(b"data: [DONE]\n\n")


def test_non_streaming_body_is_byte_identical_and_no_html_content_type(
    gateway: Gateway, upstream: Upstream
) -> None:
    key = uuid.uuid4().hex
    body = {"model": "test-model", "messages": MESSAGES, "test": {"key": key}}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=15)
    assert response.status_code == 200
    assert response.content == upstream.sent(key)
    assert response.headers["content-type"] == "application/json"


def test_curl_streams_sse_through_the_gateway(gateway: Gateway, upstream: Upstream) -> None:
    key = uuid.uuid4().hex
    body = json.dumps(
        {
            "model": "test-model",
            "stream": True,
            "messages": MESSAGES,
            "test": {"chunks": 10, "key": key},
        }
    )
    result = curl_post(f"{gateway.url}/v1/chat/completions", body, "-N")
    assert result.stdout == upstream.sent(key)


def test_provider_key_replaces_client_key_and_hop_by_hop_headers_are_stripped(
    gateway: Gateway, upstream: Upstream
) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "test-model", "messages": MESSAGES},
        headers={
            "authorization": "Bearer sk-client-key",
            "connection": "keep-alive, x-private-hop",
            "x-private-hop": "must not pass",
            "keep-alive": "timeout=5",
            "x-forwarded-for": "203.0.113.7",
        },
        timeout=15,
    )
    assert response.status_code == 200
    seen = upstream.stats()["last_headers"]
    assert isinstance(seen, dict)
    assert seen["authorization"] == ["Bearer sk-upstream-secret"]
    assert "x-private-hop" not in seen
    assert "keep-alive" not in seen
    assert seen["x-forwarded-for"] == ["203.0.113.7, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["host"] == [upstream.url.removeprefix("http://")]


def test_alias_rewrites_only_the_model(gateway: Gateway, upstream: Upstream) -> None:
    body = {"model": "fast", "messages": MESSAGES, "temperature": 0.25, "stream": False}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=15)
    assert response.status_code == 200
    forwarded = json.loads(str(upstream.stats()["last_body"]))
    assert forwarded == {**body, "model": "test-model"}


def test_keep_alive_upstream_connections_are_reused(gateway: Gateway, upstream: Upstream) -> None:
    before = upstream.stats()["accepted_connections"]
    for _ in range(20):  # a new client connection each time; the upstream side is pooled
        assert post_chat(gateway.url, "test-model", messages=MESSAGES).status_code == 200
    accepted = upstream.stats()["accepted_connections"]
    assert isinstance(before, int) and isinstance(accepted, int)
    # At most one new upstream connection (the pool may have been empty), plus the one
    # the second stats request made itself.
    assert accepted - before <= 1 + 1


def test_curl_with_a_large_body_gets_100_continue_and_no_expect_upstream(
    gateway: Gateway, upstream: Upstream
) -> None:
    # Clients that send `Expect: 100-continue` (curl does for large bodies) wait for the
    # interim answer before they send the body.
    body = json.dumps(
        {"model": "test-model", "messages": [{"role": "user", "content": "x" * 4000}]}
    )
    result = curl_post(
        f"{gateway.url}/v1/chat/completions", body, "-v", "-H", "expect: 100-continue"
    )
    assert b"HTTP/1.1 100 Continue" in result.stderr
    assert b"plain answer" in result.stdout
    seen = upstream.stats()["last_headers"]
    assert isinstance(seen, dict) and "expect" not in seen
    assert json.loads(str(upstream.stats()["last_body"])) == json.loads(body)
