"""Reading an ArchGW (Plano) config as it is: its providers, aliases and listeners
become this gateway's clusters, routes, aliases and listeners (no I/O but the
environment, for ``$VAR`` keys).

What is read: ``llm_providers`` / ``model_providers`` entries (``model: provider/id``,
``access_key``, ``base_url``, ``name``, ``default``, ``provider_interface``, ``headers``),
``model_aliases`` (``alias: {target: …}``), and ``listeners`` in both shapes (0.3's
``egress_traffic`` mapping, 0.4's list of ``type: model`` listeners: address, port,
``timeout``, ``max_retries``). Everything else has no counterpart here; each such key is
named in `Config.warnings`, which the gateway logs at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from filterproxy.config._providers import preset_named
from filterproxy.config._reader import ConfigError

__all__ = ["from_archgw", "is_archgw"]

_PROVIDER_KEYS = {"llm_providers", "model_providers"}
_ENTRY_KEYS = {
    "model",
    "access_key",
    "base_url",
    "name",
    "default",
    "provider_interface",
    "headers",
}
_ENV = re.compile(r"^\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?$")
#: provider_interface values, for providers with no preset here.
_INTERFACES = {"openai": "chat", "claude": "messages", "anthropic": "messages"}


def is_archgw(document: Any) -> bool:
    """Whether a YAML document is an ArchGW / Plano config."""
    return isinstance(document, dict) and bool(_PROVIDER_KEYS & set(document))


def _env(value: Any, path: str, environ: Mapping[str, str]) -> str:
    text = str(value)
    match = _ENV.match(text.strip())
    if not match:
        return text
    name = match.group(1)
    if not environ.get(name):
        raise ConfigError(path, f"environment variable {name} is not set; export it")
    return environ[name]


def _listeners(node: Any, warnings: list[str]) -> tuple[list[str], dict[str, Any]]:
    """(listener endpoints, cluster settings) of the ``listeners`` section."""
    found: list[str] = []
    settings: dict[str, Any] = {}
    entries: list[tuple[str, Any]] = []
    if isinstance(node, dict):  # 0.3: {egress_traffic: {...}, ingress_traffic: {...}}
        for name, entry in node.items():
            if name == "egress_traffic":
                entries.append((f"listeners.{name}", entry))
            else:
                warnings.append(f"listeners.{name} (only the egress listener is served)")
    elif isinstance(node, list):  # 0.4: [{type: model, name, port, ...}]
        for i, entry in enumerate(node):
            if isinstance(entry, dict) and entry.get("type", "model") == "model":
                entries.append((f"listeners[{i}]", entry))
            else:
                warnings.append(f"listeners[{i}] (only model listeners are served)")
    for path, entry in entries:
        if not isinstance(entry, dict) or "port" not in entry:
            raise ConfigError(path, "a listener needs its port, e.g. port: 12000")
        address = str(entry.get("address", "0.0.0.0"))
        found.append(f"tcp:{int(entry['port'])}:interface={address}")
        if "timeout" in entry:
            settings.setdefault("timeouts", {})["first_byte"] = str(entry["timeout"])
        if "max_retries" in entry:
            settings.setdefault("retry", {})["max_attempts"] = int(entry["max_retries"]) + 1
        for key in sorted(
            set(entry)
            - {"address", "port", "timeout", "max_retries", "name", "type", "message_format"}
        ):
            warnings.append(f"{path}.{key}")
    return found, settings


def _cluster_name(entry: Mapping[str, Any], provider: str, model_id: str, taken: set[str]) -> str:
    base = str(entry.get("name") or f"{provider}-{model_id}")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-") or provider
    unique, n = name, 2
    while unique in taken:
        unique, n = f"{name}-{n}", n + 1
    taken.add(unique)
    return unique


def from_archgw(
    document: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """This gateway's config document for an ArchGW config, and the keys it ignores.

    Raises:
        ConfigError: an entry cannot be read (the key path says which).
    """
    warnings: list[str] = []
    key = "model_providers" if "model_providers" in document else "llm_providers"
    if "model_providers" in document and "llm_providers" in document:
        warnings.append("llm_providers (model_providers is read instead)")
    entries = document.get(key)
    if not isinstance(entries, list) or not entries:
        raise ConfigError(key, "expected a list of providers, e.g. - model: openai/gpt-4o")
    listeners, settings = _listeners(document.get("listeners"), warnings)
    clusters: dict[str, Any] = {}
    routes: list[dict[str, Any]] = []
    default_route: dict[str, Any] | None = None
    taken: set[str] = set()
    for i, entry in enumerate(entries):
        path = f"{key}[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("model"), str):
            raise ConfigError(path, "each provider needs model: <provider>/<model id>")
        provider, slash, model_id = entry["model"].partition("/")
        if not slash or not model_id:
            raise ConfigError(
                f"{path}.model", f"{entry['model']!r}: write it as <provider>/<model id>"
            )
        cluster: dict[str, Any] = dict(settings)
        preset = preset_named(provider)
        interface = entry.get("provider_interface")
        if preset is not None:
            cluster["provider"] = preset.name
        elif interface in _INTERFACES:
            if "base_url" not in entry:
                raise ConfigError(path, f"provider {provider!r} is not built in: give its base_url")
            if _INTERFACES[interface] == "messages":
                cluster["provider"] = "anthropic"
            else:
                cluster["apis"] = ["chat"]
        else:
            raise ConfigError(
                f"{path}.model",
                f"unknown provider {provider!r}; give provider_interface: openai (or claude) "
                "and base_url for a provider that is not built in",
            )
        if "base_url" in entry:
            cluster["url"] = str(entry["base_url"])
        if "access_key" in entry:
            secret = _env(entry["access_key"], f"{path}.access_key", environ)
            if "provider" in cluster:
                cluster["api_key"] = secret
            else:
                cluster.setdefault("request_headers", {}).setdefault("set", {})["authorization"] = (
                    f"Bearer {secret}"
                )
        elif preset is not None and preset.needs_key:
            raise ConfigError(path, f"provider {provider!r} needs its access_key: $VAR")
        if isinstance(entry.get("headers"), dict):
            rules = cluster.setdefault("request_headers", {}).setdefault("set", {})
            for name, value in entry["headers"].items():
                rules[str(name)] = _env(value, f"{path}.headers.{name}", environ)
        for extra in sorted(set(entry) - _ENTRY_KEYS):
            warnings.append(f"{path}.{extra}")
        name = _cluster_name(entry, provider, model_id, taken)
        clusters[name] = cluster
        if model_id == "*":
            routes.append(
                {
                    "name": name,
                    "models": [f"{provider}/*"],
                    "cluster": name,
                    "strip_model_prefix": f"{provider}/",
                }
            )
        else:
            routes.append(
                {
                    "name": name,
                    "models": [entry["model"], model_id],
                    "cluster": name,
                    "upstream_model": model_id,
                }
            )
        if entry.get("default") is True:
            if default_route is not None:
                warnings.append(f"{path}.default (another provider is already the default)")
            else:
                default_route = {"name": f"{name} (default)", "cluster": name}
                if model_id != "*":
                    default_route["upstream_model"] = model_id
    if default_route is not None:
        routes.append(default_route)
    aliases: dict[str, str] = {}
    raw_aliases = document.get("model_aliases") or {}
    if not isinstance(raw_aliases, dict):
        raise ConfigError("model_aliases", "expected a mapping of alias: {target: model}")
    for alias, target in raw_aliases.items():
        value = target.get("target") if isinstance(target, dict) else target
        if not isinstance(value, str):
            raise ConfigError(f"model_aliases.{alias}", "needs target: <model>")
        aliases[str(alias)] = value
    for extra in sorted(set(document) - _PROVIDER_KEYS - {"version", "listeners", "model_aliases"}):
        warnings.append(extra)
    result: dict[str, Any] = {"clusters": clusters, "routes": routes, "aliases": aliases}
    if listeners:
        result["listeners"] = listeners
    return result, warnings
