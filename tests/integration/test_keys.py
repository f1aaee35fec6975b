"""Gateway keys and their limits, counted in a real redis-server that this module starts,
with the official SDKs as clients: two gateways sharing one Redis, tokens of streams
charged from their usage, clients that hang up, the SDKs' retries, Redis going away."""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from filterproxy.extensions.keys.config import hash_key

from .conftest import (
    Gateway,
    RedisServer,
    closed_port,
    mock_upstream,
    start_gateway,
    wait_until,
)

KEYS = {
    name: f"fpk-test-{name}-0123456789"
    for name in ("limited", "usage", "hangup", "budget", "single", "models", "outage", "plain")
}
LIMITS = {
    "limited": "{requests_per_minute: 10}",
    "usage": "{tokens_per_minute: 1000000, tokens_per_day: 1000000, tokens_per_month: 9000000}",
    "hangup": "{tokens_per_minute: 1000000, concurrent_requests: 2, tokens_per_day: 1000000}",
    "budget": "{tokens_per_day: 1}",
    "single": "{concurrent_requests: 1}",
    "models": "{}",
    "outage": "{requests_per_minute: 1000}",
    "plain": "{}",
}


def keys_block() -> str:
    lines = ["keys:"]
    for name, key in KEYS.items():
        lines.append(f"  - name: {name}")
        lines.append(f"    hash: sha256:{hash_key(key)}")
        lines.append(f"    limits: {LIMITS[name]}")
        if name == "models":
            lines.append('    models: ["demo-*"]')
    return "\n".join(lines)


def config(mock_port: int, redis_url: str, on_error: str = "open") -> str:
    return f"""
clusters:
  mock: {{url: "http://127.0.0.1:{mock_port}", apis: [chat]}}
redis: {{url: "{redis_url}", timeout: 2s, on_error: {on_error}}}
{keys_block()}
"""


@pytest.fixture(scope="module")
def mock_port() -> Iterator[int]:
    """The gateway's own mock upstream (chat completions; 50 ms between streamed words)."""
    with mock_upstream(0.05) as port:
        yield port


def gateway_with(text: str, tmp_path: Path) -> Gateway:
    """A gateway on *text*; it connects to Redis at its first request with a key (which
    waits for the connection, within the timeout)."""
    return start_gateway(text, tmp_path)


@pytest.fixture(scope="module")
def gateways(
    mock_port: int, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Gateway]]:
    """Two gateway processes on one Redis (as two replicas behind a load balancer)."""
    text = config(mock_port, redis_server.url)
    first = gateway_with(text, tmp_path_factory.mktemp("a"))
    second = gateway_with(text, tmp_path_factory.mktemp("b"))
    try:
        yield first, second
    finally:
        first.process.stop()
        second.process.stop()


def oai(gateway: Gateway, name: str | None, **options: Any) -> openai.OpenAI:
    key = KEYS[name] if name else "fpk-not-a-key-of-this-gateway"
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, **{"max_retries": 0, **options})


def ask(client: openai.OpenAI, words: str = "hi") -> Any:
    return client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": words}]
    )


def counter_sum(redis: RedisServer, key: str, kind: str) -> int:
    names = redis.command("--scan", "--pattern", f"fp:{{{key}}}:{kind}:*").split()
    return sum(int(redis.command("GET", n) or 0) for n in names)


def not_at_a_minutes_end() -> None:
    """The per-minute windows are the UTC minute: keep a test inside one."""
    seconds = time.time() % 60
    if seconds > 45:
        time.sleep(61 - seconds)


# -- who may use the gateway ---------------------------------------------------------------


def test_a_missing_or_unknown_key_is_401_in_each_sdks_shape_and_never_echoed(
    gateways: tuple[Gateway, Gateway],
) -> None:
    gateway = gateways[0]
    with pytest.raises(openai.AuthenticationError) as raised:
        ask(oai(gateway, None))
    assert raised.value.code == "invalid_api_key"
    assert "fpk-not-a-key" not in raised.value.response.text
    claude = anthropic.Anthropic(base_url=gateway.url, api_key="sk-ant-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as denied:
        claude.messages.create(
            model="demo", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert denied.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert "sk-ant-wrong" not in denied.value.response.text
    bare = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "demo"})
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "missing_api_key"


