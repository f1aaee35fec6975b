"""The responses filter before the route and translate filters, in the real chain
(`FilterHarness`), with the memory store: a translated answer is kept for its owner and
read back (``GET /v1/responses/{id}``, its input items), continued
(``previous_response_id`` puts the conversation in front of the input), deleted;
another owner is told it does not exist; ``store: false`` is not kept; and a record
lives for ``responses.ttl``."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from twisted.internet.task import Clock

from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.responses.conversations import MemoryConversations
from filterproxy.extensions.responses.filter import ResponsesFilter
from filterproxy.extensions.route.filter import RouteFilter
from filterproxy.extensions.translate.filter import TranslateFilter
from filterproxy.filters.api import FilterContext
from filterproxy.filters.resources import Resources
from filterproxy.testing import ClientResponse, FilterHarness
from tests.support.answers import chat_completion
from tests.support.chat_messages import chat_chunk, sse

CONFIG = """
clusters:
  chat-only: {url: "http://chat.test", apis: [chat]}
routes: [{models: ["gpt-*"], cluster: chat-only}]
responses: {store: memory, ttl: 60s}
"""
JSON = {"content-type": "application/json"}
ALICE = {"authorization": "Bearer sk-alice"}
BOB = {"authorization": "Bearer sk-bob"}


class Gateway:
    """One process's chain and memory store: each request a harness on the same
    resources and clock. With *clocked_store*, the filter's memory store reads that
    clock (it reads the process's monotonic time otherwise)."""

    def __init__(self, *, clocked_store: bool = False) -> None:
        self.config = parse_config(CONFIG)
        self.clock = Clock()
        self.resources = Resources(clock=self.clock)
        self.responses: Any = ResponsesFilter
        if clocked_store:
            context = FilterContext(
                config=self.config, path="filters[0]", environ={}, resources=self.resources
            )
            configured = ResponsesFilter.configure({}, context)
            store = MemoryConversations(configured.ttl, 1 << 20, clock=self.clock.seconds)
            self.responses = replace(configured, store=store)

    def harness(self) -> FilterHarness:
        first = self.responses
        return FilterHarness(
            [
                first if isinstance(first, type) else ResponsesFilter(first),
                RouteFilter,
                TranslateFilter,
            ],
            config=self.config,
            clock=self.clock,
            resources=self.resources,
        )

    def ask(
        self, headers: dict[str, str] = ALICE, answer: str = "hello", **fields: Any
    ) -> tuple[FilterHarness, ClientResponse]:
        """A Responses request, translated for the chat cluster, and its answer."""
        h = self.harness()
        h.request(
            json.dumps({"model": "gpt-mini", "input": "hi", **fields}).encode(),
            path="/v1/responses",
            headers=headers,
        )
        return h, h.respond(200, JSON, chat_completion(answer))

    def read(
        self, response_id: str, headers: dict[str, str] = ALICE, *, method: str = "GET"
    ) -> FilterHarness:
        h = self.harness()
        h.request(method=method, path=f"/v1/responses/{response_id}", headers=headers)
        return h


def test_an_answer_is_kept_and_read_back_by_its_owner() -> None:
    gateway = Gateway()
    _, response = gateway.ask()
    answer = response.json()
    assert answer["object"] == "response" and answer["id"].startswith("resp_")
    read = gateway.read(answer["id"])
    assert not read.upstream.reached and read.client.status == 200
    assert read.client.json() == answer
    items = gateway.read(answer["id"] + "/input_items")
    listed = items.client.json()
    assert listed["object"] == "list" and listed["has_more"] is False
    assert [item["content"] for item in listed["data"]] == ["hi"]
    assert listed["first_id"] == listed["data"][0]["id"]


def test_a_streamed_answer_is_kept_once_complete() -> None:
    gateway = Gateway()
    h = gateway.harness()
    h.request(
        b'{"model": "gpt-mini", "input": "hi", "stream": true}',
        path="/v1/responses",
        headers=ALICE,
    )
    began = sse(
        [chat_chunk({"role": "assistant", "content": ""}), chat_chunk({"content": "hel"})],
        done=False,
    )
    h.respond(200, {"content-type": "text/event-stream"}, [began], end=False)
    assert h.client.events()[0].event == "response.created"
    response_id = json.loads(h.client.events()[0].data or "")["response"]["id"]
    assert gateway.read(response_id).client.status == 404  # not complete yet
    h.more([sse([chat_chunk({"content": "lo"}), chat_chunk({}, "stop")])])
    last = h.client.events()[-1]
    assert last.event == "response.completed"
    kept = gateway.read(response_id).client.json()
    assert kept == json.loads(last.data or "")["response"]
    assert kept["output"][0]["content"][0]["text"] == "hello"


def test_previous_response_id_puts_the_conversation_in_front_of_the_input() -> None:
    gateway = Gateway()
    _, first = gateway.ask(answer="Paris.")
    first_id = first.json()["id"]
    h, response = gateway.ask(
        answer="About 2 million.", previous_response_id=first_id, input="And?"
    )
    sent = h.upstream.json()
    assert "previous_response_id" not in sent
    assert [(m["role"], m["content"]) for m in sent["messages"]] == [
        ("user", "hi"),
        ("assistant", "Paris."),
        ("user", "And?"),
    ]
    second = response.json()
    assert second["previous_response_id"] == first_id
    # The second record holds the whole conversation: a third turn takes one read.
    h3, _ = gateway.ask(previous_response_id=second["id"], input="Thanks")
    assert [m["content"] for m in h3.upstream.json()["messages"]] == [
        "hi",
        "Paris.",
        "And?",
        "About 2 million.",
        "Thanks",
    ]


def test_another_owners_id_does_not_exist() -> None:
    gateway = Gateway()
    _, response = gateway.ask()
    response_id = response.json()["id"]
    read = gateway.read(response_id, BOB)
    assert read.client.status == 404 and not read.upstream.reached
    assert read.client.json()["error"]["code"] == "not_found"
    assert "hello" not in read.client.body.decode()
    deleted = gateway.read(response_id, BOB, method="DELETE")
    assert deleted.client.status == 404
    assert gateway.read(response_id).client.status == 200  # still there for its owner
    h = gateway.harness()
    h.request(
        json.dumps(
            {"model": "gpt-mini", "input": "x", "previous_response_id": response_id}
        ).encode(),
        path="/v1/responses",
        headers=BOB,
    )
    assert h.client.status == 404 and not h.upstream.pieces
    assert h.client.json()["error"]["code"] == "previous_response_not_found"


def test_an_unknown_id_is_404() -> None:
    read = Gateway().read("resp_0123456789abcdef01234567")
    assert read.client.status == 404 and read.client.json()["error"]["code"] == "not_found"


def test_store_false_is_not_kept() -> None:
    gateway = Gateway()
    _, response = gateway.ask(store=False)
    answer = response.json()
    assert answer["status"] == "completed"
    assert gateway.read(answer["id"]).client.status == 404


def test_a_deleted_response_is_gone() -> None:
    gateway = Gateway()
    _, response = gateway.ask()
    response_id = response.json()["id"]
    deleted = gateway.read(response_id, method="DELETE")
    assert deleted.client.status == 200
    assert deleted.client.json() == {
        "id": response_id,
        "object": "response.deleted",
        "deleted": True,
    }
    assert gateway.read(response_id).client.status == 404


def test_a_request_that_is_not_about_responses_passes_untouched() -> None:
    h = Gateway().harness()
    body = b'{"model": "gpt-mini", "messages": []}'
    assert h.request(body, headers=ALICE).body == body
    assert h.respond(200, JSON, b'{"x": 1}').body == b'{"x": 1}'


# -- how long a record lives -------------------------------------------------------------


def test_a_record_lives_for_the_ttl() -> None:
    gateway = Gateway(clocked_store=True)
    _, response = gateway.ask()
    response_id = response.json()["id"]
    gateway.clock.advance(59.9)
    assert gateway.read(response_id).client.status == 200
    gateway.clock.advance(0.1)
    assert gateway.read(response_id).client.status == 404


def test_the_configured_memory_store_runs_on_the_resources_clock() -> None:
    gateway = Gateway()
    _, response = gateway.ask()
    response_id = response.json()["id"]
    gateway.clock.advance(61)
    assert gateway.read(response_id).client.status == 404
