"""The translate filter after the route filter, in the real chain (`FilterHarness`), with
clusters that speak one API each: a request to a cluster of another API is rewritten
(path, body, the client API's headers) and its answer — whole or streamed — comes back
in the client's API; one the cluster speaks passes byte for byte; a field with no
counterpart is a 400 in the client's shape; hosted tools left out are reported."""

from __future__ import annotations

import json
from typing import Any

import pytest

from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.route.filter import RouteFilter
from filterproxy.extensions.translate.filter import TranslateFilter
from filterproxy.filters.records import DroppedTools
from filterproxy.testing import FilterHarness, UpstreamRequest
from tests.support.answers import chat_completion, messages_answer, messages_stream
from tests.support.chat_messages import chat_chunk, check_chat_stream, events_of, sse

CONFIG = """
clusters:
  chat-only: {url: "http://chat.test", apis: [chat]}
  claude: {url: "http://messages.test", apis: [messages]}
routes:
  - {models: ["claude-*"], cluster: claude}
  - {models: ["strict-*"], cluster: chat-only, hosted_tools: refuse}
  - {models: ["gpt-*"], cluster: chat-only}
"""
JSON = {"content-type": "application/json"}
SSE = {"content-type": "text/event-stream"}
CHAT = {
    "model": "claude-haiku",
    "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    "max_completion_tokens": 50,
}
MESSAGES = {
    "model": "gpt-mini",
    "max_tokens": 10,
    "system": "be brief",
    "messages": [{"role": "user", "content": "hi"}],
}


def routed() -> FilterHarness:
    return FilterHarness([RouteFilter, TranslateFilter], config=parse_config(CONFIG))


def chat_request(**fields: Any) -> tuple[FilterHarness, Any]:
    """A chat completion request for the Messages cluster; what reached the upstream."""
    h = routed()
    sent = h.request(
        json.dumps({**CHAT, **fields}).encode(),
        headers={"openai-organization": "org-1", "accept-encoding": "gzip, br"},
    )
    return h, sent


def nothing_sent(sent: UpstreamRequest) -> bool:
    """The request was refused before its body left: the head had gone on (the filter
    decides on the body), the exchange is given up, and no byte of the body was sent."""
    return sent.cancelled and not sent.pieces and not sent.ended


# -- a chat client, a cluster that speaks Messages ------------------------------------------


def test_a_chat_request_to_a_messages_cluster_is_sent_as_a_messages_request() -> None:
    h, sent = chat_request(stream=True, stream_options={"include_usage": True})
    assert sent.reached and sent.ended
    assert sent.head.path == "/v1/messages"
    assert sent.json() == {
        "model": "claude-haiku",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "system": "be brief",
        "max_tokens": 50,
        "stream": True,
    }
    headers = sent.head.headers
    assert "openai-organization" not in headers
    assert headers.get("accept-encoding") == "identity"  # the answer is rebuilt here
    assert h.stream_info.api == "chat" and h.stream_info.cluster == "claude"


def test_a_chat_request_without_max_tokens_gets_the_default() -> None:
    fields = {k: v for k, v in CHAT.items() if k != "max_completion_tokens"}
    h = FilterHarness(
        [RouteFilter, (TranslateFilter, {"default_max_tokens": 77})], config=parse_config(CONFIG)
    )
    sent = h.request(json.dumps(fields).encode())
    assert sent.json()["max_tokens"] == 77


def test_a_whole_messages_answer_comes_back_as_a_chat_completion() -> None:
    h, _ = chat_request()
    response = h.respond(200, {**JSON, "content-length": "999"}, messages_answer("Hello ✓"))
    assert response.status == 200 and response.ended
    assert response.headers is not None
    assert response.headers.get("content-type") == "application/json"
    assert response.headers.get("content-length") == str(len(response.body))
    answer = response.json()
    assert answer["object"] == "chat.completion" and answer["model"] == "claude-upstream"
    [choice] = answer["choices"]
    assert choice["message"] == {"role": "assistant", "content": "Hello ✓"}
    assert choice["finish_reason"] == "stop"
    usage = answer["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (7, 3, 10)


@pytest.mark.parametrize("include_usage", [True, False])
def test_a_messages_stream_comes_back_as_a_chat_stream(include_usage: bool) -> None:
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    h, _ = chat_request(stream=True, **options)
    raw = messages_stream(["Hel", "lo ", "✓"], input_tokens=5, output_tokens=4)
    cut = len(raw) // 2 + 3  # an event and a character split between pieces
    response = h.respond(200, {**SSE, "content-length": str(len(raw))}, [raw[:cut], raw[cut:]])
    assert response.status == 200 and response.ended and not response.aborted
    assert response.headers is not None and "content-length" not in response.headers
    said = check_chat_stream(events_of(response.body), include_usage)
    assert said["text"] == "Hello ✓" and said["finish"] == "stop"
    if include_usage:
        usage = said["usage"][0]["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (5, 4)


def test_an_upstream_error_reaches_a_chat_client_in_openais_shape() -> None:
    h, _ = chat_request()
    error = {"type": "error", "error": {"type": "invalid_request_error", "message": "too long"}}
    response = h.respond(400, JSON, json.dumps(error).encode())
    assert response.status == 400
    assert response.json()["error"]["message"] == "too long"
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"audio": {"voice": "x"}}, "audio")],
)
def test_a_chat_field_with_no_messages_counterpart_is_400_by_name(
    fields: dict[str, Any], field: str
) -> None:
    h, sent = chat_request(**fields)
    assert nothing_sent(sent) and h.done
    assert h.client.status == 400
    error = h.client.json()["error"]
    assert error["code"] == "unsupported_parameter" and error["message"].startswith(f"{field}: ")


