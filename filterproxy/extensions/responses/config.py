"""The responses extension's config: the top-level ``responses`` (where conversations
are kept), and its place in the default chain."""

from __future__ import annotations

from dataclasses import dataclass

from filterproxy.config import ChainFacts, DefaultEntry, ExtensionSchema, Node, RedisConfig, Section

__all__ = ["SCHEMA", "ResponsesConfig", "ResponsesSection"]


@dataclass(frozen=True)
class ResponsesConfig:
    """Where the Responses API's conversations are kept (``previous_response_id``)."""

    #: ``memory`` (this process) or ``redis`` (the top-level ``redis``: every worker and
    #: replica). Default: ``redis`` when the config names one, else ``memory``.
    store: str = "memory"
    #: How long a stored response can be continued, read or deleted.
    ttl: float = 24 * 3600.0
    #: The most bytes the ``memory`` store holds (the least recently used go first).
    max_bytes: int = 128 * 1024 * 1024


@dataclass(frozen=True)
class ResponsesSection:
    """The top-level ``responses`` (`Config.section(ResponsesSection)`); the field name
    is what the effective config shows."""

    responses: ResponsesConfig = ResponsesConfig()


def parse_responses(node: Node, redis: RedisConfig | None) -> ResponsesConfig:
    """``responses``: ``{store, ttl, max_bytes}``."""
    default = ResponsesConfig(store="redis" if redis is not None else "memory")
    if node.value is None:
        return default
    keys = node.mapping({"store", "ttl", "max_bytes"})
    store = keys["store"].string() if "store" in keys else default.store
    if store not in ("memory", "redis"):
        raise keys["store"].error("memory (this process) or redis (the top-level 'redis')")
    if store == "redis" and redis is None:
        raise keys["store"].error(
            "redis needs the top-level 'redis' (e.g. redis: redis://127.0.0.1:6379/0)"
        )
    ttl = keys["ttl"].duration() if "ttl" in keys else default.ttl
    if ttl <= 0:
        raise keys["ttl"].error("must be positive, e.g. 24h")
    max_bytes = keys["max_bytes"].integer(minimum=1) if "max_bytes" in keys else default.max_bytes
    return ResponsesConfig(store, ttl, max_bytes)


def parse_section(section: Section) -> ResponsesSection:
    return ResponsesSection(parse_responses(section.node("responses"), section.redis))


def place(facts: ChainFacts) -> DefaultEntry | None:
    """Before the route filter when some cluster does not speak every client API: a
    Responses request is then translated, and its conversation kept here."""
    return DefaultEntry("responses", before="route") if facts.mixed_apis else None


#: What the responses extension adds to the config.
SCHEMA = ExtensionSchema(
    name="responses", keys=frozenset({"responses"}), parse=parse_section, place=place
)
