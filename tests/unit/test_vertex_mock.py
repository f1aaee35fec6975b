"""The Vertex AI stand-in (tests/vertex_server.py) checks what Google checks: google-auth
gets tokens from it with a service-account key or from its metadata server, and Vertex
calls answer only with a token it issued that has not expired, for its project, with a
body Vertex would take."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("google.auth")

from google.auth import crypt
from google.auth import jwt as google_jwt
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import Request
from google.oauth2 import service_account

from tests.integration.vertex_mock import VertexMock, service_account_file, vertex_mock
from tests.support import claude_answers
from tests.support.claude_answers import TOOL_CALL_TOKENS

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
CLAUDE = "claude-sonnet-4-5@20250929"
#: The output tokens of "Let me check." and a tool call.
TOOL_ANSWER_TOKENS = 3 + TOOL_CALL_TOKENS


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VertexMock]:
    with vertex_mock(tmp_path_factory.mktemp("vertex")) as server:
        yield server


@pytest.fixture(autouse=True)
def fresh(mock: VertexMock) -> None:
    mock.reset()


def credentials(key_file: Path, scopes: list[str] | None = None) -> Any:
    return service_account.Credentials.from_service_account_file(
        str(key_file), scopes=scopes or [CLOUD_PLATFORM]
    )


def fetch_token(mock: VertexMock) -> str:
    creds = credentials(mock.key_file)
    creds.refresh(Request())
    return str(creds.token)


@pytest.fixture
def token(mock: VertexMock, fresh: None) -> str:
    """A token from the service-account key (per test: some tests end every token)."""
    return fetch_token(mock)


def claude_url(
    mock: VertexMock,
    method: str = "rawPredict",
    *,
    model: str = CLAUDE,
    location: str = "us-east5",
    project: str | None = None,
) -> str:
    return (
        f"{mock.url}/v1/projects/{project or mock.project}/locations/{location}"
        f"/publishers/anthropic/models/{model}:{method}"
    )


def chat_url(mock: VertexMock, location: str = "global") -> str:
    return f"{mock.url}/v1/projects/{mock.project}/locations/{location}/endpoints/openapi/chat/completions"


def claude_body(text: str = "hello there", **fields: Any) -> dict[str, Any]:
    return {
        "anthropic_version": "vertex-2023-10-16",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": text}],
        **fields,
    }


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def sse(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) of each event of an SSE body."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        events.append((name, "\n".join(data)))
    return events


def error_reason(response: httpx.Response) -> str:
    return str(response.json()["error"]["details"][0]["reason"])


# -- tokens ----------------------------------------------------------------------------------


def test_service_account_key_gets_a_token_from_the_token_endpoint(mock: VertexMock) -> None:
    creds = credentials(mock.key_file)
    creds.refresh(Request())
    assert creds.token.startswith("ya29.mock-")
    assert creds.valid
    [issued] = mock.tokens()
    assert issued["token"] == creds.token
    assert issued["via"] == "jwt"
    assert issued["expires_in"] == 3600
    key = json.loads(mock.key_file.read_text())
    assert key["type"] == "service_account"
    assert key["token_uri"] == mock.token_uri
    assert key["client_email"] == mock.client_email
    assert key["project_id"] == mock.project


def test_an_assertion_signed_by_another_key_is_an_invalid_grant(
    mock: VertexMock, tmp_path: Path
) -> None:
    other, _ = service_account_file(tmp_path, mock.token_uri, mock.project)
    with pytest.raises(RefreshError, match="invalid_grant: Invalid JWT Signature"):
        credentials(other).refresh(Request())
    assert mock.tokens() == []


def test_an_unknown_service_account_is_an_invalid_grant(mock: VertexMock) -> None:
    info = json.loads(mock.key_file.read_text())
    info["client_email"] = "someone-else@test-project.iam.gserviceaccount.com"
    creds = service_account.Credentials.from_service_account_info(info, scopes=[CLOUD_PLATFORM])
    with pytest.raises(RefreshError, match="invalid_grant"):
        creds.refresh(Request())


def test_a_grant_without_the_cloud_platform_scope_is_refused(mock: VertexMock) -> None:
    creds = credentials(mock.key_file, ["https://www.googleapis.com/auth/userinfo.email"])
    with pytest.raises(RefreshError, match="invalid_scope"):
        creds.refresh(Request())


def assertion(mock: VertexMock, **claims: Any) -> bytes:
    info = json.loads(mock.key_file.read_text())
    now = int(time.time())
    payload = {
        "iss": info["client_email"],
        "aud": "https://oauth2.googleapis.com/token",
        "scope": CLOUD_PLATFORM,
        "iat": now,
        "exp": now + 3600,
        **claims,
    }
    return google_jwt.encode(crypt.RSASigner.from_service_account_info(info), payload)  # type: ignore[no-any-return]


def grant(mock: VertexMock, signed: bytes, grant_type: str | None = None) -> httpx.Response:
    return httpx.post(
        mock.token_uri,
        data={
            "grant_type": grant_type or "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": signed.decode(),
        },
    )


def test_the_token_endpoint_takes_its_own_uri_as_audience(mock: VertexMock) -> None:
    response = grant(mock, assertion(mock, aud=mock.token_uri))
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["token_type"] == "Bearer"
    assert document["expires_in"] == 3600


@pytest.mark.parametrize(
    ("claims", "error"),
    [
        ({"aud": "https://example.com/token"}, "Failed audience check"),
        ({"iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600}, "short-lived"),
        ({"exp": int(time.time()) + 7200}, "short-lived"),
    ],
)
def test_bad_assertion_claims_are_invalid_grants(
    mock: VertexMock, claims: dict[str, Any], error: str
) -> None:
    response = grant(mock, assertion(mock, **claims))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert error in response.json()["error_description"]


def test_a_tampered_assertion_is_an_invalid_grant(mock: VertexMock) -> None:
    header, _, signature = assertion(mock).decode().split(".")
    claims = {"iss": mock.client_email, "aud": mock.token_uri, "exp": 2**40}
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    response = grant(mock, f"{header}.{forged}.{signature}".encode())
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_grant",
        "error_description": "Invalid JWT Signature.",
    }


def test_only_the_jwt_bearer_grant_is_supported(mock: VertexMock) -> None:
    response = grant(mock, assertion(mock), grant_type="client_credentials")
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


# -- Claude through rawPredict / streamRawPredict ----------------------------------------------


def test_raw_predict_answers_a_messages_json(mock: VertexMock, token: str) -> None:
    response = httpx.post(
        claude_url(mock, location="global"),
        json=claude_body("hello there"),
        headers={**bearer(token), "anthropic-beta": "context-1m-2025-08-07"},
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["type"] == "message"
    assert answer["model"] == CLAUDE
    assert answer["content"] == [{"type": "text", "text": "Echo: hello there"}]
    assert answer["stop_reason"] == "end_turn"
    assert answer["usage"] == {
        "input_tokens": 11,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 3,
    }
    [call] = mock.requests()
    assert call["location"] == "global"
    assert call["method"] == "rawPredict"
    assert call["model"] == CLAUDE
    assert call["token"] == token
    assert call["anthropic_beta"] == "context-1m-2025-08-07"
    assert call["headers"]["anthropic-beta"] == "context-1m-2025-08-07"
    assert call["body"] == claude_body("hello there")


def test_cache_control_anywhere_reports_cache_usage(mock: VertexMock, token: str) -> None:
    body = claude_body(
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    )
    usage = httpx.post(claude_url(mock), json=body, headers=bearer(token)).json()["usage"]
    assert usage["cache_read_input_tokens"] == 7
    assert usage["cache_creation_input_tokens"] == 3


def test_tools_get_a_tool_call_and_a_tool_result_its_echo(mock: VertexMock, token: str) -> None:
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    called = httpx.post(
        claude_url(mock), json=claude_body(tools=tools), headers=bearer(token)
    ).json()
    assert called["stop_reason"] == "tool_use"
    assert called["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert called["usage"]["output_tokens"] == TOOL_ANSWER_TOKENS
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": called["content"]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01",
                    "content": [{"type": "text", "text": "sunny"}],
                }
            ],
        },
    ]
    answered = httpx.post(
        claude_url(mock), json=claude_body(tools=tools, messages=messages), headers=bearer(token)
    ).json()
    assert answered["content"] == [{"type": "text", "text": "Tool said: sunny"}]
    assert answered["stop_reason"] == "end_turn"


def test_stream_raw_predict_streams_anthropic_events(mock: VertexMock, token: str) -> None:
    start = time.monotonic()
    response = httpx.post(
        claude_url(mock, "streamRawPredict"),
        json=claude_body("one two three", stream=True),
        headers=bearer(token),
    )
    elapsed = time.monotonic() - start
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse(response.text)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    documents = [json.loads(data) for _, data in events]
    assert all(document["type"] == name for name, document in zip(names, documents, strict=True))
    texts = [d["delta"]["text"] for d in documents if d["type"] == "content_block_delta"]
    assert texts == ["Echo:", " one", " two", " three"]
    assert documents[0]["message"]["usage"]["input_tokens"] == 11
    assert documents[-2]["usage"]["output_tokens"] == 4
    assert documents[-2]["delta"]["stop_reason"] == "end_turn"
    # Paced: one event per write, 5 ms apart.
    assert elapsed >= 0.005 * (len(events) - 1)


def test_a_streamed_tool_call_arrives_as_json_deltas(mock: VertexMock, token: str) -> None:
    response = httpx.post(
        claude_url(mock, "streamRawPredict"),
        json=claude_body(stream=True, tools=[{"name": "get_weather", "input_schema": {}}]),
        headers=bearer(token),
    )
    documents = [json.loads(data) for _, data in sse(response.text)]
    parts = [
        d["delta"]["partial_json"]
        for d in documents
        if d["type"] == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    ]
    assert json.loads("".join(parts)) == {"city": "Paris"}
    starts = [d["content_block"] for d in documents if d["type"] == "content_block_start"]
    assert starts[1] == {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}}
    assert documents[-2]["delta"]["stop_reason"] == "tool_use"
    assert documents[-2]["usage"]["output_tokens"] == TOOL_ANSWER_TOKENS


def test_the_claude_answers_are_claude_answers_with_anthropics_ping(
    mock: VertexMock, token: str
) -> None:
    tools = [{"name": "get_weather", "input_schema": {}}]
    body = claude_body("weather?", tools=tools, stream=True)
    response = httpx.post(claude_url(mock, "streamRawPredict"), json=body, headers=bearer(token))
    documents = [json.loads(data) for _, data in sse(response.text)]
    assert documents[2] == {"type": "ping"}
    assert [d for d in documents if d["type"] != "ping"] == claude_answers.messages_events(
        body, CLAUDE
    )
    whole = httpx.post(claude_url(mock), json={**body, "stream": False}, headers=bearer(token))
    assert whole.json() == claude_answers.messages_json(body, CLAUDE)


def test_midfail_sends_an_error_event_after_two_deltas(mock: VertexMock, token: str) -> None:
    response = httpx.post(
        claude_url(mock, "streamRawPredict", model="claude-midfail"),
        json=claude_body("a b c d", stream=True),
        headers=bearer(token),
    )
    events = sse(response.text)
    names = [name for name, _ in events]
    assert names[-3:] == ["content_block_delta", "content_block_delta", "error"]
    assert names.count("content_block_delta") == 2
    assert "message_stop" not in names
    assert json.loads(events[-1][1])["error"]["type"] == "overloaded_error"


def test_throttled_is_a_429_in_an_array(mock: VertexMock, token: str) -> None:
    response = httpx.post(
        claude_url(mock, model="claude-throttled"), json=claude_body(), headers=bearer(token)
    )
    assert response.status_code == 429
    [document] = response.json()
    assert document["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert document["error"]["code"] == 429


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"model": CLAUDE}, "model"),
        ({"anthropic_version": "2023-06-01"}, "anthropic_version"),
        ({"anthropic_version": None}, "anthropic_version"),
        ({"max_tokens": None}, "max_tokens"),
        ({"messages": None}, "messages"),
        ({"stream": True}, "stream"),
    ],
)
def test_a_body_vertex_refuses_is_invalid_argument(
    mock: VertexMock, token: str, change: dict[str, Any], named: str
) -> None:
    body = claude_body()
    for key, value in change.items():
        if value is None:
            del body[key]
        else:
            body[key] = value
    response = httpx.post(claude_url(mock), json=body, headers=bearer(token))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["message"].startswith(f"{named}:")


def test_stream_raw_predict_needs_stream_true(mock: VertexMock, token: str) -> None:
    response = httpx.post(
        claude_url(mock, "streamRawPredict"), json=claude_body(), headers=bearer(token)
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("stream:")


# -- authentication and project ------------------------------------------------------------------


def test_a_call_without_a_token_is_unauthenticated(mock: VertexMock) -> None:
    response = httpx.post(claude_url(mock), json=claude_body())
    assert response.status_code == 401
    assert response.json()["error"]["status"] == "UNAUTHENTICATED"
    assert error_reason(response) == "CREDENTIALS_MISSING"


def test_a_token_it_never_issued_is_unauthenticated(mock: VertexMock) -> None:
    response = httpx.post(claude_url(mock), json=claude_body(), headers=bearer("ya29.forged"))
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == 401
    assert error["status"] == "UNAUTHENTICATED"
    assert error["message"].startswith("Request had invalid authentication credentials.")
    assert error_reason(response) == "ACCESS_TOKEN_TYPE_UNSUPPORTED"
    assert error["details"][0]["domain"] == "googleapis.com"


def test_a_token_past_its_lifetime_is_expired(mock: VertexMock) -> None:
    mock.set_lifetime(1)
    short = fetch_token(mock)
    assert mock.tokens()[-1]["expires_in"] == 1
    assert httpx.post(claude_url(mock), json=claude_body(), headers=bearer(short)).is_success
    time.sleep(1.2)
    response = httpx.post(claude_url(mock), json=claude_body(), headers=bearer(short))
    assert response.status_code == 401
    assert error_reason(response) == "ACCESS_TOKEN_EXPIRED"


def test_expire_tokens_ends_every_token_issued(mock: VertexMock) -> None:
    issued = fetch_token(mock)
    mock.expire_tokens()
    response = httpx.post(chat_url(mock), json=chat_body(), headers=bearer(issued))
    assert response.status_code == 401
    assert error_reason(response) == "ACCESS_TOKEN_EXPIRED"
    fresh_token = fetch_token(mock)
    assert httpx.post(chat_url(mock), json=chat_body(), headers=bearer(fresh_token)).is_success


def test_another_project_is_permission_denied(mock: VertexMock, token: str) -> None:
    response = httpx.post(
        claude_url(mock, project="someone-elses"), json=claude_body(), headers=bearer(token)
    )
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["status"] == "PERMISSION_DENIED"
    assert "someone-elses" in error["message"]


def test_reset_forgets_calls_and_token_log_but_not_tokens(mock: VertexMock, token: str) -> None:
    httpx.post(claude_url(mock), json=claude_body(), headers=bearer(token))
    assert len(mock.requests()) == 1
    mock.reset()
    assert mock.requests() == []
    assert mock.tokens() == []
    assert httpx.post(claude_url(mock), json=claude_body(), headers=bearer(token)).is_success


# -- Gemini through the OpenAI-compatible endpoint ----------------------------------------------


def chat_body(text: str = "hello there", **fields: Any) -> dict[str, Any]:
    return {
        "model": "google/gemini-2.5-flash",
        "messages": [{"role": "user", "content": text}],
        **fields,
    }


def test_chat_completions_answer_json(mock: VertexMock, token: str) -> None:
    response = httpx.post(chat_url(mock, "europe-west4"), json=chat_body(), headers=bearer(token))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "google/gemini-2.5-flash"
    [choice] = answer["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Echo: hello there"}
    assert choice["finish_reason"] == "stop"
    assert answer["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 3,
        "total_tokens": 14,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert mock.requests()[0]["location"] == "europe-west4"


def test_chat_completions_stream_with_usage(mock: VertexMock, token: str) -> None:
    response = httpx.post(
        chat_url(mock),
        json=chat_body("one two", stream=True, stream_options={"include_usage": True}),
        headers=bearer(token),
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    datas = [data for _, data in sse(response.text)]
    assert datas[-1] == "[DONE]"
    chunks = [json.loads(data) for data in datas[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Echo: one two"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 3


def test_chat_stream_without_include_usage_has_no_usage_chunk(mock: VertexMock, token: str) -> None:
    response = httpx.post(chat_url(mock), json=chat_body(stream=True), headers=bearer(token))
    chunks = [json.loads(data) for _, data in sse(response.text)[:-1]]
    assert all("usage" not in chunk for chunk in chunks)


def test_chat_tools_get_a_tool_call_and_a_tool_message_its_echo(
    mock: VertexMock, token: str
) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    answer = httpx.post(chat_url(mock), json=chat_body(tools=tools), headers=bearer(token)).json()
    [choice] = answer["choices"]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    streamed = httpx.post(
        chat_url(mock), json=chat_body(tools=tools, stream=True), headers=bearer(token)
    )
    chunks = [json.loads(data) for _, data in sse(streamed.text)[:-1]]
    arguments = "".join(
        call["function"]["arguments"]
        for chunk in chunks
        for call in chunk["choices"][0]["delta"].get("tool_calls") or []
    )
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
    ]
    answered = httpx.post(
        chat_url(mock), json=chat_body(tools=tools, messages=messages), headers=bearer(token)
    ).json()
    assert answered["choices"][0]["message"]["content"] == "Tool said: sunny"


def test_chat_model_must_be_a_google_publisher_model(mock: VertexMock, token: str) -> None:
    response = httpx.post(
        chat_url(mock), json=chat_body(model="gemini-2.5-flash"), headers=bearer(token)
    )
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert response.json()["error"]["message"].startswith("model:")


# -- the metadata server -------------------------------------------------------------------------


def test_the_metadata_server_needs_the_flavor_header(mock: VertexMock) -> None:
    url = f"{mock.url}/computeMetadata/v1/project/project-id"
    assert httpx.get(url).status_code == 403
    response = httpx.get(url, headers={"Metadata-Flavor": "Google"})
    assert response.status_code == 200
    assert response.text == mock.project
    assert response.headers["metadata-flavor"] == "Google"


def test_google_auth_gets_a_token_from_the_metadata_server(
    mock: VertexMock, tmp_path: Path
) -> None:
    # GCE_METADATA_HOST is read when google.auth.compute_engine is imported: a new process.
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    env.update(mock.metadata_env(), HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"))
    code = f"""
        import json
        import google.auth
        from google.auth import compute_engine
        from google.auth.transport.requests import Request

        creds = compute_engine.Credentials()
        creds.refresh(Request())
        found, project = google.auth.default(scopes=["{CLOUD_PLATFORM}"])
        found.refresh(Request())
        print(json.dumps({{
            "token": creds.token,
            "email": creds.service_account_email,
            "found": type(found).__module__,
            "project": project,
        }}))
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["email"] == mock.client_email
    assert document["found"] == "google.auth.compute_engine.credentials"
    assert document["project"] == mock.project
    assert [t["via"] for t in mock.tokens()] == ["metadata", "metadata"]
    response = httpx.post(claude_url(mock), json=claude_body(), headers=bearer(document["token"]))
    assert response.status_code == 200, response.text
