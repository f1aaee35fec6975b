"""What the built-in features tell each other and the observers, through the request's
typed state (`filterproxy.filters.records`): translate and responses hand over their
records, and the records of a limit refusal, dropped tools and a resumed stream reach
the access log and the metrics the extensions declare."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import generate_latest

from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.keys.config import hash_key
from filterproxy.extensions.keys.filter import KeysFilter
from filterproxy.extensions.responses.filter import ResponsesFilter
from filterproxy.extensions.route.filter import RouteFilter
from filterproxy.extensions.translate.filter import TranslateFilter
from filterproxy.filters.records import (
    DroppedTools,
    LimitRefusal,
    ResolvedConversation,
    Translated,
    TranslatedResponse,
)
from filterproxy.filters.resources import Resources
from filterproxy.observability.accesslog import access_record
from filterproxy.observability.metrics import Metrics
from filterproxy.testing import FilterHarness

JSON = {"content-type": "application/json"}
CHAT_ANSWER = {
    "id": "c",
    "object": "chat.completion",
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def scrape(resources: Resources) -> str:
    return generate_latest(Metrics(resources.metrics).registry()).decode()


#: An upstream that speaks Chat Completions only: a Responses request is translated.
CHAT_ONLY = parse_config(
    'clusters: {upstream: {url: "http://upstream.test", apis: [chat]}}', environ={}
)


def responses_chain(resources: Resources) -> FilterHarness:
    return FilterHarness(
        [ResponsesFilter, RouteFilter, TranslateFilter], config=CHAT_ONLY, resources=resources
    )


def test_translate_and_responses_hand_over_their_records() -> None:
    resources = Resources()
    first = responses_chain(resources)
    upstream = first.request(
        json.dumps({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}).encode(),
        path="/v1/responses",
        headers={"authorization": "Bearer sk-a"},
    )
    assert upstream.head is not None and upstream.head.path == "/v1/chat/completions"
    state = first.stream_info.state
    assert state.get(Translated) == Translated("responses", "chat")
    assert state.get(DroppedTools) == DroppedTools(("web_search",))
    assert state.get(ResolvedConversation) is None
    first.respond(200, JSON, json.dumps(CHAT_ANSWER).encode())
    answer = first.client.json()
    kept = state.get(TranslatedResponse)
    assert kept is not None and kept.response["id"] == answer["id"]
    assert first.client.headers is not None
    assert first.client.headers.get("x-filterproxy-dropped-tools") == "web_search"
    # What the responses filter stored from translate's record continues the next turn.
    second = responses_chain(resources)
    upstream = second.request(
        json.dumps({"model": "m", "input": "and?", "previous_response_id": answer["id"]}).encode(),
        path="/v1/responses",
        headers={"authorization": "Bearer sk-a"},
    )
    assert second.stream_info.state.get(ResolvedConversation) == ResolvedConversation(answer["id"])
    assert [m["content"] for m in upstream.json()["messages"]] == ["hi", "hi", "and?"]
    second.respond(200, JSON, json.dumps(CHAT_ANSWER).encode())
    assert second.client.json()["previous_response_id"] == answer["id"]
    assert second.stream_info.state.get(DroppedTools) is None


def test_an_untranslated_answer_is_not_kept_by_responses() -> None:
    config = parse_config(
        'clusters: {upstream: {url: "http://upstream.test", apis: [responses]}}', environ={}
    )
    h = FilterHarness([ResponsesFilter, RouteFilter, TranslateFilter], config=config)
    h.request(b'{"model": "m", "input": "hi"}', path="/v1/responses")
    assert h.stream_info.state.get(Translated) is None
    h.respond(200, JSON, b'{"id": "resp_1", "object": "response", "output": []}')
    assert h.stream_info.state.get(TranslatedResponse) is None
    assert h.client.json()["id"] == "resp_1"


def test_dropped_tools_reach_the_access_log_and_the_metrics() -> None:
    resources = Resources()
    h = responses_chain(resources)
    tools = [{"type": "web_search"}, {"type": "code_interpreter"}]
    h.request(
        json.dumps({"model": "m", "input": "hi", "tools": tools}).encode(), path="/v1/responses"
    )
    h.respond(200, JSON, json.dumps(CHAT_ANSWER).encode())
    record = access_record(None, h.stream_info, 0.1)
    assert record["dropped_tools"] == ["web_search", "code_interpreter"]
    assert record["stream"] is None
    assert list(record)[-5:] == ["stream", "dropped_tools", "cost_usd", "cost_priced", "cache"]
    metrics = scrape(resources)
    for tool in ("web_search", "code_interpreter"):
        assert (
            f'filterproxy_translate_dropped_tools_total{{route="default",tool="{tool}"}} 1.0'
            in metrics
        )


def test_a_request_with_nothing_to_say_logs_the_features_fields_as_null() -> None:
    h = FilterHarness([RouteFilter, TranslateFilter])
    h.request(b'{"model": "m", "messages": []}')
    h.respond(200, JSON, json.dumps(CHAT_ANSWER).encode())
    record = access_record(None, h.stream_info, 0.1)
    assert record["stream"] is None and record["dropped_tools"] is None


def test_a_limit_refusal_is_kept_and_counted_by_the_keys_extension() -> None:
    config = parse_config(
        'clusters: {upstream: {url: "http://upstream.test"}}\n'
        f"keys: [{{name: team, hash: 'sha256:{hash_key('fpk-secret')}', "
        "limits: {requests_per_minute: 1}}]\n",
        environ={},
    )
    resources = Resources()
    outcomes: list[Any] = []
    for _ in range(2):
        h = FilterHarness(KeysFilter, config=config, resources=resources)
        h.request(b'{"model": "m"}', headers={"authorization": "Bearer fpk-secret"})
        outcomes.append((h.client.status, h.stream_info.state.get(LimitRefusal)))
    assert outcomes[0] == (None, None)  # admitted: it went upstream
    assert outcomes[1] == (429, LimitRefusal("team", "requests_per_minute"))
    assert 'filterproxy_key_refusals_total{key="team",limit="requests_per_minute"} 1.0' in (
        scrape(resources)
    )


def test_the_service_scrapes_the_extensions_families_whatever_its_config() -> None:
    resources = Resources()
    from filterproxy.extensions.builtin import declare_metrics

    declare_metrics(resources)
    metrics = scrape(resources)
    for name in (
        "filterproxy_key_refusals_total",
        "filterproxy_stream_resumes_total",
        "filterproxy_stream_grace_expiries_total",
        "filterproxy_translate_dropped_tools_total",
    ):
        assert f"# TYPE {name} counter" in metrics
    assert "\nfilterproxy_resume_buffer_bytes 0.0\n" in metrics
