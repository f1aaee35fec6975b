"""The translate extension's config: the route keys ``hosted_tools`` and ``auto_cache``,
and its place in the default chain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from filterproxy.config import ChainFacts, DefaultEntry, ExtensionSchema, Node, Section

__all__ = ["HOSTED_TOOLS_POLICIES", "SCHEMA", "TranslateRoute", "parse_hosted_tools"]

#: What the gateway does with a Responses request's hosted tools (web_search, …) when it
#: translates the request for an upstream that cannot run them: leave them out and say
#: so, or answer 400.
HOSTED_TOOLS_POLICIES: Final = ("drop", "refuse")


@dataclass(frozen=True)
class TranslateRoute:
    """A route's translate settings (`RouteConfig.option(TranslateRoute)`); the field
    names are what the effective config shows of the route."""

    #: What a translated Responses request's hosted tools get (`HOSTED_TOOLS_POLICIES`),
    #: or None for the translate filter's own setting.
    hosted_tools: str | None = None
    #: Prompt-caching breakpoints added to a request for a Messages upstream where the
    #: client set none (the last tool, the system prompt, the last user turn).
    auto_cache: bool = False


def parse_hosted_tools(node: Node) -> str:
    """``hosted_tools``: ``drop`` or ``refuse`` (`HOSTED_TOOLS_POLICIES`)."""
    value = node.value
    if not isinstance(value, str) or value not in HOSTED_TOOLS_POLICIES:
        raise node.error(
            f"must be drop (leave hosted tools out of a translated request, and say so) or "
            f"refuse (answer 400), got {value!r}"
        )
    return value


def parse_route(section: Section) -> TranslateRoute:
    """A route's ``auto_cache`` and ``hosted_tools``."""
    auto_cache = section["auto_cache"].boolean() if "auto_cache" in section else False
    hosted_tools = (
        parse_hosted_tools(section["hosted_tools"]) if "hosted_tools" in section else None
    )
    return TranslateRoute(hosted_tools, auto_cache)


def place(facts: ChainFacts) -> DefaultEntry | None:
    """After the route filter (it translates for the cluster the route chose) when some
    cluster does not speak every client API."""
    return DefaultEntry("translate", after="route") if facts.mixed_apis else None


#: What the translate extension adds to the config.
SCHEMA = ExtensionSchema(
    name="translate",
    route_keys=frozenset({"hosted_tools", "auto_cache"}),
    parse_route=parse_route,
    place=place,
)