# -- a Messages client, a cluster that speaks Chat Completions ------------------------------


def messages_request(**fields: Any) -> tuple[FilterHarness, Any]:
    h = routed()
    sent = h.request(
        json.dumps({**MESSAGES, **fields}).encode(),
        path="/v1/messages",
        headers={"anthropic-version": "2023-06-01", "x-trace": "t1"},
    )
    return h, sent


def test_a_messages_request_to_a_chat_cluster_is_sent_as_a_chat_completion() -> None:
    h, sent = messages_request()
    assert sent.head.path == "/v1/chat/completions"
    assert sent.json() == {
        "model": "gpt-mini",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "max_tokens": 10,
    }
    assert "anthropic-version" not in sent.head.headers
    assert sent.head.headers.get("x-trace") == "t1"
    response = h.respond(200, JSON, chat_completion("Bonjour"))
    answer = response.json()
    assert answer["type"] == "message" and answer["role"] == "assistant"
    assert answer["model"] == "gpt-upstream"
    assert answer["content"] == [{"type": "text", "text": "Bonjour"}]
    assert answer["stop_reason"] == "end_turn"
    assert answer["usage"]["input_tokens"] == 7 and answer["usage"]["output_tokens"] == 3


def test_a_chat_stream_comes_back_as_a_messages_stream() -> None:
    h, _ = messages_request(stream=True)
    raw = sse(
        [
            chat_chunk({"role": "assistant", "content": ""}),
            chat_chunk({"content": "Bon"}),
            chat_chunk({"content": "jour"}),
            chat_chunk({}, "stop"),
        ]
    )
    response = h.respond(200, SSE, [raw])
    names = [name for name, _ in events_of(response.body)]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    text = "".join(
        data["delta"]["text"]
        for name, data in events_of(response.body)
        if name == "content_block_delta"
    )
    assert text == "Bonjour" and response.ended


def test_a_server_tool_is_400_in_anthropics_shape() -> None:
    tools = [{"type": "web_search_20250305", "name": "web_search"}]
    h, sent = messages_request(tools=tools)
    assert nothing_sent(sent) and h.client.status == 400
    document = h.client.json()
    assert document["type"] == "error" and document["error"]["type"] == "invalid_request_error"
    assert document["error"]["message"].startswith("tools[0]: ")


def test_count_tokens_for_a_chat_cluster_is_answered_here() -> None:
    h = routed()
    sent = h.request(json.dumps(MESSAGES).encode(), path="/v1/messages/count_tokens")
    assert nothing_sent(sent) and h.client.status == 200
    count = h.client.json()["input_tokens"]
    assert isinstance(count, int) and count > 0


# -- requests the cluster speaks --------------------------------------------------------------


def test_a_request_the_cluster_speaks_passes_byte_for_byte() -> None:
    h = routed()
    body = b'{"model": "gpt-mini",  "messages": [], "n": 2}'
    sent = h.request(body, headers={"openai-organization": "org-1", "accept-encoding": "gzip"})
    assert sent.body == body and sent.head.path == "/v1/chat/completions"
    assert sent.head.headers.get("openai-organization") == "org-1"
    assert sent.head.headers.get("accept-encoding") == "gzip"
    assert h.stream_info.api is None
    odd = b'{"not": "a chat completion"}'
    assert h.respond(200, JSON, [odd[:5], odd[5:]]).body == odd


# -- Responses: hosted tools ---------------------------------------------------------------


def responses_request(model: str) -> tuple[FilterHarness, Any]:
    h = routed()
    document = {
        "model": model,
        "input": "hi",
        "tools": [
            {"type": "web_search"},
            {"type": "function", "name": "lookup", "parameters": {"type": "object"}},
            {"type": "code_interpreter", "container": {"type": "auto"}},
        ],
    }
    return h, h.request(json.dumps(document).encode(), path="/v1/responses")


def test_hosted_tools_are_left_out_and_the_answer_says_which() -> None:
    h, sent = responses_request("gpt-mini")
    assert sent.head.path == "/v1/chat/completions"
    assert [t["function"]["name"] for t in sent.json()["tools"]] == ["lookup"]
    dropped = h.stream_info.state.get(DroppedTools)
    assert dropped is not None and dropped.tools == ("web_search", "code_interpreter")
    response = h.respond(200, JSON, chat_completion("hello"))
    assert response.headers is not None
    assert response.headers.get("x-filterproxy-dropped-tools") == "web_search, code_interpreter"
    answer = response.json()
    assert answer["object"] == "response" and answer["status"] == "completed"
    assert answer["output"][0]["content"][0]["text"] == "hello"


def test_hosted_tools_are_refused_where_the_route_says() -> None:
    h, sent = responses_request("strict-mini")
    assert nothing_sent(sent) and h.client.status == 400
    error = h.client.json()["error"]
    assert error["code"] == "unsupported_parameter" and "web_search" in error["message"]