def test_a_model_the_key_may_not_use_is_403(gateways: tuple[Gateway, Gateway]) -> None:
    with pytest.raises(openai.PermissionDeniedError) as raised:
        ask(oai(gateways[0], "models"))
    assert raised.value.code == "model_not_allowed" and "demo-*" in raised.value.message


def test_the_key_never_reaches_the_provider_and_names_the_access_log(
    gateways: tuple[Gateway, Gateway],
) -> None:
    response = oai(gateways[0], "plain").chat.completions.with_raw_response.create(
        model="demo", messages=[{"role": "user", "content": "who"}]
    )
    record = gateways[0].access_record(response.headers["x-request-id"])
    assert record["key"] == "plain"
    assert 'filterproxy_key_requests_total{key="plain",status_class="2xx"}' in gateways[0].metrics()
    assert "x-ratelimit-limit-requests" not in response.headers  # a key without limits
    # Redis's client is made once the gateway's reactor runs (not while the config is
    # read, which would install Twisted's default reactor first).
    assert (
        "reactor class: filterproxy.runtime._epoll.GatewayReactor" in gateways[0].process.output()
    )


# -- limits shared through Redis -----------------------------------------------------------


def test_two_gateways_sharing_redis_admit_exactly_the_limit(
    gateways: tuple[Gateway, Gateway],
) -> None:
    not_at_a_minutes_end()
    clients = [oai(g, "limited") for g in gateways]

    def one(i: int) -> int:
        try:
            ask(clients[i % 2])
            return 200
        except openai.RateLimitError as e:
            assert e.response.headers["x-ratelimit-limit-requests"] == "10"
            assert e.response.headers["x-ratelimit-remaining-requests"] == "0"
            assert 0 < int(e.response.headers["retry-after"]) <= 60
            return 429

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(one, range(30)))
    assert statuses.count(200) == 10 and statuses.count(429) == 20


def test_stream_tokens_are_charged_from_the_providers_usage(
    gateways: tuple[Gateway, Gateway], redis_server: RedisServer
) -> None:
    not_at_a_minutes_end()
    raw = oai(gateways[1], "usage").chat.completions.with_raw_response.create(
        model="demo", stream=True, messages=[{"role": "user", "content": "count my tokens"}]
    )
    assert raw.headers["x-ratelimit-limit-tokens"] == "1000000"
    chunks = list(raw.parse())
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    record = gateways[1].access_record(raw.headers["x-request-id"])
    used = record["prompt_tokens"] + record["completion_tokens"]
    wait_until(lambda: counter_sum(redis_server, "usage", "d") > 0, timeout=5)
    assert counter_sum(redis_server, "usage", "t") == used  # the reservation replaced
    assert counter_sum(redis_server, "usage", "d") == used  # the day's budget charged
    assert counter_sum(redis_server, "usage", "m") == used


def test_a_client_that_hangs_up_mid_stream_is_charged_its_input_and_frees_its_slot(
    gateways: tuple[Gateway, Gateway], redis_server: RedisServer
) -> None:
    not_at_a_minutes_end()
    body = json.dumps(
        {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "w " * 60}]}
    ).encode()
    headers = {"authorization": f"Bearer {KEYS['hangup']}", "content-type": "application/json"}
    with httpx.stream(
        "POST", f"{gateways[0].url}/v1/chat/completions", content=body, headers=headers
    ) as response:
        request_id = response.headers["x-request-id"]
        next(response.iter_raw())  # one chunk, then the client goes
    record = gateways[0].access_record(request_id)
    assert record["outcome"] == "client_gone" and record["completion_tokens"] is None
    estimate = math.ceil(len(body) / 4)
    wait_until(lambda: counter_sum(redis_server, "hangup", "d") == estimate, timeout=5)
    assert counter_sum(redis_server, "hangup", "t") == estimate
    assert redis_server.command("ZCARD", "fp:{hangup}:c") == "0"


