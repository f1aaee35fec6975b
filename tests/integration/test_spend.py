"""What a request costs, end to end: a real gateway process, the official SDKs as
clients, and a stand-in provider that reports the usage each test chooses — cached and
reasoning tokens in OpenAI's shape, cache reads and five-minute and one-hour writes in
Anthropic's. Each request's cost, in the access log (``cost_usd``), in
``filterproxy_cost_usd_total``, in the spend report (exact nanodollars) and, for a
stream, in the ``: cost_usd=`` comment that ends it, must equal the price list's
arithmetic: written out here for the models priced in the config, and computed by
``genai-prices`` itself (``calc_price``) for real model names.

Every priced request uses a gateway key of its own, so each metric series and report
group holds exactly one request.
"""

from __future__ import annotations

import importlib
import json
import re
import threading
from collections.abc import Iterator, Mapping
from decimal import ROUND_HALF_UP, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anthropic
import genai_prices
import httpx
import openai
import pytest

from filterproxy.extensions.keys.config import hash_key

from .conftest import Gateway, start_gateway, wait_until

TOKEN = "admin-token-for-the-cost-tests"
#: One key per priced request (its metric series and report group are that request's).
KEY_NAMES = (
    "chat-own-price",
    "chat-own-price-plain",
    "chat-gpt-4o",
    "chat-openrouter",
    "translated-stream",
    "translated-plain",
    "translated-sonnet",
    "messages-stream",
    "messages-plain",
    "messages-long",
    "chat-raw",
    "translated-raw",
    "unpriced",
    "before-refusal",
)
KEYS = {name: f"fpk-cost-{name}-0123456789" for name in KEY_NAMES}

#: Prices in the config, dollars per million tokens. Six decimals (picodollars per
#: token) and a price of its own for each kind of token: a kind priced as another, or a
#: dollar amount rounded too early, comes to a different number of nanodollars.
HOUSE_CHAT = {
    "input": "1.234567",
    "cached_input": "0.123457",
    "output": "4.567891",
    "reasoning": "7.654321",
}
HOUSE_CLAUDE = {
    "input": "2.999999",
    "cached_input": "0.300007",
    "cache_write": "3.750011",
    "cache_write_1h": "6.000013",
    "output": "15.000003",
}


def pico(usd_per_million: str) -> int:
    """Picodollars per token of a price in dollars per million tokens."""
    value = Decimal(usd_per_million) * 1_000_000
    assert value == value.to_integral_value()
    return int(value)


def nano(pico_total: int | Decimal) -> int:
    """Picodollars in nanodollars, to the nearest."""
    return int((Decimal(pico_total) / 1000).to_integral_value(ROUND_HALF_UP))


def nano_of_usd(usd: Decimal) -> int:
    return nano(usd * 10**12)


# -- the provider ----------------------------------------------------------------------


