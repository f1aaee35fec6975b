"""The keys filter in the real chain (`FilterHarness`), counting in this process: who may
use the gateway (401 in the client's API shape, the key never forwarded), a key's models
(403), its limits (429 with the rate-limit headers, the budget's ``insufficient_quota``),
the headers an admitted answer carries, the tokens charged from the provider's usage, and
an admission that arrives later (the hook's Deferred holds the request)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.keys.config import hash_key
from filterproxy.extensions.keys.filter import KeysFilter, LimitStore, StoreUnavailable
from filterproxy.extensions.keys.limits import Admission, Subject
from filterproxy.extensions.usage.filter import UsageFilter
from filterproxy.filters.api import FilterContext
from filterproxy.filters.records import LimitRefusal
from filterproxy.filters.resources import Resources
from filterproxy.testing import FilterHarness

KEYS = {name: f"fpk-unit-{name}-0123456789" for name in ("plain", "rpm", "single", "day", "claude")}
CONFIG = f"""
clusters: {{upstream: {{url: "http://upstream.test"}}}}
keys:
  - {{name: plain, hash: "sha256:{hash_key(KEYS["plain"])}"}}
  - name: rpm
    hash: "sha256:{hash_key(KEYS["rpm"])}"
    limits: {{requests_per_minute: 2, tokens_per_minute: 100000}}
  - name: single
    hash: "sha256:{hash_key(KEYS["single"])}"
    limits: {{concurrent_requests: 1}}
  - name: day
    hash: "sha256:{hash_key(KEYS["day"])}"
    limits: {{tokens_per_day: 1}}
  - name: claude
    hash: "sha256:{hash_key(KEYS["claude"])}"
    models: ["claude-*"]
"""
#: A fixed moment, 10 s into a UTC minute: the minute windows and their reset are known.
NOW_MS = 1_700_000_040_000 + 10_000
BODY = json.dumps(
    {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
).encode()
#: What a request of BODY reserves: a quarter of its bytes, and its max_tokens.
RESERVE = -(-len(BODY) // 4) + 100
ANSWER = json.dumps(
    {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
    }
).encode()
JSON = {"content-type": "application/json"}


def clock() -> Clock:
    """The counts' windows are UTC minutes read from the process's clock: pinned, so
    that no test straddles a minute's end."""
    pinned = Clock()
    pinned.advance(NOW_MS / 1000)
    return pinned


def at_now() -> Resources:
    """The process's shared things (its counts) on the pinned clock."""
    return Resources(clock=clock())


def bearer(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[name]}"}


def keys(resources: Resources | None = None, *, usage: bool = False) -> FilterHarness:
    """The keys filter (then the usage filter, as the default chain puts it, when
    *usage*), on *resources* (shared by the requests of one test: the process's counts)."""
    chain: list[Any] = (
        [KeysFilter, (UsageFilter, {"include_usage": True})] if usage else [KeysFilter]
    )
    return FilterHarness(
        chain, config=parse_config(CONFIG), resources=resources if resources else at_now()
    )


def answered(h: FilterHarness) -> None:
    h.respond(200, JSON, ANSWER)
    assert h.client.status == 200 and h.done


# -- who may use the gateway -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, "missing_api_key"), ({"authorization": "Bearer fpk-not-ours"}, "invalid_api_key")],
)
def test_a_missing_or_unknown_key_is_401_in_openais_shape(
    headers: dict[str, str], code: str
) -> None:
    h = keys()
    h.request(BODY, headers=headers)
    assert h.client.status == 401 and not h.upstream.reached and h.done
    error = h.client.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == code
    assert "fpk-not-ours" not in h.client.body.decode()  # never echoed


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "fpk-not-ours"}])
def test_a_messages_client_gets_its_401_in_anthropics_shape(headers: dict[str, str]) -> None:
    h = keys()
    h.request(BODY, path="/v1/messages", headers=headers)
    assert h.client.status == 401 and not h.upstream.reached
    document = h.client.json()
    assert document["type"] == "error" and document["error"]["type"] == "authentication_error"
    assert "fpk-not-ours" not in h.client.body.decode()


@pytest.mark.parametrize(
    "credentials",
    [
        {"authorization": f"Bearer {KEYS['plain']}"},
        {"x-api-key": KEYS["plain"]},
        {"authorization": f"bearer  {KEYS['plain']} ", "x-api-key": "another"},
    ],
)
def test_a_valid_key_passes_and_its_credentials_are_not_forwarded(
    credentials: dict[str, str],
) -> None:
    h = keys()
    sent = h.request(BODY, headers={**credentials, "x-team": "research"})
    assert sent.reached and sent.ended and sent.body == BODY
    assert sent.head is not None
    assert "authorization" not in sent.head.headers and "x-api-key" not in sent.head.headers
    assert sent.head.headers.get("x-team") == "research"
    assert h.stream_info.key_name == "plain"
    answered(h)
    assert h.client.body == ANSWER
    # No limits: no rate-limit headers on the answer.
    assert h.client.headers is not None
    assert not any(name.startswith("x-ratelimit-") for name, _ in h.client.headers)


