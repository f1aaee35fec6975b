"""provider: bedrock against a stand-in that checks what AWS checks
(tests/bedrock_server.py): every request's SigV4 signature recomputed with the
credentials the test gave (or STS issued), InvokeModel's and Converse's bodies
validated, streams sent as AWS event-stream frames split across writes; the official SDKs
and Claude Code as clients. (Where credentials come from: test_bedrock_credentials.py.)"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from .bedrock_mock import BedrockMock
from .bedrock_setup import (
    ACCESS_KEY,
    CLAUDE,
    LLAMA,
    SECRET,
    TOOLS_CHAT,
    aws_env,
    bedrock,
    config,
    last,
)
from .conftest import Gateway, start_gateway

pytest.importorskip("botocore")

__all__ = ["bedrock"]  # the stand-in, a module fixture


@pytest.fixture(scope="module")
def gateway(bedrock: BedrockMock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gw")
    env = aws_env(tmp, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET)
    gw = start_gateway(config(bedrock), tmp, env=env)
    try:
        yield gw
    finally:
        gw.process.stop()


def test_claude_through_the_anthropic_sdk_signed_with_environment_credentials(
    gateway: Gateway, bedrock: BedrockMock
) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="client-key")
    system = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    message = client.messages.create(
        model=CLAUDE,
        max_tokens=64,
        system=system,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "hello bedrock"}],
        extra_headers={"anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14"},
    )
    assert message.content[0].text == "Echo: hello bedrock"  # type: ignore[union-attr]
    assert message.usage.cache_read_input_tokens == 7
    assert message.usage.cache_creation_input_tokens == 3
    seen = last(bedrock)
    assert seen["auth"] == f"sigv4:{ACCESS_KEY}"
    assert seen["path"] == "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke"
    assert seen["body"]["anthropic_version"] == "bedrock-2023-05-31"
    assert seen["body"]["system"] == system  # the prompt-cache marker arrives
    assert seen["body"]["anthropic_beta"] == ["interleaved-thinking-2025-05-14"]
    assert "x-api-key" not in seen["headers"] and "anthropic-version" not in seen["headers"]


def test_usage_reaches_the_access_log_and_metrics(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={
            "model": CLAUDE,
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "count me"}],
        },
        timeout=30,
    )
    assert response.status_code == 200 and "[DONE]" in response.text
    record = gateway.access_record(response.headers["x-request-id"])
    assert record["cluster"] == "bedrock" and record["outcome"] == "complete"
    assert record["prompt_tokens"] == 11 and record["completion_tokens"] > 0
    # Priced from the providers' price list, which knows Bedrock's model IDs.
    assert record["cost_usd"] > 0 and record["cost_priced"] is True
    metrics = gateway.metrics()
    assert 'filterproxy_upstream_attempts_total{cluster="bedrock"}' in metrics
    assert 'filterproxy_credential_fetches_total{cluster="bedrock",result="ok"} 1.0' in metrics
    assert any(
        line.startswith("gen_ai_client_token_usage_sum")
        and f'model="{CLAUDE}"' in line
        and 'gen_ai_token_type="input"' in line
        for line in metrics.splitlines()
    )


def test_claude_streams_frame_by_frame_to_the_anthropic_sdk(
    gateway: Gateway, bedrock: BedrockMock
) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="client-key")
    with client.messages.stream(
        model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "stream to me please"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Echo: stream to me please"
    assert final.stop_reason == "end_turn" and final.usage.input_tokens == 11
    assert last(bedrock)["path"].endswith("/invoke-with-response-stream")
    assert "stream" not in last(bedrock)["body"]


def test_a_tool_round_trip_from_the_openai_sdk_through_invoke(
    gateway: Gateway, bedrock: BedrockMock
) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="client-key")
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    stream = client.chat.completions.create(
        model=CLAUDE,
        messages=messages,
        tools=TOOLS_CHAT,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    arguments = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments or ""  # type: ignore[index, union-attr]
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens >= 11
    call_id = next(
        c.choices[0].delta.tool_calls[0].id  # type: ignore[index]
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls and c.choices[0].delta.tool_calls[0].id
    )
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "sunny"},
    ]
    answer = client.chat.completions.create(model=CLAUDE, messages=messages, tools=TOOLS_CHAT)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "Tool said: sunny"
    assert last(bedrock)["body"]["messages"][-1]["content"][0]["type"] == "tool_result"


def test_a_responses_client_through_invoke_and_converse(gateway: Gateway) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="client-key")
    for model in (CLAUDE, LLAMA):
        answer = client.responses.create(model=model, input="hello responses")
        assert answer.output_text == "Echo: hello responses"
        # A conversation continued by id: the gateway kept the first turn.
        with client.responses.stream(
            model=model, input="and again", previous_response_id=answer.id
        ) as stream:
            text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
            final = stream.get_final_response()
        assert text == "Echo: and again" and final.status == "completed"


def test_other_models_through_converse_with_a_tool_round_trip(
    gateway: Gateway, bedrock: BedrockMock
) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="client-key")
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = client.chat.completions.create(model=LLAMA, messages=messages, tools=TOOLS_CHAT)  # type: ignore[arg-type]
    seen = last(bedrock)
    assert seen["path"] == "/model/meta.llama3-70b-instruct-v1%3A0/converse"
    assert seen["body"]["toolConfig"]["tools"][0]["toolSpec"]["name"] == "weather"
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    stream = client.chat.completions.create(
        model=LLAMA,
        messages=messages,
        tools=TOOLS_CHAT,
        stream=True,  # type: ignore[arg-type]
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
        "Tool said: sunny"
    )
    assert last(bedrock)["path"].endswith("/converse-stream")
    # A Messages client with a prompt-cache marker: Converse's cachePoint arrives.
    anthropic_client = anthropic.Anthropic(base_url=gateway.url, api_key="client-key")
    with anthropic_client.messages.stream(
        model=LLAMA,
        max_tokens=32,
        system=[{"type": "text", "text": "Long context", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "cached please"}],
    ) as messages_stream:
        assert "".join(messages_stream.text_stream) == "Echo: cached please"
        final = messages_stream.get_final_message()
    assert last(bedrock)["body"]["system"] == [
        {"text": "Long context"},
        {"cachePoint": {"type": "default"}},
    ]
    assert final.usage.cache_read_input_tokens == 7


@pytest.mark.parametrize(
    ("model", "said"),
    [
        ("anthropic.claude-throttle-v1:0", "throttlingException"),
        ("anthropic.claude-streamerror-v1:0", "modelStreamErrorException"),
        ("anthropic.claude-truncate-v1:0", "ended before its last event"),
        ("anthropic.claude-badcrc-v1:0", "corrupt"),
        ("meta.llama-throttle-v1:0", "throttlingException"),
    ],
)
def test_a_stream_that_fails_midway_is_an_error_never_a_clean_end(
    gateway: Gateway, model: str, said: str
) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="client-key", max_retries=0)
    text = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "one two three four"}], stream=True
        ):
            text.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
    assert said in str(caught.value)
    anthropic_client = anthropic.Anthropic(base_url=gateway.url, api_key="k", max_retries=0)
    with (
        pytest.raises(anthropic.APIError),
        anthropic_client.messages.stream(
            model=model, max_tokens=32, messages=[{"role": "user", "content": "a b c d"}]
        ) as stream,
    ):
        for _ in stream.text_stream:
            pass


def test_an_error_answer_keeps_its_status_in_the_clients_shape(gateway: Gateway) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="k", max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(
            model="anthropic.claude-throttle-v1:0",
            max_tokens=8,
            messages=[{"role": "user", "content": "x"}],
        )
    assert "Bedrock: ThrottlingException" in str(caught.value)
    chat = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        # (The stand-in refuses InvokeModel for an ID that is not Anthropic's.)
        chat.chat.completions.create(
            model="claude-without-provider", messages=[{"role": "user", "content": "x"}]
        )
    assert refused.value.status_code == 400
    assert "Bedrock: ValidationException" in str(refused.value)


def test_claude_code_through_bedrock(bedrock: BedrockMock, tmp_path: Path) -> None:
    """The real Claude Code (npm, current release) against a Bedrock cluster: whatever it
    sends (its betas, tools with cache breakpoints, thinking, metadata, token counts)
    must pass InvokeModel's checks. The stand-in answers its tools with a call of the
    first one; Claude Code runs it, sends the result, and prints the answer to that."""
    from tests.npm_clients import client_env, installed_versions, npm_bin, npm_package

    directory = npm_package("@anthropic-ai/claude-code")
    assert installed_versions(directory)["@anthropic-ai/claude-code"]
    binary = npm_bin(directory, "claude")
    text = f"""
        clusters:
          bedrock:
            provider: bedrock
            url: {bedrock.url}
            region: us-east-1
        routes:
          - cluster: bedrock
            upstream_model: {CLAUDE}
    """
    env = aws_env(tmp_path, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET)
    gw = start_gateway(text, tmp_path, env=env)
    before = len(bedrock.requests())
    try:
        done = subprocess.run(
            [str(binary), "-p", "Say the word pineapple", "--output-format", "text"],
            env=client_env(
                directory,
                {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "HOME": str(tmp_path),
                    "ANTHROPIC_BASE_URL": gw.url,
                    "ANTHROPIC_API_KEY": "sk-ant-test-client-key",
                    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                    "DISABLE_AUTOUPDATER": "1",
                    "DISABLE_TELEMETRY": "1",
                    "DISABLE_ERROR_REPORTING": "1",
                },
            ),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stdout + done.stderr + gw.process.output()[-3000:]
        assert "Tool said:" in done.stdout, done.stdout + done.stderr
        sent = [
            r for r in bedrock.requests()[before:] if r["path"].endswith(("/invoke", "-stream"))
        ]
        assert sent and all(r["auth"] == f"sigv4:{ACCESS_KEY}" for r in sent)
        main = max(sent, key=lambda r: len(r["body"].get("tools") or []))
        assert main["body"]["tools"], "Claude Code's tools went to Bedrock"
        assert "cache_control" in json.dumps(main["body"]), "its cache breakpoints arrived"
    finally:
        gw.process.stop()
