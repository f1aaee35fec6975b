"""The response cache on real sockets, with the official SDKs: identical streams in
flight merged into one upstream request, a hit served from Redis by another replica,
a Messages and a chat client sharing an entry when the upstream request is the same,
keys that never share, ``Cache-Control`` honoured, a failure mid-stream reaching every
merged client, hits that cost nothing, and invalidation through the admin API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from filterproxy.extensions.keys.config import hash_key

from .conftest import Gateway, LocalServer, RedisServer, script_server, start_gateway

TOKEN = "admin-token-for-cache-tests-0123456789"
ALICE = "fpk-alice-cache-0123456789"
BOB = "fpk-bob-cache-0123456789"


@pytest.fixture(scope="module")
def slow_upstream() -> Iterator[LocalServer]:
    """tests/cache_server.py: chat completions streamed a word each 40 ms."""
    yield from script_server("cache_server.py")


def config(upstream: LocalServer, redis_url: str) -> str:
    return f"""
redis: {{url: "{redis_url}", timeout: 2s}}
admin: {{token: {TOKEN}}}
clusters:
  slow: {{url: "{upstream.url}", apis: [chat]}}
keys:
  - {{name: alice, hash: "sha256:{hash_key(ALICE)}"}}
  - {{name: bob, hash: "sha256:{hash_key(BOB)}"}}
spend:
  prices:
    shared-a: {{input: 1, output: 2}}
    mem-hit: {{input: 1, output: 2}}
routes:
  - models: ["shared-*"]
    cluster: slow
    cache: {{store: redis, ttl: 1m}}
  - models: ["*"]
    cluster: slow
    cache: {{ttl: 1m}}
