"""The config: YAML parsed once at start-up into immutable objects.

Nothing on the request path digs in dicts: every value is validated here, with an error
that names the key path, the value and the fix (`ConfigError`). See the README's
configuration reference for every key and its default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

from filterproxy._configreader import ConfigError, Node, default_environ
from filterproxy.http.headers import validate_header_name, validate_header_value

if TYPE_CHECKING:
    from filterproxy.filters.api import IStreamFilter

__all__ = [
    "ClusterConfig",
    "Config",
    "ConfigError",
    "FilterSpec",
    "HeaderPolicy",
    "HeaderRules",
    "RouteConfig",
    "load_config",
    "parse_config",
]

DEFAULT_MAX_REQUEST_BYTES = 10 * 1024 * 1024
DEFAULT_FILTERS = ("body-accumulate", "route", "header-rewrite")


@dataclass(frozen=True)
class HeaderRules:
    """Header mutations in the order they apply: remove, then set, then append.

    Names are lower-case; values were checked for CR, LF and NUL at load time.
    """

    set: tuple[tuple[str, str], ...] = ()
    append: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.append or self.remove)


@dataclass(frozen=True)
class HeaderPolicy:
    """Rules for the request going upstream and for the response going back."""

    request: HeaderRules = HeaderRules()
    response: HeaderRules = HeaderRules()

    def __bool__(self) -> bool:
        return bool(self.request or self.response)


@dataclass(frozen=True)
class ClusterConfig:
    """A named upstream: where it is, how to connect and which headers it gets."""

    name: str
    url: str
    scheme: str
    host: str
    port: int
    base_path: str
    host_header: str
    connect_timeout: float = 5.0
    max_connections: int = 1024
    max_idle_connections: int = 64
    idle_connection_timeout: float = 30.0
    tls_verify: bool = True
    ca_file: str | None = None
    headers: HeaderPolicy = HeaderPolicy()


@dataclass(frozen=True)
class RouteConfig:
    """One entry of the route table; the first route that matches wins.

    An empty `models` matches any model (and requests without one): a route with no
    match keys at all is the default route.
    """

    name: str
    cluster: str
    models: tuple[str, ...] = ()
    path_prefix: str | None = None
    methods: tuple[str, ...] = ()
    match_headers: tuple[tuple[str, str], ...] = ()
    headers: HeaderPolicy = HeaderPolicy()


@dataclass(frozen=True)
class FilterSpec:
    """One filter of the chain: its name in the config and a per-request constructor."""

    type_name: str
    path: str
    create: Callable[[], IStreamFilter]


@dataclass(frozen=True)
class Config:
    """The whole validated config."""

    listeners: tuple[str, ...]
    clusters: Mapping[str, ClusterConfig]
    routes: tuple[RouteConfig, ...]
    aliases: Mapping[str, str]
    filters: tuple[FilterSpec, ...] = ()
    buffer_limit_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    mock_upstream: str | None = None
    source: str = "<string>"
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


_TOP_KEYS = {"listeners", "clusters", "routes", "aliases", "filters", "mock_upstream"}
_CLUSTER_KEYS = {
    "url",
    "connect_timeout",
    "max_connections",
    "max_idle_connections",
    "idle_connection_timeout",
    "tls",
    "request_headers",
    "response_headers",
}
_ROUTE_KEYS = {
    "name",
    "cluster",
    "models",
    "path_prefix",
    "methods",
    "headers",
    "request_headers",
    "response_headers",
}
_RULE_KEYS = {"set", "append", "remove"}


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the YAML file at *path*.

    Raises:
        ConfigError: the file cannot be read, is not YAML, or is not a valid config.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError("", f"cannot read config file {str(path)!r}: {e.strerror}") from None
    return parse_config(text, source=str(path), environ=environ)


def parse_config(
    text: str, *, source: str = "<string>", environ: Mapping[str, str] | None = None
) -> Config:
    """Validate the YAML document *text* into a `Config`."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("", f"{source} is not valid YAML: {e}") from None
    env = default_environ() if environ is None else environ
    root = Node(document, "", env)
    top = root.mapping(_TOP_KEYS)

    listeners = tuple(n.string() for n in top["listeners"].sequence()) if "listeners" in top else ()
    clusters = _parse_clusters(top.get("clusters") or Node(None, "clusters", env))
    aliases = _parse_aliases(top.get("aliases") or Node(None, "aliases", env))
    routes = _parse_routes(top.get("routes") or Node(None, "routes", env), clusters)
    mock = top["mock_upstream"].string() if "mock_upstream" in top else None

    partial = Config(
        listeners=listeners,
        clusters=MappingProxyType(clusters),
        routes=routes,
        aliases=MappingProxyType(aliases),
        mock_upstream=mock,
        source=source,
        raw=document or {},
    )
    from filterproxy.filters.registry import build_filter_chain

    filters_node = top.get("filters") or Node(
        [{"type": t} for t in DEFAULT_FILTERS], "filters", env
    )
    filters, buffer_limit = build_filter_chain(filters_node, partial)
    return Config(
        listeners=listeners,
        clusters=partial.clusters,
        routes=routes,
        aliases=partial.aliases,
        filters=filters,
        buffer_limit_bytes=buffer_limit,
        mock_upstream=mock,
        source=source,
        raw=partial.raw,
    )


def parse_header_policy(nodes: Mapping[str, Node]) -> HeaderPolicy:
    """`request_headers` and `response_headers` blocks of a cluster, route or filter."""
    request = parse_header_rules(nodes["request_headers"]) if "request_headers" in nodes else None
    response = (
        parse_header_rules(nodes["response_headers"]) if "response_headers" in nodes else None
    )
    return HeaderPolicy(request or HeaderRules(), response or HeaderRules())