def test_a_spent_budget_is_insufficient_quota_and_the_sdk_does_not_retry_it(
    gateways: tuple[Gateway, Gateway],
) -> None:
    ask(oai(gateways[0], "budget"))  # admitted, then charged far more than 1 token
    client = oai(gateways[1], "budget", max_retries=3)
    with pytest.raises(openai.RateLimitError) as raised:
        ask(client)
    assert raised.value.code == "insufficient_quota"
    assert raised.value.response.headers["x-should-retry"] == "false"
    # The SDK read x-should-retry: one attempt, not four.
    gateways[1].access_record(raised.value.response.headers["x-request-id"])
    refused = [
        line
        for line in gateways[1].process.output().splitlines()
        if '"key":"budget"' in line and '"status":429' in line
    ]
    assert len(refused) == 1


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_the_sdks_wait_as_retry_after_ms_says_then_succeed(
    gateways: tuple[Gateway, Gateway], sdk: str
) -> None:
    gateway = gateways[0]
    holder = httpx.Client(timeout=30)
    hold = holder.build_request(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json={
            "model": "demo",
            "stream": True,
            "messages": [{"role": "user", "content": "w " * 30}],
        },
        headers={"authorization": f"Bearer {KEYS['single']}"},
    )
    held = holder.send(hold, stream=True)  # holds the key's only slot for ~1.5 s
    try:
        started = time.monotonic()
        since = time.time()
        if sdk == "openai":
            answer = oai(
                gateway, "single", max_retries=5
            ).chat.completions.with_raw_response.create(
                model="demo", messages=[{"role": "user", "content": "after you"}]
            )
        else:
            claude = anthropic.Anthropic(
                base_url=gateway.url, api_key=KEYS["single"], max_retries=5
            )
            answer = claude.messages.with_raw_response.create(
                model="demo", max_tokens=20, messages=[{"role": "user", "content": "after you"}]
            )
        waited = time.monotonic() - started
        assert answer.http_response.status_code == 200
    finally:
        held.close()
        holder.close()
    refusals = [
        record
        for line in gateway.process.output().splitlines()
        if '"key":"single"' in line and '"status":429' in line
        for record in [json.loads(line[line.index("{") :])]
        if record["time"] >= since
    ]
    assert refusals, "the first attempts were refused"
    # retry-after-ms is 1000 for a busy concurrency slot; without it the SDKs' own
    # backoff starts at 0.5 s: n refusals took at least n seconds of waiting.
    assert waited >= 0.95 * len(refusals)


# -- Redis going away ----------------------------------------------------------------------


@pytest.mark.parametrize("on_error", ["closed", "open"])
def test_redis_stopped_mid_test_applies_the_policy_and_recovery_follows(
    mock_port: int, redis_server: RedisServer, tmp_path: Path, on_error: str
) -> None:
    own = RedisServer(redis_server.binary, closed_port())
    own.start()
    gateway = gateway_with(config(mock_port, own.url, on_error), tmp_path)
    try:
        client = oai(gateway, "outage", timeout=5.0)
        ask(client)
        assert counter_sum(own, "outage", "r") == 1
        own.stop()
        if on_error == "closed":
            with pytest.raises(openai.InternalServerError) as raised:
                ask(client)
            assert raised.value.status_code == 503
            assert raised.value.code == "limits_unavailable"
            assert raised.value.response.headers["retry-after"] == "1"
        else:
            answer = client.chat.completions.with_raw_response.create(
                model="demo", messages=[{"role": "user", "content": "still here"}]
            )
            assert answer.http_response.status_code == 200
            assert answer.headers["x-ratelimit-limit-requests"] == "1000"  # counted locally
        own.start()  # an empty Redis on the same port: the gateway reconnects by itself

        def counted_in_redis() -> bool:
            try:
                ask(client)
            except openai.APIStatusError:
                return False
            return counter_sum(own, "outage", "r") >= 1

        wait_until(counted_in_redis, timeout=15)
    finally:
        gateway.process.stop()
        own.stop()


