"""Clusters: endpoints, connection settings, timeouts, retries, outlier detection."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit, urlunsplit

from filterproxy.config._extension import ProviderSchema, ProviderSettings, Section
from filterproxy.config._headers import parse_header_policy, parse_header_rules
from filterproxy.config._providers import PRESETS, ProviderPreset, auth_headers, preset_named
from filterproxy.config._reader import Node
from filterproxy.config._types import (
    RETRY_CONDITIONS,
    ClusterConfig,
    EndpointConfig,
    HeaderPolicy,
    HeaderRules,
    OutlierDetection,
    RetryPolicy,
    Timeouts,
)
from filterproxy.http.apis import ALL_APIS

_CLUSTER_KEYS = {
    "url",
    "endpoints",
    "timeouts",
    "retry",
    "outlier_detection",
    "max_connections",
    "max_idle_connections",
    "idle_connection_timeout",
    "tls",
    "request_headers",
    "response_headers",
    "protocol",
    "ping_interval",
    "ping_timeout",
    "provider",
    "api_key",
    "api_version",
    "apis",
}
#: Azure's classic API version when the cluster names none (the latest GA one).
DEFAULT_AZURE_API_VERSION = "2024-10-21"
PROTOCOLS = ("auto", "http1", "http2")
_ENDPOINT_KEYS = {"url", "weight", "request_headers"}
_TIMEOUT_KEYS = {f.name for f in fields(Timeouts)}
_RETRY_KEYS = {f.name for f in fields(RetryPolicy)}
_OUTLIER_KEYS = {f.name for f in fields(OutlierDetection)}


def parse_clusters(
    node: Node, providers: Mapping[str, ProviderSchema] | None = None
) -> dict[str, ClusterConfig]:
    """The ``clusters`` mapping; *providers* are the extensions' (`ProviderSchema`)."""
    clusters = {name: parse_cluster(name, cnode, providers or {}) for name, cnode in node.items()}
    if not clusters:
        raise node.error(
            "no clusters defined; add at least one, e.g. "
            "clusters: {openai: {url: https://api.openai.com}}"
        )
    return clusters


def _preset(
    keys: Mapping[str, Node], providers: Mapping[str, ProviderSchema]
) -> ProviderPreset | None:
    if "provider" not in keys:
        return None
    name = keys["provider"].string()
    preset = preset_named(name)
    if preset is None:
        raise keys["provider"].error(
            f"unknown provider {name!r}; presets: {', '.join(sorted({*PRESETS, *providers}))} "
            "(for another OpenAI-compatible server, leave provider out and give url and apis)"
        )
    return preset


#: The core's cluster keys a provider of an extension takes (its own keys besides).
_PROVIDER_CLUSTER_KEYS: Final = _CLUSTER_KEYS - {"api_key", "api_version", "apis"}


def _extension_provider(
    node: Node, providers: Mapping[str, ProviderSchema]
) -> tuple[ProviderSchema, dict[str, Node]] | None:
    """The extension's provider a cluster names, and the cluster's keys; None for the
    core's presets (or no provider)."""
    value = node.value
    if not isinstance(value, dict) or not isinstance(value.get("provider"), str):
        return None
    schema = providers.get(value["provider"])
    if schema is None or preset_named(value["provider"]) is not None:
        return None
    return schema, dict(node.mapping(_PROVIDER_CLUSTER_KEYS | schema.keys))


