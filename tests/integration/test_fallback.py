"""A fallback is a fresh request for its cluster: when the route's first cluster is down,
the request that reaches the fallback carries that cluster's own header rules and
credentials, goes to its path, in its API (translated or not) — nothing of the attempt
on the first cluster. Real sockets, the official SDKs, recording upstreams."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.integration.conftest import (
    Gateway,
    LocalServer,
    closed_port,
    start_gateway,
)


@pytest.fixture(scope="module")
def gateway(
    chat_upstream: LocalServer,
    messages_upstream: LocalServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    down = closed_port()
    config = f"""
        clusters:
          primary:
            url: http://127.0.0.1:{down}
            apis: [chat]
            timeouts: {{connect: 2s}}
            request_headers:
              set: {{authorization: Bearer sk-primary-secret, x-primary-only: "1"}}
          primary-claude:
            provider: anthropic
            url: http://127.0.0.1:{down}/v1
            api_key: sk-ant-primary-secret
            timeouts: {{connect: 2s}}
          backup-chat:
            url: {chat_upstream.url}
            apis: [chat]
            request_headers:
              set: {{authorization: Bearer sk-backup-secret}}
          backup-claude:
            provider: anthropic
            url: {messages_upstream.url}/v1
            api_key: sk-ant-backup-secret
        routes:
          - models: [chat-to-chat]
            cluster: primary
            upstream_model: test-model
            fallbacks: [backup-chat]
          - models: [chat-to-claude, claude-native]
            cluster: primary
            fallbacks: [backup-claude]
          - models: [claude-to-chat]
            cluster: primary-claude
            fallbacks: [backup-chat]
    """
    gw = start_gateway(config, tmp_path_factory.mktemp("fallback"))
    try:
        yield gw
    finally:
        gw.process.stop()


def last_request(server: LocalServer) -> dict[str, Any]:
    return httpx.get(f"{server.url}/control/last").json()  # type: ignore[no-any-return]


def test_a_fallback_gets_its_own_credentials_not_the_first_clusters(
    gateway: Gateway, chat_upstream: LocalServer
) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="client-key", max_retries=0)
    answer = client.chat.completions.create(
        model="chat-to-chat", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "You said: hi (1 messages)"
    seen = last_request(chat_upstream)
    assert seen["headers"]["authorization"] == "Bearer sk-backup-secret"
    assert "x-primary-only" not in seen["headers"]
    assert "sk-primary-secret" not in str(seen)


def test_a_chat_request_failing_over_to_a_messages_provider_is_translated_for_it(
    gateway: Gateway, messages_upstream: LocalServer
) -> None:
    """The first cluster speaks chat (the request passes as it came); the fallback is
    Anthropic: it gets a Messages request on /v1/messages with its own key and nothing
    else's, and the client a chat completion."""
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="client-key", max_retries=0)
    answer = client.chat.completions.create(
        model="chat-to-claude", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "Hello from Messages"
    seen = last_request(messages_upstream)
    assert seen["path"] == "/v1/messages"
    assert seen["headers"]["x-api-key"] == "sk-ant-backup-secret"
    assert "authorization" not in seen["headers"]
    assert "x-primary-only" not in seen["headers"]
    [message] = seen["body"]["messages"]
    assert message["role"] == "user" and "hi" in str(message["content"])
    assert isinstance(seen["body"]["max_tokens"], int)  # a Messages request, not chat JSON


def test_a_stream_failing_over_to_another_api_is_translated_for_it(
    gateway: Gateway, messages_upstream: LocalServer
) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="client-key", max_retries=0)
    stream = client.chat.completions.create(
        model="chat-to-claude", stream=True, messages=[{"role": "user", "content": "hi"}]
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello from Messages"
    assert last_request(messages_upstream)["body"]["stream"] is True


def test_a_messages_request_failing_over_from_a_translated_cluster_to_a_native_one_passes_as_it_came(
    gateway: Gateway, messages_upstream: LocalServer
) -> None:
    """To the first (chat-only) cluster the Messages request would be translated; the
    fallback speaks Messages: it gets the client's request itself, with the Anthropic
    headers the translation would have removed."""
    client = anthropic.Anthropic(base_url=gateway.url, api_key="client-key", max_retries=0)
    message = client.messages.create(
        model="claude-native",
        max_tokens=50,
        messages=[{"role": "user", "content": "hi"}],
    )
    assert message.content[0].text == "Hello from Messages"  # type: ignore[union-attr]
    seen = last_request(messages_upstream)
    assert seen["path"] == "/v1/messages"
    assert seen["headers"]["anthropic-version"] == "2023-06-01"
    assert seen["headers"]["x-api-key"] == "sk-ant-backup-secret"
    assert "authorization" not in seen["headers"]
    assert seen["body"] == {
        "model": "claude-native",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_a_messages_provider_failing_over_to_a_chat_cluster_gets_chat(
    gateway: Gateway, chat_upstream: LocalServer
) -> None:
    """The first cluster is Anthropic (its key rides on its endpoint); the fallback
    speaks chat: a chat request with the fallback's key, never Anthropic's."""
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="client-key", max_retries=0)
    answer = client.chat.completions.create(
        model="claude-to-chat", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "You said: hi (1 messages)"
    seen = last_request(chat_upstream)
    assert seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["authorization"] == "Bearer sk-backup-secret"
    assert "x-api-key" not in seen["headers"]
    assert "anthropic-version" not in seen["headers"]
    assert seen["body"]["messages"] == [{"role": "user", "content": "hi"}]
