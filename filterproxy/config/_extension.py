"""What an extension adds to the config: its keys, their parsers, its default place.

The core parser knows listeners, clusters, routes and the process's settings. A feature
(gateway keys, the Responses store, translation, …) describes the rest itself, with an
`ExtensionSchema`: the top-level keys it owns and how to read them, the route keys it owns
and how to read them, and where its filter goes in the default chain. The loader is
handed the schemas (`filterproxy.extensions.builtin` lists the built-in ones) and knows
no feature by name: it refuses the keys nobody owns, gives each extension its own keys
(`Section`), and keeps what the parsers return by class, so that a filter finds its
settings with `Config.section` and `RouteConfig.option`, typed, with no string keys.

Whatever an extension's parser returns is kept whole. The admin listener shows the
fields of each value where the keys they came from were written (the top level, or the
route), so the values' field names are what the effective config shows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from filterproxy.config._reader import Node
from filterproxy.config._types import ClusterConfig, RedisConfig, RouteConfig, find
from filterproxy.http.apis import ALL_APIS

__all__ = [
    "ChainFacts",
    "DefaultEntry",
    "ExtensionSchema",
    "ProviderSchema",
    "ProviderSettings",
    "Section",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Section:
    """An extension's keys of one mapping (the top level, or one route) as written, with
    the core settings its values may depend on."""

    #: The extension's keys that are present, each with its node (its key path).
    nodes: Mapping[str, Node]
    #: The key path of the mapping (``""`` at the top level, ``routes[2]`` for a route).
    path: str
    environ: Mapping[str, str]
    #: The top-level ``redis`` (core: a client connection extensions share), or None.
    redis: RedisConfig | None = None

    def __contains__(self, key: str) -> bool:
        return key in self.nodes

    def __getitem__(self, key: str) -> Node:
        return self.nodes[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.nodes)

    def node(self, key: str) -> Node:
        """*key*'s node; an absent key reads as nothing (``null``) at its own path."""
        found = self.nodes.get(key)
        if found is not None:
            return found
        return Node(None, f"{self.path}.{key}" if self.path else key, self.environ)


@dataclass(frozen=True)
class DefaultEntry:
    """Where an extension's filter goes in the default chain (no ``filters`` given).

    At most one of `first`, `after` and `before`; none of them: at the end.
    """

    #: The filter's ``type`` in the chain.
    type_name: str
    first: bool = False
    #: Right after the entry of this type (the end when there is none).
    after: str | None = None
    #: Right before the entry of this type (the end when there is none).
    before: str | None = None
    #: The entry's options, as a user would write them.
    options: Mapping[str, Any] = field(default_factory=dict)
    #: Options this filter needs other entries of the default chain to have, by their
    #: type: the keys filter charges the provider's usage, so it asks ``usage`` for
    #: ``include_usage: true``.
    asks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if sum((self.first, self.after is not None, self.before is not None)) > 1:
            raise ValueError(f"{self.type_name}: at most one of first, after and before")


@dataclass(frozen=True)
class ChainFacts:
    """What the loader knows when it makes the default chain: each extension decides
    from these, and nothing else, whether and where its filter goes."""

    clusters: Mapping[str, ClusterConfig]
    routes: tuple[RouteConfig, ...]
    #: The extensions' top-level values (`section`).
    sections: tuple[object, ...] = ()

    def section(self, kind: type[T]) -> T | None:
        """The top-level value of class *kind* an extension's parser made, or None."""
        return find(self.sections, kind)

    @property
    def mixed_apis(self) -> bool:
        """Whether some cluster does not speak every client API (so requests in the
        others need translating)."""
        return any(
            c.apis != ALL_APIS or any(apis != ALL_APIS for _, apis in c.model_apis)
            for c in self.clusters.values()
        )


@dataclass(frozen=True)
class ProviderSettings:
    """What an extension's provider makes of one cluster's keys (`ProviderSchema.parse`)."""

    #: Where the cluster's requests go when it gives no ``url``.
    base_url: str
    #: The client APIs the upstream speaks natively (`ClusterConfig.apis`).
    apis: frozenset[str]
    #: APIs by model-name prefix (`ClusterConfig.model_apis`).
    model_apis: tuple[tuple[str, frozenset[str]], ...] = ()
    #: The extension's own value, kept whole (`ClusterConfig.option`).
    options: object = None