class Provider(ThreadingHTTPServer):
    """Speaks Chat Completions (``…/chat/completions``) and Messages (``…/messages``),
    streamed or not, and reports, for each model, the usage object `usage` holds for it
    (in the provider's own shape). A streamed chat answer reports usage only when asked
    (``stream_options.include_usage``), as OpenAI does."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ProviderHandler)
        #: The usage object reported for each model.
        self.usage: dict[str, dict[str, Any]] = {}
        #: The requests received, (path, body).
        self.requests: list[tuple[str, dict[str, Any]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def sse(data: Mapping[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def anthropic_event(kind: str, **fields: Any) -> bytes:
    """A Messages stream event: its ``event:`` name is its type."""
    return sse({"type": kind, **fields}, kind)


class ProviderHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Provider

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.requests.append((self.path, body))
        usage = self.server.usage.get(body.get("model"), {})
        stream = body.get("stream") is True
        if self.path.endswith("/chat/completions"):
            asked = (body.get("stream_options") or {}).get("include_usage") is True
            events = self.chat(body["model"], usage, stream, asked)
        elif self.path.endswith("/messages"):
            events = self.messages(body["model"], usage, stream)
        else:
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        self.send_response(200)
        if not stream:
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(events[0])))
            self.end_headers()
            self.wfile.write(events[0])
            return
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for event in [*events, b""]:  # one chunk per event, as providers send them
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()

    @staticmethod
    def chat(model: str, usage: dict[str, Any], stream: bool, asked: bool) -> list[bytes]:
        base: dict[str, Any] = {"id": "chatcmpl-cost", "created": 1, "model": model}
        if not stream:
            answer = {"role": "assistant", "content": "Priced."}
            whole = {"index": 0, "message": answer, "finish_reason": "stop"}
            document = {**base, "object": "chat.completion", "choices": [whole], "usage": usage}
            return [json.dumps(document).encode()]
        chunk = {**base, "object": "chat.completion.chunk"}
        if asked:
            chunk["usage"] = None  # as OpenAI has it in every chunk but the last

        def choice(delta: dict[str, str], finish: str | None = None) -> bytes:
            return sse(
                {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            )

        events = [
            choice({"role": "assistant", "content": "Pri"}),
            choice({"content": "ced."}),
            choice({}, "stop"),
        ]
        if asked:
            events.append(sse({**chunk, "choices": [], "usage": usage}))
        return [*events, b"data: [DONE]\n\n"]

    @staticmethod
    def messages(model: str, usage: dict[str, Any], stream: bool) -> list[bytes]:
        message: dict[str, Any] = {
            "id": "msg_cost",
            "type": "message",
            "role": "assistant",
            "model": model,
        }
        if not stream:
            content = [{"type": "text", "text": "Priced."}]
            document = {
                **message,
                "content": content,
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": usage,
            }
            return [json.dumps(document).encode()]
        # As Anthropic streams it: the input and cache counts in message_start (output
        # 1 so far), the output count in message_delta.
        start: dict[str, Any] = {
            **message,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }
        text = {"type": "text_delta", "text": "Priced."}
        end = {"stop_reason": "end_turn", "stop_sequence": None}
        return [
            anthropic_event(
                "message_start", message={**start, "usage": {**usage, "output_tokens": 1}}
            ),
            anthropic_event(
                "content_block_start", index=0, content_block={"type": "text", "text": ""}
            ),
            anthropic_event("content_block_delta", index=0, delta=text),
            anthropic_event("content_block_stop", index=0),
            anthropic_event(
                "message_delta", delta=end, usage={"output_tokens": usage["output_tokens"]}
            ),
            anthropic_event("message_stop"),
        ]


# -- the gateway -----------------------------------------------------------------------


def price_map(prices: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{kind}: {value}" for kind, value in prices.items()) + "}"


def config(provider: Provider) -> str:
    keys = "\n".join(f"  - {{name: {n}, hash: 'sha256:{hash_key(k)}'}}" for n, k in KEYS.items())
    return f"""
admin: {{token: "{TOKEN}"}}
clusters:
  house: {{url: "{provider.url}", apis: [chat]}}
  house-messages: {{url: "{provider.url}", apis: [messages]}}
  openai: {{provider: openai, url: "{provider.url}/v1", api_key: sk-upstream-openai}}
  openrouter: {{provider: openrouter, url: "{provider.url}/v1", api_key: sk-upstream-openrouter}}
  anthropic: {{provider: anthropic, url: "{provider.url}/v1", api_key: sk-upstream-anthropic}}
routes:
  - {{models: ["gpt-*"], cluster: openai}}
  - {{models: ["devstral-*"], cluster: openrouter}}
  - {{models: ["claude-*"], cluster: anthropic}}
  - {{models: [house-claude], cluster: house-messages}}
  - {{models: ["*"], cluster: house}}
spend:
  prices:
    house-chat: {price_map(HOUSE_CHAT)}
    house-claude: {price_map(HOUSE_CLAUDE)}
