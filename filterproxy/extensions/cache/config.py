"""The cache extension's config: a route's ``cache`` and the process's ``cache_memory``.

::

    cache_memory: 268435456        # what the memory store holds in all (bytes), LRU out
    routes:
      - name: evals
        match: {prefix: /v1/}
        cluster: openai
        cache:
          ttl: 10m                 # how long an answer is served
          max_bytes: 2097152       # the largest answer stored (and merged in flight)
          store: memory            # or redis (the top-level redis: shared by replicas)
          share: key               # or team: whose answers a request may be given
          sampled: false           # true: cache requests sampled above temperature 0 too
          side_effect_tools: [send_email, "db_*"]   # never cache requests offering these
          pace: false              # true: a hit's stream is sent at the recorded pace

The cache filter goes last in the default chain when some route caches: it sees the
request as the upstream would get it (after routing, aliases, translation and header
rules), which is what its key is made of.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from filterproxy.config import (
    ChainFacts,
    DefaultEntry,
    ExtensionSchema,
    Node,
    RouteConfig,
    Section,
)

__all__ = ["SCHEMA", "CacheConfig", "CacheSettings", "RouteCache", "cache_of"]

#: Where entries are kept.
STORES: Final = ("memory", "redis")
#: Whose answers a request may be given.
SHARES: Final = ("key", "team")
_ROUTE_KEYS: Final = {"ttl", "max_bytes", "store", "share", "sampled", "side_effect_tools", "pace"}


@dataclass(frozen=True)
class CacheConfig:
    """A route's response cache (see the module's description for the keys)."""

    #: Seconds an answer is served from the cache after it was stored.
    ttl: float = 300.0
    #: The largest answer stored, and merged with identical requests in flight.
    max_bytes: int = 2 * 1024 * 1024
    #: ``memory`` (this process) or ``redis`` (shared by every replica).
    store: str = "memory"
    #: ``key``: answers are given only to requests with the same gateway key; ``team``:
    #: to the requests of the same team's keys (a key without a team: its own).
    share: str = "key"
    #: Whether requests sampled above temperature 0 (or with no temperature: the
    #: provider's default samples) are cached too. Off: they cannot repeat.
    sampled: bool = False
    #: Tool names (globs) whose calls have side effects: a request that offers one is
    #: never cached nor merged (its answer would make the client act twice).
    side_effect_tools: tuple[str, ...] = ()
    #: Whether a hit's event stream is sent at the pace it was recorded at (else at once).
    pace: bool = False


@dataclass(frozen=True)
class RouteCache:
    """A route's ``cache`` (`RouteConfig.option(RouteCache)`)."""

    cache: CacheConfig | None = None


@dataclass(frozen=True)
class CacheSettings:
    """The process's cache settings (`Config.section(CacheSettings)`)."""

    #: What the memory store holds in all, in bytes; the least recently used answers
    #: go first past it.
    cache_memory: int = 256 * 1024 * 1024


def parse_cache(node: Node, section: Section) -> CacheConfig | None:
    """``cache``: true, false, or a mapping of `CacheConfig`'s keys."""
    if node.value is None or node.value is False:
        return None
    if node.value is True:
        return CacheConfig()
    keys = node.mapping(set(_ROUTE_KEYS))
    default = CacheConfig()
    ttl = keys["ttl"].duration() if "ttl" in keys else default.ttl
    if not 1 <= ttl <= 30 * 86400:
        raise keys["ttl"].error("between 1s and 30d: how long an answer is served")
    max_bytes = (
        keys["max_bytes"].integer(minimum=1024) if "max_bytes" in keys else default.max_bytes
    )
    if max_bytes > 64 * 1024 * 1024:
        raise keys["max_bytes"].error("at most 67108864 (64 MiB): the largest answer stored")
    store = keys["store"].string() if "store" in keys else default.store
    if store not in STORES:
        raise keys["store"].error(f"one of {', '.join(STORES)}, got {store!r}")
    if store == "redis" and section.redis is None:
        raise keys["store"].error(
            "store: redis needs the top-level 'redis' (url: redis://host:6379/0); "
            "or use store: memory"
        )
    share = keys["share"].string() if "share" in keys else default.share
    if share not in SHARES:
        raise keys["share"].error(f"one of {', '.join(SHARES)}, got {share!r}")
    sampled = keys["sampled"].boolean() if "sampled" in keys else default.sampled
    tools = keys["side_effect_tools"].string_list() if "side_effect_tools" in keys else ()
    pace = keys["pace"].boolean() if "pace" in keys else default.pace
    return CacheConfig(ttl, max_bytes, store, share, sampled, tools, pace)


def parse_route(section: Section) -> RouteCache:
    """A route's ``cache``."""
    if "cache" not in section:
        return RouteCache()
    return RouteCache(parse_cache(section["cache"], section))


def parse(section: Section) -> CacheSettings:
    """The top-level ``cache_memory``."""
    if "cache_memory" not in section:
        return CacheSettings()
    return CacheSettings(section["cache_memory"].integer(minimum=1024 * 1024))


def cache_of(route: RouteConfig | None) -> CacheConfig | None:
    """*route*'s cache, or None."""
    if route is None:
        return None
    option = route.option(RouteCache)
    return option.cache if option is not None else None


def place(facts: ChainFacts) -> DefaultEntry | None:
    """Last, when some route caches: its key is the request as the upstream gets it."""
    if any(cache_of(route) is not None for route in facts.routes):
        return DefaultEntry("cache")
    return None


#: What the cache extension adds to the config.
SCHEMA = ExtensionSchema(
    name="cache",
    keys=frozenset({"cache_memory"}),
    parse=parse,
    route_keys=frozenset({"cache"}),
    parse_route=parse_route,
    place=place,
)