def parse_header_rules(node: Node) -> HeaderRules:
    """A ``{set: {name: value}, append: {name: value}, remove: [name]}`` block."""
    parts = node.mapping(_RULE_KEYS)

    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        if key not in parts:
            return ()
        out = []
        for name, value_node in parts[key].items():
            out.append((_header_name(name, value_node), _header_value(value_node)))
        return tuple(out)

    remove: tuple[str, ...] = ()
    if "remove" in parts:
        remove = tuple(_header_name(n.string(), n) for n in parts["remove"].sequence())
    return HeaderRules(set=pairs("set"), append=pairs("append"), remove=remove)


def _header_name(name: str, node: Node) -> str:
    try:
        return validate_header_name(name)
    except ValueError as e:
        raise node.error(str(e)) from None


def _header_value(node: Node) -> str:
    value = node.string(allow_empty=True)
    try:
        return validate_header_value(value)
    except ValueError as e:
        raise node.error(str(e)) from None


def _parse_clusters(node: Node) -> dict[str, ClusterConfig]:
    clusters = {}
    for name, cnode in node.items():
        clusters[name] = _parse_cluster(name, cnode)
    if not clusters:
        raise node.error(
            "no clusters defined; add at least one, e.g. clusters: {openai: {url: https://api.openai.com}}"
        )
    return clusters


def _parse_cluster(name: str, node: Node) -> ClusterConfig:
    keys = node.mapping(_CLUSTER_KEYS)
    if "url" not in keys:
        raise node.error(
            "missing 'url'; give the upstream's base URL, e.g. url: http://127.0.0.1:8000"
        )
    url_node = keys["url"]
    url = url_node.string()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise url_node.error(f"not a URL: {url!r}; write it as http://host:port or https://host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise url_node.error(f"not a URL: {url!r}; the port must be a number") from None
    if parts.query or parts.fragment:
        raise url_node.error(f"{url!r}: a cluster URL cannot have a query or fragment")
    default_port = 443 if parts.scheme == "https" else 80
    host = parts.hostname
    host_for_header = f"[{host}]" if ":" in host else host
    host_header = host_for_header if port == default_port else f"{host_for_header}:{port}"

    tls_verify, ca_file = True, None
    if "tls" in keys:
        tls = keys["tls"].mapping({"verify", "ca_file"})
        if "verify" in tls:
            tls_verify = tls["verify"].boolean()
        if "ca_file" in tls:
            ca_file = tls["ca_file"].string()
            if not Path(ca_file).is_file():
                raise tls["ca_file"].error(f"no such file: {ca_file!r}")

    defaults = ClusterConfig
    return ClusterConfig(
        name=name,
        url=url,
        scheme=parts.scheme,
        host=host,
        port=port,
        base_path=parts.path.rstrip("/"),
        host_header=host_header,
        connect_timeout=_duration(keys, "connect_timeout", defaults.connect_timeout),
        max_connections=_int(keys, "max_connections", defaults.max_connections, minimum=1),
        max_idle_connections=_int(
            keys, "max_idle_connections", defaults.max_idle_connections, minimum=0
        ),
        idle_connection_timeout=_duration(
            keys, "idle_connection_timeout", defaults.idle_connection_timeout
        ),
        tls_verify=tls_verify,
        ca_file=ca_file,
        headers=parse_header_policy(keys),
    )


def _duration(keys: Mapping[str, Node], key: str, default: float) -> float:
    return keys[key].duration() if key in keys else default


def _int(keys: Mapping[str, Node], key: str, default: int, *, minimum: int) -> int:
    return keys[key].integer(minimum=minimum) if key in keys else default


def _parse_aliases(node: Node) -> dict[str, str]:
    aliases = {alias: target.string() for alias, target in node.items()}
    for alias, target_model in aliases.items():
        if target_model in aliases:
            raise ConfigError(
                f"aliases.{alias}",
                f"alias points at another alias {target_model!r}; point it at a model name",
            )
    return aliases


def _parse_routes(node: Node, clusters: Mapping[str, ClusterConfig]) -> tuple[RouteConfig, ...]:
    routes = []
    for index, rnode in enumerate(node.sequence()):
        keys = rnode.mapping(_ROUTE_KEYS)
        if "cluster" not in keys:
            raise rnode.error("missing 'cluster'; name the cluster this route sends to")
        cluster = keys["cluster"].string()
        if cluster not in clusters:
            raise keys["cluster"].error(
                f"unknown cluster {cluster!r}; defined clusters: {', '.join(sorted(clusters))}"
            )
        path_prefix = None
        if "path_prefix" in keys:
            path_prefix = keys["path_prefix"].string()
            if not path_prefix.startswith("/"):
                raise keys["path_prefix"].error(f"must start with '/', got {path_prefix!r}")
        match_headers: tuple[tuple[str, str], ...] = ()
        if "headers" in keys:
            match_headers = tuple(
                (_header_name(k, v), v.string(allow_empty=True)) for k, v in keys["headers"].items()
            )
        routes.append(
            RouteConfig(
                name=keys["name"].string() if "name" in keys else f"routes[{index}]",
                cluster=cluster,
                models=keys["models"].string_list() if "models" in keys else (),
                path_prefix=path_prefix,
                methods=tuple(m.upper() for m in keys["methods"].string_list())
                if "methods" in keys
                else (),
                match_headers=match_headers,
                headers=parse_header_policy(keys),
            )
        )
    if not routes:
        if len(clusters) == 1:
            only = next(iter(clusters))
            return (RouteConfig(name="default", cluster=only),)
        raise node.error(
            "no routes defined and more than one cluster; add routes that name a cluster, "
            "e.g. routes: [{models: ['gpt-*'], cluster: openai}]"
        )
    return tuple(routes)
