"""Where Responses conversations are kept: the memory store's bounds, and the
``responses`` section of the config."""

from __future__ import annotations

from typing import Any

import pytest

from filterproxy.config import ConfigError
from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.responses.config import ResponsesConfig, ResponsesSection
from filterproxy.extensions.responses.conversations import MemoryConversations
from filterproxy.filters.api import RequestHead
from filterproxy.filters.owner import owner_of
from filterproxy.http.headers import Headers

BASE = """
listeners: ["tcp:0"]
clusters:
  local: {url: "http://127.0.0.1:9", apis: [chat]}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def got(store: MemoryConversations, response_id: str) -> Any:
    found: list[Any] = []
    store.get(response_id).addCallback(found.append)
    assert found, "the memory store answers at once"
    return found[0]


def test_a_record_lives_for_its_ttl() -> None:
    clock = Clock()
    store = MemoryConversations(ttl=60, max_bytes=10_000, clock=clock)
    store.put("resp_1", {"owner": "a", "input": ["x"]})
    assert got(store, "resp_1") == {"owner": "a", "input": ["x"]}
    clock.now += 59
    assert got(store, "resp_1") is not None
    clock.now += 2
    assert got(store, "resp_1") is None
    assert store.bytes == 0


def test_the_byte_cap_evicts_the_least_recently_used() -> None:
    store = MemoryConversations(ttl=60, max_bytes=110, clock=Clock())
    record = {"input": ["x" * 20]}  # 34 bytes as JSON
    for n in range(3):
        store.put(f"resp_{n}", record)
    got(store, "resp_0")  # now the most recently used
    store.put("resp_3", record)
    assert list(store.records) == ["resp_2", "resp_0", "resp_3"]
    assert got(store, "resp_1") is None and got(store, "resp_0") is not None
    assert store.bytes == 102
    store.put("resp_big", {"input": ["x" * 200]})  # larger than the store: not kept
    assert got(store, "resp_big") is None and got(store, "resp_3") is not None


def test_delete_says_whether_there_was_a_record() -> None:
    store = MemoryConversations(ttl=60, max_bytes=1000)
    store.put("resp_1", {"input": []})
    deleted: list[bool] = []
    store.delete("resp_1").addCallback(deleted.append)
    store.delete("resp_1").addCallback(deleted.append)
    assert deleted == [True, False] and store.bytes == 0


def test_owners_are_the_key_or_the_credentials() -> None:
    def head(**headers: str) -> RequestHead:
        return RequestHead("POST", "/v1/responses", Headers(list(headers.items())))

    a = owner_of(head(authorization="Bearer sk-a"), None)
    assert a == owner_of(head(authorization="Bearer sk-a "), None)
    assert a != owner_of(head(authorization="Bearer sk-b"), None)
    assert owner_of(head(), None) != a
    assert owner_of(head(authorization="Bearer sk-a"), "team") == owner_of(head(), "team")
    assert "sk-a" not in a


def responses_of(text: str) -> ResponsesConfig:
    section = parse_config(text).section(ResponsesSection)
    assert section is not None
    return section.responses


def test_the_store_defaults_to_redis_when_the_config_names_one() -> None:
    assert responses_of(BASE).store == "memory"
    assert responses_of(BASE + "redis: redis://127.0.0.1:6379/0\n").store == "redis"
    assert responses_of(BASE + "responses: {ttl: 2h, max_bytes: 1000}\n").ttl == 7200
    chain = [f.type_name for f in parse_config(BASE).filters]
    assert chain.index("responses") < chain.index("route") < chain.index("translate")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("responses: {store: disk}", "responses.store: memory (this process) or redis"),
        ("responses: {store: redis}", "responses.store: redis needs the top-level 'redis'"),
        ("responses: {ttl: 0s}", "responses.ttl: must be positive"),
        ("responses: {max_bytes: 0}", "responses.max_bytes"),
        ("responses: {size: 1}", "responses"),
    ],
)
def test_a_bad_responses_section_names_its_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(BASE + text + "\n")
    assert expected in str(raised.value)
