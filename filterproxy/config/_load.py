"""Reading a config file: YAML → validated `Config`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from filterproxy.config._archgw import from_archgw, is_archgw
from filterproxy.config._clusters import (
    base_path_warnings,
    parse_clusters,
    url_credential_warnings,
)
from filterproxy.config._extension import (
    ChainFacts,
    ExtensionSchema,
    checked,
    default_chain,
    parse_sections,
)
from filterproxy.config._reader import ConfigError, Node, default_environ
from filterproxy.config._redis import parse_redis
from filterproxy.config._routes import _ROUTE_KEYS, parse_aliases, parse_routes
from filterproxy.config._types import (
    DEFAULT_ADMIN_LISTENER,
    DEFAULT_FILTERS,
    Config,
    FilterEntry,
    Limits,
    TracingConfig,
)

_TOP_KEYS = {
    "listeners",
    "clusters",
    "routes",
    "aliases",
    "filters",
    "limits",
    "shutdown_grace",
    "shutdown_delay",
    "config_watch",
    "access_log",
    "mock_upstream",
    "admin",
    "tracing",
    "preload_tls",
    "redis",
    "max_event_bytes",
}
_LIMIT_KEYS = {f.name for f in fields(Limits)}
_DURATION_LIMITS = {"request_header_timeout", "request_body_timeout", "keepalive_timeout"}


def load_config(
    path: str | Path,
    environ: Mapping[str, str] | None = None,
    *,
    extensions: Sequence[ExtensionSchema] = (),
) -> Config:
    """Read and validate the YAML file at *path*, with the keys of *extensions*.

    Raises:
        ConfigError: the file cannot be read, is not YAML, or is not a valid config.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError("", f"cannot read config file {str(path)!r}: {e.strerror}") from None
    return parse_config(text, source=str(path), environ=environ, extensions=extensions)


def parse_config(
    text: str,
    *,
    source: str = "<string>",
    environ: Mapping[str, str] | None = None,
    extensions: Sequence[ExtensionSchema] = (),
) -> Config:
    """Validate the YAML document *text* into a `Config`.

    The core reads its own keys; each of *extensions* reads the top-level and route
    keys it owns (`ExtensionSchema`), and a key nobody owns is refused. With none, the
    config is the core's alone (``filterproxy.extensions.builtin`` passes the built-in
    extensions).
    """
    checked(extensions, frozenset(_TOP_KEYS), frozenset(_ROUTE_KEYS))
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("", f"{source} is not valid YAML: {e}") from None
    env = default_environ() if environ is None else environ
    warnings: tuple[str, ...] = ()
    if is_archgw(document):
        document, ignored = from_archgw(document, env)
        if ignored:
            warnings = (
                "these keys of the ArchGW config have no counterpart here and are ignored: "
                + ", ".join(ignored),
            )
    top = Node(document, "", env).mapping(_TOP_KEYS.union(*(e.keys for e in extensions)))

    def section(key: str) -> Node:
        return top.get(key) or Node(None, key, env)

    providers = {p.name: p for e in extensions for p in e.providers}
    clusters = parse_clusters(section("clusters"), providers)
    access = _access_log(top["access_log"]) if "access_log" in top else True
    redis = parse_redis(section("redis"))
    sections = parse_sections(extensions, top, "", env, redis, route=False)
    routes = parse_routes(section("routes"), clusters, extensions, redis)
    warnings += base_path_warnings(clusters) + url_credential_warnings(clusters)
    return Config(
        listeners=tuple(n.string() for n in section("listeners").sequence()),
        clusters=MappingProxyType(clusters),
        routes=routes,
        aliases=MappingProxyType(parse_aliases(section("aliases"))),
        limits=_parse_limits(section("limits")),
        shutdown_grace=top["shutdown_grace"].duration() if "shutdown_grace" in top else 30.0,
        shutdown_delay=top["shutdown_delay"].duration() if "shutdown_delay" in top else 0.0,
        config_watch=_parse_config_watch(top["config_watch"]) if "config_watch" in top else 0.0,
        access_log=access is not False,
        access_log_path=access if isinstance(access, str) else None,
        mock_upstream=top["mock_upstream"].string() if "mock_upstream" in top else None,
        admin_listener=_parse_admin(top["admin"]) if "admin" in top else DEFAULT_ADMIN_LISTENER,
        admin_token=_parse_admin_token(top["admin"]) if "admin" in top else None,
        tracing=_parse_tracing(top["tracing"]) if "tracing" in top else None,
        preload_tls=top["preload_tls"].boolean() if "preload_tls" in top else False,
        filters=_parse_filters(
            top.get("filters")
            or _default_filters(ChainFacts(clusters, routes, sections), extensions, env)
        ),
        source=source,
        warnings=warnings,
        sections=sections,
        redis=redis,
        max_event_bytes=top["max_event_bytes"].integer(minimum=1024)
        if "max_event_bytes" in top
        else Config.max_event_bytes,
    )


