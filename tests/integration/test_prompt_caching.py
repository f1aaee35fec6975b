"""Prompt caching through the gateway, on real sockets with the official SDKs: a chat
client's ``cache_control`` breakpoints reach a Messages upstream, a route with
``auto_cache`` adds them for clients that set none (counted in what the upstream got),
and a cluster URL whose base path names the API version gets the client's path once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.integration.conftest import Gateway, LocalServer, start_gateway

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"The {name} of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    for name in ("weather", "time")
]
SYSTEM = "You are a travel agent. " * 40


@pytest.fixture(scope="module")
def gateway(
    messages_upstream: LocalServer,
    chat_upstream: LocalServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    config = f"""
        clusters:
          claude:
            provider: anthropic
            url: {messages_upstream.url}/v1
            api_key: sk-ant-upstream-secret
          qwen:
            url: {chat_upstream.url}/compatible-mode/v1
            apis: [chat]
        routes:
          - models: ["claude-auto"]
            cluster: claude
            auto_cache: true
          - models: ["claude-*"]
            cluster: claude
          - models: ["qwen-*"]
            cluster: qwen
    """
    gw = start_gateway(config, tmp_path_factory.mktemp("caching"))
    try:
        yield gw
    finally:
        gw.process.stop()


def last_request(server: LocalServer) -> dict[str, Any]:
    return httpx.get(f"{server.url}/control/last").json()  # type: ignore[no-any-return]


def breakpoints(body: dict[str, Any]) -> list[str]:
    """Where the Messages request *body* sets ``cache_control`` (tools, system,
    messages[i])."""
    found = [f"tools[{i}]" for i, t in enumerate(body.get("tools") or []) if "cache_control" in t]
    system = body.get("system")
    if isinstance(system, list):
        found += [f"system[{i}]" for i, b in enumerate(system) if "cache_control" in b]
    for i, turn in enumerate(body["messages"]):
        content = turn["content"]
        if isinstance(content, list):
            found += [f"messages[{i}]" for b in content if "cache_control" in b]
    return found


@pytest.fixture
def oai(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-client-key", max_retries=0)


def ask(oai: openai.OpenAI, model: str, **extra: Any) -> Any:
    return oai.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Plan my day in Paris."},
        ],
        tools=TOOLS,
        **extra,
    )


def test_a_route_with_auto_cache_sends_breakpoints_a_plain_client_did_not(
    oai: openai.OpenAI, messages_upstream: LocalServer
) -> None:
    ask(oai, "claude-plain")
    assert breakpoints(last_request(messages_upstream)["body"]) == []
    completion = ask(oai, "claude-auto")
    body = last_request(messages_upstream)["body"]
    # The whole prefix of the next turn — tools, system prompt, conversation — is cached.
    assert breakpoints(body) == ["tools[1]", "system[0]", "messages[0]"]
    assert body["system"] == [
        {"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}
    ]
    # What the upstream read from its cache reaches the client as cached tokens.
    assert completion.usage is not None and completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 3


def test_a_chat_clients_own_breakpoints_reach_the_messages_upstream(
    oai: openai.OpenAI, messages_upstream: LocalServer
) -> None:
    marked = [{**TOOLS[0], "cache_control": {"type": "ephemeral"}}, TOOLS[1]]
    oai.chat.completions.create(
        model="claude-plain",
        messages=[
            {
                "role": "system",
                "content": [
                    {"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "Plan my day.",
                        "cache_control": {"type": "ephemeral", "ttl": "1h"},
                    }
                ],
            },
        ],
        tools=marked,  # type: ignore[arg-type]
        stream=False,
    )
    body = last_request(messages_upstream)["body"]
    assert breakpoints(body) == ["tools[0]", "system[0]", "messages[0]"]
    assert body["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}


def test_auto_cache_tops_up_a_clients_breakpoints_to_four_at_most(
    gateway: Gateway, messages_upstream: LocalServer
) -> None:
    claude = anthropic.Anthropic(base_url=gateway.url, api_key="sk-client-key", max_retries=0)
    mark = {"type": "ephemeral"}
    claude.messages.create(
        model="claude-auto",
        max_tokens=100,
        system=[{"type": "text", "text": SYSTEM}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "a", "cache_control": mark}]},
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "b", "cache_control": mark}],
            },
            {"role": "user", "content": [{"type": "text", "text": "c", "cache_control": mark}]},
        ],
    )
    body = last_request(messages_upstream)["body"]
    # A Messages client straight to a Messages upstream: three of its own, one added.
    assert breakpoints(body) == ["system[0]", "messages[0]", "messages[1]", "messages[2]"]


def test_a_base_path_that_names_the_version_gets_the_clients_path_once(
    oai: openai.OpenAI, chat_upstream: LocalServer
) -> None:
    completion = oai.chat.completions.create(
        model="qwen-max", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "You said: hi (1 messages)"
    assert last_request(chat_upstream)["path"] == "/compatible-mode/v1/chat/completions"
