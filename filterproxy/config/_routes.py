"""The route table and model aliases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from filterproxy.config._clusters import with_retry, with_timeouts
from filterproxy.config._extension import ExtensionSchema, parse_sections
from filterproxy.config._headers import header_name, parse_header_policy
from filterproxy.config._reader import ConfigError, Node
from filterproxy.config._types import (
    DEFAULT_HEARTBEAT,
    ClusterConfig,
    RedisConfig,
    RouteConfig,
    UpstreamPlan,
)

_ROUTE_KEYS = {
    "name",
    "cluster",
    "fallbacks",
    "models",
    "path_prefix",
    "methods",
    "headers",
    "request_headers",
    "response_headers",
    "timeouts",
    "retry",
    "heartbeat",
    "upstream_model",
    "strip_model_prefix",
}


def parse_aliases(node: Node) -> dict[str, str]:
    aliases = {alias: target.string() for alias, target in node.items()}
    for alias, target_model in aliases.items():
        if target_model in aliases:
            raise ConfigError(
                f"aliases.{alias}",
                f"alias points at another alias {target_model!r}; point it at a model name",
            )
    return aliases


def parse_routes(
    node: Node,
    clusters: Mapping[str, ClusterConfig],
    extensions: Sequence[ExtensionSchema] = (),
    redis: RedisConfig | None = None,
) -> tuple[RouteConfig, ...]:
    """The ``routes`` list; each route's keys the core does not know go to the extension
    that owns them (*extensions*), a key nobody owns is refused."""
    allowed = _ROUTE_KEYS.union(*(e.route_keys for e in extensions))
    routes = tuple(
        _parse_route(index, rnode, clusters, allowed, extensions, redis)
        for index, rnode in enumerate(node.sequence())
    )
    if routes:
        return routes
    if len(clusters) == 1:
        only = next(iter(clusters.values()))
        options = parse_sections(extensions, {}, node.path, node.environ, redis, route=True)
        return (
            RouteConfig(
                name="default",
                cluster=only.name,
                plan=(_plan(only, None, None),),
                options=options,
            ),
        )
    raise node.error(
        "no routes defined and more than one cluster; add routes that name a cluster, "
        "e.g. routes: [{models: ['gpt-*'], cluster: openai}]"
    )


def _cluster_name(node: Node, clusters: Mapping[str, ClusterConfig]) -> str:
    name = node.string()
    if name not in clusters:
        raise node.error(
            f"unknown cluster {name!r}; defined clusters: {', '.join(sorted(clusters))}"
        )
    return name


def _plan(cluster: ClusterConfig, timeouts: Node | None, retry: Node | None) -> UpstreamPlan:
    return UpstreamPlan(
        cluster=cluster.name,
        timeouts=with_timeouts(cluster.timeouts, timeouts) if timeouts else cluster.timeouts,
        retry=with_retry(cluster.retry, retry) if retry else cluster.retry,
    )


def _is_off(value: object) -> bool:
    return value is None or value is False or value == "off"


def _parse_route(
    index: int,
    node: Node,
    clusters: Mapping[str, ClusterConfig],
    allowed: set[str],
    extensions: Sequence[ExtensionSchema],
    redis: RedisConfig | None,
) -> RouteConfig:
    keys = node.mapping(allowed)
    if "cluster" not in keys:
        raise node.error("missing 'cluster'; name the cluster this route sends to")
    cluster = _cluster_name(keys["cluster"], clusters)
    fallbacks: tuple[str, ...] = ()
    if "fallbacks" in keys:
        fallbacks = tuple(_cluster_name(n, clusters) for n in keys["fallbacks"].sequence())
        if cluster in fallbacks or len(set(fallbacks)) != len(fallbacks):
            raise keys["fallbacks"].error(
                "each cluster may appear once among cluster and fallbacks"
            )
    path_prefix = None
    if "path_prefix" in keys:
        path_prefix = keys["path_prefix"].string()
        if not path_prefix.startswith("/"):
            raise keys["path_prefix"].error(f"must start with '/', got {path_prefix!r}")
    match_headers: tuple[tuple[str, str], ...] = ()
    if "headers" in keys:
        match_headers = tuple(
            (header_name(k, v), v.string(allow_empty=True)) for k, v in keys["headers"].items()
        )
    plan = tuple(
        _plan(clusters[name], keys.get("timeouts"), keys.get("retry"))
        for name in (cluster, *fallbacks)
    )
    heartbeat: float | None = DEFAULT_HEARTBEAT
    if "heartbeat" in keys:
        if _is_off(keys["heartbeat"].value):
            heartbeat = None
        else:
            heartbeat = keys["heartbeat"].duration()
            if heartbeat <= 0:
                raise keys["heartbeat"].error("must be more than 0, or off")
    return RouteConfig(
        name=keys["name"].string() if "name" in keys else f"routes[{index}]",
        cluster=cluster,
        models=keys["models"].string_list() if "models" in keys else (),
        path_prefix=path_prefix,
        methods=tuple(m.upper() for m in keys["methods"].string_list())
        if "methods" in keys
        else (),
        match_headers=match_headers,
        headers=parse_header_policy(keys),
        fallbacks=fallbacks,
        plan=plan,
        heartbeat=heartbeat,
        upstream_model=keys["upstream_model"].string() if "upstream_model" in keys else None,
        strip_model_prefix=keys["strip_model_prefix"].string()
        if "strip_model_prefix" in keys
        else None,
        options=parse_sections(extensions, keys, node.path, node.environ, redis, route=True),
    )