keys:
{keys}
"""


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    server = Provider()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def gateway(provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(config(provider), tmp_path_factory.mktemp("spend"))
    try:
        yield gw
    finally:
        gw.process.stop()


def recording_client(sdk: Any, bodies: list[bytearray]) -> Any:
    """An HTTP client for *sdk* (of the library it is built on: httpx, or httpx2 in
    newer releases) that keeps in *bodies* the bytes of each answer as the SDK reads
    them."""
    http = importlib.import_module(sdk.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])
    inner = http.HTTPTransport()

    def tee(upstream: Any, kept: bytearray) -> Any:
        def pieces(_: Any) -> Iterator[bytes]:
            for piece in upstream:
                kept.extend(piece)
                yield piece

        stream_type = type(
            "Tee", (http.SyncByteStream,), {"__iter__": pieces, "close": lambda _: upstream.close()}
        )
        return stream_type()

    class Recording:
        def handle_request(self, request: Any) -> Any:
            response = inner.handle_request(request)
            bodies.append(bytearray())
            return http.Response(
                response.status_code,
                headers=response.headers,
                stream=tee(response.stream, bodies[-1]),
                extensions=response.extensions,
            )

        def close(self) -> None:
            inner.close()

    return http.Client(transport=Recording())


def oai(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEYS[key], max_retries=0)


def cost_series(
    gateway: Gateway, family: str = "filterproxy_cost_usd_total"
) -> dict[tuple[tuple[str, str], ...], float]:
    """A metric family's series: labels (sorted pairs) → value."""
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for line in gateway.metrics().splitlines():
        if line.startswith(family + "{"):
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', line[: line.index("}")])))
            found[labels] = float(line.rsplit(" ", 1)[1])
    return found


def spend_report(gateway: Gateway) -> dict[str, Any]:
    response = httpx.get(
        f"{gateway.admin_url}/spend?by=key", headers={"authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def report_group(gateway: Gateway, key: str) -> dict[str, Any]:
    def group() -> dict[str, Any] | None:
        return next((g for g in spend_report(gateway)["groups"] if g["name"] == key), None)

    wait_until(lambda: group() is not None, timeout=5)
    found = group()
    assert found is not None
    return found


def assert_costs(
    gateway: Gateway,
    *,
    key: str,
    request_id: str,
    model: str,
    provider: str,
    expected_nano: int,
    tokens: Mapping[str, int],
) -> None:
    """The request's cost is *expected_nano* in the access log, the metric and the
    report, counted under *model* at *provider*, with *tokens* by kind in the report."""
    record = gateway.access_record(request_id)
    assert record["key"] == key and record["cost_priced"] is True
    assert round(record["cost_usd"] * 1e9) == expected_nano, (record["cost_usd"], expected_nano)
    series = {labels: v for labels, v in cost_series(gateway).items() if ("key", key) in labels}
    labels = (("key", key), ("model", model), ("provider", provider), ("team", "none"))
    assert list(series) == [labels]
    assert round(series[labels] * 1e9) == expected_nano
    group = report_group(gateway, key)
    assert group["requests"] == 1 and group["nano_usd"] == expected_nano
    assert {kind: group[kind] for kind in tokens} == tokens


def told_cost(body: bytes) -> int:
    """The nanodollars of the ``: cost_usd=`` comment that ends a stream."""
    match = re.search(rb"\n: cost_usd=(\d+\.\d{9})\n\n\Z", body)
    assert match is not None, body[-300:]
    return nano_of_usd(Decimal(match.group(1).decode()))


def genai_nano(model: str, provider_id: str, **usage: int) -> int:
    """What genai-prices itself makes of *usage* (its names, OpenAI's convention: input
    counts the cached and written tokens), in nanodollars."""
    price = genai_prices.calc_price(genai_prices.Usage(**usage), model, provider_id=provider_id)
    return nano_of_usd(price.total_price)


# -- a chat request, streamed ----------------------------------------------------------

#: OpenAI's chat usage: 5,321 prompt tokens of which 4,096 read from the cache, 777
#: completion tokens of which 512 reasoning.
CHAT_USAGE = {
    "prompt_tokens": 5321,
    "completion_tokens": 777,
    "total_tokens": 6098,
    "prompt_tokens_details": {"cached_tokens": 4096, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 512,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
CHAT_TOKENS = {"input": 5321, "cached_input": 4096, "output": 777, "reasoning": 512}
#: What that costs at house-chat's prices: each kind at its own.
CHAT_NANO = nano(
    (5321 - 4096) * pico(HOUSE_CHAT["input"])
    + 4096 * pico(HOUSE_CHAT["cached_input"])
    + (777 - 512) * pico(HOUSE_CHAT["output"])
    + 512 * pico(HOUSE_CHAT["reasoning"])
)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "plain"])
def test_a_chat_request_costs_its_tokens_at_the_configs_prices(
    gateway: Gateway, provider: Provider, stream: bool
) -> None:
    key = "chat-own-price" if stream else "chat-own-price-plain"
    provider.usage["house-chat"] = CHAT_USAGE
    request_id = f"cost-{key}"
    answer = oai(gateway, key).chat.completions.create(
        model="house-chat",
        messages=[{"role": "user", "content": "What does this cost?"}],
        stream=stream,
        extra_headers={"x-request-id": request_id},
    )
    if isinstance(answer, openai.Stream):
        chunks = list(answer)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Priced."
        # The gateway asked the provider for the usage the client did not ask for, and
        # kept its usage chunk from the client.
        assert all(c.usage is None for c in chunks)
        assert provider.requests[-1][1]["stream_options"] == {"include_usage": True}
    else:
        assert answer.choices[0].message.content == "Priced."
    assert_costs(
        gateway,
        key=key,
        request_id=request_id,
        model="house-chat",
        provider="none",
        expected_nano=CHAT_NANO,
        tokens=CHAT_TOKENS,
    )


@pytest.mark.parametrize(
    ("key", "model", "at"),
    [("chat-gpt-4o", "gpt-4o", "openai"), ("chat-openrouter", "devstral-small", "openrouter")],
    ids=["gpt-4o", "openrouter"],
)
def test_a_streamed_chat_request_to_a_listed_model_costs_what_genai_prices_says(
    gateway: Gateway, provider: Provider, key: str, model: str, at: str
) -> None:
    provider.usage[model] = CHAT_USAGE
    stream = oai(gateway, key).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What does this cost?"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-request-id": f"cost-{key}"},
    )
    chunks = list(stream)
    # Asked for by the client: its usage chunk reaches it.
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 4096
    tokens = {"input_tokens": 5321, "cache_read_tokens": 4096, "output_tokens": 777}
    expected = genai_nano(model, at, **tokens, output_reasoning_tokens=512)
    if model == "gpt-4o":
        # Cached input has a price of its own: not the price of every input token.
        assert expected != genai_nano(model, at, input_tokens=5321, output_tokens=777)
    else:
        # The price list has the model at another provider (its own) at another price:
        # the cluster's provider decides.
        assert expected != genai_nano(model, "mistral", **tokens)
    assert_costs(
        gateway,
        key=key,
        request_id=f"cost-{key}",
        model=model,
        provider=at,
        expected_nano=expected,
        tokens=CHAT_TOKENS,
    )