def parse_cluster(
    name: str, node: Node, providers: Mapping[str, ProviderSchema] | None = None
) -> ClusterConfig:
    extension = _extension_provider(node, providers or {})
    settings: ProviderSettings | None = None
    if extension is not None:
        schema, all_keys = extension
        owned = {k: n for k, n in all_keys.items() if k in schema.keys}
        settings = schema.parse(Section(owned, node.path, node.environ))
        keys = {k: n for k, n in all_keys.items() if k not in schema.keys and k != "provider"}
        if "url" not in keys and "endpoints" not in keys:
            keys["url"] = Node(settings.base_url, f"{node.path}.provider", node.environ)
    else:
        keys = dict(node.mapping(_CLUSTER_KEYS))
    preset = _preset(keys, providers or {})
    if "url" in keys and "endpoints" in keys:
        raise node.error(
            "give either 'url' (one upstream) or 'endpoints' (a list of {url, weight}), not both"
        )
    headers = parse_header_policy(keys)
    # The cluster's own rules for authorization win over credentials in a URL.
    taken = _touches_authorization(headers.request)
    if "url" in keys:
        endpoints: tuple[EndpointConfig, ...] = (
            parse_endpoint_url(keys["url"], authorization_taken=taken),
        )
    elif "endpoints" in keys:
        endpoints = tuple(_parse_endpoint(n, taken) for n in keys["endpoints"].sequence())
        if not endpoints:
            raise keys["endpoints"].error("needs at least one endpoint")
    elif preset is not None and preset.base_url is not None:
        endpoints = (parse_endpoint_url(Node(preset.base_url, f"{node.path}.provider", {})),)
    elif preset is not None:
        raise node.error(
            f"provider {preset.name!r} has no default address; give its url, "
            "e.g. url: https://RESOURCE.openai.azure.com"
        )
    else:
        raise node.error(
            "give either 'url' (one upstream) or 'endpoints' (a list of {url, weight}), "
            "e.g. url: http://127.0.0.1:8000 — or a provider, e.g. provider: openai"
        )

    tls_verify, files = True, {}
    if "tls" in keys:
        tls = keys["tls"].mapping({"verify", "ca_file", "client_cert", "client_key"})
        if "verify" in tls:
            tls_verify = tls["verify"].boolean()
        for key in ("ca_file", "client_cert", "client_key"):
            if key in tls:
                files[key] = tls[key].string()
                if not Path(files[key]).is_file():
                    raise tls[key].error(f"no such file: {files[key]!r}")
        if "client_key" in files and "client_cert" not in files:
            raise tls["client_key"].error("a client_key needs its client_cert")
    protocol = keys["protocol"].string() if "protocol" in keys else "auto"
    if protocol not in PROTOCOLS:
        raise keys["protocol"].error(
            f"unknown protocol {protocol!r}; use one of: {', '.join(PROTOCOLS)}"
        )

    apis = ALL_APIS
    max_tokens_field = ClusterConfig.max_tokens_field
    if settings is not None:
        # The extension's filter shapes every request's path and credentials.
        apis = settings.apis
    elif preset is not None:
        endpoints = _apply_preset(preset, keys, node, endpoints, headers)
        apis = preset.apis
        max_tokens_field = preset.max_tokens_field
    elif "api_key" in keys or "api_version" in keys:
        raise (keys.get("api_key") or keys["api_version"]).error(
            "api_key and api_version need a provider (provider: openai, …); without one, "
            "set the key with request_headers"
        )
    else:
        endpoints = tuple(_under_base_path(e) for e in endpoints)
    if "apis" in keys:
        apis = frozenset(keys["apis"].string_list())
        unknown = apis - ALL_APIS
        if unknown or not apis:
            raise keys["apis"].error(
                f"unknown API {sorted(unknown)[0] if unknown else '(none given)'!r}; "
                f"name any of: {', '.join(sorted(ALL_APIS))}"
            )

    defaults = ClusterConfig
    return ClusterConfig(
        name=name,
        endpoints=endpoints,
        timeouts=with_timeouts(Timeouts(), keys["timeouts"]) if "timeouts" in keys else Timeouts(),
        retry=with_retry(RetryPolicy(), keys["retry"]) if "retry" in keys else RetryPolicy(),
        outlier_detection=_parse_outlier(keys["outlier_detection"])
        if "outlier_detection" in keys
        else OutlierDetection(),
        max_connections=_int(keys, "max_connections", defaults.max_connections, minimum=1),
        max_idle_connections=_int(
            keys, "max_idle_connections", defaults.max_idle_connections, minimum=0
        ),
        idle_connection_timeout=keys["idle_connection_timeout"].duration()
        if "idle_connection_timeout" in keys
        else defaults.idle_connection_timeout,
        tls_verify=tls_verify,
        ca_file=files.get("ca_file"),
        client_cert=files.get("client_cert"),
        client_key=files.get("client_key"),
        headers=headers,
        protocol=protocol,
        ping_interval=keys["ping_interval"].duration()
        if "ping_interval" in keys
        else defaults.ping_interval,
        ping_timeout=keys["ping_timeout"].duration()
        if "ping_timeout" in keys
        else defaults.ping_timeout,
        provider=preset.name
        if preset is not None
        else (extension[0].name if extension is not None else None),
        apis=apis,
        max_tokens_field=max_tokens_field,
        model_apis=settings.model_apis if settings is not None else (),
        options=(settings.options,)
        if settings is not None and settings.options is not None
        else (),
    )


