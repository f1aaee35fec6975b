"""ArchGW / Plano configs read as they are: what each key becomes, what is ignored (and
said so), and the errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from filterproxy.chain.registry import build_chain
from filterproxy.config import ConfigError
from filterproxy.extensions.builtin import load_config, parse_config
from filterproxy.filters.resources import Resources
from filterproxy.server.cli import describe

CONF = Path(__file__).resolve().parents[2] / "conf"
KEYS = {"OPENAI_API_KEY": "sk-o", "ANTHROPIC_API_KEY": "sk-a", "GROQ_API_KEY": "gsk"}


def test_an_archgw_03_config_runs_as_it_is() -> None:
    config = load_config(CONF / "archgw.yaml", environ=KEYS)
    build_chain(config, Resources())
    assert config.listeners == ("tcp:12000:interface=127.0.0.1",)
    sonnet = config.clusters["anthropic-claude-sonnet-4-5"]
    assert sonnet.provider == "anthropic" and sonnet.apis == frozenset({"messages"})
    assert dict(sonnet.endpoints[0].request_headers.set)["x-api-key"] == "sk-a"
    assert sonnet.timeouts.first_byte == 30.0  # the listener's timeout
    assert (
        config.clusters["ollama-llama3.1"].endpoints[0].target("/v1/chat/completions", None)
        == "/v1/chat/completions"
    )
    routes = {r.name: r for r in config.routes}
    assert routes["openai-gpt-4.1-2025-04-14"].models == (
        "openai/gpt-4.1-2025-04-14",
        "gpt-4.1-2025-04-14",
    )
    assert routes["openai-gpt-4.1-2025-04-14"].upstream_model == "gpt-4.1-2025-04-14"
    default = config.routes[-1]
    assert default.models == () and default.cluster == "anthropic-claude-sonnet-4-5"
    assert default.upstream_model == "claude-sonnet-4-5"
    assert dict(config.aliases) == {"arch.claude.code.small.fast": "claude-haiku-4-5"}
    assert [f.type_name for f in config.filters][3:5] == ["route", "translate"]
    (warning,) = config.warnings
    assert "llm_providers[0].routing_preferences" in warning and "tracing" in warning


def test_a_plano_04_config_runs_as_it_is() -> None:
    config = load_config(CONF / "plano.yaml", environ=KEYS)
    build_chain(config, Resources())
    assert config.listeners == ("tcp:12000:interface=127.0.0.1",)
    openai = config.clusters["openai"]
    assert openai.retry.max_attempts == 3 and openai.timeouts.first_byte == 300.0
    wildcard = config.routes[0]
    assert wildcard.models == ("openai/*",)
    assert wildcard.upstream_model_for("openai/gpt-4o") == "gpt-4o"
    local = config.clusters["local-qwen3"]
    assert local.provider is None and local.apis == frozenset({"chat"})
    assert config.warnings == ()
    text = describe(config)
    assert "groq-llama-3.3-70b-versatile: provider groq at https://api.groq.com/openai/v1" in text
    assert "fast -> groq/llama-3.3-70b-versatile" in text


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("llm_providers: [{model: gpt-4o}]", "llm_providers[0].model"),
        ("llm_providers: [{model: nosuch/x}]", "llm_providers[0].model"),
        (
            "llm_providers: [{model: openai/gpt-4o, access_key: $UNSET_KEY}]",
            "llm_providers[0].access_key",
        ),
        ("llm_providers: [{model: openai/gpt-4o}]", "llm_providers[0]"),
        ("llm_providers: [{model: mine/x, provider_interface: openai}]", "llm_providers[0]"),
        ("llm_providers: []", "llm_providers"),
        (
            "model_providers: [{model: ollama/x}]\nlisteners: {egress_traffic: {address: 0.0.0.0}}",
            "listeners.egress_traffic",
        ),
    ],
)
def test_a_bad_archgw_config_names_the_key(text: str, path: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(text, environ={})
    assert raised.value.path == path, str(raised.value)


def test_ignored_listeners_and_keys_are_named() -> None:
    config = parse_config(
        """
version: v0.1
listeners:
  ingress_traffic: {address: 0.0.0.0, port: 10000}
  egress_traffic: {address: 0.0.0.0, port: 12000, tls: on}
llm_providers:
  - {model: ollama/llama3, http_host: example, passthrough_auth: true}
prompt_targets: []
ratelimits: []
""",
        environ={},
    )
    (warning,) = config.warnings
    for key in (
        "listeners.ingress_traffic",
        "listeners.egress_traffic.tls",
        "llm_providers[0].http_host",
        "llm_providers[0].passthrough_auth",
        "prompt_targets",
        "ratelimits",
    ):
        assert key in warning
    assert config.listeners == ("tcp:12000:interface=0.0.0.0",)
