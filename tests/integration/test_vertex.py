"""provider: vertex against a stand-in that checks what Google checks
(tests/vertex_server.py): OAuth tokens google-auth gets from a service-account key (the
JWT assertion verified with the key's public half) or from the metadata server, every
call's bearer token one it issued and not expired, refreshed by the gateway before it
expires; Claude through the Anthropic endpoints (Messages bodies, prompt-cache markers
intact), Gemini through the OpenAI-compatible one; the official SDKs as clients."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from .conftest import Gateway, start_gateway
from .vertex_mock import VertexMock, service_account_file, vertex_mock

pytest.importorskip("google.auth")

TOOLS_CHAT = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def config(mock: VertexMock, credentials: str) -> str:
    return f"""
        clusters:
          vertex:
            provider: vertex
            url: {mock.url}
            project: {mock.project}
            region: us-east5
            {credentials}
        routes:
          - models: ["*"]
            cluster: vertex
    """


def isolated_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No Google settings of the machine's: only what the test gives."""
    env = {k: "" for k in os.environ if k.startswith(("GOOGLE_", "GCE_", "CLOUDSDK_"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), CLOUDSDK_CONFIG=str(home / "gcloud"), NO_GCE_CHECK="true")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def vertex(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VertexMock]:
    with vertex_mock(tmp_path_factory.mktemp("vertex")) as mock:
        yield mock


@pytest.fixture(scope="module")
def gateway(vertex: VertexMock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gw")
    gw = start_gateway(
        config(vertex, f"credentials_file: {vertex.key_file}"), tmp, env=isolated_env(tmp)
    )
    try:
        yield gw
    finally:
        gw.process.stop()


def last_request(mock: VertexMock) -> dict[str, Any]:
    requests = mock.requests()
    assert requests, "nothing reached Vertex"
    return requests[-1]


def test_claude_through_the_anthropic_sdk_with_cache_markers(
    gateway: Gateway, vertex: VertexMock
) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused")
    system = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    message = client.messages.create(
        model="claude-sonnet-4-5@20250929",
        max_tokens=64,
        system=system,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "hello vertex"}],
        extra_headers={"anthropic-beta": "context-1m-2025-08-07"},
    )
    assert message.content[0].text == "Echo: hello vertex"  # type: ignore[union-attr]
    assert message.usage.cache_read_input_tokens == 7
    seen = last_request(vertex)
    assert seen["path"] == (
        f"/v1/projects/{vertex.project}/locations/us-east5/publishers/anthropic/models/"
        "claude-sonnet-4-5@20250929:rawPredict"
    )
    assert seen["body"]["anthropic_version"] == "vertex-2023-10-16"
    assert "model" not in seen["body"]
    assert seen["body"]["system"] == system  # the prompt-cache marker arrives
    assert seen["headers"]["anthropic-beta"] == "context-1m-2025-08-07"
    assert seen["headers"]["authorization"].startswith("Bearer ya29.mock-")
    assert "x-api-key" not in seen["headers"]  # the client's key stays here
    assert seen["token"] in {t["token"] for t in vertex.tokens()}