"""


@pytest.fixture(scope="module")
def replicas(
    slow_upstream: LocalServer,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Gateway, Gateway]]:
    """Two gateways on one Redis (routes ``shared-*`` keep their entries there)."""
    text = config(slow_upstream, redis_server.url)
    first = start_gateway(text, tmp_path_factory.mktemp("cache-a"))
    second = start_gateway(text, tmp_path_factory.mktemp("cache-b"))
    try:
        yield first, second
    finally:
        first.process.stop()
        second.process.stop()


def upstream_count(upstream: LocalServer) -> int:
    return int(httpx.get(f"{upstream.url}/control/count").json())


def upstream_last(upstream: LocalServer) -> dict[str, Any]:
    return httpx.get(f"{upstream.url}/control/last").json()  # type: ignore[no-any-return]


def chat(gateway: Gateway, key: str = ALICE) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def post(gateway: Gateway, model: str, text: str, key: str = ALICE, **extra: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", **extra.pop("headers", {})}
    body = {"model": model, "temperature": 0, "messages": [{"role": "user", "content": text}]}
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={**body, **extra},
        headers=headers,
        timeout=10,
    )


def counter(gateway: Gateway, result: str) -> float:
    total = 0.0
    for line in gateway.metrics().splitlines():
        if line.startswith("filterproxy_cache_requests_total{") and f'result="{result}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_twenty_identical_streams_make_one_upstream_request_then_another_replica_hits(
    replicas: tuple[Gateway, Gateway], slow_upstream: LocalServer
) -> None:
    a, b = replicas
    question = f"merge me {uuid.uuid4().hex[:8]}"
    before = upstream_count(slow_upstream)
    served_before = counter(a, "coalesced") + counter(a, "hit")

    async def one(client: openai.AsyncOpenAI) -> str:
        stream = await client.chat.completions.create(
            model="shared-a",
            messages=[{"role": "user", "content": question}],
            temperature=0,
            stream=True,
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def twenty(gateway: Gateway) -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=f"{gateway.url}/v1", api_key=ALICE, max_retries=0
        ) as client:
            return await asyncio.gather(*(one(client) for _ in range(20)))

    texts = asyncio.run(twenty(a))
    assert upstream_count(slow_upstream) == before + 1
    assert texts[0].startswith(f"Echo: {question} w01")
    assert texts == [texts[0]] * 20
    assert counter(a, "coalesced") + counter(a, "hit") - served_before == 19

    # The answer is in Redis: the other replica serves it, as a stream, in the same words.
    stream = chat(b).chat.completions.create(
        model="shared-a",
        messages=[{"role": "user", "content": question}],
        temperature=0,
        stream=True,
    )
    again = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert again == texts[0]
    assert upstream_count(slow_upstream) == before + 1
    raw = post(b, "shared-a", question, stream=True)
    assert raw.headers["x-filterproxy-cache"] == "hit"
    assert int(raw.headers["age"]) >= 0
    # Twenty at once on that replica: one Redis lookup's hit serves those that came
    # while it was asked; nothing goes upstream.
    assert asyncio.run(twenty(b)) == texts
    assert upstream_count(slow_upstream) == before + 1


def test_a_messages_and_a_chat_client_share_an_entry_when_the_upstream_request_is_the_same(
    replicas: tuple[Gateway, Gateway], slow_upstream: LocalServer
) -> None:
    a, _ = replicas
    question = f"share me {uuid.uuid4().hex[:8]}"
    claude = anthropic.Anthropic(base_url=a.url, api_key=ALICE, max_retries=0)
    events = claude.messages.create(
        model="mem-share",
        max_tokens=64,
        messages=[{"role": "user", "content": question}],
        stream=True,
        extra_body={"temperature": 0},  # (this SDK release no longer names it)
    )
    said = "".join(
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert said.startswith(f"Echo: {question}")
    count = upstream_count(slow_upstream)
    sent = upstream_last(slow_upstream)["body"]  # the chat request the translation made

    # A chat client that sends that same request upstream gets the entry, as a chat
    # completion (the entry was a stream; this request does not stream).
    fields = {k: v for k, v in sent.items() if k not in ("stream", "stream_options")}
    answer = chat(a).chat.completions.with_raw_response.create(
        model=fields.pop("model"), messages=fields.pop("messages"), extra_body=fields
    )
    assert answer.headers["x-filterproxy-cache"] == "hit"
    completion = answer.parse()
    assert completion.choices[0].message.content == said
    assert completion.usage is not None and completion.usage.completion_tokens == 12
    assert upstream_count(slow_upstream) == count

    # Asked differently (another max_tokens), the upstream request differs: no sharing.
    other = chat(a).chat.completions.with_raw_response.create(
        model="mem-share",
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=65,
    )
    assert other.headers["x-filterproxy-cache"] == "miss"
    assert upstream_count(slow_upstream) == count + 1


def test_two_keys_never_share_and_a_hit_costs_nothing(
    replicas: tuple[Gateway, Gateway], slow_upstream: LocalServer
) -> None:
    a, _ = replicas
    question = f"mine {uuid.uuid4().hex[:8]}"
    before = upstream_count(slow_upstream)
    first = post(a, "mem-hit", question)
    assert first.headers["x-filterproxy-cache"] == "miss"
    theirs = post(a, "mem-hit", question, key=BOB)
    assert theirs.headers["x-filterproxy-cache"] == "miss"
    assert upstream_count(slow_upstream) == before + 2
    hit = post(a, "mem-hit", question)
    assert hit.headers["x-filterproxy-cache"] == "hit"
    assert (
        hit.json()["choices"][0]["message"]["content"]
        == first.json()["choices"][0]["message"]["content"]
    )
    assert upstream_count(slow_upstream) == before + 2

    paid = a.access_record(first.headers["x-request-id"])
    free = a.access_record(hit.headers["x-request-id"])
    assert paid["cache"]["status"] == "miss" and paid["cost_usd"] > 0
    assert free["cache"] == {
        "status": "hit",
        "key": paid["cache"]["key"],
        "age": free["cache"]["age"],
    }
    assert free["cost_usd"] == 0 and free["attempts"] == 0
    assert free["completion_tokens"] == 12  # the usage the answer reports, not charged
    saved = [
        line
        for line in a.metrics().splitlines()
        if line.startswith("filterproxy_cache_served_tokens_total{")
        and 'route="' in line
        and 'kind="output"' in line
    ]
    assert saved and sum(float(line.rsplit(" ", 1)[1]) for line in saved) >= 12


def test_cache_control_from_the_client_is_honoured(
    replicas: tuple[Gateway, Gateway], slow_upstream: LocalServer
) -> None:
    a, _ = replicas
    question = f"fresh {uuid.uuid4().hex[:8]}"
    assert post(a, "mem-cc", question).headers["x-filterproxy-cache"] == "miss"
    before = upstream_count(slow_upstream)
    fresh = post(a, "mem-cc", question, headers={"cache-control": "no-cache"})
    assert fresh.headers["x-filterproxy-cache"] == "bypass"
    unstored = post(a, "mem-cc", question + "!", headers={"cache-control": "no-store"})
    assert unstored.headers["x-filterproxy-cache"] == "bypass"
    assert upstream_count(slow_upstream) == before + 2
    assert post(a, "mem-cc", question).headers["x-filterproxy-cache"] == "hit"
    assert post(a, "mem-cc", question + "!").headers["x-filterproxy-cache"] == "miss"
    sampled = post(a, "mem-cc", question, temperature=0.8)
    assert sampled.headers["x-filterproxy-cache"] == "bypass"
    assert a.access_record(sampled.headers["x-request-id"])["cache"]["reason"] == "temperature"


def test_a_failure_mid_stream_reaches_every_merged_client_and_nothing_is_stored(
    replicas: tuple[Gateway, Gateway], slow_upstream: LocalServer
) -> None:
    a, _ = replicas
    question = f"break {uuid.uuid4().hex[:8]}"
    before = upstream_count(slow_upstream)

    async def one(client: openai.AsyncOpenAI) -> tuple[str, str]:
        words: list[str] = []
        try:
            stream = await client.chat.completions.create(
                model="break",
                messages=[{"role": "user", "content": question}],
                temperature=0,
                stream=True,
            )
            async for c in stream:
                if c.choices:
                    words.append(c.choices[0].delta.content or "")
        except openai.APIError as e:
            return "".join(words), str(e)
        return "".join(words), "ended cleanly"

    async def three() -> list[tuple[str, str]]:
        async with openai.AsyncOpenAI(
            base_url=f"{a.url}/v1", api_key=ALICE, max_retries=0
        ) as client:
            return await asyncio.gather(*(one(client) for _ in range(3)))

    results = asyncio.run(three())
    assert upstream_count(slow_upstream) == before + 1
    for text, error in results:  # each: the words so far, then the error event
        assert text == f"Echo: {question} w01 w02 w03 w04"
        assert "closed the connection mid-response" in error
    # Nothing was stored: the same request goes upstream again.
    body = {
        "model": "break",
        "temperature": 0,
        "stream": True,
        "messages": [{"role": "user", "content": question}],
    }
    with httpx.stream(
        "POST",
        f"{a.url}/v1/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {ALICE}"},
        timeout=10,
    ) as again:
        assert again.headers["x-filterproxy-cache"] == "miss"
        with pytest.raises(httpx.RemoteProtocolError):
            again.read()  # the error event, then no clean end
    assert upstream_count(slow_upstream) == before + 2


def test_a_leader_whose_client_leaves_goes_on_for_the_others(
    replicas: tuple[Gateway, Gateway], slow_upstream: LocalServer
) -> None:
    a, _ = replicas
    question = f"leave {uuid.uuid4().hex[:8]}"
    before = upstream_count(slow_upstream)
    body = {
        "model": "mem-leave",
        "temperature": 0,
        "stream": True,
        "messages": [{"role": "user", "content": question}],
    }
    headers = {"authorization": f"Bearer {ALICE}"}

    async def leader_leaves() -> None:
        async with (
            httpx.AsyncClient(timeout=10) as client,
            client.stream(
                "POST", f"{a.url}/v1/chat/completions", json=body, headers=headers
            ) as first,
        ):
            assert first.headers["x-filterproxy-cache"] == "miss"
            async for _ in first.aiter_bytes():
                await asyncio.sleep(0.3)  # (the others have joined by now)
                break  # this client leaves mid-answer

    async def follower() -> str:
        await asyncio.sleep(0.1)
        async with openai.AsyncOpenAI(
            base_url=f"{a.url}/v1", api_key=ALICE, max_retries=0
        ) as client:
            stream = await client.chat.completions.create(
                model="mem-leave",
                messages=[{"role": "user", "content": question}],
                temperature=0,
                stream=True,
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def together() -> list[Any]:
        return await asyncio.gather(leader_leaves(), follower(), follower())

    _, second, third = asyncio.run(together())
    assert second == third == f"Echo: {question}" + "".join(f" w{n:02d}" for n in range(1, 12))
    assert upstream_count(slow_upstream) == before + 1
    # Its answer completed for the others, so it was stored.
    assert post(a, "mem-leave", question, stream=True).headers["x-filterproxy-cache"] == "hit"


def test_invalidation_through_the_admin_api(
    replicas: tuple[Gateway, Gateway], slow_upstream: LocalServer
) -> None:
    a, b = replicas
    auth = {"authorization": f"Bearer {TOKEN}"}
    question = f"forget me {uuid.uuid4().hex[:8]}"
    post(a, "mem-inv", question)
    post(a, "shared-inv", question)
    assert post(a, "mem-inv", question).headers["x-filterproxy-cache"] == "hit"
    assert post(b, "shared-inv", question).headers["x-filterproxy-cache"] == "hit"
    shown = httpx.get(f"{a.admin_url}/cache", headers=auth).json()
    assert shown["memory"]["entries"] >= 1

    removed = httpx.delete(f"{a.admin_url}/cache", params={"model": "mem-inv"}, headers=auth)
    assert removed.status_code == 200, removed.text
    assert removed.json()["removed"]["memory"] == 1
    assert post(a, "mem-inv", question).headers["x-filterproxy-cache"] == "miss"

    key = a.access_record(post(a, "shared-inv", question).headers["x-request-id"])["cache"]["key"]
    by_key = httpx.delete(f"{a.admin_url}/cache", params={"key": key}, headers=auth)
    assert by_key.json()["removed"]["redis"] == 1
    assert post(b, "shared-inv", question).headers["x-filterproxy-cache"] == "miss"

    assert (
        httpx.delete(f"{a.admin_url}/cache", params={"key": "zz"}, headers=auth).status_code == 400
    )
    assert httpx.delete(f"{a.admin_url}/cache").status_code == 401
    everything = httpx.delete(f"{a.admin_url}/cache", headers=auth).json()
    assert everything["removed"]["memory"] >= 1