def test_a_model_the_key_may_not_use_is_403_and_one_it_may_passes() -> None:
    h = keys()
    h.request(BODY, headers=bearer("claude"))
    assert h.client.status == 403 and not h.upstream.reached
    error = h.client.json()["error"]
    assert error["code"] == "model_not_allowed" and "claude-*" in error["message"]
    allowed = keys()
    sent = allowed.request(BODY.replace(b'"m"', b'"claude-haiku"'), headers=bearer("claude"))
    assert sent.reached and sent.json()["model"] == "claude-haiku"


# -- limits --------------------------------------------------------------------------------


def test_an_admitted_answer_carries_the_rate_limit_headers() -> None:
    h = keys()
    h.request(BODY, headers=bearer("rpm"))
    assert h.upstream.reached
    answered(h)
    assert h.client.headers is not None
    assert {n: v for n, v in h.client.headers if n.startswith("x-ratelimit-")} == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "50s",
        "x-ratelimit-limit-tokens": "100000",
        "x-ratelimit-remaining-tokens": str(100000 - RESERVE),
        "x-ratelimit-reset-tokens": "50s",
    }
    assert "retry-after" not in h.client.headers


def test_past_requests_per_minute_is_429_with_when_to_retry() -> None:
    resources = at_now()
    for _ in range(2):
        h = keys(resources)
        h.request(BODY, headers=bearer("rpm"))
        answered(h)
    refused = keys(resources)
    refused.request(BODY, headers=bearer("rpm"))
    assert refused.client.status == 429 and not refused.upstream.reached and refused.done
    error = refused.client.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
    assert "'rpm'" in error["message"] and "requests per minute" in error["message"]
    headers = refused.client.headers
    assert headers is not None
    assert headers.get("retry-after") == "50" and headers.get("retry-after-ms") == "50000"
    assert headers.get("x-ratelimit-limit-requests") == "2"
    assert headers.get("x-ratelimit-remaining-requests") == "0"
    assert headers.get("x-should-retry") is None
    refusal = refused.stream_info.state.get(LimitRefusal)
    assert refusal is not None and refusal.limit == "requests_per_minute"


def test_a_messages_client_gets_its_429_in_anthropics_shape() -> None:
    resources = at_now()
    first = keys(resources)
    first.request(BODY, path="/v1/messages", headers={"x-api-key": KEYS["single"]})
    assert first.upstream.reached
    second = keys(resources)
    second.request(BODY, path="/v1/messages", headers={"x-api-key": KEYS["single"]})
    assert second.client.status == 429
    document = second.client.json()
    assert document["type"] == "error" and document["error"]["type"] == "rate_limit_error"


def test_a_concurrent_slot_is_held_until_the_request_ends() -> None:
    resources = at_now()
    first = keys(resources)
    first.request(BODY, headers=bearer("single"))
    assert first.upstream.reached
    second = keys(resources)
    second.request(BODY, headers=bearer("single"))
    assert second.client.status == 429 and not second.upstream.reached
    assert second.client.json()["error"]["message"].count("concurrent requests") == 1
    headers = second.client.headers
    assert headers is not None
    assert (headers.get("retry-after"), headers.get("retry-after-ms")) == ("1", "1000")
    answered(first)  # the first ends: its slot is free
    third = keys(resources)
    third.request(BODY, headers=bearer("single"))
    assert third.upstream.reached


def test_a_client_that_hangs_up_frees_its_slot() -> None:
    resources = at_now()
    first = keys(resources)
    first.request(BODY, headers=bearer("single"))
    first.hang_up()
    assert first.done
    second = keys(resources)
    second.request(BODY, headers=bearer("single"))
    assert second.upstream.reached


def test_a_spent_daily_budget_is_insufficient_quota_not_to_be_retried() -> None:
    resources = at_now()
    first = keys(resources, usage=True)
    first.request(BODY, headers=bearer("day"))
    answered(first)  # charged 10 tokens (its usage) against a budget of 1
    refused = keys(resources, usage=True)
    refused.request(BODY, headers=bearer("day"))
    assert refused.client.status == 429 and not refused.upstream.reached
    error = refused.client.json()["error"]
    assert error["code"] == "insufficient_quota" and error["type"] == "insufficient_quota"
    headers = refused.client.headers
    assert headers is not None and headers.get("x-should-retry") == "false"
    # It renews at the next UTC midnight.
    assert headers.get("retry-after-ms") == str(86_400_000 - NOW_MS % 86_400_000)


