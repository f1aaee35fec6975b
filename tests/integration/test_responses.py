"""The Responses API in front of providers that do not speak it, on real sockets, with
the official ``openai`` SDK's ``client.responses``: through a gateway of two workers
(``--workers 2``) that keeps conversations in a real Redis, to an upstream that speaks
only Chat Completions (tests/chat_server.py) and to one that speaks only Messages
(tests/messages_server.py); and byte for byte to one that speaks Responses itself."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import (
    LocalServer,
    Process,
    RedisServer,
    closed_port,
    start_gateway,
    twistd_command,
    wait_until,
)

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def clusters(chat: LocalServer, messages: LocalServer) -> str:
    return f"""
        clusters:
          chat-only:
            url: {chat.url}
            apis: [chat]
          native:
            url: {chat.url}
            apis: [chat, responses]
          claude:
            provider: anthropic
            url: {messages.url}/v1
            api_key: sk-ant-upstream-secret
        routes:
          - {{name: strict, models: ["strict-*"], cluster: chat-only, hosted_tools: refuse}}
          - {{models: ["chat-*"], cluster: chat-only}}
          - {{models: [native], cluster: native}}
          - {{models: ["claude-*"], cluster: claude}}
    """


class Workers:
    """``twistd filterproxy --workers 2`` on a free port."""

    def __init__(self, process: Process, port: int) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"

    def client(self, key: str = "sk-client-a") -> openai.OpenAI:
        """A client with a connection of its own (so it may land on either worker)."""
        return openai.OpenAI(
            base_url=self.url + "/v1",
            api_key=key,
            max_retries=0,
            http_client=httpx.Client(timeout=20),
        )


@pytest.fixture(scope="module")
def gateway(
    chat_upstream: LocalServer,
    messages_upstream: LocalServer,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Workers]:
    port = closed_port()
    config = tmp_path_factory.mktemp("responses") / "gateway.yaml"
    config.write_text(
        textwrap.dedent(f"""
        listeners: ["tcp:{port}:interface=127.0.0.1"]
        admin: false
        redis: {redis_server.url}
    """)
        + textwrap.dedent(clusters(chat_upstream, messages_upstream))
    )
    process = Process(twistd_command(config, "--workers", "2"))
    try:
        wait_until(lambda: process.output().count("filterproxy listening on") == 2, timeout=30)
        yield Workers(process, port)
    finally:
        process.stop()


def last_request(upstream: LocalServer) -> dict[str, Any]:
    return httpx.get(f"{upstream.url}/control/last").json()  # type: ignore[no-any-return]


def upstream_count(upstream: LocalServer) -> int:
    return int(httpx.get(f"{upstream.url}/control/count").json())


# -- to an upstream that speaks only Chat Completions ------------------------------------------


def test_create_answers_in_the_responses_shape(
    gateway: Workers, chat_upstream: LocalServer
) -> None:
    response = gateway.client().responses.create(
        model="chat-mini", instructions="Be brief.", input="hello", max_output_tokens=50
    )
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_")
    assert response.output_text == "You said: hello (2 messages)"
    assert response.instructions == "Be brief." and response.max_output_tokens == 50
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (11, 4)
    sent = last_request(chat_upstream)
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["body"]["max_tokens"] == 50
    wait_until(lambda: '"path":"/v1/responses"' in gateway.process.output(), timeout=10)
    record = next(
        json.loads(line.split("[filterproxy.access#info] ", 1)[1])
        for line in gateway.process.lines
        if '"path":"/v1/responses"' in line and '"status":200' in line
    )
    assert record["prompt_tokens"] == 11 and record["completion_tokens"] == 4


def test_stream_sends_the_responses_event_sequence(gateway: Workers) -> None:
    deltas: list[str] = []
    types: list[str] = []
    numbers: list[int] = []
    with gateway.client().responses.stream(model="chat-mini", input="stream me") as stream:
        for event in stream:
            types.append(event.type)
            numbers.append(event.sequence_number)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "You said: stream me (1 messages)"
    assert len(deltas) > 3  # streamed as the upstream sent it, not in one piece
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert numbers == list(range(len(numbers)))
    assert final.usage is not None and final.usage.total_tokens == 15


@pytest.mark.parametrize("streaming", [False, True])
def test_a_function_call_round_trip(
    gateway: Workers, chat_upstream: LocalServer, streaming: bool
) -> None:
    client = gateway.client()
    if streaming:
        arguments = ""
        with client.responses.stream(
            model="chat-mini",
            input="Weather in Paris?",
            tools=[WEATHER],  # type: ignore[list-item]
        ) as stream:
            for event in stream:
                if event.type == "response.function_call_arguments.delta":
                    arguments += event.delta
            first = stream.get_final_response()
        assert json.loads(arguments) == {"city": "Paris"}
    else:
        first = client.responses.create(
            model="chat-mini",
            input="Weather in Paris?",
            tools=[WEATHER],  # type: ignore[list-item]
        )
    call = first.output[-1]
    assert call.type == "function_call"
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    second = client.responses.create(
        model="chat-mini",
        previous_response_id=first.id,
        tools=[WEATHER],  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )
    assert second.output_text == "Tool said: sunny"
    assert second.previous_response_id == first.id
    messages = last_request(chat_upstream)["body"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == call.call_id == messages[2]["tool_call_id"]


def test_previous_response_id_continues_on_the_other_worker(gateway: Workers) -> None:
    response = gateway.client().responses.with_raw_response.create(model="chat-mini", input="one")
    previous = response.parse()
    worker = response.headers["x-request-id"][:16]
    workers = {worker}
    crossings = 0
    for turn in range(2, 40):
        raw = gateway.client().responses.with_raw_response.create(
            model="chat-mini", input=f"turn {turn}", previous_response_id=previous.id
        )
        answer = raw.parse()
        # Every earlier turn arrived: a user message and an answer for each, and this one.
        assert answer.output_text == f"You said: turn {turn} ({2 * turn - 1} messages)"
        now = raw.headers["x-request-id"][:16]
        crossings += now != worker
        workers.add(now)
        worker, previous = now, answer
        if crossings >= 2:
            break
    assert len(workers) == 2 and crossings >= 2, "the connections never reached both workers"


def test_stored_responses_can_be_read_and_deleted_by_their_owner_only(
    gateway: Workers, chat_upstream: LocalServer
) -> None:
    owner = gateway.client("sk-owner")
    response = owner.responses.create(model="chat-mini", input="keep me")
    assert owner.responses.retrieve(response.id).output_text == response.output_text
    items = owner.responses.input_items.list(response.id)
    assert [i.type for i in items.data] == ["message"]
    stranger = gateway.client("sk-stranger")
    with pytest.raises(openai.NotFoundError):
        stranger.responses.retrieve(response.id)
    before = upstream_count(chat_upstream)
    with pytest.raises(openai.NotFoundError) as raised:
        stranger.responses.create(model="chat-mini", input="x", previous_response_id=response.id)
    assert raised.value.code == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError):
        stranger.responses.delete(response.id)
    assert upstream_count(chat_upstream) == before
    owner.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError) as raised:
        owner.responses.retrieve(response.id)
    assert raised.value.code == "not_found"
    body = httpx.get(
        f"{gateway.url}/v1/responses/resp_unknown", headers={"authorization": "Bearer sk-owner"}
    ).json()
    assert body["error"]["code"] == "not_found" and "resp_unknown" in body["error"]["message"]
    unstored = owner.responses.create(model="chat-mini", input="forget me", store=False)
    with pytest.raises(openai.NotFoundError):
        owner.responses.retrieve(unstored.id)


def test_hosted_tools_are_refused_before_the_upstream_where_the_route_says(
    gateway: Workers, chat_upstream: LocalServer
) -> None:
    before = upstream_count(chat_upstream)
    with pytest.raises(openai.BadRequestError) as raised:
        gateway.client().responses.create(
            model="strict-mini",
            input="x",
            tools=[WEATHER, {"type": "file_search", "vector_store_ids": ["vs_1"]}],  # type: ignore[list-item]
        )
    assert raised.value.code == "unsupported_parameter"
    assert "tools[1]" in raised.value.message and "file_search" in raised.value.message
    assert upstream_count(chat_upstream) == before


@pytest.mark.parametrize("streaming", [False, True])
def test_hosted_tools_are_dropped_and_the_answer_says_which(
    gateway: Workers, chat_upstream: LocalServer, streaming: bool
) -> None:
    tools: Any = [
        {"type": "web_search"},
        WEATHER,
        {"type": "code_interpreter", "container": {"type": "auto"}},
    ]
    raw = gateway.client().responses.with_raw_response.create(
        model="chat-mini", input="Weather in Paris?", tools=tools, stream=streaming
    )
    assert raw.headers["x-filterproxy-dropped-tools"] == "web_search, code_interpreter"
    sent = last_request(chat_upstream)["body"]
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]
    request_id = raw.headers["x-request-id"]
    wait_until(lambda: request_id in gateway.process.output(), timeout=10)
    record = next(
        json.loads(line.split("[filterproxy.access#info] ", 1)[1])
        for line in gateway.process.lines
        if request_id in line and "filterproxy.access" in line
    )
    assert record["dropped_tools"] == ["web_search", "code_interpreter"]


def test_a_hosted_tool_type_the_client_made_up_is_reported_as_other(
    gateway: Workers, chat_upstream: LocalServer
) -> None:
    """Tool types are the client's words: one with a line break would break the header
    it was written into, and each new one would be a metric series of its own."""
    tools: Any = [
        {"type": "web_search_preview_2025_03_11"},
        {"type": "made-up\r\nx-injected: yes"},
        *({"type": f"made_up_{i}"} for i in range(50)),
        WEATHER,
    ]
    raw = gateway.client().responses.with_raw_response.create(
        model="chat-mini", input="Weather in Paris?", tools=tools
    )
    assert raw.headers["x-filterproxy-dropped-tools"] == "web_search_preview, other"
    assert "x-injected" not in raw.headers
    assert raw.parse().output
    sent = last_request(chat_upstream)["body"]
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]


#: A namespace of functions, as the Codex CLI sends its multi-agent tools.
CRM = {
    "type": "namespace",
    "name": "crm",
    "description": "The customer database.",
    "tools": [{**WEATHER, "name": "lookup"}],
}


@pytest.mark.parametrize("streaming", [False, True])
def test_a_namespaced_call_comes_back_with_its_namespace_and_goes_on_from_the_store(
    gateway: Workers, chat_upstream: LocalServer, streaming: bool
) -> None:
    client = gateway.client()
    if streaming:
        with client.responses.stream(model="chat-mini", input="Find it", tools=[CRM]) as stream:  # type: ignore[list-item]
            for _ in stream:
                pass
            first = stream.get_final_response()
    else:
        first = client.responses.create(model="chat-mini", input="Find it", tools=[CRM])  # type: ignore[list-item]
    assert [t["function"]["name"] for t in last_request(chat_upstream)["body"]["tools"]] == [
        "crm__lookup"
    ]
    call = first.output[-1]
    assert call.type == "function_call"
    assert (call.name, call.namespace) == ("lookup", "crm")
    second = client.responses.create(
        model="chat-mini",
        previous_response_id=first.id,
        tools=[CRM],  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "found"}],
    )
    assert second.output_text == "Tool said: found"
    messages = last_request(chat_upstream)["body"]["messages"]
    # The call from the stored conversation reaches the upstream under the tool's name.
    assert messages[1]["tool_calls"][0]["function"]["name"] == "crm__lookup"


def test_a_custom_tool_call_streams_through_the_openai_sdk(gateway: Workers) -> None:
    patch = {"type": "custom", "name": "apply_patch", "description": "Edit files."}
    deltas = ""
    with gateway.client().responses.stream(
        model="chat-mini",
        input="Patch it",
        tools=[patch],  # type: ignore[list-item]
    ) as stream:
        for event in stream:
            if event.type == "response.custom_tool_call_input.delta":
                deltas += event.delta
        final = stream.get_final_response()
    call = final.output[-1]
    assert call.type == "custom_tool_call" and call.name == "apply_patch"
    # The test upstream calls the tool with {"city": "Paris"}: an object with one string,
    # whose string is the input.
    assert call.input == deltas == "Paris"


def test_item_references_to_stored_items_are_expanded_for_their_owner_only(
    gateway: Workers, chat_upstream: LocalServer
) -> None:
    owner = gateway.client("sk-owner-refs")
    first = owner.responses.create(model="chat-mini", input="one")
    [message] = first.output
    assert message.id is not None
    items: Any = [
        {"role": "user", "content": "one"},
        {"type": "item_reference", "id": message.id},
        {"role": "user", "content": "two"},
    ]
    # No previous_response_id: the reference alone brings the item, on either worker.
    for _ in range(4):
        second = gateway.client("sk-owner-refs").responses.create(model="chat-mini", input=items)
        assert second.output_text == "You said: two (3 messages)"
    sent = last_request(chat_upstream)["body"]["messages"]
    assert sent[1] == {"role": "assistant", "content": "You said: one (1 messages)"}
    # With previous_response_id as well (the reference, here, to an earlier response's item).
    third = owner.responses.create(
        model="chat-mini",
        previous_response_id=second.id,
        input=[{"role": "user", "content": "3"}, {"type": "item_reference", "id": message.id}],
    )
    assert third.output_text == "You said: 3 (6 messages)"
    sent = last_request(chat_upstream)["body"]["messages"]
    assert sent[-1] == {"role": "assistant", "content": "You said: one (1 messages)"}
    before = upstream_count(chat_upstream)
    for client, reference in [
        (gateway.client("sk-stranger-refs"), message.id),
        (owner, "msg_" + "0" * 40),
        (owner, "msg_theirs"),
    ]:
        with pytest.raises(openai.BadRequestError) as raised:
            client.responses.create(
                model="chat-mini", input=[{"type": "item_reference", "id": reference}]
            )
        assert reference in raised.value.message
    # References into more stored responses than the gateway looks up for one request.
    many: Any = [{"type": "item_reference", "id": f"msg_{n:024x}{0:016x}"} for n in range(257)]
    with pytest.raises(openai.BadRequestError) as raised:
        owner.responses.create(model="chat-mini", input=many)
    assert raised.value.code == "too_many_item_references" and "257" in raised.value.message
    assert upstream_count(chat_upstream) == before


def test_upstream_errors_come_back_before_and_during_the_stream(gateway: Workers) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        gateway.client().responses.create(model="chat-bad", input="x")
    assert "too high for chat-bad" in raised.value.message
    with (
        pytest.raises(openai.APIError) as failed,
        gateway.client().responses.stream(model="chat-midfail", input="x y z") as stream,
    ):
        for _ in stream:
            pass
    assert "overloaded" in failed.value.message
    raw = httpx.post(
        f"{gateway.url}/v1/responses",
        json={"model": "chat-midfail", "input": "x y z", "stream": True},
        headers={"authorization": "Bearer sk-client-a"},
    ).text
    names = [line[7:] for line in raw.splitlines() if line.startswith("event: ")]
    assert names[-2:] == ["error", "response.failed"] and "response.completed" not in names


# -- to an upstream that speaks only Messages --------------------------------------------------


def test_to_a_messages_only_upstream(gateway: Workers, messages_upstream: LocalServer) -> None:
    client = gateway.client()
    response = client.responses.create(model="claude-sonnet", input="hi", instructions="Be kind.")
    assert response.output_text == "Hello from Messages"
    assert response.usage is not None and response.usage.input_tokens == 15  # cache counted in
    sent = last_request(messages_upstream)
    assert sent["path"] == "/v1/messages" and sent["body"]["system"] == "Be kind."
    assert sent["headers"]["x-api-key"] == "sk-ant-upstream-secret"
    with client.responses.stream(model="claude-sonnet", input="hi", tools=[WEATHER]) as stream:  # type: ignore[list-item]
        for _ in stream:
            pass
        first = stream.get_final_response()
    assert [o.type for o in first.output] == ["message", "function_call"]
    call = first.output[1]
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris"}
    second = client.responses.create(
        model="claude-sonnet",
        previous_response_id=first.id,
        tools=[WEATHER],  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rainy"}],
    )
    assert second.output_text == "Tool said: rainy"
    turns = last_request(messages_upstream)["body"]["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": call.call_id,
        "content": "rainy",
    }


# -- to an upstream that speaks Responses itself -----------------------------------------------


@pytest.mark.parametrize("streaming", [False, True])
def test_a_responses_upstream_gets_the_request_and_answers_byte_for_byte(
    gateway: Workers, chat_upstream: LocalServer, streaming: bool
) -> None:
    body = b'{"model":"native","input":"hi","stream":%s,"previous_response_id":"resp_theirs"}' % (
        b"true" if streaming else b"false"
    )
    answer = httpx.post(
        f"{gateway.url}/v1/responses",
        content=body,
        headers={"content-type": "application/json", "authorization": "Bearer sk-client-a"},
    )
    assert answer.status_code == 200
    assert answer.content == httpx.get(f"{chat_upstream.url}/control/sent").content
    sent = last_request(chat_upstream)
    assert sent["path"] == "/v1/responses"
    assert sent["body"] == json.loads(body)  # an id the gateway did not store goes on


# -- the memory store, one process ----------------------------------------------------------------


def test_the_memory_store_continues_conversations_without_redis(
    chat_upstream: LocalServer, messages_upstream: LocalServer, tmp_path: Path
) -> None:
    gw = start_gateway(clusters(chat_upstream, messages_upstream), tmp_path)
    try:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-x", max_retries=0)
        first = client.responses.create(model="chat-mini", input="one")
        second = client.responses.create(
            model="chat-mini", input="two", previous_response_id=first.id
        )
        assert second.output_text == "You said: two (3 messages)"
    finally:
        gw.process.stop()


def test_without_redis_a_continuation_gets_503_and_answers_still_arrive(
    chat_upstream: LocalServer,
    messages_upstream: LocalServer,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    own = RedisServer(redis_server.binary, closed_port())
    own.start()
    gw = start_gateway(
        f"redis: {{url: {own.url}, timeout: 200ms}}\n"
        + textwrap.dedent(clusters(chat_upstream, messages_upstream)),
        tmp_path,
    )
    try:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-x", max_retries=0)
        first = client.responses.create(model="chat-mini", input="one")
        assert own.command("EXISTS", f"fp:resp:{first.id}") == "1"
        ttl = int(own.command("PTTL", f"fp:resp:{first.id}"))
        assert 23 * 3600 * 1000 < ttl <= 24 * 3600 * 1000  # the default ttl, as the key's expiry
        own.stop()
        with pytest.raises(openai.InternalServerError) as raised:
            client.responses.create(model="chat-mini", input="two", previous_response_id=first.id)
        assert raised.value.status_code == 503 and raised.value.code == "store_unavailable"
        assert raised.value.response.headers["retry-after"] == "1"
        # An answer that cannot be kept is still delivered, whole.
        with client.responses.stream(model="chat-mini", input="three") as stream:
            for _ in stream:
                pass
            assert stream.get_final_response().output_text == "You said: three (1 messages)"
        wait_until(lambda: "could not keep response" in gw.process.output(), timeout=10)
    finally:
        gw.process.stop()
        own.stop()


def test_a_stored_conversation_past_the_request_limit_is_refused_not_sent(
    chat_upstream: LocalServer,
    messages_upstream: LocalServer,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """Each turn fits ``max_request_bytes``, but the conversation kept in Redis grows
    past it: the turn that would send it upstream gets a 413 naming the limit, and the
    upstream never receives more than the limit."""
    gw = start_gateway(
        f"redis: {redis_server.url}\n"
        + textwrap.dedent(clusters(chat_upstream, messages_upstream))
        + textwrap.dedent("""
        filters:
          - {type: body-accumulate, max_request_bytes: 6000}
          - type: responses
          - type: route
          - type: translate
          - type: header-rewrite
        """),
        tmp_path,
    )
    try:
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-x", max_retries=0)
        previous = client.responses.create(model="chat-mini", input="a" * 1000)
        before = upstream_count(chat_upstream)
        with pytest.raises(openai.APIStatusError) as raised:
            for _ in range(4):
                previous = client.responses.create(
                    model="chat-mini", input="b" * 1000, previous_response_id=previous.id
                )
        assert raised.value.status_code == 413
        assert raised.value.code == "conversation_too_large"
        assert "6000 bytes (max_request_bytes)" in raised.value.message
        sent = upstream_count(chat_upstream) - before
        assert sent >= 1  # the turns that fitted went on
        assert len(json.dumps(last_request(chat_upstream)["body"])) < 6000
    finally:
        gw.process.stop()
