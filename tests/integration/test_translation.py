"""Translation between the APIs, on real sockets, with the clients users use: the
official ``anthropic`` SDK through the gateway to an upstream that speaks only Chat
Completions (the gateway's own mock upstream), and the official ``openai`` SDK to one
that speaks only Messages (tests/messages_server.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.integration.conftest import (
    Gateway,
    LocalServer,
    Process,
    closed_port,
    listening,
    start_gateway,
    wait_until,
)

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def gateway(
    messages_upstream: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    mock_port = closed_port()
    config = f"""
        mock_upstream: tcp:{mock_port}:interface=127.0.0.1
        clusters:
          chat-only:
            url: http://127.0.0.1:{mock_port}
            apis: [chat]
          claude:
            provider: anthropic
            url: {messages_upstream.url}/v1
            api_key: sk-ant-upstream-secret
        routes:
          - models: ["claude-*"]
            cluster: claude
          - models: [demo]
            cluster: chat-only
    """
    gw = start_gateway(config, tmp_path_factory.mktemp("translation"))
    try:
        wait_until(lambda: listening(mock_port), timeout=10)
        yield gw
    finally:
        gw.process.stop()


def last_upstream_request(server: LocalServer) -> dict[str, Any]:
    return httpx.get(f"{server.url}/control/last").json()  # type: ignore[no-any-return]


@pytest.fixture
def claude(gateway: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key="sk-client-key", max_retries=0)


@pytest.fixture
def oai(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-client-key", max_retries=0)


# -- a Messages client, an upstream that speaks Chat Completions --------------------------


def test_anthropic_sdk_gets_a_message_from_a_chat_upstream(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="demo",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "hello there"}],
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text.endswith("You said: hello there")
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 8 and message.usage.output_tokens > 0


def test_anthropic_sdk_streams_from_a_chat_upstream(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="demo", max_tokens=100, messages=[{"role": "user", "content": "stream 流 ✓"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.endswith("You said: stream 流 ✓")
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0 and final.usage.input_tokens == 8


@pytest.mark.parametrize("streaming", [False, True])
def test_anthropic_sdk_tool_round_trip_through_a_chat_upstream(
    claude: anthropic.Anthropic, streaming: bool
) -> None:
    question = [{"role": "user", "content": "Paris"}]
    if streaming:
        with claude.messages.stream(
            model="demo", max_tokens=100, tools=[WEATHER], messages=question
        ) as stream:
            first = stream.get_final_message()
    else:
        first = claude.messages.create(
            model="demo", max_tokens=100, tools=[WEATHER], messages=question
        )
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and call.input == {"city": "Paris"}
    answer = claude.messages.create(
        model="demo",
        max_tokens=100,
        tools=[WEATHER],
        messages=[
            *question,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21°C"}
                ],
            },
        ],
    )
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].text == "The tool answered: sunny, 21°C"  # type: ignore[union-attr]


def test_count_tokens_gets_an_estimate(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(
        model="demo", messages=[{"role": "user", "content": "x" * 400}]
    )
    assert 100 <= counted.input_tokens < 140


def test_a_field_that_would_change_the_answer_is_refused_by_name(
    claude: anthropic.Anthropic,
) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        claude.messages.create(
            model="demo",
            max_tokens=100,
            tools=[{"type": "web_search_20250305", "name": "web_search"}],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "news?"}],
        )
    assert "tools[0]" in raised.value.message
    assert raised.value.body["type"] == "error"  # type: ignore[index]


def test_gateway_errors_reach_a_messages_client_in_its_shape(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as raised:
        claude.messages.create(
            model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    body = raised.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "not_found_error"
    assert "no-such-model" in body["error"]["message"]


def test_model_list_in_each_shape(gateway: Gateway, claude: anthropic.Anthropic) -> None:
    assert {m.id for m in claude.models.list()} == {"demo"}
    listed = httpx.get(f"{gateway.url}/v1/models").json()
    assert listed["object"] == "list" and listed["data"][0]["id"] == "demo"


# -- a Chat Completions client, an upstream that speaks only Messages ---------------------


def test_openai_sdk_gets_a_completion_from_a_messages_upstream(
    oai: openai.OpenAI, messages_upstream: LocalServer
) -> None:
    completion = oai.chat.completions.create(
        model="claude-test",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
        ],
        temperature=1.5,
    )
    assert completion.choices[0].message.content == "Hello from Messages"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 15  # 12 + 3 read from the cache
    assert completion.usage.prompt_tokens_details.cached_tokens == 3  # type: ignore[union-attr]
    seen = last_upstream_request(messages_upstream)
    assert seen["path"] == "/v1/messages"
    assert seen["headers"]["x-api-key"] == "sk-ant-upstream-secret"
    assert seen["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen["headers"]
    # The answer is rebuilt: it must come uncompressed, whatever the SDK accepts.
    assert seen["headers"]["accept-encoding"] == "identity"
    assert seen["body"]["system"] == "Be brief."
    assert seen["body"]["max_tokens"] == 4096  # the documented default
    assert seen["body"]["temperature"] == 1.0  # Anthropic's range ends at 1


def test_openai_sdk_streams_from_a_messages_upstream(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="claude-test",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from Messages"
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 7


def test_openai_sdk_tool_round_trip_through_a_messages_upstream(
    oai: openai.OpenAI, messages_upstream: LocalServer
) -> None:
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["input_schema"],
            },
        }
    ]
    question: Any = [{"role": "user", "content": "weather in Paris?"}]
    stream = oai.chat.completions.create(
        model="claude-test", messages=question, tools=tools, stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    content = ""
    finish = None
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += call.id or ""
            entry["name"] += (call.function.name or "") if call.function else ""
            entry["arguments"] += (call.function.arguments or "") if call.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and content == "Let me check."
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == {
        "city": "Paris"
    }
    answer = oai.chat.completions.create(
        model="claude-test",
        tools=tools,
        messages=[
            *question,
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": calls[0]["id"],
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": calls[0]["arguments"]},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"},
        ],
    )
    assert answer.choices[0].message.content == "Tool said: sunny"
    sent = last_upstream_request(messages_upstream)["body"]["messages"]
    assert sent[1]["content"] == [  # no empty text block for content ""
        {
            "type": "tool_use",
            "id": calls[0]["id"],
            "name": "get_weather",
            "input": {"city": "Paris"},
        }
    ]
    assert sent[2]["content"][0]["type"] == "tool_result"


def test_n_above_one_is_refused_by_name(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        oai.chat.completions.create(
            model="claude-test", messages=[{"role": "user", "content": "hi"}], n=2
        )
    assert raised.value.body["message"].startswith("n: ")  # type: ignore[index]
    assert raised.value.code == "unsupported_parameter"


def test_an_upstream_error_reaches_an_openai_client_in_its_shape(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        oai.chat.completions.create(model="claude-bad", messages=[{"role": "user", "content": "x"}])
    assert raised.value.body["message"] == "max_tokens: too large for claude-bad"  # type: ignore[index]
    assert raised.value.type == "invalid_request_error"


def test_a_mid_stream_error_is_an_error_event(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="claude-midfail", messages=[{"role": "user", "content": "x"}], stream=True
    )
    received = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            received.append(chunk)
    assert "Overloaded" in raised.value.message
    assert received and received[0].choices[0].delta.role == "assistant"


def test_same_api_passes_byte_exact(gateway: Gateway, messages_upstream: LocalServer) -> None:
    body = {
        "model": "claude-test",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
        "future_field": {"kept": True},
    }
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/messages",
        json=body,
        headers={"x-api-key": "sk-client-key", "anthropic-version": "2023-06-01"},
    ) as response:
        received = b"".join(response.iter_raw())
    assert received == httpx.get(f"{messages_upstream.url}/control/sent").content
    seen = last_upstream_request(messages_upstream)
    assert seen["body"] == body  # forwarded as the client wrote it
    assert seen["headers"]["x-api-key"] == "sk-ant-upstream-secret"


# -- an ArchGW config, run unchanged -------------------------------------------------------


def test_an_archgw_config_runs_unchanged(
    messages_upstream: LocalServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    mock_port = closed_port()
    config = f"""
        version: v0.1
        listeners:
          egress_traffic:
            address: 127.0.0.1
            port: 12000
            message_format: openai
            timeout: 30s
        llm_providers:
          - model: anthropic/claude-sonnet-4-5
            access_key: $ANTHROPIC_API_KEY
            base_url: {messages_upstream.url}
            default: true
          - model: mine/demo
            provider_interface: openai
            base_url: http://127.0.0.1:{mock_port}
            routing_preferences:
              - name: chat
                description: small talk
        model_aliases:
          arch.fast:
            target: claude-sonnet-4-5
        tracing:
          random_sampling: 100
    """
    mock = Process(
        [
            sys.executable,
            "-c",
            "import sys; from filterproxy.demo.mock_upstream import main; main(sys.argv[1:])",
            "--listen",
            f"tcp:{mock_port}:interface=127.0.0.1",
            "--interval",
            "0",
        ]
    )
    gw = start_gateway(
        config, tmp_path_factory.mktemp("archgw"), env={"ANTHROPIC_API_KEY": "sk-ant-from-env"}
    )
    try:
        wait_until(lambda: listening(mock_port), timeout=10)
        oai = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="client", max_retries=0)
        answer = oai.chat.completions.create(
            model="arch.fast", messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.choices[0].message.content == "Hello from Messages"
        seen = last_upstream_request(messages_upstream)
        assert seen["body"]["model"] == "claude-sonnet-4-5"
        assert seen["headers"]["x-api-key"] == "sk-ant-from-env"
        # A model no provider names goes to the default provider, as its model.
        oai.chat.completions.create(
            model="gpt-unknown", messages=[{"role": "user", "content": "x"}]
        )
        assert last_upstream_request(messages_upstream)["body"]["model"] == "claude-sonnet-4-5"
        claude = anthropic.Anthropic(base_url=gw.url, api_key="client", max_retries=0)
        message = claude.messages.create(
            model="mine/demo", max_tokens=50, messages=[{"role": "user", "content": "yo"}]
        )
        assert message.content[0].text.endswith("You said: yo")  # type: ignore[union-attr]
        gw.process.wait_for(r"no counterpart here and are ignored: .*routing_preferences.*tracing")
    finally:
        gw.process.stop()
        mock.stop()