def test_the_tokens_charged_are_the_providers_usage_not_the_reservation() -> None:
    resources = at_now()
    first = keys(resources, usage=True)
    first.request(BODY, headers=bearer("rpm"))
    answered(first)
    assert (first.stream_info.prompt_tokens, first.stream_info.completion_tokens) == (7, 3)
    second = keys(resources, usage=True)
    second.request(BODY, headers=bearer("rpm"))
    answered(second)
    assert second.client.headers is not None
    # The first request's reservation was replaced by its 7 + 3 tokens.
    assert second.client.headers.get("x-ratelimit-remaining-tokens") == str(100000 - 10 - RESERVE)


def test_a_streaming_request_asks_for_usage_and_the_client_does_not_see_it() -> None:
    h = keys(usage=True)
    body = json.dumps({"model": "m", "stream": True, "messages": []}).encode()
    sent = h.request(body, headers=bearer("rpm"))
    assert sent.json()["stream_options"] == {"include_usage": True}
    stream = (
        b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\n'
        b"data: [DONE]\n\n"
    )
    h.respond(200, {"content-type": "text/event-stream"}, [stream])
    assert h.client.body == (
        b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'
    )
    assert h.client.headers is not None
    assert h.client.headers.get("x-ratelimit-remaining-requests") == "1"
    assert h.stream_info.completion_tokens == 2


# -- an admission that arrives later ---------------------------------------------------------


class LaterStore:
    """This process's counts, answering when the test says (as Redis answers later)."""

    def __init__(self) -> None:
        self.counts = LimitStore(None, resources=at_now())
        self.pending: list[tuple[defer.Deferred[Admission], Admission]] = []

    def settle(
        self, subjects: Sequence[Subject], admission: Admission, used: int, cost_nano: int
    ) -> None:
        self.counts.settle(subjects, admission, used, cost_nano)

    def admit(
        self, subjects: Sequence[Subject], reserve: int, reserve_nano: int
    ) -> defer.Deferred[Admission]:
        decided = self.counts.admit(subjects, reserve, reserve_nano)
        assert isinstance(decided, Admission)
        d: defer.Deferred[Admission] = defer.Deferred()
        self.pending.append((d, decided))
        return d

    def answer(self) -> None:
        d, admission = self.pending.pop(0)
        d.callback(admission)

    def fail(self, error: Exception) -> None:
        d, _ = self.pending.pop(0)
        d.errback(error)


def later(store: LaterStore) -> FilterHarness:
    config = parse_config(CONFIG)
    context = FilterContext(config=config, path="filters[0]", environ={}, resources=at_now())
    configured = KeysFilter.configure({}, context)
    return FilterHarness(KeysFilter(replace(configured, store=store)), config=config)


def test_the_request_is_held_until_the_store_answers_then_goes_on() -> None:
    store = LaterStore()
    h = later(store)
    h.request([BODY[:20], BODY[20:]], headers=bearer("rpm"))
    assert store.pending and not h.upstream.reached and h.client.status is None
    store.answer()
    assert h.upstream.reached and h.upstream.ended and h.upstream.body == BODY
    answered(h)
    assert h.client.headers is not None
    assert h.client.headers.get("x-ratelimit-remaining-requests") == "1"


def test_a_refusal_that_arrives_later_is_429_and_nothing_goes_upstream() -> None:
    store = LaterStore()
    first = later(store)
    first.request(BODY, headers=bearer("single"))
    store.answer()
    second = later(store)
    second.request(BODY, headers=bearer("single"))
    assert second.client.status is None
    store.answer()
    assert second.client.status == 429 and not second.upstream.reached and second.done
    assert second.client.headers is not None
    assert second.client.headers.get("retry-after-ms") == "1000"


def test_a_store_that_cannot_answer_is_503_with_retry_after() -> None:
    store = LaterStore()
    h = later(store)
    h.request(BODY, headers=bearer("rpm"))
    store.fail(StoreUnavailable("connection refused"))
    assert h.client.status == 503 and not h.upstream.reached and h.done
    assert h.client.json()["error"]["code"] == "limits_unavailable"
    assert h.client.headers is not None and h.client.headers.get("retry-after") == "1"


def test_a_client_gone_before_the_store_answers_gives_its_slot_back() -> None:
    store = LaterStore()
    first = later(store)
    first.request(BODY, headers=bearer("single"))
    first.hang_up()
    assert first.done
    store.answer()  # admitted, to nobody: settled at once
    assert not first.upstream.reached and first.client.status is None
    second = later(store)
    second.request(BODY, headers=bearer("single"))
    store.answer()
    assert second.upstream.reached


def test_keys_needs_keys_in_the_config() -> None:
    with pytest.raises(ValueError, match="no keys to check"):
        FilterHarness(KeysFilter)