def _apply_preset(
    preset: ProviderPreset,
    keys: Mapping[str, Node],
    node: Node,
    endpoints: tuple[EndpointConfig, ...],
    headers: HeaderPolicy,
) -> tuple[EndpointConfig, ...]:
    """The endpoints with the provider's paths and key."""
    key = keys["api_key"].string() if "api_key" in keys else None
    if (
        preset.needs_key
        and not key
        and not any(
            name in {"authorization", "x-api-key", "api-key"} for name, _ in headers.request.set
        )
    ):
        raise node.error(
            f"provider {preset.name!r} needs its key: api_key: ${{{preset.name.upper()}_API_KEY}}"
        )
    default_path = urlsplit(preset.base_url).path.rstrip("/") if preset.base_url else "/openai"
    version = keys["api_version"].string() if "api_version" in keys else None
    if version is not None and not preset.deployments:
        raise keys["api_version"].error(f"provider {preset.name!r} takes no api_version")
    # The key goes with each endpoint (so a fallback to another provider's cluster sends
    # that provider's key); the cluster's own rules, applied before, keep precedence.
    own = {n for n, _ in headers.request.set} | set(headers.request.remove)
    preset_rules = tuple(
        (n, v) for n, v in auth_headers(preset, key) + preset.headers if n not in own
    )
    provider_authorizes = any(n == "authorization" for n, _ in preset_rules)
    shaped = []
    for endpoint in endpoints:
        prefix = endpoint.base_path or default_path
        deployments = preset.deployments and not prefix.endswith("/v1") and version != "v1"
        if preset.deployments and version == "v1" and not prefix.endswith("/v1"):
            prefix += "/v1"
        rules = endpoint.request_headers
        if endpoint.url_credentials == "basic" and provider_authorizes:
            # The provider's key wins over the URL's credentials (their rule comes first).
            rules = HeaderRules(set=rules.set[1:], append=rules.append, remove=rules.remove)
            endpoint = replace(endpoint, url_credentials="unused")
        shaped.append(
            replace(
                endpoint,
                request_headers=HeaderRules(
                    set=preset_rules + rules.set, append=rules.append, remove=rules.remove
                ),
                api_prefix=prefix,
                api_prefixes=preset.api_paths,
                deployments=deployments,
                query=f"api-version={version or DEFAULT_AZURE_API_VERSION}" if deployments else "",
            )
        )
    return tuple(shaped)


#: A base path that ends in an API version (``/v1``, ``/v4``, ``/v1beta``): the URL an
#: official SDK takes as its base URL (``http://host/compatible-mode/v1``).
_VERSIONED: Final = re.compile(r"/v[0-9]+[a-z0-9]*$")


def _under_base_path(endpoint: EndpointConfig) -> EndpointConfig:
    """An endpoint without a provider whose base path names the API version takes the
    client's ``/v1/…`` under it once, as the SDKs do with a base URL — never
    ``/v1/v1/…``; another base path is put in front of the client's path as it is
    (``http://host/anthropic`` + ``/v1/messages``)."""
    if _VERSIONED.search(endpoint.base_path):
        return replace(endpoint, api_prefix=endpoint.base_path)
    return endpoint


def base_path_warnings(clusters: Mapping[str, ClusterConfig]) -> tuple[str, ...]:
    """What start-up says of the clusters whose requests go where they did not before
    the base path rule (a base path ending in an API version took a second ``/v1``)."""
    return tuple(
        f"clusters.{cluster.name}: url {endpoint.url!r} ends in an API version, so a "
        f"client's /v1/chat/completions goes to {endpoint.api_prefix}/chat/completions "
        f"(as the official SDKs send it); earlier releases sent "
        f"{endpoint.base_path}/v1/chat/completions"
        for cluster in clusters.values()
        if cluster.provider is None
        for endpoint in cluster.endpoints
        if endpoint.api_prefix is not None
    )


