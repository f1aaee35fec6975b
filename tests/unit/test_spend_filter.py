"""The spend filter in the real chain (`FilterHarness`): the price quote once the body is
in, the cost of the request from the provider's usage at the price of the model sent
upstream, the estimate when no usage came, 0 for errors, unpriced models, the metrics,
the ledger, the cost told at the end of a stream; and the ``spend`` config."""

from __future__ import annotations

import json
from typing import Any

import pytest

from filterproxy.config import ConfigError
from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.route.filter import RouteFilter
from filterproxy.extensions.spend.config import SpendSettings
from filterproxy.extensions.spend.filter import SpendFilter, estimate_input_tokens
from filterproxy.extensions.spend.metrics import SpendMetrics
from filterproxy.extensions.usage.filter import UsageFilter
from filterproxy.filters.records import Cost, PriceQuote, TokenUsage
from filterproxy.filters.resources import Resources
from filterproxy.testing import FilterHarness

CONFIG = """
clusters:
  local: {url: "http://upstream.test"}
  big: {url: "http://big.test", provider: openai, api_key: k}
aliases: {fast: house-model}
routes:
  - {models: ["renamed"], cluster: local, upstream_model: house-model}
  - {models: ["gpt-*"], cluster: big}
  - {cluster: local}
spend:
  prices_source: none
  prices:
    house-model: {input: 2, output: 10, cached_input: 0.5}
    gpt-test: {input: 1, output: 4, reasoning: 8}
"""
JSON = {"content-type": "application/json"}
SSE = {"content-type": "text/event-stream"}


def body(model: str, **more: Any) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], **more}
    ).encode()


def answer(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> bytes:
    return json.dumps(
        {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "prompt_tokens_details": {"cached_tokens": cached},
                "completion_tokens_details": {"reasoning_tokens": reasoning},
            },
        }
    ).encode()


class Ledger:
    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []

    def record(
        self, key: str, team: str, model: str, provider: str, cost: Cost, usage: TokenUsage | None
    ) -> None:
        self.rows.append((key, team, model, provider, cost, usage))


def chain(config: str = CONFIG, resources: Resources | None = None) -> FilterHarness:
    return FilterHarness(
        [SpendFilter, RouteFilter, (UsageFilter, {"include_usage": True})],
        config=parse_config(config),
        resources=resources,
    )


def cost(h: FilterHarness) -> Cost | None:
    return h.stream_info.state.get(Cost)


def test_a_request_costs_its_usage_at_its_models_price() -> None:
    h = chain()
    h.request(body("fast"))  # an alias of house-model
    assert h.stream_info.state.get(PriceQuote) == PriceQuote("house-model", 2_000_000, 10_000_000)
    h.respond(200, JSON, answer(1000, 200, cached=600))
    # 400 input at $2/M, 600 cached at $0.5/M, 200 output at $10/M.
    nano = (400 * 2_000_000 + 600 * 500_000 + 200 * 10_000_000) // 1000
    assert cost(h) == Cost("house-model", "", nano)
    assert cost(h).log_fields() == {"cost_usd": nano / 1e9, "cost_priced": True}  # type: ignore[union-attr]


def test_the_model_sent_upstream_is_priced() -> None:
    h = chain()
    h.request(body("renamed"))
    assert h.stream_info.state.get(PriceQuote) is None  # "renamed" has no price of its own
    h.respond(200, JSON, answer(100, 10))
    assert cost(h) == Cost("house-model", "", (100 * 2_000_000 + 10 * 10_000_000) // 1000)


def test_reasoning_priced_apart_and_the_clusters_provider() -> None:
    h = chain()
    h.request(body("gpt-test"))
    h.respond(200, JSON, answer(10, 100, reasoning=60))
    assert cost(h) == Cost(
        "gpt-test", "openai", (10 * 1_000_000 + 40 * 4_000_000 + 60 * 8_000_000) // 1000
    )


def test_no_usage_estimates_the_input_and_an_error_costs_nothing() -> None:
    h = chain()
    request = body("house-model")
    h.request(request)
    h.respond(200, JSON, b'{"choices": []}')
    nano = (estimate_input_tokens(len(request)) * 2_000_000 + 500) // 1000
    assert cost(h) == Cost("house-model", "", nano, estimated=True)
    failed = chain()
    failed.request(request)
    failed.respond(500, JSON, b'{"error": {"message": "down"}}')
    assert cost(failed) == Cost("house-model", "", 0)


def test_an_unpriced_model_costs_nothing_and_is_counted() -> None:
    resources = Resources()
    for _ in range(2):
        h = chain(resources=resources)
        h.request(body("mystery"))
        h.respond(200, JSON, answer(10, 10))
        assert cost(h) == Cost("mystery", "", 0, priced=False)
    metrics = SpendMetrics.of(resources)
    assert metrics.unpriced.series == {("mystery",): 2}
    assert metrics.cost.series == {("none", "none", "mystery", "none"): 0}


def test_the_cost_is_counted_by_key_and_team_and_given_to_the_ledger() -> None:
    resources = Resources()
    h = chain(resources=resources)
    ledger = Ledger()
    object.__setattr__(h.filter.config, "ledger", ledger)
    h.request(body("house-model"))
    h.stream_info.key_name, h.stream_info.team_name = "alice", "research"
    h.respond(200, JSON, answer(1000, 100))
    nano = (1000 * 2_000_000 + 100 * 10_000_000) // 1000
    metrics = SpendMetrics.of(resources)
    assert metrics.cost.series == {("alice", "research", "house-model", "none"): nano / 1e9}
    assert metrics.tokens.series == {("house-model", "input"): 1000, ("house-model", "output"): 100}
    (row,) = ledger.rows
    assert row == (
        "alice",
        "research",
        "house-model",
        "",
        Cost("house-model", "", nano),
        TokenUsage(input=1000, output=100),
    )


def stream(prompt: int, completion: int) -> bytes:
    chunk = {"choices": [{"index": 0, "delta": {"content": "hi"}}]}
    usage = {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}
    return (
        b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in (chunk, usage))
        + b"data: [DONE]\n\n"
    )