def test_claude_streams_through_the_anthropic_sdk(gateway: Gateway, vertex: VertexMock) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused")
    with client.messages.stream(
        model="claude-opus-4-6",
        max_tokens=64,
        messages=[{"role": "user", "content": "stream me"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Echo: stream me"
    assert final.stop_reason == "end_turn"
    assert last_request(vertex)["path"].endswith("/models/claude-opus-4-6:streamRawPredict")
    assert last_request(vertex)["body"]["stream"] is True


def test_claude_through_the_openai_sdk_with_a_tool_round_trip(
    gateway: Gateway, vertex: VertexMock
) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused")
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = client.chat.completions.create(
        model="claude-sonnet-4-5@20250929",
        messages=messages,
        tools=TOOLS_CHAT,  # type: ignore[arg-type]
    )
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    stream = client.chat.completions.create(
        model="claude-sonnet-4-5@20250929",
        messages=messages,
        tools=TOOLS_CHAT,  # type: ignore[arg-type]
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Tool said: sunny"
    body = last_request(vertex)["body"]
    assert body["messages"][-1]["content"][0]["type"] == "tool_result"


def test_gemini_through_the_openai_compatible_endpoint(
    gateway: Gateway, vertex: VertexMock
) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="gemini-2.5-flash",
        messages=[{"role": "user", "content": "hi gemini"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Echo: hi gemini"
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 11
    seen = last_request(vertex)
    assert seen["path"] == (
        f"/v1/projects/{vertex.project}/locations/us-east5/endpoints/openapi/chat/completions"
    )
    assert seen["body"]["model"] == "google/gemini-2.5-flash"
    # A Messages client reaches Gemini through the translation.
    client_a = anthropic.Anthropic(base_url=gateway.url, api_key="unused")
    message = client_a.messages.create(
        model="gemini-2.5-flash", max_tokens=32, messages=[{"role": "user", "content": "hey"}]
    )
    assert message.content[0].text == "Echo: hey"  # type: ignore[union-attr]


def test_errors_reach_the_client_in_its_apis_shape(gateway: Gateway) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(
            model="claude-throttled", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert "Vertex AI:" in str(caught.value)
    chat = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        chat.chat.completions.create(
            model="google/gemini-throttled", messages=[{"role": "user", "content": "x"}]
        )


def test_a_token_is_refreshed_before_it_expires(tmp_path: Path) -> None:
    with vertex_mock(tmp_path, {"VERTEX_MOCK_TOKEN_LIFETIME": "4"}) as mock:
        gw = start_gateway(
            config(mock, f"credentials_file: {mock.key_file}"), tmp_path, env=isolated_env(tmp_path)
        )
        try:
            client = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
            seen = []
            for _ in range(3):
                client.messages.create(
                    model="claude-opus-4-6",
                    max_tokens=8,
                    messages=[{"role": "user", "content": "x"}],
                )
                seen.append(last_request(mock)["token"])
                time.sleep(2.5)
            # Every call was accepted (the stand-in refuses expired tokens), and the
            # token changed as its 4 s ran out, fetched ahead by the gateway.
            assert len(set(seen)) >= 2
            assert all(r["token"] for r in mock.requests())
        finally:
            gw.process.stop()


def test_a_token_refused_before_its_time_is_replaced_and_the_request_tried_again(
    gateway: Gateway, vertex: VertexMock
) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0)
    client.messages.create(
        model="claude-opus-4-6", max_tokens=8, messages=[{"role": "user", "content": "a"}]
    )
    issued = len(vertex.tokens())
    vertex.expire_tokens()  # revoked: the gateway still thinks its token good
    message = client.messages.create(
        model="claude-opus-4-6", max_tokens=8, messages=[{"role": "user", "content": "b"}]
    )
    assert message.content[0].text == "Echo: b"  # type: ignore[union-attr]
    assert len(vertex.tokens()) == issued + 1
    refused, accepted = vertex.requests()[-2:]
    assert refused["token"] != accepted["token"]
    assert accepted["token"] == vertex.tokens()[-1]["token"]


def test_tokens_from_the_metadata_server(tmp_path: Path) -> None:
    """Application Default Credentials on GKE / Cloud Run / GCE: no key file, the
    workload's identity through the metadata server."""
    with vertex_mock(tmp_path) as mock:
        env = isolated_env(tmp_path, **mock.metadata_env())
        env["NO_GCE_CHECK"] = ""
        gw = start_gateway(config(mock, ""), tmp_path, env=env)
        try:
            client = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
            message = client.messages.create(
                model="claude-opus-4-6", max_tokens=8, messages=[{"role": "user", "content": "md"}]
            )
            assert message.content[0].text == "Echo: md"  # type: ignore[union-attr]
            assert [t["via"] for t in mock.tokens()] == ["metadata"]
        finally:
            gw.process.stop()


def test_a_token_that_cannot_be_had_is_a_503_naming_the_source(tmp_path: Path) -> None:
    with vertex_mock(tmp_path) as mock:
        (tmp_path / "other").mkdir()
        # A key whose token endpoint refuses it (the stand-in checks the assertion with
        # another key's public half).
        other, _ = service_account_file(tmp_path / "other", mock.token_uri, mock.project)
        gw = start_gateway(
            config(mock, f"credentials_file: {other}"), tmp_path, env=isolated_env(tmp_path)
        )
        try:
            response = httpx.post(
                f"{gw.url}/v1/messages",
                json={
                    "model": "claude-opus-4-6",
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": "x"}],
                },
                timeout=30,
            )
            assert response.status_code == 503, response.text
            message = response.json()["error"]["message"]
            assert "Google token from the credentials file" in message
            assert "invalid_grant" in message
            assert mock.requests() == []  # nothing went to Vertex without a token
        finally:
            gw.process.stop()