# -- a chat client, a Messages upstream ------------------------------------------------

#: Anthropic's usage: input_tokens leaves out the 20,000 read from the cache and the
#: 3,000 written to it (1,000 of them kept an hour).
MESSAGES_USAGE = {
    "input_tokens": 1500,
    "cache_read_input_tokens": 20000,
    "cache_creation_input_tokens": 3000,
    "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 1000},
    "output_tokens": 640,
}
#: The same in OpenAI's convention (the report's): input counts all of it.
MESSAGES_TOKENS = {"input": 24500, "cached_input": 20000, "cache_write": 3000, "output": 640}
HOUSE_CLAUDE_NANO = nano(
    1500 * pico(HOUSE_CLAUDE["input"])
    + 20000 * pico(HOUSE_CLAUDE["cached_input"])
    + 2000 * pico(HOUSE_CLAUDE["cache_write"])
    + 1000 * pico(HOUSE_CLAUDE["cache_write_1h"])
    + 640 * pico(HOUSE_CLAUDE["output"])
)


def sonnet_nano(usage: Mapping[str, Any]) -> int:
    """genai-prices' cost of an Anthropic usage object for claude-sonnet-4-5."""
    read = usage.get("cache_read_input_tokens", 0)
    written = usage.get("cache_creation_input_tokens", 0)
    hour = usage.get("cache_creation", {}).get("ephemeral_1h_input_tokens", 0)
    return genai_nano(
        "claude-sonnet-4-5",
        "anthropic",
        input_tokens=usage["input_tokens"] + read + written,
        cache_read_tokens=read,
        cache_write_tokens=written,
        cache_write_1h_tokens=hour,
        output_tokens=usage["output_tokens"],
    )