def test_a_streaming_client_is_told_the_cost_at_the_end() -> None:
    h = chain()
    h.request(body("house-model", stream=True))
    events = stream(1000, 100)
    h.respond(200, SSE, [events[:40], events[40:]])
    nano = (1000 * 2_000_000 + 100 * 10_000_000) // 1000
    assert cost(h) == Cost("house-model", "", nano)
    assert h.client.body.endswith(b"data: [DONE]\n\n: cost_usd=%.9f\n\n" % (nano / 1e9))
    assert b'"usage"' not in h.client.body  # the usage chunk the gateway asked for is gone


def test_a_told_stream_goes_without_the_upstreams_content_length() -> None:
    # The comment lengthens the body: kept, the upstream's length would leave it to be
    # read as the next response of a kept-alive connection.
    h = chain()
    # (Asking for usage itself, the client gets the stream as it came from the usage
    # filter, which would otherwise rewrite it.)
    h.request(body("house-model", stream=True, stream_options={"include_usage": True}))
    events = stream(10, 10)
    h.respond(200, {**SSE, "content-length": str(len(events))}, [events])
    assert h.client.headers.get("content-length") is None
    assert h.client.body.startswith(events[:20]) and b": cost_usd=" in h.client.body


def test_without_the_header_the_stream_passes_untouched() -> None:
    h = chain(CONFIG.replace("prices_source: none", "prices_source: none\n  header: false"))
    h.request(body("house-model", stream=True))
    h.respond(200, SSE, [stream(10, 10)])
    assert b"cost_usd" not in h.client.body and cost(h) is not None


@pytest.mark.parametrize(
    ("section", "path", "problem"),
    [
        ("spend: {prices_source: maybe}", "spend.prices_source", "expected one of"),
        ("spend: {prices: {m: {input: 1}}}", "spend.prices.m", "missing 'output'"),
        ("spend: {prices: {m: {input: -1, output: 1}}}", "spend.prices.m.input", "0 or more"),
        (
            "spend: {prices: {m: {input: 0.0000001, output: 1}}}",
            "spend.prices.m.input",
            "six decimals",
        ),
        (
            "spend: {prices: {m: {input: 1, output: 1, cached: 1}}}",
            "spend.prices.m.cached",
            "unknown key",
        ),
        ("spend: {header: yes please}", "spend.header", "true or false"),
        ("spend: {budget: 1}", "spend.budget", "unknown key"),
    ],
)
def test_bad_spend_config_stops_start_up_with_its_key_path(
    section: str, path: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("clusters: {c: {url: 'http://u.test'}}\n" + section + "\n")
    assert caught.value.path == path and problem in str(caught.value)


def test_the_spend_filter_goes_first_with_a_spend_section_or_keys() -> None:
    base = "clusters: {c: {url: 'http://u.test'}}\n"
    assert "spend" not in [f.type_name for f in parse_config(base).filters]
    with_section = parse_config(base + "spend: {}\n")
    assert with_section.filters[1].type_name == "spend"  # after delivery
    assert with_section.section(SpendSettings) == SpendSettings(configured=True)
    key = "{name: a, hash: 'sha256:" + "0" * 64 + "'}"
    with_keys = [f.type_name for f in parse_config(base + f"keys: [{key}]\n").filters]
    assert with_keys[1:3] == ["spend", "keys"]