@dataclass(frozen=True)
class ProviderSchema:
    """A provider an extension brings (``provider: bedrock``): the cluster keys it owns
    besides the core's, and how to read them. The extension's filter shapes the
    requests for such clusters (their paths, bodies and credentials); the core only
    sends them to `ProviderSettings.base_url` (or the cluster's ``url``) as they are."""

    #: The name a cluster gives as its ``provider``.
    name: str
    #: The cluster keys it owns (``region``, ``credentials``, …).
    keys: frozenset[str]
    #: Its cluster keys (`Section`, path ``clusters.<name>``) → the settings; raises
    #: `ConfigError` naming the key path.
    parse: Callable[[Section], ProviderSettings]


@dataclass(frozen=True)
class ExtensionSchema:
    """What one extension adds to the config (see the module's description)."""

    #: The extension's name (its filter's ``type``), for error messages.
    name: str
    #: The top-level keys it owns.
    keys: frozenset[str] = frozenset()
    #: Its top-level keys (`Section`) → its value, found later by its class with
    #: `Config.section`. Called for every config, its keys absent or not, so that the
    #: value carries the defaults; raises `ConfigError` naming the key path.
    parse: Callable[[Section], object] | None = None
    #: The route keys it owns.
    route_keys: frozenset[str] = frozenset()
    #: A route's keys of this extension → its value, found with `RouteConfig.option`.
    #: Called for every route (the default route too).
    parse_route: Callable[[Section], object] | None = None
    #: Where its filter goes in the default chain, or None for nowhere.
    place: Callable[[ChainFacts], DefaultEntry | None] | None = None
    #: The providers it brings (`ProviderSchema`).
    providers: tuple[ProviderSchema, ...] = ()


def checked(
    schemas: Sequence[ExtensionSchema], core: frozenset[str], routes: frozenset[str]
) -> None:
    """Refuse a catalog in which two owners claim one key (a programming error)."""
    owners = dict.fromkeys(core, "the core config")
    route_owners = dict.fromkeys(routes, "the core config")
    for schema in schemas:
        for key in schema.keys:
            if key in owners:
                raise ValueError(f"top-level key {key!r}: {schema.name} and {owners[key]}")
            owners[key] = schema.name
        for key in schema.route_keys:
            if key in route_owners:
                raise ValueError(f"route key {key!r}: {schema.name} and {route_owners[key]}")
            route_owners[key] = schema.name


def parse_sections(
    schemas: Sequence[ExtensionSchema],
    nodes: Mapping[str, Node],
    path: str,
    environ: Mapping[str, str],
    redis: RedisConfig | None,
    *,
    route: bool,
) -> tuple[object, ...]:
    """Each extension's value for the mapping *nodes* (the top level, or a route)."""
    values: list[object] = []
    for schema in schemas:
        parse = schema.parse_route if route else schema.parse
        if parse is None:
            continue
        owned = schema.route_keys if route else schema.keys
        mine = MappingProxyType({k: n for k, n in nodes.items() if k in owned})
        value = parse(Section(mine, path, environ, redis))
        if find(tuple(values), type(value)) is not None:
            raise ValueError(f"{schema.name}: a second value of class {type(value).__name__}")
        values.append(value)
    return tuple(values)


def default_chain(
    base: Sequence[Mapping[str, Any]], schemas: Sequence[ExtensionSchema], facts: ChainFacts
) -> list[dict[str, Any]]:
    """The entries of *base* with each extension's `DefaultEntry` put in its place, in
    the order of *schemas*, then the options each asked of the others."""
    entries = [dict(entry) for entry in base]
    asked: list[DefaultEntry] = []
    for schema in schemas:
        wanted = schema.place(facts) if schema.place is not None else None
        if wanted is None:
            continue
        asked.append(wanted)
        entry = {"type": wanted.type_name, **wanted.options}
        types = [e["type"] for e in entries]
        if wanted.first:
            entries.insert(0, entry)
        elif wanted.after is not None and wanted.after in types:
            entries.insert(types.index(wanted.after) + 1, entry)
        elif wanted.before is not None and wanted.before in types:
            entries.insert(types.index(wanted.before), entry)
        else:
            entries.append(entry)
    for wanted in asked:
        for entry in entries:
            entry.update(wanted.asks.get(entry["type"], {}))
    return entries