def test_redis_that_stops_answering_right_after_connecting_fails_a_call_within_its_timeout(
    mock_port: int, redis_server: RedisServer, tmp_path: Path
) -> None:
    # The handshake of a connection (PING) may take ten times redis.timeout (here 2 s):
    # a call made after it must still fail within its own 2 s, not at the handshake's
    # 20 s — the client's 10 s bound is the correctness bound, not a timing claim.
    own = RedisServer(redis_server.binary, closed_port())
    own.start()
    assert own.process is not None
    gateway = gateway_with(config(mock_port, own.url, "closed"), tmp_path)
    try:
        client = oai(gateway, "outage", timeout=10.0)
        ask(client)  # connected: the handshake was answered
        os.kill(own.process.pid, signal.SIGSTOP)  # Redis hangs, its connection open
        try:
            with pytest.raises(openai.InternalServerError) as raised:
                ask(client)
        finally:
            os.kill(own.process.pid, signal.SIGCONT)
        assert raised.value.status_code == 503
        assert raised.value.code == "limits_unavailable"
        # The log says the limit that was applied: redis.timeout.
        gateway.process.wait_for(r"Redis did not answer within 2000 ms \(redis\.timeout\)")
        wait_until(lambda: _answered(client), timeout=15)  # reconnected by itself
    finally:
        gateway.process.stop()
        own.stop()


def _answered(client: openai.OpenAI) -> bool:
    try:
        ask(client)
    except openai.APIStatusError:
        return False
    return True


def test_an_open_gateway_on_a_public_address_says_so(mock_port: int, tmp_path: Path) -> None:
    text = f"""
listeners: ["tcp:0"]
clusters:
  mock: {{url: "http://127.0.0.1:{mock_port}"}}
"""
    gateway = start_gateway(text, tmp_path, listen=False, admin=False)
    try:
        gateway.process.wait_for(
            r"no gateway keys are configured and the gateway listens on 0\.0\.0\.0"
        )
    finally:
        gateway.process.stop()
    quiet = start_gateway(
        text.replace('"tcp:0"', '"tcp:0:interface=127.0.0.1"'), tmp_path, listen=False, admin=False
    )
    quiet.process.stop()  # all it logged is read
    assert "filterproxy listening" in quiet.process.output()
    assert "no gateway keys" not in quiet.process.output()


def test_a_reload_reads_the_keys_file_again(mock_port: int, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.yaml"
    entry = "keys:\n  - name: {name}\n    hash: sha256:{digest}\n"
    keys_file.write_text(entry.format(name="first", digest=hash_key("fpk-first-key-0000")))
    gateway = start_gateway(
        f"""
clusters:
  mock: {{url: "http://127.0.0.1:{mock_port}"}}
keys_file: {keys_file}
""",
        tmp_path,
    )
    try:
        late = openai.OpenAI(
            base_url=f"{gateway.url}/v1", api_key="fpk-late-key-1111", max_retries=0
        )
        with pytest.raises(openai.AuthenticationError):
            ask(late)
        keys_file.write_text(
            entry.format(name="late", digest=hash_key("fpk-late-key-1111"))  # "first" revoked
        )
        reloaded = httpx.post(f"{gateway.admin_url}/reload", timeout=10)
        assert reloaded.status_code == 200, reloaded.text
        assert ask(late).choices[0].message.content
        first = openai.OpenAI(
            base_url=f"{gateway.url}/v1", api_key="fpk-first-key-0000", max_retries=0
        )
        with pytest.raises(openai.AuthenticationError):
            ask(first)
    finally:
        gateway.process.stop()
