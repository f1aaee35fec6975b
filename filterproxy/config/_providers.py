"""Provider presets: what a cluster that names its ``provider`` gets without writing it.

A preset is data: the base URL, how the key is presented, where each client API's paths
go, and which client APIs the provider speaks natively (``chat``: Chat Completions,
``messages``: Anthropic Messages, ``responses``: the Responses API). The translate filter
consults the last to decide whether a request passes through untouched or is translated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from filterproxy.http.apis import CHAT, MESSAGES, RESPONSES

__all__ = ["ALIASES", "PRESETS", "ProviderPreset", "auth_headers", "preset_named"]


@dataclass(frozen=True)
class ProviderPreset:
    """One provider's defaults (see the module's description)."""

    name: str
    #: The base URL (scheme, host, API prefix); None when the cluster must give its own.
    base_url: str | None
    #: How the key is sent: ``bearer`` (Authorization: Bearer), ``x-api-key``,
    #: ``api-key`` (Azure) or ``bearer+x-api-key``.
    auth: str
    apis: frozenset[str]
    #: Where a client path under ``/v1/`` goes, per client API, relative to the base
    #: URL's host (the base URL's own path is the default for every API).
    api_paths: tuple[tuple[str, str], ...] = ()
    #: Request headers every request gets.
    headers: tuple[tuple[str, str], ...] = ()
    #: Whether a request needs a key (local servers run without one).
    needs_key: bool = True
    #: What the provider calls the output-token limit of a chat completion.
    max_tokens_field: str = "max_tokens"
    #: Azure's classic paths: /openai/deployments/{model}/…?api-version=…
    deployments: bool = False


def _p(
    name: str,
    base_url: str | None,
    apis: tuple[str, ...] = (CHAT,),
    *,
    auth: str = "bearer",
    **extra: object,
) -> ProviderPreset:
    return ProviderPreset(name, base_url, auth, frozenset(apis), **extra)  # type: ignore[arg-type]


PRESETS: Final[dict[str, ProviderPreset]] = {
    p.name: p
    for p in (
        _p(
            "openai",
            "https://api.openai.com/v1",
            (CHAT, RESPONSES),
            max_tokens_field="max_completion_tokens",
        ),
        _p(
            "azure",
            None,
            (CHAT, RESPONSES),
            auth="api-key",
            deployments=True,
            max_tokens_field="max_completion_tokens",
        ),
        _p(
            "anthropic",
            "https://api.anthropic.com/v1",
            (MESSAGES,),
            auth="x-api-key",
            headers=(("anthropic-version", "2023-06-01"),),
        ),
        _p("gemini", "https://generativelanguage.googleapis.com/v1beta/openai"),
        _p("groq", "https://api.groq.com/openai/v1"),
        _p("mistral", "https://api.mistral.ai/v1"),
        _p(
            "deepseek",
            "https://api.deepseek.com/v1",
            (CHAT, MESSAGES),
            auth="bearer+x-api-key",
            api_paths=((MESSAGES, "/anthropic/v1"),),
        ),
        _p("together", "https://api.together.xyz/v1"),
        _p("openrouter", "https://openrouter.ai/api/v1"),
        _p("xai", "https://api.x.ai/v1", (CHAT, RESPONSES)),
        _p("ollama", "http://127.0.0.1:11434/v1", (CHAT, MESSAGES), needs_key=False),
        _p("vllm", "http://127.0.0.1:8000/v1", (CHAT, MESSAGES), needs_key=False),
        _p("llamacpp", "http://127.0.0.1:8080/v1", (CHAT, MESSAGES), needs_key=False),
    )
}
#: Other names users (and ArchGW configs) give the same providers.
ALIASES: Final = {
    "azure_openai": "azure",
    "claude": "anthropic",
    "google": "gemini",
    "together_ai": "together",
    "grok": "xai",
    "llama.cpp": "llamacpp",
    "llama_cpp": "llamacpp",
}


def preset_named(name: str) -> ProviderPreset | None:
    """The preset called *name* (or one of its other names), or None."""
    return PRESETS.get(ALIASES.get(name, name))


def auth_headers(preset: ProviderPreset, key: str | None) -> tuple[tuple[str, str], ...]:
    """The headers that carry *key* to *preset*'s provider."""
    if not key:
        return ()
    if preset.auth == "x-api-key":
        return (("x-api-key", key),)
    if preset.auth == "api-key":
        return (("api-key", key),)
    if preset.auth == "bearer+x-api-key":
        return (("authorization", f"Bearer {key}"), ("x-api-key", key))
    return (("authorization", f"Bearer {key}"),)