def redact_url(url: str) -> str:
    """*url* as it may be shown: the password of its user information replaced by
    ``***`` (``http://user:***@host``), and a user name given without a password — the
    way some APIs take a key — as well (``http://***@host``)."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url
    user, colon, password = userinfo.partition(":")
    shown = f"{user}:***" if colon and password and user else "***"
    return urlunsplit(parts._replace(netloc=f"{shown}@{hostport}"))


def basic_authorization(user: str, password: str) -> str:
    """An ``Authorization: Basic`` value (RFC 7617; UTF-8) for a URL's *user* and
    *password*, percent-decoded as curl and the HTTP libraries do."""
    pair = f"{unquote(user)}:{unquote(password)}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _touches_authorization(rules: HeaderRules) -> bool:
    return any(n == "authorization" for n, _ in rules.set + rules.append) or (
        "authorization" in rules.remove
    )


def parse_endpoint_url(
    node: Node,
    *,
    weight: int = 1,
    request_headers: HeaderRules | None = None,
    authorization_taken: bool = False,
) -> EndpointConfig:
    """An endpoint for the URL at *node*. Credentials in it (``user:password@``) are sent
    as HTTP basic auth, as curl and the SDKs do with a URL's user information — unless
    the cluster's header rules (*authorization_taken*) or the endpoint's own set
    ``authorization``; either way they are never shown (`redact_url`)."""
    url = node.string()
    shown = redact_url(url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise node.error(f"not a URL: {shown!r}; write it as http://host:port or https://host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise node.error(f"not a URL: {shown!r}; the port must be a number") from None
    if parts.query or parts.fragment:
        raise node.error(f"{shown!r}: a cluster URL cannot have a query or fragment")
    default_port = 443 if parts.scheme == "https" else 80
    host = parts.hostname
    bracketed = f"[{host}]" if ":" in host else host
    rules = request_headers or HeaderRules()
    credentials = ""
    if shown != url:
        if authorization_taken or _touches_authorization(rules):
            credentials = "unused"
        else:
            credentials = "basic"
            basic = (
                "authorization",
                basic_authorization(parts.username or "", parts.password or ""),
            )
            rules = HeaderRules(set=(basic, *rules.set), append=rules.append, remove=rules.remove)
    return EndpointConfig(
        url=shown,
        scheme=parts.scheme,
        host=host,
        port=port,
        base_path=parts.path.rstrip("/"),
        host_header=bracketed if port == default_port else f"{bracketed}:{port}",
        weight=weight,
        request_headers=rules,
        url_credentials=credentials,
    )


def _parse_endpoint(node: Node, authorization_taken: bool) -> EndpointConfig:
    if isinstance(node.value, str):
        return parse_endpoint_url(node, authorization_taken=authorization_taken)
    keys = node.mapping(_ENDPOINT_KEYS)
    if "url" not in keys:
        raise node.error("missing 'url'")
    return parse_endpoint_url(
        keys["url"],
        weight=_int(keys, "weight", 1, minimum=1),
        request_headers=parse_header_rules(keys["request_headers"])
        if "request_headers" in keys
        else None,
        authorization_taken=authorization_taken,
    )


def url_credential_warnings(clusters: Mapping[str, ClusterConfig]) -> tuple[str, ...]:
    """What start-up says of URLs whose credentials are not sent (something else in the
    config sets ``authorization``): never silently ignored."""
    return tuple(
        f"clusters.{cluster.name}: url {endpoint.url!r} carries credentials, but a header "
        "rule (or the provider's api_key) sets authorization, which wins: the URL's "
        "credentials are not sent; remove one of them"
        for cluster in clusters.values()
        for endpoint in cluster.endpoints
        if endpoint.url_credentials == "unused"
    )


def with_timeouts(base: Timeouts, node: Node) -> Timeouts:
    """*base* with the keys given in the `timeouts` block *node* replaced."""
    return replace(base, **_timeouts(node))


def with_retry(base: RetryPolicy, node: Node) -> RetryPolicy:
    """*base* with the keys given in the `retry` block *node* replaced."""
    return replace(base, **_retry(node))


def _timeouts(node: Node) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, child in node.mapping(_TIMEOUT_KEYS).items():
        if key == "total" and (child.value is None or child.value is False or child.value == "off"):
            values[key] = None
        else:
            values[key] = child.duration()
            if values[key] == 0:
                raise child.error("must be more than 0 (write `total: off` for no total limit)")
    return values


def _retry(node: Node) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, child in node.mapping(_RETRY_KEYS).items():
        if key == "retry_on":
            conditions = frozenset(child.string_list())
            unknown = conditions - RETRY_CONDITIONS
            if unknown:
                raise child.error(
                    f"unknown condition {sorted(unknown)[0]!r}; "
                    f"use any of: {', '.join(sorted(RETRY_CONDITIONS))}"
                )
            values[key] = conditions
        elif key == "retriable_status_codes":
            codes = frozenset(n.integer(minimum=100) for n in child.sequence())
            if any(code > 599 for code in codes):
                raise child.error("status codes are between 100 and 599")
            values[key] = codes
        elif key == "max_attempts":
            values[key] = child.integer(minimum=1)
        else:
            values[key] = child.duration()
    return values


def _parse_outlier(node: Node) -> OutlierDetection:
    keys = node.mapping(_OUTLIER_KEYS)
    detection = OutlierDetection()
    if "consecutive_failures" in keys:
        detection = replace(
            detection, consecutive_failures=keys["consecutive_failures"].integer(minimum=1)
        )
    if "base_ejection_time" in keys:
        detection = replace(detection, base_ejection_time=keys["base_ejection_time"].duration())
    if "max_ejection_time" in keys:
        detection = replace(detection, max_ejection_time=keys["max_ejection_time"].duration())
    return detection


def _int(keys: Mapping[str, Node], key: str, default: int, *, minimum: int) -> int:
    return keys[key].integer(minimum=minimum) if key in keys else default
