"""Gateway keys in the config, the keys command, and the limits' pure parts: estimates,
refusals and the headers OpenAI's clients read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from filterproxy.chain.registry import build_chain
from filterproxy.config import ConfigError
from filterproxy.extensions.builtin import parse_config
from filterproxy.extensions.keys.config import GatewayKeys, KeyLimits, hash_key
from filterproxy.extensions.keys.limits import (
    Admission,
    estimate_tokens,
    month_end_ms,
    rate_limit_headers,
    refusal,
)
from filterproxy.filters.resources import Resources
from filterproxy.server.cli import main

BASE = "clusters: {c: {url: 'http://127.0.0.1:9'}}\n"
HASH = "sha256:" + hash_key("fpk-secret")


def test_keys_new_prints_a_key_and_an_entry_that_loads(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["keys", "new", "team-a"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"(fpk-\S+)", out).group(1)  # type: ignore[union-attr]
    entry = out[out.index("  - name:") :]
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text("keys:\n" + entry)
    config = parse_config(BASE + f"keys_file: {keys_file}\n", environ={})
    keys = config.section(GatewayKeys)
    assert keys is not None
    (loaded,) = keys.gateway_keys
    assert loaded.name == "team-a" and loaded.digest == hash_key(key)
    assert keys.keys_file == str(keys_file)
    assert [f.type_name for f in config.filters[:3]] == ["delivery", "spend", "keys"]
    assert {
        "type_name": config.filters[-1].type_name,
        **config.filters[-1].options,
    } == {"type_name": "usage", "include_usage": True}
    build_chain(config, Resources())
    assert main(["keys", "new", "bad name!"]) == 2


def test_a_key_with_limits() -> None:
    config = parse_config(
        BASE
        + f"keys: [{{name: a, hash: '{HASH}', models: ['gpt-*'], limits: {{requests_per_minute: 5, tokens_per_day: 9}}}}]\n"
        + "redis: {url: 'redis://:pw@127.0.0.1:6379/2', timeout: 50ms, on_error: closed}\n",
        environ={},
    )
    keys = config.section(GatewayKeys)
    assert keys is not None
    (key,) = keys.gateway_keys
    assert key.models == ("gpt-*",)
    assert key.limits == KeyLimits(requests_per_minute=5, tokens_per_day=9)
    assert config.redis is not None and config.redis.timeout == 0.05
    assert config.redis.on_error == "closed"


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("keys: [{name: a}]", "keys[0]"),
        ("keys: [{name: a, hash: 'fpk-secret'}]", "keys[0].hash"),
        (f"keys: [{{name: 'a b', hash: '{HASH}'}}]", "keys[0].name"),
        (f"keys: [{{name: a, hash: '{HASH}'}}, {{name: a, hash: '{HASH}'}}]", "keys[1]"),
        (f"keys: [{{name: a, hash: '{HASH}', limits: {{rpm: 3}}}}]", "keys[0].limits.rpm"),
        ("keys_file: /no/such/keys.yaml", "keys_file"),
        ("redis: 'http://127.0.0.1'", "redis"),
        ("redis: {url: 'redis://x', on_error: maybe}", "redis.on_error"),
        ("redis: {url: 'redis://x', timeout: 0s}", "redis.timeout"),
    ],
)
def test_bad_keys_config_names_the_key(text: str, path: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(BASE + text + "\n", environ={})
    assert raised.value.path == path, str(raised.value)


def test_the_keys_filter_needs_keys() -> None:
    with pytest.raises(ConfigError) as raised:
        build_chain(
            parse_config(BASE + "filters: [{type: keys}, {type: route}]\n", environ={}), Resources()
        )
    assert "keys new" in str(raised.value)


def test_estimates_reserve_the_input_and_a_bounded_output() -> None:
    assert estimate_tokens(400, {"max_tokens": 50}) == (100, 50)
    assert estimate_tokens(400, {"max_completion_tokens": 100_000}) == (100, 4096)
    assert estimate_tokens(1, None) == (1, 1024)


def test_refusals_and_headers_say_which_limit_and_when() -> None:
    limits = KeyLimits(requests_per_minute=60, tokens_per_minute=1000, tokens_per_month=5)
    rate = Admission(False, "requests_per_minute", 45190, remaining_tokens=300, reset_ms=45190)
    message, code, headers = refusal("team-a", limits, rate)
    assert code == "rate_limit_exceeded" and "requests per minute (limit 60)" in message
    named = dict(headers)
    assert named["retry-after"] == "46" and named["retry-after-ms"] == "45190"
    assert named["x-ratelimit-limit-requests"] == "60"
    assert named["x-ratelimit-remaining-requests"] == "0"
    assert named["x-ratelimit-remaining-tokens"] == "300"
    assert named["x-ratelimit-reset-tokens"] == "45.19s"
    quota = Admission(False, "tokens_per_month", 3 * 86_400_000)
    message, code, headers = refusal("team-a", limits, quota)
    assert code == "insufficient_quota" and ("x-should-retry", "false") in headers
    assert "budget of 5 tokens per month" in message
    admitted = Admission(True, remaining_requests=59, remaining_tokens=0, reset_ms=12)
    assert dict(rate_limit_headers(limits, admitted))["x-ratelimit-reset-requests"] == "12ms"
    assert rate_limit_headers(KeyLimits(concurrent_requests=1), admitted) == []


def test_month_end_is_the_next_utc_month() -> None:
    # 2026-12-02T17:00Z -> 2027-01-01T00:00Z
    assert month_end_ms(1_796_230_800_000) == 1_798_761_600_000