def _default_filters(
    facts: ChainFacts, extensions: Sequence[ExtensionSchema], env: Mapping[str, str]
) -> Node:
    """The chain when the config gives no ``filters``: the core's, with each
    extension's filter where it says (`ExtensionSchema.place`)."""
    entries: list[dict[str, Any]] = [{"type": t} for t in DEFAULT_FILTERS]
    return Node(default_chain(entries, extensions, facts), "filters", env)


def _parse_filters(node: Node) -> tuple[FilterEntry, ...]:
    """The ``filters`` entries: a type and options each (the chain checks the options)."""
    entries = []
    for entry in node.sequence():
        keys = entry.mapping()
        if "type" not in keys:
            raise entry.error(
                "missing 'type'; name a built-in filter or 'package.module:ClassName'"
            )
        options = MappingProxyType({k: v.value for k, v in keys.items() if k != "type"})
        entries.append(FilterEntry(keys["type"].string(), entry.path, options, entry.environ))
    return tuple(entries)


def _parse_admin(node: Node) -> str | None:
    """``admin: false`` or ``admin: {listen: ENDPOINT}``."""
    if node.value is False:
        return None
    keys = node.mapping({"listen", "token"})
    return keys["listen"].string() if "listen" in keys else DEFAULT_ADMIN_LISTENER


def _parse_admin_token(node: Node) -> str | None:
    """``admin.token``: what the management API asks for as ``Authorization: Bearer``
    (``${ENV}`` keeps it out of the file); absent or empty: no token, the API answers 403."""
    if node.value is False or node.value is None:
        return None
    keys = node.mapping({"listen", "token"})
    if "token" not in keys or keys["token"].value is None:
        return None
    token = keys["token"].string(allow_empty=True).strip()
    if not token:
        return None
    if any(c.isspace() or not c.isprintable() for c in token):
        raise keys["token"].error(
            "the admin token is sent in a header: no spaces or control characters "
            "(e.g. from `openssl rand -hex 32`, given as ${FILTERPROXY_ADMIN_TOKEN})"
        )
    return token


def _parse_tracing(node: Node) -> TracingConfig | None:
    """``tracing: {otlp_endpoint: URL, service_name: NAME}`` (or ``false``)."""
    if node.value is False or node.value is None:
        return None
    keys = node.mapping({"otlp_endpoint", "service_name"})
    if "otlp_endpoint" not in keys:
        raise node.error(
            "missing 'otlp_endpoint', e.g. http://127.0.0.1:4318/v1/traces (OTLP over HTTP)"
        )
    endpoint = keys["otlp_endpoint"].string()
    if not endpoint.startswith(("http://", "https://")):
        raise keys["otlp_endpoint"].error(f"expected an http:// or https:// URL, got {endpoint!r}")
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        raise node.error(
            "tracing needs the OpenTelemetry SDK and OTLP exporter; install them with "
            "pip install 'filterproxy[otel]', or remove the tracing section"
        ) from None
    service = keys["service_name"].string() if "service_name" in keys else "filterproxy"
    return TracingConfig(endpoint, service)


def _parse_config_watch(node: Node) -> float:
    """``config_watch``: a polling interval, or ``false``/``0s`` for none. Below 100 ms
    the gateway would spend itself on stat calls."""
    if node.value is False:
        return 0.0
    seconds = node.duration()
    if 0 < seconds < 0.1:
        raise ConfigError(
            node.path, f"check the config file at most every 100ms, got {node.value!r}"
        )
    return seconds


def _parse_limits(node: Node) -> Limits:
    values: dict[str, Any] = {}
    for key, child in node.mapping(_LIMIT_KEYS).items():
        if key in _DURATION_LIMITS:
            values[key] = child.duration()
            if values[key] <= 0:
                raise child.error("must be more than 0")
        else:
            values[key] = child.integer(minimum=1)
    return replace(Limits(), **values)


def _access_log(node: Node) -> bool | str:
    """``access_log``: true, false, or the path of a file."""
    if isinstance(node.value, bool):
        return node.value
    if isinstance(node.value, str):
        path = node.string()
        if not path.startswith("/"):
            raise node.error(
                f"the access-log file must be an absolute path, got {path!r} "
                "(or true for the gateway's log, false for none)"
            )
        return path
    raise node.error(f"expected true, false or the absolute path of a file, got {node.value!r}")
