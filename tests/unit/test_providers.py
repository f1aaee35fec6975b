"""Provider presets: the URL, key headers and paths a cluster gets from its provider,
and the errors that name the key."""

from __future__ import annotations

import pytest

from filterproxy.config import ConfigError
from filterproxy.config._providers import PRESETS
from filterproxy.extensions.builtin import parse_config


def cluster(text: str, environ: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return parse_config(f"clusters:\n  c: {text}\n", environ=environ or {}).clusters["c"]


@pytest.mark.parametrize(
    ("text", "url", "chat_path", "messages_path", "headers"),
    [
        (
            "{provider: openai, api_key: k}",
            "https://api.openai.com/v1",
            "/v1/chat/completions",
            None,
            {"authorization": "Bearer k"},
        ),
        (
            "{provider: anthropic, api_key: k}",
            "https://api.anthropic.com/v1",
            None,
            "/v1/messages",
            {"x-api-key": "k", "anthropic-version": "2023-06-01"},
        ),
        (
            "{provider: groq, api_key: k}",
            "https://api.groq.com/openai/v1",
            "/openai/v1/chat/completions",
            None,
            {"authorization": "Bearer k"},
        ),
        (
            "{provider: gemini, api_key: k}",
            "https://generativelanguage.googleapis.com/v1beta/openai",
            "/v1beta/openai/chat/completions",
            None,
            {"authorization": "Bearer k"},
        ),
        (
            "{provider: deepseek, api_key: k}",
            "https://api.deepseek.com/v1",
            "/v1/chat/completions",
            "/anthropic/v1/messages",
            {"authorization": "Bearer k", "x-api-key": "k"},
        ),
        (
            "{provider: openrouter, api_key: k}",
            "https://openrouter.ai/api/v1",
            "/api/v1/chat/completions",
            None,
            {"authorization": "Bearer k"},
        ),
        (
            "{provider: ollama}",
            "http://127.0.0.1:11434/v1",
            "/v1/chat/completions",
            "/v1/messages",
            {},
        ),
        (
            "{provider: azure, url: 'https://r.openai.azure.com', api_key: k}",
            "https://r.openai.azure.com",
            "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
            None,
            {"api-key": "k"},
        ),
        (
            "{provider: azure, url: 'https://r.openai.azure.com', api_key: k, api_version: v1}",
            "https://r.openai.azure.com",
            "/openai/v1/chat/completions",
            None,
            {"api-key": "k"},
        ),
        (
            "{provider: azure_openai, url: 'https://r.openai.azure.com/openai/v1', api_key: k}",
            "https://r.openai.azure.com/openai/v1",
            "/openai/v1/chat/completions",
            None,
            {"api-key": "k"},
        ),
        (
            "{provider: openai, api_key: k, url: 'http://127.0.0.1:9000'}",
            "http://127.0.0.1:9000",
            "/v1/chat/completions",
            None,
            {"authorization": "Bearer k"},
        ),
    ],
)
def test_a_preset_gives_url_paths_and_key(
    text: str, url: str, chat_path: str | None, messages_path: str | None, headers: dict[str, str]
) -> None:
    c = cluster(text)
    endpoint = c.endpoints[0]
    assert endpoint.url == url
    if chat_path:
        assert "chat" in c.apis
        assert endpoint.target("/v1/chat/completions", "gpt-4o") == chat_path
    if messages_path:
        assert "messages" in c.apis
        assert endpoint.target("/v1/messages", "m") == messages_path
    assert dict(endpoint.request_headers.set) == headers


def test_the_clusters_own_rules_win_over_the_preset() -> None:
    c = cluster(
        "{provider: anthropic, api_key: k, request_headers: {set: {anthropic-version: '2099-01-01'}}}"
    )
    assert dict(c.endpoints[0].request_headers.set) == {"x-api-key": "k"}
    assert dict(c.headers.request.set) == {"anthropic-version": "2099-01-01"}


def test_apis_override_and_a_plain_cluster_speaks_everything() -> None:
    assert cluster("{url: 'http://h', apis: [chat]}").apis == frozenset({"chat"})
    assert cluster("{url: 'http://h'}").apis == frozenset({"chat", "messages", "responses"})
    assert cluster("{url: 'http://h/base'}").endpoints[0].target("/v1/x", None) == "/base/v1/x"


def test_every_preset_is_usable() -> None:
    for name, preset in PRESETS.items():
        text = (
            f"{{provider: {name}, api_key: k"
            + (", url: 'https://x'" if preset.base_url is None else "")
            + "}"
        )
        assert cluster(text).provider == name


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        ("{provider: nosuch}", "clusters.c.provider", "presets: anthropic, azure"),
        ("{provider: openai}", "clusters.c", "api_key: ${OPENAI_API_KEY}"),
        ("{provider: azure, api_key: k}", "clusters.c", "give its url"),
        (
            "{provider: openai, api_key: k, api_version: v1}",
            "clusters.c.api_version",
            "takes no api_version",
        ),
        ("{url: 'http://h', api_key: k}", "clusters.c.api_key", "need a provider"),
        ("{url: 'http://h', apis: [grpc]}", "clusters.c.apis", "unknown API 'grpc'"),
        ("{provider: openai, api_key: '${MISSING}'}", "clusters.c.api_key", "MISSING is not set"),
    ],
)
def test_a_bad_provider_cluster_names_its_key(text: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as raised:
        cluster(text)
    assert raised.value.path == path and words in raised.value.problem, str(raised.value)