@pytest.mark.parametrize(
    ("key", "model", "stream"),
    [
        ("translated-stream", "house-claude", True),
        ("translated-plain", "house-claude", False),
        ("translated-sonnet", "claude-sonnet-4-5", True),
    ],
    ids=["stream", "plain", "sonnet-stream"],
)
def test_a_translated_request_costs_the_messages_usage_at_the_models_prices(
    gateway: Gateway, provider: Provider, key: str, model: str, stream: bool
) -> None:
    provider.usage[model] = MESSAGES_USAGE
    answer = oai(gateway, key).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What does this cost?"}],
        stream=stream,
        extra_headers={"x-request-id": f"cost-{key}"},
    )
    assert provider.requests[-1][0] == "/v1/messages"  # translated
    if isinstance(answer, openai.Stream):
        chunks = list(answer)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Priced."
        assert all(c.usage is None for c in chunks)  # not asked for, not sent
    else:
        assert answer.choices[0].message.content == "Priced."
        # The client is told the usage in its API: the cached tokens among the input.
        assert answer.usage is not None and answer.usage.prompt_tokens == 24500
    if model == "house-claude":
        expected, priced_as = HOUSE_CLAUDE_NANO, "none"
    else:
        expected, priced_as = sonnet_nano(MESSAGES_USAGE), "anthropic"
    assert_costs(
        gateway,
        key=key,
        request_id=f"cost-{key}",
        model=model,
        provider=priced_as,
        expected_nano=expected,
        tokens=MESSAGES_TOKENS,
    )


# -- a Messages client with cache_control ----------------------------------------------

SYSTEM = "You are a careful accountant. " * 60
#: Above 200,000 input tokens (cached included), claude-sonnet-4-5 costs more for every
#: token of the request, not only for those past 200,000.
LONG_USAGE = {
    "input_tokens": 150_000,
    "cache_read_input_tokens": 60_000,
    "cache_creation_input_tokens": 0,
    "output_tokens": 900,
}


@pytest.mark.parametrize(
    ("key", "usage", "stream"),
    [
        (
            "messages-stream",
            {**MESSAGES_USAGE, "cache_creation_input_tokens": 0, "cache_creation": {}},
            True,
        ),
        ("messages-plain", MESSAGES_USAGE, False),
        ("messages-long", LONG_USAGE, True),
    ],
    ids=["stream", "plain", "long-context"],
)
def test_a_cached_input_request_costs_its_cache_reads_at_their_price(
    gateway: Gateway, provider: Provider, key: str, usage: dict[str, Any], stream: bool
) -> None:
    model = "claude-sonnet-4-5"
    provider.usage[model] = usage
    bodies: list[bytearray] = []
    client = anthropic.Anthropic(
        base_url=gateway.url,
        api_key=KEYS[key],
        max_retries=0,
        http_client=recording_client(anthropic, bodies),
    )
    request: dict[str, Any] = {
        "model": model,
        "max_tokens": 1000,
        "system": [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "What does this cost?"}],
        "extra_headers": {"x-request-id": f"cost-{key}"},
    }
    if stream:
        with client.messages.stream(**request) as events:
            text = "".join(events.text_stream)
            message = events.get_final_message()
        assert text == "Priced."
    else:
        message = client.messages.create(**request)
    assert message.content[0].type == "text" and message.content[0].text == "Priced."
    assert message.usage.cache_read_input_tokens == usage["cache_read_input_tokens"]
    assert message.usage.output_tokens == usage["output_tokens"]
    sent = provider.requests[-1][1]
    assert sent["system"][0]["cache_control"] == {"type": "ephemeral"}
    expected = sonnet_nano(usage)
    read = usage["cache_read_input_tokens"]
    written = usage["cache_creation_input_tokens"]
    total = usage["input_tokens"] + read + written
    if usage is LONG_USAGE:
        # genai-prices prices this request at its long-context tier: every token.
        assert total > 200_000
        assert expected == nano(150_000 * pico("6") + 60_000 * pico("0.6") + 900 * pico("22.5"))
    tokens = {
        "input": total,
        "cached_input": read,
        "cache_write": written,
        "output": usage["output_tokens"],
    }
    assert_costs(
        gateway,
        key=key,
        request_id=f"cost-{key}",
        model=model,
        provider="anthropic",
        expected_nano=expected,
        tokens=tokens,
    )
    if stream:
        assert told_cost(bytes(bodies[-1])) == expected
    else:
        assert b"cost_usd" not in bytes(bodies[-1])  # a JSON answer: not in it


# -- the cost at the end of a chat stream ----------------------------------------------


@pytest.mark.parametrize(
    ("key", "model", "usage", "expected"),
    [
        ("chat-raw", "house-chat", CHAT_USAGE, CHAT_NANO),
        ("translated-raw", "house-claude", MESSAGES_USAGE, HOUSE_CLAUDE_NANO),
    ],
    ids=["chat", "translated"],
)
def test_a_chat_stream_read_to_its_end_ends_with_its_cost(
    gateway: Gateway, provider: Provider, key: str, model: str, usage: dict[str, Any], expected: int
) -> None:
    """The OpenAI SDK stops reading at ``[DONE]``, before the comment: read here to the
    end as any SSE client may."""
    provider.usage[model] = usage
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "stream": True}
    headers = {"authorization": f"Bearer {KEYS[key]}", "x-request-id": f"cost-{key}"}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers
    ) as answer:
        received = answer.read()
    assert b"\ndata: [DONE]\n\n: cost_usd=" in received
    assert told_cost(received) == expected
    record = gateway.access_record(f"cost-{key}")
    assert round(record["cost_usd"] * 1e9) == expected


# -- a model with no price -------------------------------------------------------------

UNPRICED_WARNING = "no price known for the model 'mystery-model'"


def test_an_unpriced_model_costs_nothing_is_counted_and_warned_about_once(
    gateway: Gateway, provider: Provider
) -> None:
    provider.usage["mystery-model"] = CHAT_USAGE
    client = oai(gateway, "unpriced")
    for n in range(3):
        client.chat.completions.create(
            model="mystery-model",
            messages=[{"role": "user", "content": "And this?"}],
            stream=n == 1,
            extra_headers={"x-request-id": f"cost-unpriced-{n}"},
        )
    for n in range(3):
        record = gateway.access_record(f"cost-unpriced-{n}")
        assert record["cost_priced"] is False and record["cost_usd"] == 0
        assert record["model"] == "mystery-model" and record["prompt_tokens"] == 5321
    unpriced = cost_series(gateway, "filterproxy_cost_unpriced_total")
    assert unpriced == {(("model", "mystery-model"),): 3.0}
    series = {
        labels: v for labels, v in cost_series(gateway).items() if ("key", "unpriced") in labels
    }
    assert series == {
        (
            ("key", "unpriced"),
            ("model", "mystery-model"),
            ("provider", "none"),
            ("team", "none"),
        ): 0.0
    }
    group = report_group(gateway, "unpriced")
    assert group["requests"] == 3 and group["nano_usd"] == 0 and group["input"] == 3 * 5321
    warnings = [line for line in gateway.process.lines if "no price known" in line]
    assert len(warnings) == 1 and UNPRICED_WARNING in warnings[0], warnings


# -- a request the keys filter refuses -------------------------------------------------


def test_a_refused_request_adds_nothing_to_the_metrics_or_the_report(
    gateway: Gateway, provider: Provider
) -> None:
    provider.usage["house-chat"] = CHAT_USAGE
    # Something is spent before, so that the report and the metrics have rows to keep.
    oai(gateway, "before-refusal").chat.completions.create(
        model="house-chat",
        messages=[{"role": "user", "content": "hello"}],
        extra_headers={"x-request-id": "cost-before-refusal"},
    )
    gateway.access_record("cost-before-refusal")
    assert report_group(gateway, "before-refusal")["requests"] == 1
    metrics_before = {
        family: cost_series(gateway, family)
        for family in (
            "filterproxy_cost_usd_total",
            "filterproxy_cost_unpriced_total",
            "filterproxy_cost_tokens_total",
        )
    }
    report_before = spend_report(gateway)
    received = len(provider.requests)
    wrong = openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key="fpk-cost-nobody-0123456789", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(
            model="house-chat",
            messages=[{"role": "user", "content": "Free, please."}],
            stream=True,
            extra_headers={"x-request-id": "cost-refused-0"},
        )
    keyless = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "house-chat", "messages": [{"role": "user", "content": "Free?"}]},
        headers={"x-request-id": "cost-refused-1"},
    )
    assert keyless.status_code == 401
    for n in range(2):
        record = gateway.access_record(f"cost-refused-{n}")
        assert record["status"] == 401 and record["cost_usd"] == 0
    assert len(provider.requests) == received
    assert spend_report(gateway) == report_before
    assert {family: cost_series(gateway, family) for family in metrics_before} == metrics_before
